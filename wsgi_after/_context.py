"""The request API: :func:`after`, :func:`outcome`, :func:`current_chain`.

:class:`~wsgi_after.AfterMiddleware` makes each request's chain *current* (the
:data:`CURRENT` context variable, and ``environ["wsgi_after.chain"]``) until the
response is closed. :func:`after` appends to the current chain; inside a running
callback, :func:`outcome` tells how the response ended::

    from wsgi_after import after

    def view(environ, start_response):
        after(send_audit_log, environ["PATH_INFO"])
        ...

Appending and the chain's hand-over to its runner are ordered by one lock,
:data:`handover`, so an ``after()`` from another thread either lands in the chain
or raises, never accepted and lost; a request that queued nothing never takes it.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import threading
import typing as t
from types import CoroutineType

from . import events
from ._request import (
    APPENDED,
    OPEN,
    RUNNING,
    TEARDOWN,
    WARNED_CAP,
    WARNED_TEARDOWN,
    Outcome,
    RequestView,
)
from .naming import callback_name

P = t.ParamSpec("P")
R = t.TypeVar("R")

logger = logging.getLogger("wsgi_after")

#: The request being handled in this context (or whose callback runs in it). The
#: middleware sets it and the chain resets it when the response closes;
#: integrations read it through :func:`current_chain`.
CURRENT: contextvars.ContextVar[RequestView | None] = contextvars.ContextVar(
    "wsgi_after.chain", default=None
)

# Held by after() while it looks at the chain's state and appends (it marks the
# chain, notes & APPENDED, first); Chain.on_close() sets CLOSING, then, for a
# marked chain while the lock is held (an after() is inside, in some thread), takes
# it once before it reads the callbacks. So an after() racing close() from another
# thread either appended before the hand-over (and is run) or saw CLOSING (and
# raised). A request that queued nothing never takes the lock, and one whose
# after() calls all returned before close() (the request's own thread) takes it
# only in after().
handover = threading.Lock()

# Looked up once, not per after() call.
_copy_context = contextvars.copy_context
_get_ident = threading.get_ident
_CO_ASYNC_GENERATOR = inspect.CO_ASYNC_GENERATOR
# Only a callable without code of its own pays for this test; 'type() is' costs one
# callback-per-request 0.5k instructions less than isinstance() (benchmarks/instructions.py
# middleware-one-paced, whose callback is a lock's release), so a subclass of partial
# is not unwrapped.
_partial = functools.partial
# Functions whose call only makes a generator: their body would never run (a
# generator-based coroutine, @types.coroutine, is awaitable and runs).
_GENERATORS = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


class OutsideRequestError(RuntimeError):
    """:func:`after` was called while no open request handled by the middleware is current."""


def current_chain() -> RequestView | None:
    """The request handled in this context, or whose callback runs in this thread;
    None elsewhere (and once the response is closed).

    Integrations read it through its documented view (:class:`RequestView`):
    ``scope`` (which they may set while it is None), the ``environ`` snapshot,
    ``outcome()`` and ``callback_names()``."""
    chain = CURRENT.get()
    if chain is None or not (chain.state == OPEN or _in_callback(chain)):
        return None
    return chain


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
    :raises TypeError: if ``func`` is neither callable nor a coroutine, is a
        generator or async generator function (or a ``functools.partial`` of
        one: calling it would only make a generator), or the runner cannot take it
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
    elif (code := getattr(func, "__code__", None)) is not None:
        if code.co_flags & _GENERATORS:
            _refuse_generator(func, code.co_flags)
    elif type(func) is _partial:  # what it calls tells (after any partials)
        _refuse_generator(func, _code_flags(func))
    chain = CURRENT.get()
    try:
        if chain is None:
            raise OutsideRequestError(
                "'after()' was called outside a request handled by 'AfterMiddleware'."
                " Wrap the WSGI app with 'AfterMiddleware' (Flask: 'After(app)'; Django:"
                " 'wsgi_after.django.AfterMiddleware' first in MIDDLEWARE); outside any"
                " request (a management command, the shell, a worker), call the function"
                " itself; in a thread started by the view, run the thread's function in a"
                " copy of the request's context: 'contextvars.copy_context().run(func)'."
            )
        check = getattr(chain.runner, "check_callback", None)
        if check is not None:  # a runner that sends callbacks elsewhere (CeleryRunner)
            check(func, args, kwargs)
        entry = (func, args, kwargs, _copy_context())  # an Entry: a Callback's fields
        handover.acquire()  # not 'with': that costs twice as much, per after()
        try:
            chain.notes |= APPENDED
            state = chain.state
            inside = state == RUNNING and chain.thread == _get_ident()
            if state == OPEN or inside:
                if inside and chain.notes & TEARDOWN:
                    refused = TEARDOWN
                elif len(chain.callbacks) >= chain.max_callbacks:
                    refused = WARNED_CAP
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
            handover.release()
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
        if refused == WARNED_CAP and not inside:
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


def _code_flags(func: functools.partial[object]) -> int:
    """The code flags of the function a partial (or partials in partials) calls; 0 for
    a callable without code of its own."""
    inner: object = func
    while isinstance(inner, functools.partial):
        inner = inner.func
    code = getattr(inner, "__code__", None)
    flags = getattr(code, "co_flags", 0)
    return flags if type(flags) is int else 0


def refuse_generators(func: object, caller: str) -> None:
    """Refuse a generator or async generator function (or a partial of one) as a callback.

    The check :func:`after` makes, for the integrations that take callbacks of their
    own (Django's ``after_commit()``), made at their call: ``caller`` names it.

    :raises TypeError: naming the fix.
    """
    code = getattr(func, "__code__", None)
    if code is not None:
        flags = code.co_flags
    elif type(func) is _partial:
        flags = _code_flags(func)
    else:
        return
    _refuse_generator(func, flags, caller)


def _refuse_generator(func: object, flags: int, caller: str = "after") -> None:
    """Refuse a callback whose call only makes a generator, whose body would never run.

    :raises TypeError: for a generator or async generator function (or a partial of
        one), naming the fix.
    """
    if flags & _CO_ASYNC_GENERATOR:
        raise TypeError(
            f"'{caller}()' cannot run the async generator function '{callback_name(func)}'"
            " to completion. Queue a coroutine function ('async def' with no 'yield')."
        )
    if flags & inspect.CO_GENERATOR and not flags & inspect.CO_ITERABLE_COROUTINE:
        raise TypeError(
            f"'{caller}()' cannot run the generator function '{callback_name(func)}': calling"
            " it only makes a generator, whose body would never run. Queue a plain function"
            " (no 'yield')."
        )


def _refuse_inside(chain: RequestView, func: t.Any, reason: int) -> None:
    """Log, once per chain, that ``after()`` inside a callback was refused."""
    if type(func) is CoroutineType:
        func.close()
    warned = WARNED_TEARDOWN if reason == TEARDOWN else WARNED_CAP
    if chain.notes & warned:
        return
    chain.notes |= warned
    if reason == TEARDOWN:
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


def _in_callback(chain: RequestView) -> bool:
    """Whether this thread is running ``chain``'s callbacks now."""
    return chain.state == RUNNING and chain.thread == _get_ident()
