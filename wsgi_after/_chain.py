"""One request's callbacks: :class:`Chain`, :func:`after` and :func:`outcome`.

:class:`~wsgi_after.AfterMiddleware` makes a :class:`Chain` for every request and
makes it *current* (a :class:`~contextvars.ContextVar`, and
``environ["wsgi_after.chain"]``). :func:`after` appends to the current chain; the
chain is also the response wrapper, so when the server closes the response
:meth:`Chain.on_close` hands it to the runner, which later calls the chain to run
the callbacks in order::

    from wsgi_after import after

    def view(environ, start_response):
        after(send_audit_log, environ["PATH_INFO"])
        ...
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import typing as t
from types import CoroutineType

from ._response import ClosingResponse, SizedMixin

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .runner import Runner

P = t.ParamSpec("P")
R = t.TypeVar("R")

logger = logging.getLogger("wsgi_after")

_current: contextvars.ContextVar[Chain | None] = contextvars.ContextVar(
    "wsgi_after.chain", default=None
)

#: Set by the pytest plugin's ``after_inline`` fixture: every chain runs on it.
forced_runner: Runner | None = None

# Chain states. A chain accepts callbacks while OPEN (the request runs) and while
# RUNNING (a callback queues another); QUEUED and DONE refuse them.
OPEN, QUEUED, RUNNING, DONE = range(4)


class OutsideRequestError(RuntimeError):
    """:func:`after` was called while no request handled by the middleware is current."""


class Outcome(t.NamedTuple):
    """How the request that queued a callback ended, as :func:`outcome` reports it."""

    #: The status code given to ``start_response``, or None if it was never called.
    status: int | None
    #: False when the body was not fully sent (client disconnect, error while iterating).
    completed: bool
    #: The exception the app or its response iterable raised, else None.
    error: BaseException | None


class Chain(ClosingResponse):
    """One request: its callbacks, their :mod:`contextvars` snapshots and its outcome.

    The chain is also the request's response wrapper (one object per request on
    the hot path): when the server closes the response, :meth:`on_close` hands
    the chain to its runner. Calling the chain then runs every callback in
    registration order, each inside the context that was current when
    :func:`after` queued it, and inside :attr:`scope` when an integration set
    one. A callback that raises is logged on the ``wsgi_after`` logger with its
    name and the request's method and path; the rest still run. Calling the
    chain never raises; it returns False when any callback failed, which the
    runner counts.
    """

    __slots__ = (
        "_start_response",
        "callbacks",
        "environ",
        "runner",
        "scope",
        "started",
        "state",
        "status",
        "thread",
    )

    def __init__(
        self, environ: WSGIEnvironment, runner: Runner, start_response: StartResponse
    ) -> None:
        # ClosingResponse's fields (it has no __init__: a Python call less per request).
        self._inner = ()
        self._once = [None]
        self.completed = False
        self.error = None
        self.file_response = None
        #: ``(func, args, kwargs, context)`` tuples, in registration order.
        self.callbacks: list[
            tuple[t.Any, tuple[t.Any, ...], dict[str, t.Any], contextvars.Context]
        ] = []
        #: The request's environ until the chain is done (None after).
        self.environ: WSGIEnvironment | None = environ
        #: Where :meth:`on_close` submits the chain.
        self.runner = runner
        self._start_response: StartResponse | None = start_response
        #: The status line given to ``start_response``.
        self.status: str | None = None
        #: Integrations' seam: a factory of the context manager entered around each
        #: callback (the Flask extension pushes the request context with it).
        self.scope: t.Callable[[], t.ContextManager[object]] | None = None
        self.state = OPEN
        #: Index of the callback running now (or of the next to run).
        self.started = 0
        #: The thread running the callbacks, while RUNNING.
        self.thread = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Callable[[bytes], object]:
        """The ``start_response`` the app gets: records the status, then passes through."""
        self.status = status
        if exc_info is None:  # called as the app called us: with two arguments or three
            return self._start_response(status, headers)  # type: ignore[misc]
        return self._start_response(status, headers, exc_info)  # type: ignore[misc]

    def outcome(self) -> Outcome:
        """The request's :class:`Outcome` as recorded so far."""
        status = self.status
        code = int(status[:3]) if status and status[:3].isdigit() else None
        return Outcome(code, self.completed, self.error)

    def method_and_path(self) -> tuple[str, str]:
        """The request's method and full path (``SCRIPT_NAME + PATH_INFO``)."""
        environ = self.environ or {}
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        return environ.get("REQUEST_METHOD", "?"), path or "/"

    def describe(self) -> str:
        """``METHOD /path`` of the request, for log messages."""
        if self.environ is None:
            return "a finished request"
        return "{} {}".format(*self.method_and_path())

    def callback_names(self) -> list[str]:
        """The names of the callbacks not yet run or running, for drop and shutdown logs."""
        return [callback_name(c[0]) for c in self.callbacks[self.started :]]

    def discard(self) -> None:
        """Forget the callbacks without running them (after they were logged as lost)."""
        for func, *_ in self.callbacks:
            if type(func) is CoroutineType:
                func.close()  # no "never awaited" warning for a coroutine we dropped
        self._release()

    def __call__(self) -> bool:
        self.thread = threading.get_ident()
        self.state = RUNNING
        ok = True
        try:
            # A list iterator sees what a running callback appends (nested after()).
            for i, (func, args, kwargs, ctx) in enumerate(self.callbacks):
                self.started = i
                try:
                    if self.scope is None:
                        ctx.run(_call, func, args, kwargs)
                    else:  # entered inside the snapshot, so what it sets is what func sees
                        ctx.run(_call_in_scope, self.scope, func, args, kwargs)
                except Exception:
                    ok = False
                    logger.error(
                        "Callback '%s' queued by '%s' raised.",
                        callback_name(func),
                        self.describe(),
                        exc_info=True,
                    )
        finally:
            self._release()
        return ok

    def _release(self) -> None:
        # environ["wsgi_after.chain"] refers to this chain: break the cycle so that
        # reference counting, not the garbage collector, frees the request.
        self.state = DONE
        self.callbacks = []
        self.environ = self.scope = self._start_response = None

    def on_close(self) -> None:
        """The server closed the response: hand the callbacks to the runner, once."""
        if self.state != OPEN:
            return
        # The request's thread keeps this chain as current until its next request: a
        # finished chain refuses after() there (see _in_callback).
        if not self.callbacks:  # most requests: drop the references at once
            self.state = DONE
            self.environ = self._start_response = None
            return
        self.state = QUEUED
        try:
            (forced_runner or self.runner).submit(self)
        except Exception:
            logger.error(
                "Callbacks %s queued by '%s' were not run: %r refused them.",
                self.callback_names(),
                self.describe(),
                self.runner,
                exc_info=True,
            )
            self.discard()


def _call(func: t.Any, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> None:
    """Call a callback; run a coroutine (given, or returned) to completion."""
    result = asyncio.run(func) if type(func) is CoroutineType else func(*args, **kwargs)
    if type(result) is CoroutineType:
        asyncio.run(result)


def _call_in_scope(
    scope: t.Callable[[], t.ContextManager[object]],
    func: t.Any,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
) -> None:
    with scope():
        _call(func, args, kwargs)


def callback_name(func: object) -> str:
    """``module.qualname`` of a callback (its type's for other callables)."""
    name = getattr(func, "__qualname__", None)
    if name is None:
        func = type(func)
        name = func.__qualname__
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module else str(name)


@t.overload
def after(func: t.Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> t.Callable[P, R]: ...
@t.overload
def after(func: t.Coroutine[t.Any, t.Any, object], /) -> None: ...
def after(func: t.Any, /, *args: t.Any, **kwargs: t.Any) -> t.Any:
    """Run ``func(*args, **kwargs)`` after the current response has been sent.

    The callback runs on the runner (a worker thread by default), after the
    server has sent the response and closed it, in the order of the ``after()``
    calls and inside a copy of the :mod:`contextvars` context current now. A
    coroutine function, or a coroutine object, runs to completion there on its
    own event loop. Called from inside a running callback, it appends to the
    same request's chain. Returns ``func``, so ``@after`` over a function with no
    parameters queues it and leaves the name bound to it.

    Error policy: if the callback raises, the error is logged on the
    ``wsgi_after`` logger with the callback's name and the request's method and
    path, and the request's remaining callbacks still run.

    :param func: a callable, or a coroutine object (then without arguments).
    :raises TypeError: if ``func`` is neither callable nor a coroutine, or the
        runner cannot take it (:class:`~wsgi_after.celery.CeleryRunner` needs
        importable callbacks with serializable arguments).
    :raises OutsideRequestError: if no request handled by
        :class:`~wsgi_after.AfterMiddleware` is current.
    """
    chain = _current.get()
    if not callable(func):
        if type(func) is not CoroutineType:
            raise TypeError(
                f"'after()' needs a callable or a coroutine, got {type(func).__name__!r}."
            )
        if args or kwargs:
            raise TypeError(
                "'after()' got arguments for a coroutine object. Pass the coroutine"
                " function and its arguments instead: 'after(func, *args)'."
            )
    if chain is None or (chain.state != OPEN and not _in_callback(chain)):
        raise OutsideRequestError(
            "'after()' was called outside a request handled by 'AfterMiddleware'."
            " Wrap the WSGI app with 'AfterMiddleware' or call 'After.init_app(app)'."
        )
    check = getattr(chain.runner, "check_callback", None)
    if check is not None:  # a runner that sends callbacks elsewhere (CeleryRunner)
        check(func, args, kwargs)
    chain.callbacks.append((func, args, kwargs, contextvars.copy_context()))
    return func if type(func) is not CoroutineType else None


def outcome() -> Outcome | None:
    """The :class:`Outcome` of the request whose callback is running, else None.

    Inside a callback it tells how the response ended: the status code, whether
    the body was fully sent, and the error the app raised, if any.
    """
    chain = _current.get()
    if chain is None or not _in_callback(chain):
        return None
    return chain.outcome()


def _in_callback(chain: Chain) -> bool:
    """Whether this thread is running ``chain``'s callbacks now."""
    return chain.state == RUNNING and chain.thread == threading.get_ident()


class SizedChain(SizedMixin, Chain):
    """A :class:`Chain` whose app's iterable has ``__len__``."""

    __slots__ = ()


Chain.sized = SizedChain
