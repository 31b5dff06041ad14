"""OpenTelemetry: callback spans in the request's trace, and the metrics."""

from __future__ import annotations

import collections.abc
import threading
import time
import typing as t

import pytest
from flask import Flask
from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.helpers import serve
from wsgi_after import AfterMiddleware, InlineRunner, ThreadRunner, after, otel
from wsgi_after.flask import After

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

Runner = ThreadRunner | InlineRunner


class Telemetry(t.NamedTuple):
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer: trace.Tracer
    tracer_provider: TracerProvider


@pytest.fixture
def telemetry() -> collections.abc.Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield Telemetry(spans, reader, tracer_provider.get_tracer("tests"), tracer_provider)
    otel.uninstrument()
    meter_provider.shutdown()
    tracer_provider.shutdown()


@pytest.fixture(params=["thread", "inline"])
def any_runner(request: pytest.FixtureRequest) -> collections.abc.Iterator[Runner]:
    runner: Runner = InlineRunner()
    if request.param == "thread":
        runner = ThreadRunner(max_workers=2, name="otel-test")
    yield runner
    runner.shutdown(5.0)


def ok() -> None:
    pass


def broken() -> None:
    raise ValueError("broken")


def by_name(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def view_app(tracer: trace.Tracer, *callbacks: t.Callable[[], None]) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        with tracer.start_as_current_span("view"):
            for callback in callbacks:
                after(callback)
        start_response("200 OK", [])
        return [b"done"]

    return app


def test_each_callback_gets_a_child_span_of_the_span_current_at_after(
    telemetry: Telemetry, any_runner: Runner
) -> None:
    app = AfterMiddleware(view_app(telemetry.tracer, ok, broken), runner=any_runner)
    serve(app, "/orders", "POST")
    assert any_runner.wait_idle(5)

    view = by_name(telemetry.spans, "view")
    good = by_name(telemetry.spans, "after tests.test_otel.ok")
    bad = by_name(telemetry.spans, "after tests.test_otel.broken")
    for span in (good, bad):
        assert span.kind is SpanKind.INTERNAL
        assert span.parent is not None
        assert span.parent.span_id == view.context.span_id
        assert span.context.trace_id == view.context.trace_id
        assert span.attributes is not None
        assert span.attributes["http.request.method"] == "POST"
        assert span.attributes["url.path"] == "/orders"
        assert "http.route" not in span.attributes
        delay = span.attributes["wsgi_after.queue_delay"]
        assert isinstance(delay, float)
        assert 0 <= delay < 5
    assert good.attributes is not None
    assert good.attributes["wsgi_after.callback"] == "tests.test_otel.ok"
    assert good.status.status_code is StatusCode.UNSET
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.status.description == "ValueError"
    [exception] = bad.events
    assert exception.name == "exception"
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "ValueError"
    assert exception.attributes["exception.message"] == "broken"


def test_the_callback_span_is_current_while_it_runs(telemetry: Telemetry) -> None:
    def traced() -> None:
        with telemetry.tracer.start_as_current_span("inside"):
            pass

    app = AfterMiddleware(view_app(telemetry.tracer, traced), runner=InlineRunner())
    serve(app)
    callback = by_name(telemetry.spans, f"after {__name__}.{traced.__qualname__}")
    inside = by_name(telemetry.spans, "inside")
    assert inside.parent is not None
    assert inside.parent.span_id == callback.context.span_id
    # The callback's span is no longer current once it ended: the thread is clean.
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_the_request_span_of_the_wsgi_instrumentation_excludes_the_after_work(
    telemetry: Telemetry, runner: ThreadRunner
) -> None:
    release = threading.Event()
    running = threading.Event()

    def slow() -> None:
        running.set()
        assert release.wait(10)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(slow)
        start_response("200 OK", [])
        return [b"done"]

    wrapped = OpenTelemetryMiddleware(
        AfterMiddleware(app, runner=runner), tracer_provider=telemetry.tracer_provider
    )
    serve(wrapped, "/signup", "POST")
    assert running.wait(5)
    # The callback is still running, and the request's span has ended.
    [request_span] = telemetry.spans.get_finished_spans()
    assert request_span.kind is SpanKind.SERVER
    release.set()
    assert runner.wait_idle(5)
    callback = by_name(telemetry.spans, f"after {__name__}.{slow.__qualname__}")
    assert callback.parent is not None
    assert callback.parent.span_id == request_span.context.span_id
    assert request_span.end_time is not None
    assert callback.start_time is not None
    assert callback.end_time is not None
    assert request_span.end_time < callback.end_time


def test_flask_route_is_an_attribute(telemetry: Telemetry) -> None:
    flask_app = Flask(__name__)
    flask_app.config["AFTER_INLINE"] = True
    After(flask_app)

    @flask_app.get("/users/<int:user_id>")
    def user(user_id: int) -> str:
        after(ok)
        return "user"

    assert flask_app.test_client().get("/users/7", buffered=True).status_code == 200
    span = by_name(telemetry.spans, "after tests.test_otel.ok")
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/users/<int:user_id>"
    assert span.attributes["url.path"] == "/users/7"


def test_a_route_function_of_ones_own(telemetry: Telemetry) -> None:
    otel.instrument(tracer_provider=telemetry.tracer_provider, route=lambda environ: "/orders/{id}")
    serve(AfterMiddleware(view_app(telemetry.tracer, ok), runner=InlineRunner()), "/orders/3")
    span = by_name(telemetry.spans, "after tests.test_otel.ok")
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/orders/{id}"


def test_bad_route_option_names_the_fix() -> None:
    with pytest.raises(TypeError) as info:
        otel.instrument(route="/x")  # type: ignore[arg-type]
    assert str(info.value) == "'route' must be a function taking a WSGI environ, got 'str'."


def test_uninstrument_stops_the_spans(telemetry: Telemetry) -> None:
    otel.uninstrument()
    serve(AfterMiddleware(view_app(telemetry.tracer, ok), runner=InlineRunner()))
    assert [s.name for s in telemetry.spans.get_finished_spans()] == ["view"]


def points(reader: InMemoryMetricReader, name: str) -> list[t.Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def counts(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    return {
        (p.attributes["outcome"], p.attributes["wsgi_after.callback"]): p.value
        for p in points(reader, "wsgi_after.callbacks")
    }


def wait_for(check: t.Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_metrics_by_outcome_queue_depth_and_histograms(telemetry: Telemetry) -> None:
    release = threading.Event()
    running = threading.Event()

    def blocker() -> None:
        running.set()
        assert release.wait(10)

    runner = ThreadRunner(
        max_workers=1, max_pending=1, on_full="drop", slow_callback=0.05, name="otel-depth"
    )
    try:
        serve(AfterMiddleware(view_app(telemetry.tracer, blocker), runner=runner))
        assert running.wait(5)
        queued = AfterMiddleware(view_app(telemetry.tracer, ok, broken), runner=runner)
        serve(queued)  # waits in the queue
        serve(queued)  # dropped: the queue is full
        depth = [
            p.value
            for p in points(telemetry.metrics, "wsgi_after.queue.depth")
            if p.attributes == {"wsgi_after.runner": "otel-depth"}
        ]
        assert depth == [1]
        blocker_name = f"{__name__}.{blocker.__qualname__}"
        wait_for(lambda: bool(points(telemetry.metrics, "wsgi_after.callbacks.hung")))
        [hung] = points(telemetry.metrics, "wsgi_after.callbacks.hung")
        assert hung.attributes == {"wsgi_after.callback": blocker_name}
        assert hung.value == 1
        release.set()
        assert runner.wait_idle(5)
    finally:
        release.set()
        runner.shutdown(5)
    assert counts(telemetry.metrics) == {
        ("completed", blocker_name): 1,
        ("completed", "tests.test_otel.ok"): 1,
        ("failed", "tests.test_otel.broken"): 1,
        ("dropped", "tests.test_otel.ok"): 1,
        ("dropped", "tests.test_otel.broken"): 1,
    }
    durations = {
        (p.attributes["outcome"], p.attributes["wsgi_after.callback"]): p.count
        for p in points(telemetry.metrics, "wsgi_after.callback.duration")
    }
    assert durations == {
        ("completed", blocker_name): 1,
        ("completed", "tests.test_otel.ok"): 1,
        ("failed", "tests.test_otel.broken"): 1,
    }
    delays = {
        p.attributes["wsgi_after.callback"]: p.count
        for p in points(telemetry.metrics, "wsgi_after.queue.delay")
    }
    assert delays == {blocker_name: 1, "tests.test_otel.ok": 1, "tests.test_otel.broken": 1}
    depth = [
        p.value
        for p in points(telemetry.metrics, "wsgi_after.queue.depth")
        if p.attributes == {"wsgi_after.runner": "otel-depth"}
    ]
    assert depth == [0]


def test_callback_names_past_the_cap_are_other(telemetry: Telemetry) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel.instrument(meter_provider=provider, max_callback_names=1)
    try:
        serve(AfterMiddleware(view_app(telemetry.tracer, ok, broken, ok), runner=InlineRunner()))
    finally:
        provider.shutdown()
    assert counts(reader) == {("completed", "tests.test_otel.ok"): 2, ("failed", "other"): 1}


def test_queue_depth_of_runners_with_one_name_is_their_sum(telemetry: Telemetry) -> None:
    # Every default runner is named 'wsgi-after': backlogs 3 and 5 are 8, as Prometheus
    # says, not one point of whichever came last (issue 21, item 10).
    release = threading.Event()
    started = threading.Barrier(3)

    def blocker() -> None:
        started.wait(10)
        assert release.wait(10)

    runners = [ThreadRunner(max_workers=1, name="otel-same") for _ in range(2)]
    try:
        for runner, backlog in zip(runners, (3, 5), strict=True):
            runner.submit(blocker)
            for _ in range(backlog):
                runner.submit(ok)
        started.wait(10)  # both workers busy: the rest wait in the queues
        depth = [
            p.value
            for p in points(telemetry.metrics, "wsgi_after.queue.depth")
            if p.attributes == {"wsgi_after.runner": "otel-same"}
        ]
        assert depth == [8]
    finally:
        release.set()
        for runner in runners:
            runner.shutdown(5)
