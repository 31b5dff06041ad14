"""after(), outcome() and the chain: registration rules, order, errors, contexts."""

from __future__ import annotations

import contextvars
import threading
import typing as t

import pytest

from tests.helpers import call, serve
from wsgi_after import (
    AfterMiddleware,
    InlineRunner,
    Outcome,
    OutsideRequestError,
    ThreadRunner,
    after,
    outcome,
)

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def text_app(
    view: t.Callable[[WSGIEnvironment], object],
) -> t.Callable[[WSGIEnvironment, StartResponse], list[bytes]]:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        view(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def test_outside_request_raises_with_the_fix() -> None:
    with pytest.raises(OutsideRequestError) as info:
        after(print)
    assert str(info.value) == (
        "'after()' was called outside a request handled by 'AfterMiddleware'."
        " Wrap the WSGI app with 'AfterMiddleware' (Flask: 'After(app)'); in a"
        " thread started by the view, run the thread's function in a copy of the"
        " request's context: 'contextvars.copy_context().run(func)'."
    )
    assert isinstance(info.value, RuntimeError)


def test_not_callable_raises_type_error() -> None:
    def view(environ: WSGIEnvironment) -> None:
        after(42)  # type: ignore[call-overload]

    message = r"^'after\(\)' needs a callable or a coroutine, got 'int'\.$"
    with pytest.raises(TypeError, match=message):
        serve(AfterMiddleware(text_app(view), runner=InlineRunner()))


def test_not_callable_raises_before_outside_request() -> None:
    with pytest.raises(TypeError):
        after("not callable")  # type: ignore[call-overload]


def test_coroutine_object_with_arguments_is_refused() -> None:
    async def job() -> None:
        pass

    def view(environ: WSGIEnvironment) -> None:
        coro = job()
        try:
            after(coro, 1)  # type: ignore[call-overload]
        finally:
            coro.close()

    with pytest.raises(TypeError, match="got arguments for a coroutine object"):
        serve(AfterMiddleware(text_app(view), runner=InlineRunner()))


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
    assert runner.wait_idle(5)
    assert [i for _, i in ran] == [0, 1, 2, 3, 4]
    assert len(submitted) == 1
    assert len({name for name, _ in ran}) == 1
    assert ran[0][0].startswith("test-runner-")


def test_requests_run_concurrently(runner: ThreadRunner) -> None:
    barrier = threading.Barrier(2, timeout=5)
    passed: list[bool] = []

    def meet() -> None:
        barrier.wait()
        passed.append(True)

    app = AfterMiddleware(text_app(lambda environ: after(meet)), runner=runner)
    serve(app)
    serve(app)
    assert runner.wait_idle(5)
    assert passed == [True, True]


def test_nothing_is_submitted_without_callbacks() -> None:
    submitted: list[object] = []

    class Recorder:
        def submit(self, fn: t.Callable[[], object]) -> None:
            submitted.append(fn)

    serve(AfterMiddleware(text_app(lambda environ: None), runner=Recorder()))
    assert submitted == []


def test_decorator_form_queues_and_returns_the_function() -> None:
    ran: list[str] = []
    kept: list[object] = []

    def view(environ: WSGIEnvironment) -> None:
        @after
        def audit() -> None:
            ran.append("audit")

        kept.append(audit)

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert ran == ["audit"]
    assert callable(kept[0])
    assert kept[0].__name__ == "audit"  # type: ignore[attr-defined]


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
    assert runner.wait_idle(5)
    assert ran == ["first", "last"]
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.name == "wsgi_after"
    assert record.getMessage() == (
        "Callback 'tests.test_chain.test_failing_callback_is_logged_by_name_and_the_rest_run"
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


def test_nested_after_runs_after_current_and_before_the_end() -> None:
    ran: list[str] = []

    def outer() -> None:
        ran.append("outer")
        after(ran.append, "nested")

    def view(environ: WSGIEnvironment) -> None:
        after(outer)
        after(ran.append, "second")

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert ran == ["outer", "second", "nested"]


def test_after_from_a_streaming_body() -> None:
    ran: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"a"
        after(ran.append, "from the body")
        yield b"b"

    response = serve(AfterMiddleware(app, runner=InlineRunner()))
    assert response.body == b"ab"
    assert ran == ["from the body"]


def test_after_refused_once_the_response_is_closed() -> None:
    errors: list[BaseException] = []

    def late() -> None:
        pass

    app = AfterMiddleware(text_app(lambda environ: after(late)), runner=InlineRunner())
    serve(app)
    try:
        after(late)
    except OutsideRequestError as e:
        errors.append(e)
    assert len(errors) == 1


def test_contextvars_snapshot_flows_in_and_changes_do_not_leak(runner: ThreadRunner) -> None:
    seen: list[tuple[str, str]] = []

    def callback(expected: str) -> None:
        seen.append((expected, request_id.get()))
        request_id.set("changed-by-callback")

    def view(environ: WSGIEnvironment) -> None:
        rid = environ["PATH_INFO"].strip("/")
        request_id.set(rid)
        after(callback, rid)
        after(callback, rid)

    app = AfterMiddleware(text_app(view), runner=runner)
    for i in range(20):
        serve(app, f"/r{i}")
    assert runner.wait_idle(5)
    assert len(seen) == 40
    assert all(expected == got for expected, got in seen)


def test_outcome_reports_status_and_completion() -> None:
    seen: list[Outcome | None] = []

    def view(environ: WSGIEnvironment) -> None:
        after(lambda: seen.append(outcome()))
        seen.append(outcome())  # in the view: not a callback

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        view(environ)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"missing"]

    serve(AfterMiddleware(app, runner=InlineRunner()))
    assert seen == [None, Outcome(404, True, None)]
    assert outcome() is None


def test_outcome_when_start_response_was_never_called() -> None:
    seen: list[Outcome | None] = []
    error = RuntimeError("before start_response")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(lambda: seen.append(outcome()))
        raise error

    with pytest.raises(RuntimeError):
        call(AfterMiddleware(app, runner=InlineRunner()))
    assert seen == [Outcome(None, False, error)]
