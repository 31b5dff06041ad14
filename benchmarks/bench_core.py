"""Core micro-benchmarks: what the middleware and the runner cost, beside baselines.

Run ``python benchmarks/bench_core.py`` (``--quick`` for a short run). Each figure
is measured in the same process and run as its baseline, as the median of
several repetitions, and printed with the ratio and the goal:

* P1: per-request overhead of :class:`AfterMiddleware` with no callback, against
  the bare app and against a werkzeug ``ClosingIterator`` wrapper;
* P2: the cost of ``close()`` with one queued callback, against
  ``ThreadPoolExecutor.submit`` and ``queue.SimpleQueue.put``;
* P3: trivial callbacks drained per second with 4 workers, against
  ``ThreadPoolExecutor``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import queue
import statistics
import sys
import time
import typing as t
import wsgiref.util

from wsgi_after import AfterMiddleware, ThreadRunner, after

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


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


def _serve(app: t.Any, n: int) -> float:
    """Seconds per request for ``n`` requests served the way a server does."""
    base = _environ()
    start = time.perf_counter()
    for _ in range(n):
        result = app(base.copy(), _start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - start) / n


def median_of(reps: int, fn: t.Callable[[], float]) -> float:
    values = []
    for _ in range(reps):
        gc.collect()
        values.append(fn())
    return statistics.median(values)


def p1_overhead(n: int, reps: int) -> dict[str, float]:
    from werkzeug.wsgi import ClosingIterator

    def closing_iterator_app(environ: WSGIEnvironment, sr: StartResponse) -> t.Any:
        return ClosingIterator(bare_app(environ, sr), [noop])

    middleware = AfterMiddleware(bare_app, runner=ThreadRunner(max_workers=1))
    results = {"bare": [], "ClosingIterator": [], "AfterMiddleware": []}  # type: dict[str, list[float]]
    for _ in range(reps):  # interleaved, so drift hits all three alike
        gc.collect()
        results["bare"].append(_serve(bare_app, n))
        results["ClosingIterator"].append(_serve(closing_iterator_app, n))
        results["AfterMiddleware"].append(_serve(middleware, n))
    return {k: statistics.median(v) for k, v in results.items()}


def p2_close(n: int, reps: int) -> dict[str, float]:
    def after_close() -> float:
        runner = ThreadRunner(max_workers=4, max_pending=n + 1)
        middleware = AfterMiddleware(one_callback_app, runner=runner)
        base = _environ()
        responses = []
        for _ in range(n):
            result = middleware(base.copy(), _start_response)
            for _chunk in result:
                pass
            responses.append(result)
        start = time.perf_counter()
        for result in responses:
            result.close()  # type: ignore[attr-defined]
        elapsed = (time.perf_counter() - start) / n
        runner.shutdown(60)
        return elapsed

    def executor_submit() -> float:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            submit = pool.submit
            start = time.perf_counter()
            for _ in range(n):
                submit(noop)
            return (time.perf_counter() - start) / n

    def simplequeue_put() -> float:
        q: queue.SimpleQueue[t.Any] = queue.SimpleQueue()
        put = q.put
        start = time.perf_counter()
        for _ in range(n):
            put(noop)
        return (time.perf_counter() - start) / n

    results = {
        "AfterMiddleware close()": [],
        "ThreadPoolExecutor.submit": [],
        "SimpleQueue.put": [],
    }  # type: dict[str, list[float]]
    for _ in range(reps):
        gc.collect()
        results["AfterMiddleware close()"].append(after_close())
        results["ThreadPoolExecutor.submit"].append(executor_submit())
        results["SimpleQueue.put"].append(simplequeue_put())
    return {k: statistics.median(v) for k, v in results.items()}


def p3_drain(n: int, reps: int) -> dict[str, float]:
    def runner_rate() -> float:
        runner = ThreadRunner(max_workers=4, max_pending=n + 1)
        start = time.perf_counter()
        for _ in range(n):
            runner.submit(noop)
        runner.wait_idle(120)
        rate = n / (time.perf_counter() - start)
        runner.shutdown(60)
        return rate

    def executor_rate() -> float:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
        start = time.perf_counter()
        for _ in range(n):
            pool.submit(noop)
        pool.shutdown(wait=True)
        return n / (time.perf_counter() - start)

    results = {"ThreadRunner": [], "ThreadPoolExecutor": []}  # type: dict[str, list[float]]
    for _ in range(reps):
        gc.collect()
        results["ThreadRunner"].append(runner_rate())
        results["ThreadPoolExecutor"].append(executor_rate())
    return {k: statistics.median(v) for k, v in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run: checks nothing rots")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (median reported)")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    n = 2_000 if args.quick else 100_000

    print(f"Python {sys.version.split()[0]}, median of {reps} runs, n={n}\n")
    p1 = p1_overhead(n, reps)
    overhead = (p1["AfterMiddleware"] - p1["bare"]) * 1e6
    print("P1 per-request overhead, no callback (goal <= 1.0 us)")
    for k, v in p1.items():
        print(f"   {k:<28} {v * 1e6:8.3f} us/request")
    print(
        f"   AfterMiddleware - bare      {overhead:8.3f} us"
        f"   ClosingIterator - bare {(p1['ClosingIterator'] - p1['bare']) * 1e6:.3f} us"
        f"   -> {'met' if overhead <= 1.0 else 'MISSED'}\n"
    )

    p2 = p2_close(n, reps)
    close, submit = p2["AfterMiddleware close()"], p2["ThreadPoolExecutor.submit"]
    print("P2 close() with one queued callback (goal <= 2 us and >= 4x cheaper than TPE.submit)")
    for k, v in p2.items():
        print(f"   {k:<28} {v * 1e6:8.3f} us")
    ok = close * 1e6 <= 2.0 and submit / close >= 4
    verdict = "met" if ok else "MISSED"
    print(f"   ratio TPE.submit / close()   {submit / close:8.2f} x   -> {verdict}\n")

    p3 = p3_drain(n, reps)
    ratio = p3["ThreadRunner"] / p3["ThreadPoolExecutor"]
    print("P3 trivial callbacks drained per second, 4 workers (goal >= 10x ThreadPoolExecutor)")
    for k, v in p3.items():
        print(f"   {k:<28} {v:12,.0f} /s")
    print(
        f"   ratio                        {ratio:8.2f} x   -> {'met' if ratio >= 10 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
