"""One request's callbacks: :class:`Chain`, :func:`after` and :func:`outcome`.

:class:`~wsgi_after.AfterMiddleware` makes a :class:`Chain` for every request and
makes it *current* (the :data:`CURRENT` context variable, and
``environ["wsgi_after.chain"]``) until the response is closed. :func:`after`
appends to the current chain; the chain is also the response wrapper, so when
the server closes the response :meth:`Chain.on_close` hands it to the runner,
which later calls the chain to run the callbacks in order::

    from wsgi_after import after

    def view(environ, start_response):
        after(send_audit_log, environ["PATH_INFO"])
        ...

A chain moves through five states: OPEN while the request runs (``after()``
appends), CLOSING while the server closes the response, QUEUED once handed to
the runner, RUNNING while its callbacks run (a callback may append more, from
its own thread), DONE. Appending and handing over are ordered by one lock, so an
``after()`` from another thread either lands in the chain or raises, never
accepted and lost; a request that queued nothing never takes the lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import gc
import inspect
import logging
import threading
import time
import typing as t
from types import CoroutineType

from . import events, lifecycle
from ._response import ClosingResponse, ListMixin, SizedMixin
from .losslog import LossLog
from .naming import callback_name, describe_request, method_and_path

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .runner import Submits

P = t.ParamSpec("P")
R = t.TypeVar("R")

logger = logging.getLogger("wsgi_after")

#: The chain of the request being handled in this context. The middleware sets it
#: and the chain resets it when the response closes; integrations read it through
#: :func:`current_chain`.
CURRENT: contextvars.ContextVar[Chain | None] = contextvars.ContextVar(
    "wsgi_after.chain", default=None
)

#: How many callbacks one request may queue, nested ones included, by default.
#: A callback that queues itself again would otherwise grow without bound.
MAX_CALLBACKS = 1000

# Chain states. A chain accepts callbacks while OPEN (the request runs) and while
# RUNNING (a callback queues another, in the running thread); the others refuse.
OPEN, CLOSING, QUEUED, RUNNING, DONE = range(5)

# Taken by after(), which marks the chain (Chain.notes & _APPENDED) before it looks
# at the state; on_close() sets CLOSING, then, for a marked chain only, takes the
# lock once before it reads the callbacks. So an after() racing close() from
# another thread either appended before the hand-over (and is run) or saw CLOSING
# (and raised); a request that queued nothing never takes the lock.
_handover = threading.Lock()

_forced_runner: Submits | None = None

# Looked up once, not per after() call.
_copy_context = contextvars.copy_context
_get_ident = threading.get_ident
_Executor = concurrent.futures.Executor
_Future = concurrent.futures.Future
_CO_ASYNC_GENERATOR = inspect.CO_ASYNC_GENERATOR

_never_closed = LossLog(
    "the server never called close() on the response (PEP 3333), so it cannot be known"
    " that the response was sent; the callbacks are not run. Use a server or gateway"
    " that closes responses, or close the iterable in the middleware that consumes it."
)


class OutsideRequestError(RuntimeError):
    """:func:`after` was called while no open request handled by the middleware is current."""


class Outcome(t.NamedTuple):
    """How the request that queued a callback ended, as :func:`outcome` reports it."""

    #: The status code the client got: from ``start_response``, or the 500 the server
    #: sends itself for an error raised before any of the body was sent; else None
    #: (uWSGI closes the connection instead).
    status: int | None
    #: False when the body was not fully sent (client disconnect, error while iterating).
    completed: bool
    #: The exception the app or its response iterable raised, else None.
    error: BaseException | None


Callback = tuple[t.Any, tuple[t.Any, ...], dict[str, t.Any], contextvars.Context]


class Chain(ClosingResponse):
    """One request: its callbacks, their :mod:`contextvars` snapshots and its outcome.

    The chain is also the request's response wrapper (one object per request on
    the hot path): when the server closes the response, :meth:`on_close` hands
    the chain to its runner. Calling the chain then runs every callback in
    registration order, each inside the context that was current when
    :func:`after` queued it, and inside :attr:`scope` when an integration set
    one.

    Error policy: a callback that raises anything, :class:`BaseException`
    included, is logged on the ``wsgi_after`` logger with its name and the
    request's method and path, and the rest still run. Calling the chain
    returns False when a callback failed; it raises only the first
    :class:`KeyboardInterrupt` or :class:`SystemExit` a callback raised, after
    the rest ran, so that a runner running it in the server's own thread can
    pass it on. A chain freed while still open (the server never called
    ``close()``) logs its callbacks by name at ERROR and does not run them.
    """

    __slots__ = (
        "_start_response",
        "callbacks",
        "closed_at",
        "environ",
        "max_callbacks",
        "notes",
        "runner",
        "scope",
        "started",
        "state",
        "status",
        "thread",
        "token",
    )

    #: The subclass with ``__del__`` (and :class:`PendingChain`) that the request's
    #: first :func:`after` switches to; every subclass names its own.
    pending: t.ClassVar[type[Chain]]

    def __init__(
        self,
        environ: WSGIEnvironment,
        runner: Submits,
        start_response: StartResponse,
        max_callbacks: int = MAX_CALLBACKS,
    ) -> None:
        # Only what a request that queues nothing reads, and the public fields: every
        # write here is paid by every request. ``_inner`` is set by wrap(), ``thread``
        # when the chain runs.
        self._once = [None]
        self.completed = False
        #: ``(func, args, kwargs, context)`` tuples in registration order; an entry
        #: becomes None once it has run, so that its arguments are freed.
        self.callbacks: list[Callback | None] = []
        #: The request's environ; a snapshot of it once the server closed the
        #: response (servers may clear and reuse theirs); None once done.
        self.environ: WSGIEnvironment | None = environ
        #: Where :meth:`on_close` submits the chain.
        self.runner = runner
        self._start_response: StartResponse | None = start_response
        self.max_callbacks = max_callbacks
        #: The status line the server accepted from ``start_response``.
        self.status: str | None = None
        #: Integrations' seam: a factory of the context manager entered around each
        #: callback (the Flask extension pushes the request context with it).
        self.scope: t.Callable[[], t.ContextManager[object]] | None = None
        #: The ``CURRENT`` token to reset when the response closes.
        self.token: contextvars.Token[Chain | None] | None = None
        self.error = self.file_response = None
        #: Index of the callback running now (or of the next to run).
        self.started = 0
        #: Bit flags: what was already logged once for this chain, and whether a
        #: callback's scope is being torn down.
        self.notes = 0
        self.state = OPEN
        #: ``time.monotonic()`` at close, for the events' queue delay (only while
        #: someone listens).
        self.closed_at = 0.0
        #: The thread running the callbacks, while RUNNING (set then).
        self.thread: int

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Callable[[bytes], object]:
        """The ``start_response`` the app gets: passes through, then records the status.

        The status is recorded only once the server accepted it: a call with
        ``exc_info`` after the headers were sent raises in the server, and the
        client still got the first status.
        """
        if exc_info is None:  # called as the app called us: with two arguments or three
            write = self._start_response(status, headers)  # type: ignore[misc]
        else:
            write = self._start_response(status, headers, exc_info)  # type: ignore[misc]
        self.status = status
        return write

    def on_error_before_body(self) -> None:
        """The server answers this request with its own 500 (PEP 3333 leaves it the
        error raised before the headers were sent): that is the status the client got.
        uWSGI sends none: it closes the connection (so the status is None)."""
        environ = self.environ
        if environ is not None and "uwsgi.version" in environ:
            self.status = None
        else:
            self.status = "500 Internal Server Error"

    def outcome(self) -> Outcome:
        """The request's :class:`Outcome` as recorded so far."""
        status = self.status
        code = int(status[:3]) if status and status[:3].isdecimal() else None
        return Outcome(code, self.sent_all(), self.error)

    def returned(self) -> bool:
        """Whether the app already returned this request's response, or the request
        finished: a request that starts later in the same context is not nested in it."""
        return hasattr(self, "_inner")  # set by wrap(), and when the chain is released

    def method_and_path(self) -> tuple[str, str]:
        """The request's method and full path (``SCRIPT_NAME + PATH_INFO``), unescaped."""
        return method_and_path(self.environ or {})

    def describe(self) -> str:
        """``METHOD /path`` of the request, escaped for log lines."""
        if self.environ is None:
            return "a finished request"
        return describe_request(self.environ)

    def callback_names(self) -> list[str]:
        """The names of the callbacks not yet run or running, for drop and shutdown logs."""
        return [callback_name(c[0]) for c in self.callbacks[self.started :] if c is not None]

    def discard(self) -> None:
        """Forget the callbacks without running them (after they were logged as lost)."""
        for entry in self.callbacks:
            if entry is not None and type(entry[0]) is CoroutineType:
                entry[0].close()  # no "never awaited" warning for a coroutine we dropped
        self._release()

    def __call__(self) -> bool:
        self.thread = _get_ident()
        self.state = RUNNING
        generation = lifecycle.generation
        callbacks = self.callbacks
        scope = self.scope
        observed = bool(events.listeners)
        if observed:
            method, path = self.method_and_path()
        interrupt: BaseException | None = None
        ok = True
        i = 0
        try:
            while i < len(callbacks):  # sees what a running callback appends
                self.started = i
                func, args, kwargs, ctx = callbacks[i]  # type: ignore[misc]
                self.notes &= ~_TEARDOWN
                # Inside the snapshot: the scope's context, the callback, and the log
                # line of its failure all see the request's context variables.
                if observed:
                    error = ctx.run(
                        _run_observed, self, func, args, kwargs, generation, method, path
                    )
                else:
                    error = ctx.run(_run, self, scope, func, args, kwargs, generation)
                if error is not None:
                    if lifecycle.generation != generation:
                        raise error  # a forked child leaving: never run the parent's callbacks
                    ok = False
                    if interrupt is None and isinstance(error, (KeyboardInterrupt, SystemExit)):
                        interrupt = error
                if lifecycle.generation != generation:
                    return ok  # a forked child that returned from the callback
                callbacks[i] = func = args = kwargs = ctx = error = None
                i += 1
        finally:
            if lifecycle.generation == generation:
                self._release()
        if interrupt is not None:
            try:
                raise interrupt
            finally:
                interrupt = None
        return ok

    def _release(self) -> None:
        # Drop everything the request held (body, file, error, environ) now, not at
        # this thread's next request; environ["wsgi_after.chain"] refers to this
        # chain, and an error's traceback may too: break those cycles, so that
        # reference counting, not the garbage collector, frees the request.
        self.state = DONE
        self.callbacks = []
        self.environ = self.scope = self._start_response = self._iterator = None
        self._inner = ()
        self.file_response = self.error = None

    def on_close(self) -> None:
        """The server closed the response: hand the callbacks to the runner, once."""
        if self.state != OPEN:
            return
        self.state = CLOSING  # from here on, after() refuses
        if self.notes & _APPENDED:
            # An after() may be appending right now, in another thread: wait for it,
            # so that its callback is either seen below or was refused.
            _handover.acquire()
            _handover.release()
        token = self.token
        if token is not None:
            self.token = None  # (measured: keeping it costs more per request than this write)
            try:  # noqa: SIM105 (a try costs nothing here; contextlib.suppress does)
                CURRENT.reset(token)
            except ValueError:
                pass  # closed from another thread: that context keeps a finished chain
        callbacks = self.callbacks
        if not callbacks:  # most requests: drop the references at once
            self.state = DONE
            self.environ = self._start_response = self._iterator = None  # (a list partly sent)
            self._inner = ()
            self.file_response = self.error = None
            return
        self.state = QUEUED
        environ = self.environ
        if environ is not None:
            # Servers may clear and reuse the environ dict once close() returns
            # (uWSGI's default): callbacks see a snapshot of their own request.
            self.environ = dict(environ)
        self._start_response = None
        if events.listeners:
            self.closed_at = time.monotonic()
        runner = _forced_runner or self.runner
        watch = None
        if isinstance(runner, _Executor):
            # Named now: an executor's thread may run the chain before submit() returns.
            watch = _FutureWatch(self.callback_names(), self.describe())
        try:
            result = runner.submit(self)
        except BaseException as e:
            if self.state != QUEUED:  # it ran here and passed on an interrupt, logged
                raise
            logger.error(
                "Callbacks %s queued by '%s' were not run: %r refused them.",
                self.callback_names(),
                self.describe(),
                runner,
                exc_info=True,
            )
            self.discard()
            if not isinstance(e, Exception):
                raise
            return
        if isinstance(result, _Future):  # an executor, or a duck-typed one
            result.add_done_callback(watch or _FutureWatch(self.callback_names(), self.describe()))


# Chain.notes bits.
_TEARDOWN = 1  # the running callback returned; its scope is being torn down
_WARNED_CAP = 2  # the per-request cap was logged inside a callback
_WARNED_TEARDOWN = 4  # after() from a scope's teardown was logged
_APPENDED = 8  # after() took the hand-over lock for this chain


class _FutureWatch:
    """Logs what a :class:`concurrent.futures.Future` reports for a chain."""

    __slots__ = ("names", "request")

    def __init__(self, names: list[str], request: str) -> None:
        self.names = names
        self.request = request

    def __call__(self, future: concurrent.futures.Future[object]) -> None:
        if future.cancelled():
            logger.error(
                "Callbacks %s queued by '%s' were not run: the executor cancelled them.",
                self.names,
                self.request,
            )
            return
        error = future.exception()
        if error is not None and not isinstance(error, (KeyboardInterrupt, SystemExit)):
            logger.error(
                "Callbacks %s queued by '%s': the executor reported an error.",
                self.names,
                self.request,
                exc_info=error,
            )


def _run(
    chain: Chain,
    scope: t.Callable[[], t.ContextManager[object]] | None,
    func: t.Any,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
    generation: int,
) -> BaseException | None:
    """Run one callback, in ``scope`` when given; log its failure by name, here inside
    its context. Return what it raised, else None."""
    try:
        if scope is not None:
            _call_in_scope(chain, scope, func, args, kwargs)
        elif type(func) is CoroutineType:
            asyncio.run(func)
        else:
            result = func(*args, **kwargs)
            if result is not None:
                _finish(func, result)
    except BaseException as e:
        if lifecycle.generation == generation:  # not in a forked child that is leaving
            logger.error(
                "Callback '%s' queued by '%s' raised %s.",
                callback_name(func),
                chain.describe(),  # the chain is released only after its last callback
                type(e).__name__,
                exc_info=e,
            )
        return e
    return None


def _call(func: t.Any, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> None:
    """Call a callback; run an awaitable (given, or returned) to completion."""
    if type(func) is CoroutineType:
        asyncio.run(func)
        return
    result = func(*args, **kwargs)
    if result is not None:
        _finish(func, result)


def _finish(func: t.Any, result: object) -> None:
    """Run what a callback returned to completion, when it is awaitable."""
    if type(result) is CoroutineType:
        asyncio.run(result)
    elif inspect.isawaitable(result):
        asyncio.run(_await(result))
    elif inspect.isasyncgen(result):
        raise TypeError(
            f"'{callback_name(func)}' returned an async generator, which cannot be run"
            " to completion. Queue a coroutine function instead."
        )


async def _await(awaitable: t.Awaitable[object]) -> None:
    await awaitable


def _call_in_scope(
    chain: Chain,
    scope: t.Callable[[], t.ContextManager[object]],
    func: t.Any,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
) -> None:
    with scope():
        try:
            _call(func, args, kwargs)
        finally:
            chain.notes |= _TEARDOWN


def _run_observed(
    chain: Chain,
    func: t.Any,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
    generation: int,
    method: str,
    path: str,
) -> BaseException | None:
    """:func:`_run` between "started" and "finished" or "failed" events, emitted
    inside the callback's context (the failure is logged before "failed", while a
    listener's span is still current)."""
    name = callback_name(func)
    delay = time.monotonic() - chain.closed_at if chain.closed_at else None
    runner = events.current_runner()  # named here, once: emit() would copy each event
    events.emit(events.CallbackEvent("started", name, method, path, delay, runner=runner))
    started = time.perf_counter()
    error = _run(chain, chain.scope, func, args, kwargs, generation)
    run_time = time.perf_counter() - started
    if error is None:
        events.emit(
            events.CallbackEvent("finished", name, method, path, delay, run_time, runner=runner)
        )
    else:
        events.emit(
            events.CallbackEvent(
                "failed", name, method, path, delay, run_time, error, runner=runner
            )
        )
    return error


def current_chain() -> Chain | None:
    """The chain of the request handled in this context, or of the callback running
    in this thread; None elsewhere (and once the response is closed)."""
    chain = CURRENT.get()
    if chain is None or not (chain.state == OPEN or _in_callback(chain)):
        return None
    return chain


@contextlib.contextmanager
def override_runner(runner: Submits) -> t.Iterator[Submits]:
    """Send every chain that closes while the block runs to ``runner``.

    Process-wide, for tests (the pytest plugin's ``after_inline`` fixture runs
    every request's callbacks inline with it)::

        with override_runner(InlineRunner()):
            client.get("/signup")
    """
    global _forced_runner
    previous, _forced_runner = _forced_runner, runner
    try:
        yield runner
    finally:
        _forced_runner = previous


@t.overload
def after(func: t.Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> t.Callable[P, R]: ...
@t.overload
def after(func: t.Coroutine[t.Any, t.Any, object], /) -> None: ...
def after(func: t.Any, /, *args: t.Any, **kwargs: t.Any) -> t.Any:
    """Run ``func(*args, **kwargs)`` after the current response has been sent.

    The callback runs on the runner (a worker thread by default), after the
    server has sent the response and closed it, in the order of the ``after()``
    calls and inside a copy of the :mod:`contextvars` context current now. A
    coroutine function, a coroutine object, or a function returning an
    awaitable runs to completion there on its own event loop. Called from
    inside a running callback, it appends to the same request's chain. Returns
    ``func``, so ``@after`` over a function with no parameters queues it and
    leaves the name bound to it.

    Error policy: if the callback raises, the error is logged on the
    ``wsgi_after`` logger with the callback's name and the request's method and
    path, and the request's remaining callbacks still run. One request may
    queue at most ``max_callbacks`` callbacks (1000 by default); past that,
    ``after()`` raises in the request, and inside a callback it is refused
    with one ERROR line. ``after()`` from the teardown of a callback's own
    context (Flask's ``teardown_request`` runs after every callback) is ignored,
    logged once at DEBUG: it would queue itself for ever.

    :param func: a callable, or a coroutine object (then without arguments).
    :raises TypeError: if ``func`` is neither callable nor a coroutine, is an
        async generator function, or the runner cannot take it
        (:class:`~wsgi_after.celery.CeleryRunner` needs importable callbacks
        with serializable arguments).
    :raises OutsideRequestError: if no request handled by
        :class:`~wsgi_after.AfterMiddleware` is current here, or its response
        was already closed.
    :raises RuntimeError: if the request already queued ``max_callbacks``.
    """
    if not callable(func):
        if type(func) is not CoroutineType:
            raise TypeError(
                f"'after()' needs a callable or a coroutine, got {type(func).__name__!r}."
            )
        if args or kwargs:
            func.close()
            raise TypeError(
                "'after()' got arguments for a coroutine object. Pass the coroutine"
                " function and its arguments instead: 'after(func, *args)'."
            )
    elif (code := getattr(func, "__code__", None)) is not None and (
        code.co_flags & _CO_ASYNC_GENERATOR
    ):
        raise TypeError(
            f"'after()' cannot run the async generator function '{callback_name(func)}'"
            " to completion. Queue a coroutine function ('async def' with no 'yield')."
        )
    chain = CURRENT.get()
    try:
        if chain is None:
            raise OutsideRequestError(
                "'after()' was called outside a request handled by 'AfterMiddleware'."
                " Wrap the WSGI app with 'AfterMiddleware' (Flask: 'After(app)'); in a"
                " thread started by the view, run the thread's function in a copy of the"
                " request's context: 'contextvars.copy_context().run(func)'."
            )
        check = getattr(chain.runner, "check_callback", None)
        if check is not None:  # a runner that sends callbacks elsewhere (CeleryRunner)
            check(func, args, kwargs)
        entry = (func, args, kwargs, _copy_context())
        _handover.acquire()  # not 'with': that costs twice as much, per after()
        try:
            chain.notes |= _APPENDED
            state = chain.state
            inside = state == RUNNING and chain.thread == _get_ident()
            if state == OPEN or inside:
                if inside and chain.notes & _TEARDOWN:
                    refused = _TEARDOWN
                elif len(chain.callbacks) >= chain.max_callbacks:
                    refused = _WARNED_CAP
                else:
                    if state == OPEN and not chain.callbacks:
                        # The request's first: from now on, a chain freed unclosed logs.
                        # wrap() switches the class too (sized), in the request's thread;
                        # each reads the class and sets it with nothing run in between,
                        # so they do not undo each other (an audit hook run inside the
                        # set could: then only __len__ or this __del__ would be missing).
                        chain.__class__ = chain.pending
                    chain.callbacks.append(entry)
                    refused = -1
            else:
                refused = 0
        finally:
            _handover.release()
        if refused == -1:
            if events.listeners:
                name = callback_name(func)
                events.emit(events.CallbackEvent("queued", name, *chain.method_and_path()))
            return func if type(func) is not CoroutineType else None
        if refused == 0:
            raise OutsideRequestError(
                f"'after()' was called for '{chain.describe()}' after its response was"
                " closed and its callbacks handed to the runner. Call 'after()' before the"
                " response is closed: in the view, or while the server iterates its body."
            )
        if refused == _WARNED_CAP and not inside:
            raise RuntimeError(
                f"'after()' was called more than {chain.max_callbacks} times for"
                f" '{chain.describe()}'. Queue fewer callbacks (one that loops over the"
                " items), or raise 'AfterMiddleware(max_callbacks=...)'."
            )
        _refuse_inside(chain, func, refused)
        return func if type(func) is not CoroutineType else None
    except BaseException:
        if type(func) is CoroutineType:
            func.close()
        raise


def _refuse_inside(chain: Chain, func: t.Any, reason: int) -> None:
    """Log, once per chain, that ``after()`` inside a callback was refused."""
    if type(func) is CoroutineType:
        func.close()
    warned = _WARNED_TEARDOWN if reason == _TEARDOWN else _WARNED_CAP
    if chain.notes & warned:
        return
    chain.notes |= warned
    if reason == _TEARDOWN:
        logger.debug(
            "Ignored 'after(%s)' from the teardown of a callback's context for '%s':"
            " teardown runs after every callback, so it would queue itself for ever.",
            callback_name(func),
            chain.describe(),
        )
    else:
        logger.error(
            "Refused 'after(%s)' inside a callback for '%s': the request already queued"
            " %d callbacks (max_callbacks); this and further ones are not run.",
            callback_name(func),
            chain.describe(),
            chain.max_callbacks,
        )


def outcome() -> Outcome | None:
    """The :class:`Outcome` of the request whose callback is running, else None.

    Inside a callback it tells how the response ended: the status code, whether
    the body was fully sent, and the error the app raised, if any.
    """
    chain = CURRENT.get()
    if chain is None or not _in_callback(chain):
        return None
    return chain.outcome()


def _in_callback(chain: Chain) -> bool:
    """Whether this thread is running ``chain``'s callbacks now."""
    return chain.state == RUNNING and chain.thread == _get_ident()


class SizedChain(SizedMixin, Chain):
    """A :class:`Chain` whose app's iterable has ``__len__``."""

    __slots__ = ()


class ListChain(ListMixin, Chain):
    """A :class:`Chain` whose app's iterable is a list."""

    __slots__ = ()


class PendingChain(Chain):
    """A :class:`Chain` that queued a callback while its request ran.

    :func:`after` switches a chain to it (or to :class:`SizedPendingChain`) at
    the request's first callback, so that only such chains pay for a
    ``__del__`` when freed: freed while still open (the server never called
    ``close()``), it logs its callbacks by name at ERROR and does not run them.
    """

    __slots__ = ()

    def __del__(self) -> None:
        if self.state == OPEN and self.callbacks:
            names = self.callback_names()
            _never_closed.record(names, self.describe())
            if events.listeners:
                events.emit_each("never_closed", names, *self.method_and_path())
            self.discard()


_open_at_exit = LossLog(
    "its request was still running when the process exited (the server stopped waiting for it)."
)


def _name_open_requests() -> None:
    """At exit, after the drain: log by name the callbacks of requests still open.

    Found by a walk of the garbage collector's objects, once, at exit: tracking open
    requests would cost every request that queues a callback.
    """
    found = False
    for chain in gc.get_objects():
        # type(), not isinstance(): that reads __class__, which a lazy object (Django's
        # LazyObject) computes, and may raise.
        if not (issubclass(type(chain), PendingChain) and chain.state == OPEN):
            continue
        with _handover:  # the request's thread may be in after() right now
            if chain.state != OPEN:
                continue
            chain.state = CLOSING  # its after() and close() now refuse, or do nothing
        names = chain.callback_names()
        if names:
            found = True
            _open_at_exit.record(names, chain.describe())
            if events.listeners:
                events.emit_each("lost", names, *chain.method_and_path())
        chain.discard()
    if found:
        _open_at_exit.close()


lifecycle.report_at_exit(_name_open_requests)


class SizedPendingChain(SizedMixin, PendingChain):
    """A :class:`PendingChain` whose app's iterable has ``__len__``."""

    __slots__ = ()


class ListPendingChain(ListMixin, PendingChain):
    """A :class:`PendingChain` whose app's iterable is a list."""

    __slots__ = ()


# What wrap() (sized, listed) and the first after() (pending) switch each class to.
Chain.sized, Chain.listed, Chain.pending = SizedChain, ListChain, PendingChain
SizedChain.pending = SizedPendingChain
ListChain.pending = ListPendingChain
# A chain that already has callbacks when the app returns a list keeps the generator
# of the sized class: it tells whether the body was sent in full for free, where the
# list iterator's own record of it costs more to read (ListMixin.sent_all).
PendingChain.sized = PendingChain.listed = SizedPendingChain
SizedPendingChain.pending = SizedPendingChain
ListPendingChain.pending = ListPendingChain
