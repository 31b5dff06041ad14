"""The apps the end-to-end benchmarks serve: one side effect, seven ways to run it.

``BENCH_VARIANT`` picks the variant; ``BENCH_EFFECT`` is ``io`` (50 ms of sleep) or
``cpu`` (5 ms of pure-Python work). ``/stats`` reports the worker's backlog and
counters so the driver can read them over HTTP.

a ``none``: no side effect (the baseline); b ``after``: :func:`wsgi_after.after`;
c ``inline``: in the view; d ``call_on_close``: werkzeug's ``call_on_close``;
e ``executor``: Flask-Executor ``submit``; f ``naive``: a middleware whose
``close()`` calls :meth:`ThreadPoolExecutor.submit`; g ``starlette`` and
``starlette-none``: Starlette ``BackgroundTasks`` on uvicorn and its baseline.
``celery`` runs ``after()`` on :class:`~wsgi_after.celery.CeleryRunner`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time
import typing as t

VARIANT = os.environ.get("BENCH_VARIANT", "none")
EFFECT = os.environ.get("BENCH_EFFECT", "io")
WORKERS = 8  # ~160 side effects of 50 ms per second
counts = {"registered": 0, "ran": 0}
_counts_lock = threading.Lock()  # exact counts across the server's and the pool's threads


def count(key: str) -> None:
    with _counts_lock:
        counts[key] += 1


def side_effect() -> None:
    if EFFECT == "cpu":
        deadline = time.thread_time() + 0.005
        n = 0
        while time.thread_time() < deadline:
            n += 1
    else:
        time.sleep(0.05)
    count("ran")


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


if VARIANT.startswith("starlette"):
    from starlette.applications import Starlette
    from starlette.background import BackgroundTasks
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def starlette_view(request: Request) -> PlainTextResponse:
        if VARIANT == "starlette":
            count("registered")
            tasks = BackgroundTasks()
            tasks.add_task(side_effect)  # a sync function: run in the thread pool
            return PlainTextResponse("ok", background=tasks)
        return PlainTextResponse("ok")

    async def starlette_stats(request: Request) -> PlainTextResponse:
        return PlainTextResponse(json.dumps({**counts, "backlog": 0, "rss_kb": rss_kb()}))

    app: t.Any = Starlette(routes=[Route("/", starlette_view), Route("/stats", starlette_stats)])
else:
    from flask import Flask, make_response

    flask_app = Flask(__name__)
    backlog: t.Callable[[], int] = lambda: 0  # noqa: E731
    stats_extra: t.Callable[[], dict[str, t.Any]] = dict

    if VARIANT == "after-plain":  # the middleware alone, without the Flask extension
        from wsgi_after import AfterMiddleware, ThreadRunner, after

        plain_runner = ThreadRunner(max_workers=WORKERS)
        flask_app.wsgi_app = AfterMiddleware(  # type: ignore[method-assign]
            flask_app.wsgi_app, runner=plain_runner
        )
        backlog = lambda: plain_runner.stats().queued  # noqa: E731
    elif VARIANT in ("after", "celery"):
        from wsgi_after import ThreadRunner, after
        from wsgi_after.flask import After

        runner: t.Any
        if VARIANT == "celery":
            from celery import Celery

            from wsgi_after.celery import CeleryRunner

            celery_app = Celery("bench", broker=os.environ.get("BENCH_BROKER", ""))
            runner = CeleryRunner(celery_app, allow=["e2e_app"])  # the worker reads it too
        else:
            runner = ThreadRunner(
                max_workers=WORKERS,
                max_pending=int(os.environ.get("BENCH_MAX_PENDING", "1000")),
                on_full=os.environ.get("BENCH_ON_FULL", "block"),  # type: ignore[arg-type]
            )
            backlog = lambda: runner.stats().queued  # noqa: E731
            stats_extra = lambda: {"dropped": runner.stats().dropped}  # noqa: E731
        After(flask_app, runner=runner)
    elif VARIANT == "executor":
        from flask_executor import Executor

        flask_app.config["EXECUTOR_MAX_WORKERS"] = WORKERS
        executor = Executor(flask_app)
        backlog = lambda: executor._self._work_queue.qsize()  # noqa: E731
    elif VARIANT == "naive":
        pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
        backlog = lambda: pool._work_queue.qsize()  # noqa: E731

    @flask_app.get("/")
    def view() -> t.Any:
        if VARIANT == "none":
            return "ok"
        count("registered")
        if VARIANT in ("after", "after-plain", "celery"):
            after(side_effect_task if VARIANT == "celery" else side_effect)
        elif VARIANT == "inline":
            side_effect()
        elif VARIANT == "call_on_close":
            response = make_response("ok")
            response.call_on_close(side_effect)
            return response
        elif VARIANT == "executor":
            executor.submit(side_effect)
        elif VARIANT == "naive":
            from flask import request

            request.environ["naive.callbacks"].append(side_effect)
        return "ok"

    @flask_app.get("/stats")
    def stats() -> str:
        return json.dumps({**counts, "backlog": backlog(), "rss_kb": rss_kb(), **stats_extra()})

    app = flask_app
    if VARIANT == "naive":

        class NaiveMiddleware:
            """The obvious approach: submit the request's callbacks in close()."""

            def __init__(self, wsgi_app: t.Any) -> None:
                self.wsgi_app = wsgi_app

            def __call__(self, environ: t.Any, start_response: t.Any) -> t.Any:
                callbacks: list[t.Callable[[], object]] = []
                environ["naive.callbacks"] = callbacks
                result = self.wsgi_app(environ, start_response)
                return _NaiveClosing(result, callbacks)

        class _NaiveClosing:
            def __init__(self, inner: t.Any, callbacks: list[t.Callable[[], object]]) -> None:
                self.inner, self.callbacks = inner, callbacks

            def __iter__(self) -> t.Iterator[bytes]:
                return iter(self.inner)

            def close(self) -> None:
                if hasattr(self.inner, "close"):
                    self.inner.close()
                for callback in self.callbacks:
                    pool.submit(callback)

        flask_app.wsgi_app = NaiveMiddleware(flask_app.wsgi_app)  # type: ignore[method-assign]


def side_effect_task() -> None:
    """The side effect, importable by name for the Celery worker."""
    side_effect()
