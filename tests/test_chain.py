"""after(), outcome() and the chain: registration rules, order, errors, contexts."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import gc
import inspect
import io
import logging
import sys
import threading
import typing as t
import wsgiref.util

import pytest

from tests.helpers import TIMEOUT, call, make_environ, serve
from wsgi_after import (
    AfterMiddleware,
    InlineRunner,
    Outcome,
    OutsideRequestError,
    ThreadRunner,
    after,
    current_chain,
    events,
    outcome,
)
from wsgi_after._context import CURRENT

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

    with pytest.raises(TypeError) as info:
        serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert str(info.value) == (
        "'after()' got arguments for a coroutine object. Pass the coroutine"
        " function and its arguments instead: 'after(func, *args)'."
    )


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
    assert runner.wait_idle(TIMEOUT)
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
    assert runner.wait_idle(TIMEOUT)
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


# --- Hardening (issue 9): nothing accepted is lost silently --------------------------


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
        "Callback 'tests.test_chain.test_a_base_exception_in_a_callback_is_logged_by_name"
        f"_and_the_rest_run.<locals>.stops' queued by 'POST /pay' raised {type(error).__name__}."
    )
    assert record.exc_info is not None
    assert record.exc_info[1] is error


def test_a_response_never_closed_logs_its_callbacks_by_name(log: pytest.LogCaptureFixture) -> None:
    import gc

    ran: list[str] = []

    def view(environ: WSGIEnvironment) -> None:
        after(ran.append, "never")

    def serve_without_close() -> None:  # a gateway that never calls close()
        iterable = call(
            AfterMiddleware(text_app(view), runner=InlineRunner()), make_environ("/lost")
        )
        assert b"".join(iterable) == b"ok"

    # In a context of its own, as a gateway's thread or task: this one keeps nothing.
    contextvars.copy_context().run(serve_without_close)
    gc.collect()  # the chain and its environ refer to each other until the chain is done
    assert ran == []  # not run: nobody knows the response was sent
    [message] = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert message.startswith(
        "Callback 'list.append' queued by 'GET /lost' was not run: the server never called"
        " close() on the response (PEP 3333)"
    )


def test_after_from_a_thread_with_the_requests_context_lands_or_raises() -> None:
    # Each round: a thread that copied the request's context races the server's
    # close(). Every after() that returned must have run, and none may run twice.
    runner = InlineRunner()
    rounds = 300
    outcomes: list[str] = []
    for i in range(rounds):
        ran: list[int] = []
        ready = threading.Barrier(2, timeout=TIMEOUT)
        result: list[str] = []

        def racer(
            ran: list[int] = ran,
            result: list[str] = result,
            i: int = i,
            ready: threading.Barrier = ready,
        ) -> None:
            ready.wait()
            try:
                after(ran.append, i)
            except OutsideRequestError:
                result.append("refused")
            else:
                result.append("accepted")

        threads: list[threading.Thread] = []

        def app(
            environ: WSGIEnvironment,
            start_response: StartResponse,
            threads: list[threading.Thread] = threads,
            racer: t.Callable[[], None] = racer,
        ) -> list[bytes]:
            ctx = contextvars.copy_context()
            threads.append(threading.Thread(target=ctx.run, args=(racer,)))
            threads[0].start()
            start_response("200 OK", [])
            return [b"ok"]

        iterable = call(AfterMiddleware(app, runner=runner))
        ready.wait()
        iterable.close()
        threads[0].join(TIMEOUT)
        assert result, "the racing thread did not finish"
        # accepted means it ran (inline, in close()); refused means it did not.
        assert ran == ([i] if result == ["accepted"] else []), (result, ran)
        outcomes.append(result[0])
    assert set(outcomes) <= {"accepted", "refused"}
    assert len(outcomes) == rounds


def test_after_once_the_response_closed_says_so(runner: ThreadRunner) -> None:
    kept: list[contextvars.Context] = []

    def view(environ: WSGIEnvironment) -> None:
        kept.append(contextvars.copy_context())

    serve(AfterMiddleware(text_app(view), runner=runner), "/done")
    with pytest.raises(OutsideRequestError) as info:
        kept[0].run(after, print)
    assert str(info.value) == (
        "'after()' was called for 'a finished request' after its response was closed and"
        " its callbacks handed to the runner. Call 'after()' before the response is"
        " closed: in the view, or while the server iterates its body."
    )


def test_the_current_chain_is_reset_when_the_response_closes(runner: ThreadRunner) -> None:
    seen: list[object] = []

    def view(environ: WSGIEnvironment) -> None:
        seen.append(current_chain())

    serve(AfterMiddleware(text_app(view), runner=runner))
    assert seen[0] is not None
    assert current_chain() is None
    assert CURRENT.get() is None  # this thread keeps nothing of the request


def test_a_callback_that_queues_itself_stops_at_max_callbacks(
    log: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    def again() -> None:
        runs.append(1)
        after(again)

    def view(environ: WSGIEnvironment) -> None:
        after(again)

    serve(AfterMiddleware(text_app(view), runner=InlineRunner(), max_callbacks=50), "/loop")
    assert len(runs) == 50
    [message] = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert message == (
        "Refused 'after(tests.test_chain.test_a_callback_that_queues_itself_stops_at_max"
        "_callbacks.<locals>.again)' inside a callback for 'GET /loop': the request already"
        " queued 50 callbacks (max_callbacks); this and further ones are not run."
    )


def test_after_past_max_callbacks_raises_in_the_request() -> None:
    def view(environ: WSGIEnvironment) -> None:
        for _ in range(4):
            after(print)

    with pytest.raises(RuntimeError) as info:
        serve(AfterMiddleware(text_app(view), runner=InlineRunner(), max_callbacks=3), "/x")
    assert str(info.value) == (
        "'after()' was called more than 3 times for 'GET /x'. Queue fewer callbacks (one"
        " that loops over the items), or raise 'AfterMiddleware(max_callbacks=...)'."
    )


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


def test_after_from_the_teardown_of_a_callbacks_scope_does_not_loop(
    log: pytest.LogCaptureFixture,
) -> None:
    runs: list[str] = []

    @contextlib.contextmanager
    def scope() -> t.Iterator[None]:
        yield
        after(runs.append, "from teardown")  # like Flask's teardown_request

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        chain = current_chain()
        assert chain is not None
        chain.scope = scope
        after(runs.append, "callback")
        start_response("200 OK", [])
        return [b""]

    serve(AfterMiddleware(app, runner=InlineRunner()), "/t")
    assert runs == ["callback"]
    assert [r.getMessage() for r in log.records if r.levelno >= logging.DEBUG] == [
        "Ignored 'after(list.append)' from the teardown of a callback's context for 'GET /t':"
        " teardown runs after every callback, so it would queue itself for ever."
    ]


def test_outcome_reports_the_status_the_client_got() -> None:
    seen: list[Outcome | None] = []
    sent: list[str] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Any:
        if exc_info is not None and sent:
            raise exc_info[1].with_traceback(exc_info[2])  # PEP 3333: headers already sent
        sent.append(status)
        return lambda data: None

    def body(start: t.Callable[..., t.Any]) -> t.Iterator[bytes]:
        yield b"partial"
        try:
            raise ValueError("late")
        except ValueError:
            start("500 Internal Server Error", [], sys.exc_info())

    def app(environ: WSGIEnvironment, start: StartResponse) -> t.Iterable[bytes]:
        after(lambda: seen.append(outcome()))
        start("200 OK", [])
        return body(start)

    iterable = call(AfterMiddleware(app, runner=InlineRunner()), start_response=start_response)
    with pytest.raises(ValueError, match="late"):
        b"".join(iterable)
    iterable.close()
    assert seen[0] is not None
    assert seen[0].status == 200


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


def test_an_async_generator_function_is_refused() -> None:
    async def stream() -> t.AsyncIterator[int]:
        yield 1

    def view(environ: WSGIEnvironment) -> None:
        after(stream)

    with pytest.raises(TypeError) as info:
        serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert str(info.value) == (
        "'after()' cannot run the async generator function 'tests.test_chain.test_an_async"
        "_generator_function_is_refused.<locals>.stream' to completion. Queue a coroutine"
        " function ('async def' with no 'yield')."
    )


def test_a_refused_coroutine_object_is_closed() -> None:
    async def job() -> None:
        pass

    coro = job()
    with pytest.raises(TypeError):
        after(coro, 1)  # type: ignore[call-overload]
    assert inspect.getcoroutinestate(coro) == "CORO_CLOSED"  # no "never awaited" later

    coro = job()
    with pytest.raises(OutsideRequestError):
        after(coro)
    assert inspect.getcoroutinestate(coro) == "CORO_CLOSED"


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


def test_after_is_refused_while_the_chain_waits_in_the_queue() -> None:
    # Between close() and the worker taking it the chain is QUEUED: an after() then
    # (from a thread holding the request's context) must raise, never be accepted
    # into a chain whose callbacks may already be running elsewhere.
    busy, release = threading.Event(), threading.Event()
    runner = ThreadRunner(max_workers=1, drain_timeout=TIMEOUT)
    runner.submit(lambda: hold(busy, release))
    assert busy.wait(TIMEOUT)
    kept: list[contextvars.Context] = []
    ran: list[str] = []

    def view(environ: WSGIEnvironment) -> None:
        after(ran.append, "queued")
        kept.append(contextvars.copy_context())

    serve(AfterMiddleware(text_app(view), runner=runner), "/queued")
    assert runner.stats().queued == 1
    with pytest.raises(OutsideRequestError) as info:
        kept[0].run(after, ran.append, "late")
    assert str(info.value).startswith(
        "'after()' was called for 'GET /queued' after its response was closed"
    )
    release.set()
    assert runner.wait_idle(TIMEOUT)
    assert ran == ["queued"]
    runner.shutdown(TIMEOUT)


def test_a_dropped_chains_coroutines_are_closed() -> None:
    # Dropped (queue full): the coroutine objects never run, and are closed at once,
    # so that no "coroutine was never awaited" warning comes later.
    busy, release = threading.Event(), threading.Event()
    runner = ThreadRunner(max_workers=1, max_pending=1, on_full="drop", drain_timeout=TIMEOUT)
    runner.submit(lambda: hold(busy, release))
    assert busy.wait(TIMEOUT)
    runner.submit(lambda: None)  # fills the queue
    coros: list[t.Coroutine[t.Any, t.Any, None]] = []

    async def job() -> None:
        pass

    def view(environ: WSGIEnvironment) -> None:
        coros.append(job())
        after(coros[0])

    serve(AfterMiddleware(text_app(view), runner=runner), "/dropped")
    assert runner.stats().dropped == 1
    assert inspect.getcoroutinestate(coros[0]) == "CORO_CLOSED"
    release.set()
    assert runner.wait_idle(TIMEOUT)
    runner.shutdown(TIMEOUT)


def hold(busy: threading.Event, release: threading.Event) -> None:
    """Keep a runner's worker busy until ``release`` is set."""
    busy.set()
    release.wait(TIMEOUT)


def test_each_refusal_inside_callbacks_is_logged_once_per_request(
    log: pytest.LogCaptureFixture,
) -> None:
    # Two callbacks, each refused past the cap and again from its scope's teardown:
    # one ERROR and one DEBUG line for the request, not one per callback.
    coros: list[t.Coroutine[t.Any, t.Any, None]] = []

    async def job() -> None:
        pass

    @contextlib.contextmanager
    def scope() -> t.Iterator[None]:
        yield
        after(print)  # from teardown: ignored

    def over_the_cap() -> None:
        coros.append(job())
        after(coros[-1])  # refused: the coroutine is closed, never left pending

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        chain = current_chain()
        assert chain is not None
        chain.scope = scope
        after(over_the_cap)
        after(over_the_cap)
        start_response("200 OK", [])
        return [b""]

    serve(AfterMiddleware(app, runner=InlineRunner(), max_callbacks=2), "/cap")
    assert [(r.levelname, r.getMessage()[:15]) for r in log.records] == [
        ("ERROR", "Refused 'after("),
        ("DEBUG", "Ignored 'after("),
    ]
    assert [inspect.getcoroutinestate(c) for c in coros] == ["CORO_CLOSED"] * 2


def test_the_chain_is_current_in_its_callbacks_only_while_they_run() -> None:
    kept: list[contextvars.Context] = []
    seen: list[object] = []

    def callback() -> None:
        seen.append(current_chain())
        kept.append(contextvars.copy_context())

    def view(environ: WSGIEnvironment) -> None:
        seen.append(current_chain())
        after(callback)

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert seen[0] is not None
    assert seen == [seen[0], seen[0]]  # the request's chain, in the view and the callback
    # Afterwards, in the same thread, with the callback's own context: nothing.
    assert kept[0].run(current_chain) is None
    assert kept[0].run(outcome) is None


class FailingFutures:
    """An executor-like runner whose futures report ``error`` (after running the task,
    when ``run``)."""

    def __init__(self, error: BaseException, run: bool = False) -> None:
        self.error = error
        self.run = run

    def submit(self, fn: t.Callable[[], object]) -> concurrent.futures.Future[object]:
        if self.run:
            fn()
        future: concurrent.futures.Future[object] = concurrent.futures.Future()
        future.set_exception(self.error)
        return future


def test_an_error_a_future_reports_is_logged_with_it(log: pytest.LogCaptureFixture) -> None:
    error = OSError("executor broke")

    def view(environ: WSGIEnvironment) -> None:
        after(print, end="")

    serve(AfterMiddleware(text_app(view), runner=FailingFutures(error)), "/f")
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.getMessage() == (
        "Callbacks ['builtins.print'] queued by 'GET /f': the executor reported an error."
    )
    assert record.exc_info is not None
    assert record.exc_info[1] is error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(1)], ids=["KI", "exit"])
def test_an_interrupt_a_future_reports_is_not_logged_again(
    error: BaseException, log: pytest.LogCaptureFixture
) -> None:
    # The chain logged the callback that raised it; the executor only passes it on.
    ran: list[str] = []

    def view(environ: WSGIEnvironment) -> None:
        after(ran.append, "x")

    serve(AfterMiddleware(text_app(view), runner=FailingFutures(error, run=True)))
    assert ran == ["x"]
    assert [r for r in log.records if r.levelname == "ERROR"] == []


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


class Returns:
    """A runner that calls each chain at once and keeps what it returned or raised."""

    def __init__(self) -> None:
        self.results: list[object] = []

    def submit(self, fn: t.Callable[[], object]) -> None:
        try:
            self.results.append(fn())
        except BaseException as e:  # the test looks at it
            self.results.append(e)


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
        "'tests.test_chain.test_a_callback_returning_an_async_generator_is_logged.<locals>"
        ".returns_agen' returned an async generator, which cannot be run to completion."
        " Queue a coroutine function instead."
    )


class Refuses:
    """A runner whose ``submit`` raises (a full or closed executor)."""

    def submit(self, fn: t.Callable[[], object]) -> None:
        raise RuntimeError("cannot schedule new futures after shutdown")

    def __repr__(self) -> str:
        return "<Refuses>"


def test_a_runner_that_refuses_a_chain_is_logged_and_close_goes_on(
    log: pytest.LogCaptureFixture,
) -> None:
    coros: list[t.Coroutine[t.Any, t.Any, None]] = []

    async def job() -> None:
        pass

    def view(environ: WSGIEnvironment) -> None:
        coros.append(job())
        after(coros[0])
        after(print)

    response = serve(AfterMiddleware(text_app(view), runner=Refuses()), "/refused")
    assert response.body == b"ok"  # close() did not raise into the server
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.exc_info is not None
    assert type(record.exc_info[1]) is RuntimeError  # the runner's error, with its traceback
    assert record.getMessage().startswith("Callbacks [")
    assert record.getMessage().endswith(
        "'builtins.print'] queued by 'GET /refused' were not run: <Refuses> refused them."
    )
    assert inspect.getcoroutinestate(coros[0]) == "CORO_CLOSED"


class Deferred:
    """A runner that keeps each chain, to be run later by the test."""

    def __init__(self) -> None:
        self.tasks: list[t.Callable[[], object]] = []

    def submit(self, fn: t.Callable[[], object]) -> None:
        self.tasks.append(fn)


def test_callbacks_see_their_request_after_the_server_reused_its_environ() -> None:
    runner = Deferred()
    seen: list[tuple[str, str]] = []

    def callback() -> None:
        chain = current_chain()
        assert chain is not None
        seen.append(chain.method_and_path())

    def view(environ: WSGIEnvironment) -> None:
        after(callback)

    environ = make_environ("/first", "POST")
    serve(AfterMiddleware(text_app(view), runner=runner), environ=environ)
    environ.clear()  # uWSGI clears and reuses its environ once close() returned
    environ.update(make_environ("/second"))
    [task] = runner.tasks
    assert task() is True
    assert seen == [("POST", "/first")]


def test_a_request_that_queued_nothing_never_takes_the_hand_over_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import wsgi_after._chain
    import wsgi_after._context

    taken: list[str] = []

    class CountingLock:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def acquire(self) -> bool:
            taken.append("taken")
            return self.lock.acquire()

        def release(self) -> None:
            self.lock.release()

        def __enter__(self) -> None:
            self.acquire()

        def __exit__(self, *exc_info: object) -> None:
            self.release()

    lock = CountingLock()  # after() and on_close() share it
    monkeypatch.setattr(wsgi_after._context, "handover", lock)
    monkeypatch.setattr(wsgi_after._chain, "handover", lock)
    app = AfterMiddleware(text_app(lambda environ: None), runner=InlineRunner())
    serve(app)
    assert taken == []
    serve(AfterMiddleware(text_app(lambda environ: after(print, end="")), runner=InlineRunner()))
    assert taken == ["taken", "taken"]  # after(), then close() waits for any after()


def test_a_closed_request_keeps_none_of_its_objects() -> None:
    # Once closed (no callbacks) or run (callbacks), the chain drops the request's
    # environ, scope, error and file: the public fields say so.
    runner = Returns()
    chains: list[t.Any] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        chains.append(environ["wsgi_after.chain"])
        if environ["PATH_INFO"] == "/queues":
            after(print, end="")
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"x"))

    middleware = AfterMiddleware(app, runner=runner)
    for path in ("/nothing", "/queues"):
        environ = make_environ(path, extra={"wsgi.file_wrapper": wsgiref.util.FileWrapper})
        response = call(middleware, environ)
        assert b"".join(response) == b"x"
        response.close()
    assert runner.results == [True]
    for chain in chains:
        assert (chain.environ, chain.scope, chain.error, chain.file_response) == (None,) * 4
        assert chain.describe() == "a finished request"
        assert chain.outcome() == Outcome(200, True, None)


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


class Checks:
    """A runner that checks each callback in after(), as CeleryRunner does."""

    def __init__(self) -> None:
        self.checked: list[tuple[object, tuple[object, ...], dict[str, object]]] = []

    def submit(self, fn: t.Callable[[], object]) -> None:
        fn()

    def check_callback(
        self, func: object, args: tuple[object, ...], kwargs: dict[str, t.Any]
    ) -> None:
        self.checked.append((func, args, kwargs))
        if args == ("bad",):
            raise TypeError("cannot take 'bad'")


def test_a_runners_check_sees_each_callback_and_can_refuse_it() -> None:
    runner = Checks()
    ran: list[object] = []

    def view(environ: WSGIEnvironment) -> None:
        after(ran.append, "good")
        with pytest.raises(TypeError, match="cannot take 'bad'"):
            after(ran.append, "bad")

    serve(AfterMiddleware(text_app(view), runner=runner))
    assert runner.checked == [(ran.append, ("good",), {}), (ran.append, ("bad",), {})]
    assert ran == ["good"]


def test_after_returns_the_function_and_none_for_a_coroutine() -> None:
    returned: list[object] = []

    async def job() -> None:
        pass

    def refused_inside() -> None:  # past max_callbacks: refused, logged, still returns
        returned.append(after(print))
        returned.append(after(job()))

    def view(environ: WSGIEnvironment) -> None:
        returned.append(after(refused_inside))
        returned.append(after(job()))

    serve(AfterMiddleware(text_app(view), runner=InlineRunner(), max_callbacks=2))
    assert returned == [refused_inside, None, print, None]


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
        "'tests.test_chain.test_awaitables_run_to_completion_inside_a_scope.<locals>"
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


def test_after_in_a_finished_callbacks_context_in_the_same_thread_is_refused() -> None:
    kept: list[contextvars.Context] = []

    def callback() -> None:
        kept.append(contextvars.copy_context())

    def view(environ: WSGIEnvironment) -> None:
        after(callback)

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))  # ran in this thread
    with pytest.raises(OutsideRequestError, match="after its response was closed"):
        kept[0].run(after, print)


class Forgets:
    """A runner that takes a chain and never runs it (its own business, not a leak)."""

    def submit(self, fn: t.Callable[[], object]) -> None:
        pass


def test_a_closed_chain_freed_unrun_is_not_called_never_closed(
    log: pytest.LogCaptureFixture,
) -> None:
    def view(environ: WSGIEnvironment) -> None:
        after(print)

    serve(AfterMiddleware(text_app(view), runner=Forgets()))
    gc.collect()
    assert [r for r in log.records if r.levelname == "ERROR"] == []


class RunsThenFails(concurrent.futures.Executor):
    """An executor whose thread runs the chain before submit() returns, then fails."""

    def submit(
        self, fn: t.Any, /, *args: t.Any, **kwargs: t.Any
    ) -> concurrent.futures.Future[t.Any]:
        fn()
        future: concurrent.futures.Future[t.Any] = concurrent.futures.Future()
        future.set_exception(OSError("executor broke"))
        return future


def test_an_executors_error_names_callbacks_that_already_ran(
    log: pytest.LogCaptureFixture,
) -> None:
    def view(environ: WSGIEnvironment) -> None:
        after(print, end="")

    serve(AfterMiddleware(text_app(view), runner=RunsThenFails()), "/early")
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.getMessage() == (
        "Callbacks ['builtins.print'] queued by 'GET /early': the executor reported an error."
    )


class SizedBody:
    """A body with ``len()`` whose iteration runs app code: it queues a callback."""

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> t.Iterator[bytes]:
        after(print, "sent")
        yield b"ok"


def test_a_sized_body_that_queues_keeps_len_and_is_reported_if_never_closed(
    log: pytest.LogCaptureFixture,
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> SizedBody:
        start_response("200 OK", [])
        return SizedBody()

    def serve_without_close() -> None:
        iterable = call(AfterMiddleware(app, runner=InlineRunner()), make_environ("/sized"))
        assert len(iterable) == 1
        assert b"".join(iterable) == b"ok"  # the first after() comes after wrap()
        assert len(iterable) == 1

    contextvars.copy_context().run(serve_without_close)
    gc.collect()
    [message] = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert message.startswith(
        "Callback 'builtins.print' queued by 'GET /sized' was not run: the server never"
        " called close() on the response (PEP 3333)"
    )


def test_only_a_chain_that_queued_has_a_finalizer() -> None:
    # A request that queues nothing pays for no __del__ when its chain is freed.
    chains: list[t.Any] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        if environ["PATH_INFO"] == "/queues":
            after(print, end="")
        chains.append(environ["wsgi_after.chain"])
        start_response("200 OK", [])
        return [b"ok"]

    middleware = AfterMiddleware(app, runner=InlineRunner())
    serve(middleware, "/nothing")
    serve(middleware, "/queues")
    quiet, queued = chains
    assert not hasattr(quiet, "__del__")
    assert hasattr(queued, "__del__")
    assert hasattr(type(quiet), "__len__")  # still the sized variant, as the body was
    assert hasattr(type(queued), "__len__")
