"""The one function that runs a request's callbacks: :func:`run_callbacks`.

Whoever holds a request's callbacks runs them through it: the middleware's
:class:`~wsgi_after._chain.Chain` (its ``__call__``, which the runner calls), the
Celery worker and Django's late ``after_commit`` (a :class:`Received` request,
whose response was served elsewhere or already closed)::

    request = Received({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, "200 OK")
    request.callbacks.append(Callback(func, args, kwargs, contextvars.copy_context()))
    request()  # run_callbacks(request): False if a callback failed

For each callback, in order (including those a running callback appends): enter
the request's :attr:`~wsgi_after._request.RequestView.scope` when set, call it
inside its :mod:`contextvars` snapshot, run what it returns to completion when
that is awaitable (a coroutine function's coroutine, a coroutine object), emit
its events while someone listens.

Error policy: a callback that raises anything, :class:`BaseException`
included, is logged on the ``wsgi_after`` logger with its name and the
request's method and path, and the rest still run. :func:`run_callbacks`
returns False when a callback failed; it raises only the first
:class:`KeyboardInterrupt` or :class:`SystemExit` a callback raised, after the
rest ran, so that a runner running it in the server's own thread can pass it
on. A callback that forked and whose child came back here ends the child's run
at once: the child never runs its parent's other callbacks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import typing as t
from types import CoroutineType, GeneratorType

from . import events, lifecycle
from ._request import MAX_CALLBACKS, QUEUED, RUNNING, TEARDOWN, Entry, RequestView, Scope
from .naming import callback_name

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

logger = logging.getLogger("wsgi_after")

_get_ident = threading.get_ident


def run_callbacks(chain: RequestView) -> bool:
    """Run ``chain``'s callbacks in order; False if one failed (see the module's policy)."""
    chain.thread = _get_ident()
    chain.state = RUNNING
    generation = lifecycle.generation
    callbacks = chain.callbacks
    scope = chain.scope
    observed = bool(events.listeners)
    if observed:
        method, path = chain.method_and_path()
    interrupt: BaseException | None = None
    ok = True
    i = 0
    try:
        while i < len(callbacks):  # sees what a running callback appends
            chain.started = i
            func, args, kwargs, ctx = callbacks[i]  # type: ignore[misc]
            chain.notes &= ~TEARDOWN
            # Inside the snapshot: the scope's context, the callback, and the log
            # line of its failure all see the request's context variables.
            if observed:
                error = ctx.run(_run_observed, chain, func, args, kwargs, generation, method, path)
            else:
                # What _run() does, without a frame of ours around the callback: it
                # is called straight in its snapshot (where its failure is logged).
                try:
                    if scope is not None:
                        ctx.run(_call_in_scope, chain, scope, func, args, kwargs)
                    elif type(func) is CoroutineType:
                        ctx.run(_call, func, args, kwargs)
                    else:
                        if kwargs:
                            result = ctx.run(func, *args, **kwargs)
                        elif args:
                            result = ctx.run(func, *args)
                        else:  # (the cheapest call: no tuple to build)
                            result = ctx.run(func)
                        if result is not None:
                            ctx.run(_finish, func, result)
                    error = None
                except BaseException as e:
                    error = e
                    if lifecycle.generation == generation:  # not a forked child leaving
                        ctx.run(_log_failure, chain, func, e)
            if error is not None:
                if lifecycle.generation != generation:
                    raise error  # a forked child leaving: never run the parent's callbacks
                ok = False
                if interrupt is None and isinstance(error, (KeyboardInterrupt, SystemExit)):
                    interrupt = error
            if lifecycle.generation != generation:
                return ok  # a forked child that returned from the callback
            callbacks[i] = func = args = kwargs = ctx = error = result = None
            i += 1
    finally:
        if lifecycle.generation == generation:
            chain.release()
    if interrupt is not None:
        try:
            raise interrupt
        finally:
            interrupt = None
    return ok


def _run(
    chain: RequestView,
    scope: Scope | None,
    func: t.Any,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
    generation: int,
) -> BaseException | None:
    """Run one callback, in ``scope`` when given; log its failure by name, here inside
    its context. Return what it raised, else None. (:func:`run_callbacks` does the
    same inline when no one listens to the events: a frame less per callback.)"""
    try:
        if scope is not None:
            _call_in_scope(chain, scope, func, args, kwargs)
        else:
            _call(func, args, kwargs)
    except BaseException as e:
        if lifecycle.generation == generation:  # not in a forked child that is leaving
            _log_failure(chain, func, e)
        return e
    return None


def _log_failure(chain: RequestView, func: t.Any, error: BaseException) -> None:
    """Log a callback's failure by name (called inside its context)."""
    logger.error(
        "Callback '%s' queued by '%s' raised %s.",
        callback_name(func),
        chain.describe(),  # the chain is released only after its last callback
        type(error).__name__,
        exc_info=error,
    )


def _call(func: t.Any, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> None:
    """Call a callback; run an awaitable (given, or returned) to completion."""
    if type(func) is CoroutineType:
        asyncio.run(func)
        return
    result = func(*args, **kwargs)
    if result is not None:
        _finish(func, result)


def _finish(func: t.Any, result: object) -> None:
    """Run what a callback returned to completion, when it is awaitable; a generator
    (whose body would never run) is the callback's failure."""
    if type(result) is CoroutineType:
        asyncio.run(result)
    elif inspect.isawaitable(result):
        asyncio.run(_await(result))
    elif inspect.isasyncgen(result):
        raise TypeError(
            f"'{callback_name(func)}' returned an async generator, which cannot be run"
            " to completion. Queue a coroutine function instead."
        )
    elif type(result) is GeneratorType:  # a callable object whose __call__ has a 'yield'
        result.close()
        raise TypeError(
            f"'{callback_name(func)}' returned a generator, whose body never runs."
            " Queue a plain function (no 'yield')."
        )


async def _await(awaitable: t.Awaitable[object]) -> None:
    await awaitable


def _call_in_scope(
    chain: RequestView,
    scope: Scope,
    func: t.Any,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
) -> None:
    with scope():
        try:
            _call(func, args, kwargs)
        finally:
            chain.notes |= TEARDOWN


def _run_observed(
    chain: RequestView,
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


class Received(RequestView):
    """A request whose response was served elsewhere, or already closed: its
    callbacks, run by :func:`run_callbacks` when called.

    The Celery worker makes one per message (the status, whether the body was
    sent and the error travel in it); Django's ``after_commit`` one per
    transaction that committed after its response closed.

    :param environ: what the callbacks' log lines and events name the request by
        (``REQUEST_METHOD``, ``PATH_INFO``).
    :param status: the status line the client got, if known.
    :param completed: whether the body was fully sent.
    :param error: the exception the app raised, if any.
    :param scope: a factory of the context manager entered around each callback.
    :param description: what log lines name the request by, instead of ``METHOD /path``
        (a task enqueued outside any request).
    """

    __slots__ = (
        "callbacks",
        "closed_at",
        "completed",
        "description",
        "environ",
        "error",
        "max_callbacks",
        "notes",
        "runner",
        "scope",
        "started",
        "state",
        "status",
        "thread",
    )

    def __init__(
        self,
        environ: WSGIEnvironment,
        status: str | None = None,
        *,
        completed: bool = True,
        error: BaseException | None = None,
        scope: Scope | None = None,
        description: str | None = None,
    ) -> None:
        self.callbacks: list[Entry | None] = []
        self.description = description
        self.environ: WSGIEnvironment | None = environ
        self.status = status
        self.completed = completed
        self.error = error
        self.scope = scope
        self.started = self.notes = 0
        self.state = QUEUED
        self.closed_at = 0.0
        self.runner = None  # after() from a callback asks it nothing (check_callback)
        self.max_callbacks = MAX_CALLBACKS

    __call__ = run_callbacks

    def sent_all(self) -> bool:
        return self.completed

    def describe(self) -> str:
        if self.description is not None:
            return self.description
        return super().describe()
