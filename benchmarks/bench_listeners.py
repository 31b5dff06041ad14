"""What the observability listeners cost per request, and that they cost nothing when off.

Run ``python benchmarks/bench_listeners.py MODE`` with MODE one of ``none``,
``imported`` (the modules imported, nothing installed), ``stats``,
``prometheus`` or ``otel``. Each mode runs in its own process (listeners are
process-wide). It prints the function calls (Python and C, counted with
:func:`sys.setprofile`: deterministic, unlike timings on a shared machine) and
the median time per request with one no-op callback on an ``InlineRunner``.
"""

from __future__ import annotations

import statistics
import sys
import time
import typing as t
import wsgiref.util

from wsgi_after import AfterMiddleware, InlineRunner, after

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

MODES = ("none", "imported", "stats", "prometheus", "otel")


def noop() -> None:
    pass


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    after(noop)
    start_response("200 OK", [])
    return [b"x"]


APP = AfterMiddleware(inner, runner=InlineRunner())
ENVIRON: dict[str, t.Any] = {}
wsgiref.util.setup_testing_defaults(ENVIRON)


def start_response(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
    return None


def once() -> None:
    iterable = APP(dict(ENVIRON), start_response)
    for _ in iterable:
        pass
    iterable.close()  # type: ignore[attr-defined]


def enable(mode: str) -> None:
    if mode == "imported":
        import wsgi_after.callback_stats
        import wsgi_after.otel
        import wsgi_after.prometheus  # noqa: F401
    elif mode == "stats":
        from wsgi_after.callback_stats import CallbackStats

        CallbackStats().install()
    elif mode == "prometheus":
        from prometheus_client import CollectorRegistry

        from wsgi_after import prometheus

        prometheus.install(CollectorRegistry())
    elif mode == "otel":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider

        from wsgi_after import otel

        otel.instrument(
            tracer_provider=TracerProvider(),
            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
        )


def count_calls(requests: int = 100) -> float:
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    for _ in range(requests):
        once()
    sys.setprofile(None)
    return count / requests


def time_per_request(requests: int = 20000, repeats: int = 5) -> float:
    results = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(requests):
            once()
        results.append((time.perf_counter() - started) / requests * 1e6)
    return statistics.median(results)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "none"
    if mode not in MODES:
        raise SystemExit(f"MODE must be one of {', '.join(MODES)}, got {mode!r}.")
    enable(mode)
    once()
    once()  # warm: first-time imports and caches
    print(f"{mode:11s} {count_calls():7.1f} calls/request {time_per_request():7.2f} us/request")


if __name__ == "__main__":
    main()
