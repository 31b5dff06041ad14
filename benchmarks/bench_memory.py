"""P6 memory: a million requests with one callback each, through one middleware.

RSS must not grow (goal: < 5 MB), and no environ may outlive its callbacks:
weak references to a sample of environs must be dead once the runner is idle,
without a garbage-collector pass (reference counting alone frees a request).
"""

from __future__ import annotations

import gc
import sys
import typing as t
import weakref
import wsgiref.util

from wsgi_after import AfterMiddleware, ThreadRunner, after

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


class Environ(dict[str, t.Any]):
    """A dict that takes weak references, so the benchmark can see it die."""

    __slots__ = ("__weakref__",)


def noop(n: int) -> None:
    pass


def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    after(noop, 1)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _ignore(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
    return None


def p6_memory(n: int) -> dict[str, float]:
    runner = ThreadRunner(max_workers=4, max_pending=10_000, on_full="block")
    middleware = AfterMiddleware(app, runner=runner)
    base: dict[str, t.Any] = {}
    wsgiref.util.setup_testing_defaults(base)
    base["wsgi.file_wrapper"] = wsgiref.util.FileWrapper
    sample: list[weakref.ref[Environ]] = []

    def serve(count: int, keep_every: int = 0) -> None:
        for i in range(count):
            environ = Environ(base)
            if keep_every and i % keep_every == 0:
                sample.append(weakref.ref(environ))
            result = middleware(environ, _ignore)
            for _chunk in result:
                pass
            result.close()  # type: ignore[attr-defined]

    serve(20_000)  # warm up: threads, caches, allocator arenas
    runner.wait_idle(60)
    gc.collect()
    before = rss_mb()
    serve(n, keep_every=max(1, n // 1000))
    idle = runner.wait_idle(120)
    alive = sum(ref() is not None for ref in sample)  # before any gc pass
    after_rss = rss_mb()
    runner.shutdown(10)
    return {
        "requests": float(n),
        "rss_before_mb": before,
        "rss_after_mb": after_rss,
        "growth_mb": after_rss - before,
        "sampled": float(len(sample)),
        "alive": float(alive),
        "idle": float(idle),
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(p6_memory(n))
