"""Running a request's callbacks (run_callbacks): order, errors, awaitables, scope, events."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import typing as t

import pytest

from tests.helpers import TIMEOUT, Returns, serve, text_app
from wsgi_after import (
    AfterMiddleware,
    InlineRunner,
    Outcome,
    ThreadRunner,
    after,
    current_chain,
    events,
    outcome,
)
from wsgi_after._execute import Received
from wsgi_after._request import Callback

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def test_callbacks_run_in_order_in_one_task(runner: ThreadRunner) -> None:
    ran: list[tuple[str, int]] = []
    submitted: list[object] = []

    class CountingRunner:
        def submit(self, fn: t.Callable[[], object]) -> None:
            submitted.append(fn)
            runner.submit(fn)

    def record(i: int) -> None:
        ran.append((threading.current_thread().name, i))

    def view(environ: WSGIEnvironment) -> None:
        for i in range(5):
            after(record, i)

    serve(AfterMiddleware(text_app(view), runner=CountingRunner()))
    assert runner.wait_idle(TIMEOUT)
    assert [i for _, i in ran] == [0, 1, 2, 3, 4]
    assert len(submitted) == 1
    assert len({name for name, _ in ran}) == 1
    assert ran[0][0].startswith("test-runner-")


def test_requests_run_concurrently(runner: ThreadRunner) -> None:
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    passed: list[bool] = []

    def meet() -> None:
        barrier.wait()
        passed.append(True)

    app = AfterMiddleware(text_app(lambda environ: after(meet)), runner=runner)
    serve(app)
    serve(app)
    assert runner.wait_idle(TIMEOUT)
    assert passed == [True, True]


def test_failing_callback_is_logged_by_name_and_the_rest_run(
    runner: ThreadRunner, log: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise ValueError("boom")

    def view(environ: WSGIEnvironment) -> None:
        after(ran.append, "first")
        after(broken)
        after(ran.append, "last")

    response = serve(AfterMiddleware(text_app(view), runner=runner), "/orders/7", "POST")
    assert response.body == b"ok"
    assert runner.wait_idle(TIMEOUT)
    assert ran == ["first", "last"]
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.name == "wsgi_after"
    assert record.getMessage() == (
        "Callback 'tests.test_execute.test_failing_callback_is_logged_by_name_and_the_rest_run"
        ".<locals>.broken' queued by 'POST /orders/7' raised ValueError."
    )
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert runner.stats().failed == 1


def test_coroutine_function_and_object_run_to_completion() -> None:
    ran: list[str] = []

    async def job(name: str) -> None:
        import asyncio

        await asyncio.sleep(0)
        ran.append(name)

    def view(environ: WSGIEnvironment) -> None:
        after(job, "function")
        after(job("object"))

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert ran == ["function", "object"]


class CustomStop(BaseException):
    pass


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(SystemExit(2), id="SystemExit"),
        pytest.param(KeyboardInterrupt(), id="KeyboardInterrupt"),
        pytest.param(GeneratorExit(), id="GeneratorExit"),
        pytest.param(asyncio.CancelledError(), id="CancelledError"),
        pytest.param(CustomStop(), id="custom-BaseException"),
    ],
)
def test_a_base_exception_in_a_callback_is_logged_by_name_and_the_rest_run(
    error: BaseException, runner: ThreadRunner, log: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def stops() -> None:
        raise error

    def view(environ: WSGIEnvironment) -> None:
        after(ran.append, "first")
        after(stops)
        after(ran.append, "last")

    serve(AfterMiddleware(text_app(view), runner=runner), "/pay", "POST")
    assert runner.wait_idle(TIMEOUT)
    assert ran == ["first", "last"]
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.getMessage() == (
        "Callback 'tests.test_execute.test_a_base_exception_in_a_callback_is_logged_by_name"
        f"_and_the_rest_run.<locals>.stops' queued by 'POST /pay' raised {type(error).__name__}."
    )
    assert record.exc_info is not None
    assert record.exc_info[1] is error


def test_finished_callbacks_are_freed_while_the_chain_runs() -> None:
    import weakref

    class Payload:
        pass

    alive: list[bool] = []

    def view(environ: WSGIEnvironment) -> None:
        payload = Payload()
        ref = weakref.ref(payload)
        after(lambda p: None, payload)
        after(lambda: alive.append(ref() is not None))
        del payload

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert alive == [False]


def test_a_function_returning_an_awaitable_runs_it() -> None:
    ran: list[str] = []

    class Later:
        def __await__(self) -> t.Generator[None, None, None]:
            ran.append("awaited")
            return
            yield

    def view(environ: WSGIEnvironment) -> None:
        after(Later)

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert ran == ["awaited"]


def test_a_forged_path_cannot_forge_a_log_line(
    runner: ThreadRunner, log: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise ValueError("x")

    def view(environ: WSGIEnvironment) -> None:
        after(broken)

    path = "/caf\xc3\xa9\r\n2026-01-01 ERROR forged"  # WSGI's latin-1 form of UTF-8 bytes
    serve(AfterMiddleware(text_app(view), runner=runner), path)
    assert runner.wait_idle(TIMEOUT)
    [message] = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert "\n" not in message
    assert "\r" not in message
    assert "'GET /café\\r\\n2026-01-01 ERROR forged'" in message


def test_a_scope_is_entered_around_each_callback_while_events_are_observed(
    log: pytest.LogCaptureFixture,
) -> None:
    # With a listener the callbacks run through the observed path: the scope must
    # still be entered, and after() from its teardown still be ignored.
    entered: list[str] = []
    got: list[events.CallbackEvent] = []

    @contextlib.contextmanager
    def scope() -> t.Iterator[None]:
        entered.append("enter")
        request_id.set("in-scope")
        yield
        entered.append("exit")
        after(print)  # from teardown: ignored

    def callback(a: int, b: int, *, c: int) -> None:
        entered.append(f"{request_id.get()} {a} {b} {c}")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        chain = current_chain()
        assert chain is not None
        chain.scope = scope
        after(callback, 1, 2, c=3)
        after(callback, 4, 5, c=6)
        start_response("200 OK", [])
        return [b""]

    events.subscribe(got.append)
    try:
        serve(AfterMiddleware(app, runner=InlineRunner()), "/scoped")
    finally:
        events.unsubscribe(got.append)
    assert entered == ["enter", "in-scope 1 2 3", "exit", "enter", "in-scope 4 5 6", "exit"]
    kinds = ["queued", "queued", "started", "finished", "started", "finished"]
    assert [e.kind for e in got] == kinds
    assert [r.levelname for r in log.records] == ["DEBUG"]  # the ignored after(), once


def test_a_failed_callbacks_run_time_is_measured(log: pytest.LogCaptureFixture) -> None:
    got: list[events.CallbackEvent] = []

    def view(environ: WSGIEnvironment) -> None:
        after(int, "x")

    events.subscribe(got.append)
    try:
        serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    finally:
        events.unsubscribe(got.append)
    [failed] = [e for e in got if e.kind == "failed"]
    assert failed.run_time is not None
    assert 0 <= failed.run_time < TIMEOUT
    assert type(failed.error) is ValueError


def test_calling_a_chain_tells_whether_every_callback_succeeded(
    log: pytest.LogCaptureFixture,
) -> None:
    runner = Returns()

    def good(environ: WSGIEnvironment) -> None:
        after(print, end="")

    def bad(environ: WSGIEnvironment) -> None:
        after(int, "x")
        after(print, end="")

    serve(AfterMiddleware(text_app(good), runner=runner))
    serve(AfterMiddleware(text_app(bad), runner=runner))
    assert runner.results == [True, False]  # an ordinary error is logged, not raised


def test_an_interrupt_is_passed_on_even_when_later_callbacks_fail(
    log: pytest.LogCaptureFixture,
) -> None:
    runner = Returns()
    ran: list[str] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    def view(environ: WSGIEnvironment) -> None:
        after(interrupt)
        after(int, "x")
        after(ran.append, "last")

    serve(AfterMiddleware(text_app(view), runner=runner))
    assert ran == ["last"]
    [raised] = runner.results
    assert type(raised) is KeyboardInterrupt


def test_keyword_arguments_reach_the_callback() -> None:
    got: list[object] = []

    def callback(*args: object, **kwargs: object) -> None:
        got.append((args, kwargs))

    def view(environ: WSGIEnvironment) -> None:
        after(callback, 1, key="value")

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert got == [((1,), {"key": "value"})]


def test_a_callback_returning_an_async_generator_is_logged(
    log: pytest.LogCaptureFixture,
) -> None:
    async def agen() -> t.AsyncIterator[int]:
        yield 1

    def returns_agen() -> object:
        return agen()

    def view(environ: WSGIEnvironment) -> None:
        after(returns_agen)

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == (
        "'tests.test_execute.test_a_callback_returning_an_async_generator_is_logged.<locals>"
        ".returns_agen' returned an async generator, which cannot be run to completion."
        " Queue a coroutine function instead."
    )


def test_a_callable_whose_call_makes_a_generator_is_logged(
    log: pytest.LogCaptureFixture,
) -> None:
    # after() refuses a generator function at the call; an object whose __call__ is one
    # passes that check, and its body would never run: a failure, not a silent success.
    ran: list[str] = []

    class Lazy:
        def __call__(self) -> t.Iterator[None]:
            ran.append("body")
            yield

    def view(environ: WSGIEnvironment) -> None:
        after(Lazy())

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert ran == []
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.exc_info is not None
    assert str(record.exc_info[1]).endswith(
        "returned a generator, whose body never runs. Queue a plain function (no 'yield')."
    )


def test_a_failures_log_line_carries_the_requests_context(
    runner: ThreadRunner, log: pytest.LogCaptureFixture
) -> None:
    # Logged inside the callback's context: structured-logging filters and trace
    # correlation that read context variables see the request's values.
    class RequestId(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.request_id = request_id.get()
            return True

    def broken() -> None:
        raise ValueError("x")

    def view(environ: WSGIEnvironment) -> None:
        request_id.set("req-42")
        after(broken)

    logging.getLogger("wsgi_after").addFilter(request_id_filter := RequestId())
    try:
        serve(AfterMiddleware(text_app(view), runner=runner))
        assert runner.wait_idle(5)
    finally:
        logging.getLogger("wsgi_after").removeFilter(request_id_filter)
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.request_id == "req-42"  # type: ignore[attr-defined]


def test_awaitables_run_to_completion_inside_a_scope(log: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []
    entered: list[str] = []

    @contextlib.contextmanager
    def scope() -> t.Iterator[None]:
        entered.append("scope")
        yield

    async def job(name: str) -> None:
        ran.append(name)

    def returns_coroutine() -> object:
        return job("returned")

    async def agen() -> t.AsyncIterator[int]:
        yield 1

    def returns_agen() -> object:
        return agen()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        chain = current_chain()
        assert chain is not None
        chain.scope = scope
        after(job("object"))
        after(returns_coroutine)
        after(job, "function")
        after(returns_agen)
        start_response("200 OK", [])
        return [b""]

    serve(AfterMiddleware(app, runner=InlineRunner()))
    assert ran == ["object", "returned", "function"]
    assert entered == ["scope"] * 4
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.exc_info is not None
    assert str(record.exc_info[1]).startswith(
        "'tests.test_execute.test_awaitables_run_to_completion_inside_a_scope.<locals>"
        ".returns_agen' returned an async generator"
    )


def test_a_failure_is_logged_while_events_are_observed(log: pytest.LogCaptureFixture) -> None:
    got: list[events.CallbackEvent] = []

    def view(environ: WSGIEnvironment) -> None:
        after(int, "x")

    events.subscribe(got.append)
    try:
        serve(AfterMiddleware(text_app(view), runner=InlineRunner()), "/observed")
    finally:
        events.unsubscribe(got.append)
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert (
        record.getMessage()
        == "Callback 'builtins.int' queued by 'GET /observed' raised ValueError."
    )
    assert [e.kind for e in got] == ["queued", "started", "failed"]


def test_a_received_request_runs_its_callbacks_as_a_chain_does(
    log: pytest.LogCaptureFixture,
) -> None:
    # The Celery worker's and Django's late after_commit requests: the same function
    # runs them, awaiting coroutine functions and logging a failure by name.
    seen: list[object] = []

    async def awaited() -> None:
        seen.append("awaited")

    def fails() -> None:
        raise ValueError("no")

    request = Received({"REQUEST_METHOD": "POST", "PATH_INFO": "/late"}, "201 Created")
    for func, args in ((awaited, ()), (fails, ()), (seen.append, ("last",))):
        request.callbacks.append(Callback(func, args, {}, contextvars.copy_context()))
    assert request.outcome() == Outcome(201, True, None)
    assert request() is False
    assert seen == ["awaited", "last"]
    assert log.messages == [
        "Callback 'tests.test_execute.test_a_received_request_runs_its_callbacks_as_a_chain"
        "_does.<locals>.fails' queued by 'POST /late' raised ValueError."
    ]
    assert request.callbacks == []
    assert request.environ is None  # released once run


def test_a_received_request_keeps_what_it_was_given_and_takes_nested_callbacks() -> None:
    # What the Celery worker and Django's late after_commit give a Received request: the
    # outcome, the scope entered around each callback, a name for log lines; a callback
    # may queue another (after() finds the request in its context), which runs after it.
    from wsgi_after._context import CURRENT

    error = ValueError("the view failed")
    scoped: list[str] = []

    @contextlib.contextmanager
    def scope() -> t.Iterator[None]:
        scoped.append("enter")
        yield

    seen: list[object] = []
    events_seen: list[events.CallbackEvent] = []
    request = Received(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/"},
        "500 Internal Server Error",
        completed=False,
        error=error,
        scope=scope,
        description="a late commit",
    )

    def first() -> None:
        seen.append(outcome())
        after(seen.append, "nested")

    context = contextvars.copy_context()
    context.run(CURRENT.set, request)
    request.callbacks.append(Callback(first, (), {}, context))
    assert request.describe() == "a late commit"
    assert request.callback_names() == [
        "tests.test_execute.test_a_received_request_keeps_what_it_was_given_and_takes_nested"
        "_callbacks.<locals>.first"
    ]
    events.subscribe(events_seen.append)
    try:
        assert request() is True
    finally:
        events.unsubscribe(events_seen.append)
    assert seen == [Outcome(500, False, error), "nested"]
    assert scoped == ["enter", "enter"]
    # The nested after() is queued while the first callback runs.
    kinds = ["started", "queued", "finished", "started", "finished"]
    assert [e.kind for e in events_seen] == kinds
    assert all(e.queue_delay is None for e in events_seen)  # never closed here: no delay
