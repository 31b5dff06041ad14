"""The request API: after(), outcome(), current_chain(): registration rules and refusals."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import sys
import threading
import types
import typing as t

import pytest

from tests.helpers import TIMEOUT, call, hold, serve, text_app
from wsgi_after import (
    AfterMiddleware,
    InlineRunner,
    Outcome,
    OutsideRequestError,
    ThreadRunner,
    after,
    current_chain,
    outcome,
)
from wsgi_after._context import CURRENT

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def test_outside_request_raises_with_the_fix() -> None:
    with pytest.raises(OutsideRequestError) as info:
        after(print)
    assert str(info.value) == (
        "'after()' was called outside a request handled by 'AfterMiddleware'."
        " Wrap the WSGI app with 'AfterMiddleware' (Flask: 'After(app)'; Django:"
        " 'wsgi_after.django.AfterMiddleware' first in MIDDLEWARE); outside any"
        " request (a management command, the shell, a worker), call the function"
        " itself; in a thread started by the view, run the thread's function in a"
        " copy of the request's context: 'contextvars.copy_context().run(func)'."
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


def test_outcome_when_start_response_was_never_called_is_the_servers_500() -> None:
    seen: list[Outcome | None] = []
    error = RuntimeError("before start_response")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(lambda: seen.append(outcome()))
        raise error

    with pytest.raises(RuntimeError):
        call(AfterMiddleware(app, runner=InlineRunner()))
    assert seen == [Outcome(500, False, error)]  # the server answers 500 itself


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
        "Refused 'after(tests.test_context.test_a_callback_that_queues_itself_stops_at_max"
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


def test_an_async_generator_function_is_refused() -> None:
    async def stream() -> t.AsyncIterator[int]:
        yield 1

    def view(environ: WSGIEnvironment) -> None:
        after(stream)

    with pytest.raises(TypeError) as info:
        serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert str(info.value) == (
        "'after()' cannot run the async generator function 'tests.test_context.test_an_async"
        "_generator_function_is_refused.<locals>.stream' to completion. Queue a coroutine"
        " function ('async def' with no 'yield')."
    )


async def _stream(n: int) -> t.AsyncIterator[int]:
    yield n


def _lines(n: int) -> t.Iterator[int]:
    yield n


def _nested(func: t.Callable[..., object]) -> functools.partial[object]:
    """A partial that another partial keeps as it is (one with attributes is not flattened)."""
    inner = functools.partial(func)
    inner.note = "kept"  # type: ignore[attr-defined]
    return inner


_STREAM = "tests.test_context._stream"
_LINES = "tests.test_context._lines"
_ASYNC_GENERATOR = " to completion. Queue a coroutine function ('async def' with no 'yield')."
_GENERATOR = (
    ": calling it only makes a generator, whose body would never run."
    " Queue a plain function (no 'yield')."
)


@pytest.mark.parametrize(
    ("func", "message"),
    [
        pytest.param(
            functools.partial(_stream, 1),
            f"'after()' cannot run the async generator function 'functools.partial({_STREAM})'"
            + _ASYNC_GENERATOR,
            id="async-generator-in-a-partial",
        ),
        pytest.param(
            functools.partial(_nested(_stream), 1),
            "'after()' cannot run the async generator function"
            f" 'functools.partial(functools.partial({_STREAM}))'" + _ASYNC_GENERATOR,
            id="async-generator-in-nested-partials",
        ),
        pytest.param(
            _lines,  # (refused before its missing argument matters)
            f"'after()' cannot run the generator function '{_LINES}'" + _GENERATOR,
            id="generator",
        ),
        pytest.param(
            functools.partial(_lines, 1),
            f"'after()' cannot run the generator function 'functools.partial({_LINES})'"
            + _GENERATOR,
            id="generator-in-a-partial",
        ),
    ],
)
def test_a_generator_function_is_refused_at_the_call_through_partials(
    func: t.Callable[..., object], message: str
) -> None:
    # Calling a generator function only makes a generator: the callback would be accepted
    # and never run. A partial hides the function's kind unless it is unwrapped.
    def view(environ: WSGIEnvironment) -> None:
        after(func)

    with pytest.raises(TypeError) as info:
        serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert str(info.value) == message


@types.coroutine
def _legacy_coroutine(ran: list[str]) -> t.Generator[None, None, None]:
    ran.append("legacy")
    yield


async def _job(ran: list[str], name: str) -> None:
    ran.append(name)


def test_coroutine_functions_in_partials_are_awaited() -> None:
    ran: list[str] = []

    def view(environ: WSGIEnvironment) -> None:
        after(functools.partial(_job, ran, "partial"))
        nested = functools.partial(_nested(_job), ran, "nested")
        assert isinstance(nested.func, functools.partial)
        after(nested)
        after(_legacy_coroutine, ran)  # a generator-based coroutine: awaitable, accepted

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))
    assert ran == ["partial", "nested", "legacy"]


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


def test_after_in_a_finished_callbacks_context_in_the_same_thread_is_refused() -> None:
    kept: list[contextvars.Context] = []

    def callback() -> None:
        kept.append(contextvars.copy_context())

    def view(environ: WSGIEnvironment) -> None:
        after(callback)

    serve(AfterMiddleware(text_app(view), runner=InlineRunner()))  # ran in this thread
    with pytest.raises(OutsideRequestError, match="after its response was closed"):
        kept[0].run(after, print)
