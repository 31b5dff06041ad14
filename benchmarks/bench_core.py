"""Core micro timings with pyperf: what the middleware and the runner cost, beside baselines.

Run ``python benchmarks/bench_core.py`` (pyperf's options apply: ``--fast``,
``--rigorous``, ``-o results.json``; ``python -m pyperf compare_to`` compares two
runs). pyperf calibrates the loop count, runs every benchmark in several worker
processes and reports the mean with its standard deviation; :func:`measure` runs
it as a subprocess for ``run.py`` and returns the median and the spread.

* per request, no callback: the bare app, a werkzeug ``ClosingIterator`` wrapper,
  :class:`AfterMiddleware` (its overhead is the difference to the bare app);
* ``close()`` with one queued callback, beside ``ThreadPoolExecutor.submit`` and
  ``queue.SimpleQueue.put``;
* trivial callbacks drained with 4 workers, :class:`ThreadRunner` beside
  ``ThreadPoolExecutor`` (time per callback; its inverse is the rate).

Timings on a shared machine swing between runs; ``instructions.py`` counts
instructions, which do not.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import queue
import subprocess
import sys
import tempfile
import time
import typing as t
import wsgiref.util

from werkzeug.wsgi import ClosingIterator

from wsgi_after import AfterMiddleware, ThreadRunner, after

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

BARE = "bare app, per request"
CLOSING = "werkzeug ClosingIterator, per request"
MIDDLEWARE = "AfterMiddleware no callback, per request"
CLOSE = "AfterMiddleware close() with one callback"
SUBMIT = "ThreadPoolExecutor.submit"
PUT = "SimpleQueue.put"
RUNNER_DRAIN = "ThreadRunner, 4 workers, per callback drained"
POOL_DRAIN = "ThreadPoolExecutor, 4 workers, per callback drained"


class Timing(t.NamedTuple):
    """Seconds: the median of every value pyperf took, and their standard deviation."""

    median: float
    stdev: float


def _environ() -> dict[str, t.Any]:
    environ: dict[str, t.Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ["wsgi.file_wrapper"] = wsgiref.util.FileWrapper  # every real server sets it
    return environ


def _start_response(status: str, headers: list[tuple[str, str]], *exc_info: t.Any) -> t.Any:
    return None


def bare_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def noop() -> None:
    pass


def one_callback_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    after(noop)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def closing_iterator_app(environ: WSGIEnvironment, sr: StartResponse) -> t.Any:
    return ClosingIterator(bare_app(environ, sr), [noop])


def serve(loops: int, app: WSGIApplication) -> float:
    """Seconds for ``loops`` requests served the way a server does."""
    base = _environ()
    start = time.perf_counter()
    for _ in range(loops):
        result = app(base.copy(), _start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - start


def after_close(loops: int) -> float:
    """Seconds for ``loops`` close() calls, each handing one callback to the runner."""
    runner = ThreadRunner(max_workers=4, max_pending=loops + 1)
    middleware = AfterMiddleware(one_callback_app, runner=runner)
    base = _environ()
    responses = []
    for _ in range(loops):
        result = middleware(base.copy(), _start_response)
        for _chunk in result:
            pass
        responses.append(result)
    start = time.perf_counter()
    for result in responses:
        result.close()  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    runner.shutdown(60)
    return elapsed


def executor_submit(loops: int) -> float:
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        submit = pool.submit
        start = time.perf_counter()
        for _ in range(loops):
            submit(noop)
        return time.perf_counter() - start


def simplequeue_put(loops: int) -> float:
    q: queue.SimpleQueue[t.Any] = queue.SimpleQueue()
    put = q.put
    start = time.perf_counter()
    for _ in range(loops):
        put(noop)
    return time.perf_counter() - start


def runner_drain(loops: int) -> float:
    runner = ThreadRunner(max_workers=4, max_pending=loops + 1)
    start = time.perf_counter()
    for _ in range(loops):
        runner.submit(noop)
    runner.wait_idle(120)
    elapsed = time.perf_counter() - start
    runner.shutdown(60)
    return elapsed


def executor_drain(loops: int) -> float:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    start = time.perf_counter()
    for _ in range(loops):
        pool.submit(noop)
    pool.shutdown(wait=True)
    return time.perf_counter() - start


def benchmarks() -> dict[str, tuple[t.Callable[..., float], tuple[t.Any, ...]]]:
    middleware = AfterMiddleware(bare_app, runner=ThreadRunner(max_workers=1))
    return {
        BARE: (serve, (bare_app,)),
        CLOSING: (serve, (closing_iterator_app,)),
        MIDDLEWARE: (serve, (middleware,)),
        CLOSE: (after_close, ()),
        SUBMIT: (executor_submit, ()),
        PUT: (simplequeue_put, ()),
        RUNNER_DRAIN: (runner_drain, ()),
        POOL_DRAIN: (executor_drain, ()),
    }


def measure(quick: bool = False) -> dict[str, Timing]:
    """Run this file under pyperf in a subprocess; ``quick``: one value each (CI)."""
    with tempfile.TemporaryDirectory() as folder:
        out = pathlib.Path(folder) / "core.json"
        options = ["--processes=1", "--values=1", "--warmups=1", "--min-time=0.01"] if quick else []
        subprocess.run(
            [sys.executable, __file__, "--quiet", "-o", str(out), *options],
            check=True, timeout=1800,
        )  # fmt: skip
        return load(out)


def load(path: pathlib.Path) -> dict[str, Timing]:
    """Each benchmark's median and standard deviation from a pyperf JSON file."""
    import pyperf

    suite = pyperf.BenchmarkSuite.load(str(path))
    timings = {}
    for bench in suite.get_benchmarks():
        values = bench.get_values()
        stdev = bench.stdev() if len(values) > 1 else 0.0
        timings[bench.get_name()] = Timing(bench.median(), stdev)
    return timings


def main() -> int:
    import pyperf

    runner = pyperf.Runner()
    runner.metadata["description"] = (__doc__ or "").splitlines()[0]
    for name, (func, args) in benchmarks().items():
        runner.bench_time_func(name, func, *args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
