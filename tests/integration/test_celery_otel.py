"""OpenTelemetry through Celery: a real worker, instrumented, puts the callback's span in
the trace of the request that queued it.

The worker (``apps/celery_otel_tasks.py``) calls :func:`wsgi_after.otel.instrument` and
has the SDK write each finished span as a JSON line; the web side serves the request
under ``opentelemetry-instrumentation-wsgi`` with an in-memory exporter. Each broker
gets a worker of its own for this module (a private redis-server, and the machine's
RabbitMQ with a queue of its own, deleted at the end), stopped by its PID.
"""

from __future__ import annotations

import collections.abc
import importlib
import json
import pathlib
import typing as t
import uuid

import pytest
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.helpers import serve
from tests.integration.celery_worker import start_worker
from tests.integration.poll import poll
from tests.integration.servers import APPS
from wsgi_after import AfterMiddleware, after
from wsgi_after.celery import CeleryRunner

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


class Worker(t.NamedTuple):
    broker: str
    queue: str
    spans: pathlib.Path
    log: pathlib.Path
    runs: pathlib.Path


def read_spans(path: pathlib.Path) -> list[dict[str, t.Any]]:
    """The worker's finished spans so far (whole lines only: it may be writing one)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> collections.abc.Iterator[Worker]:
    workdir = tmp_path_factory.mktemp(f"celery-otel-{request.param}")
    spans = workdir / "spans.jsonl"
    started = start_worker(
        request.param, workdir, "celery_otel_tasks", "wsgi_after_otel_tests",
        WSGI_AFTER_SPANS=str(spans),
    )  # fmt: skip
    try:
        yield Worker(started.broker, started.queue, spans, started.log, started.runs)
    finally:
        started.stop()


@pytest.fixture
def runner(worker: Worker) -> collections.abc.Iterator[CeleryRunner]:
    from celery import Celery

    celery_app = Celery("web", broker=worker.broker)
    celery_app.conf.update(task_default_queue=worker.queue)
    runner = CeleryRunner(celery_app, allow=["celery_tasks"], retry_window=60)
    yield runner
    runner.shutdown(10)


def test_the_callbacks_span_on_a_worker_is_a_child_of_the_request_span(
    worker: Worker, runner: CeleryRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    celery_tasks = importlib.import_module("celery_tasks")

    request_spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(request_spans))
    path = f"/orders/{uuid.uuid4().hex[:8]}"

    def shop(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(celery_tasks.record, "traced")
        after(celery_tasks.fails)
        start_response("201 Created", [])
        return [b"ordered"]

    app = OpenTelemetryMiddleware(AfterMiddleware(shop, runner=runner), tracer_provider=provider)
    try:
        serve(app, path, "POST")
        assert runner.wait_idle(30)
        assert runner.stats().published == 1
    finally:
        provider.shutdown()
    [request_span] = request_spans.get_finished_spans()
    assert request_span.kind is SpanKind.SERVER
    context = request_span.context
    assert context is not None

    def mine() -> list[dict[str, t.Any]]:
        return [s for s in read_spans(worker.spans) if s["attributes"].get("url.path") == path]

    found = poll(mine, lambda spans: len(spans) >= 2, timeout=60)
    assert [span["name"] for span in found] == [
        "after celery_tasks.record",
        "after celery_tasks.fails",
    ], worker.log.read_text()
    for span in found:
        assert span["context"]["trace_id"] == f"0x{context.trace_id:032x}"
        assert span["parent_id"] == f"0x{context.span_id:016x}"  # a child of the request span
        assert span["kind"] == "SpanKind.INTERNAL"
        assert span["attributes"]["http.request.method"] == "POST"
    recorded, failed = found
    assert recorded["attributes"]["wsgi_after.callback"] == "celery_tasks.record"
    assert recorded["status"]["status_code"] == "UNSET"
    assert failed["status"]["status_code"] == "ERROR"
    [exception] = failed["events"]
    assert exception["name"] == "exception"
    assert exception["attributes"]["exception.type"] == "ValueError"
    assert exception["attributes"]["exception.message"] == "this callback failed"
