"""An app exposing wsgi_after's Prometheus metrics, for gunicorn with several workers.

``/work`` queues a callback that succeeds and one that fails and answers with the
worker's PID; ``/work-held`` does the same once the file ``$RELEASE_FILE.request``
exists, having created ``$RELEASE_FILE.held`` (it holds its sync worker, so the next
request goes to the other one); ``/block`` queues one that waits until the file
``$RELEASE_FILE`` exists; ``/metrics`` is the multiprocess exposition of every worker.
"""

from __future__ import annotations

import os
import pathlib
import time
import typing as t

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from wsgi_after import AfterMiddleware, ThreadRunner, after
from wsgi_after import prometheus as after_prometheus

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

after_prometheus.install(depth_interval=0.1)


def ok() -> None:
    pass


def broken() -> None:
    raise ValueError("broken on purpose")


def wait_for_release(suffix: str = "") -> None:
    release = pathlib.Path(os.environ["RELEASE_FILE"] + suffix)
    deadline = time.monotonic() + 30
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    if environ["PATH_INFO"] == "/metrics":
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [body]
    if environ["PATH_INFO"] == "/block":
        after(wait_for_release)
    else:
        if environ["PATH_INFO"] == "/work-held":
            pathlib.Path(os.environ["RELEASE_FILE"] + ".held").touch()
            wait_for_release(".request")
        after(ok)
        after(broken)
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getpid()))])
    return [b"queued"]


app = AfterMiddleware(inner, runner=ThreadRunner(max_workers=1, name="prometheus-app"))
