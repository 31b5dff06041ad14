"""The chain: hand-over to the runner at close, states, futures, never-closed responses."""

from __future__ import annotations

import collections.abc
import concurrent.futures
import contextvars
import gc
import inspect
import io
import threading
import typing as t
import wsgiref.util

import pytest

from tests.helpers import TIMEOUT, Returns, call, hold, make_environ, serve, text_app
from wsgi_after import (
    AfterMiddleware,
    InlineRunner,
    Outcome,
    OutsideRequestError,
    ThreadRunner,
    after,
    current_chain,
    events,
)

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


@pytest.fixture(autouse=True)
def fresh_never_closed_log() -> collections.abc.Iterator[None]:
    """Each test gets the never-closed log's first lines of its own: the log names the
    first losses of each 10 s, so tests that run close together (in any order: mutmut
    orders them by duration) would otherwise share one burst."""
    import wsgi_after._chain

    wsgi_after._chain._never_closed.reset()
    yield
    wsgi_after._chain._never_closed.reset()


def test_nothing_is_submitted_without_callbacks() -> None:
    submitted: list[object] = []

    class Recorder:
        def submit(self, fn: t.Callable[[], object]) -> None:
            submitted.append(fn)

    serve(AfterMiddleware(text_app(lambda environ: None), runner=Recorder()))
    assert submitted == []


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


def test_a_request_takes_the_hand_over_lock_only_in_its_own_after_calls(
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

        def locked(self) -> bool:
            return self.lock.locked()

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
    # after() takes it; close() only looks whether some after() holds it now (none
    # does: this request's own returned before close()).
    assert taken == ["taken"]


def test_close_waits_for_an_after_appending_in_another_thread() -> None:
    # A thread with the request's context is inside after(), holding the hand-over
    # lock, when the server closes the response: close() waits for it, so that the
    # callback after() accepted is run, not dropped.
    appending = threading.Event()
    go_on = threading.Event()
    ran: list[str] = []

    class SlowList(list):  # type: ignore[type-arg]
        def append(self, entry: t.Any) -> None:
            appending.set()
            assert go_on.wait(TIMEOUT)
            super().append(entry)

    contexts: list[contextvars.Context] = []

    def view(environ: WSGIEnvironment) -> None:
        environ["wsgi_after.chain"].callbacks = SlowList()
        contexts.append(contextvars.copy_context())

    response = call(AfterMiddleware(text_app(view), runner=InlineRunner()))
    b"".join(response)
    racer = threading.Thread(target=contexts[0].run, args=(after, ran.append, "late"))
    racer.start()
    assert appending.wait(TIMEOUT)
    closer = threading.Thread(target=response.close)
    closer.start()
    try:
        closer.join(0.2)  # a bounded look: close() is still waiting for the after()
        waited = closer.is_alive()
    finally:
        go_on.set()
    closer.join(TIMEOUT)
    racer.join(TIMEOUT)
    assert not closer.is_alive()
    assert not racer.is_alive()
    assert ran == ["late"]
    assert waited


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


def test_never_closed_requests_are_neither_kept_alive_nor_made_current_again() -> None:
    # Each request's context-variable token kept the previous chain: never-closed
    # requests of one context stayed alive, and once a later request closed, the stale
    # open chain was current again: 'after()' outside any request was accepted and
    # lost (issue 21, item 7).
    ran: list[str] = []

    def view(environ: WSGIEnvironment) -> None:
        after(ran.append, environ["PATH_INFO"])

    app = AfterMiddleware(text_app(view), runner=InlineRunner())

    def one_context() -> None:  # a gateway thread that never calls close(), then does
        for i in range(3):
            assert b"".join(call(app, make_environ(f"/unclosed-{i}"))) == b"ok"
        serve(app, "/closed")
        assert current_chain() is None
        with pytest.raises(OutsideRequestError):
            after(ran.append, "outside")

    lost: list[str] = []

    def listener(event: events.CallbackEvent) -> None:
        if event.kind == "never_closed":
            lost.append(event.path)

    events.subscribe(listener)
    try:
        contextvars.copy_context().run(one_context)
        gc.collect()
    finally:
        events.unsubscribe(listener)
    assert ran == ["/closed"]
    # Freed, and so logged (the log's first lines per 10 s, then counts) and reported.
    assert sorted(lost) == ["/unclosed-0", "/unclosed-1", "/unclosed-2"]


def test_a_request_served_inside_a_view_gives_the_outer_request_back() -> None:
    ran: list[str] = []
    inner = AfterMiddleware(
        text_app(lambda environ: after(ran.append, "inner")), runner=InlineRunner()
    )

    def outer_view(environ: WSGIEnvironment) -> None:
        serve(inner, "/inner")  # a sub-request with an environ of its own
        after(ran.append, "outer")  # still the outer request's

    serve(AfterMiddleware(text_app(outer_view), runner=InlineRunner()), "/outer")
    assert ran == ["inner", "outer"]
