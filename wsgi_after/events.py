"""Callback events: the seam that tracing, metrics and error reporting listen on.

Subscribe a listener, a callable taking one :class:`CallbackEvent`, and it is
called for every callback of every request in the process::

    from wsgi_after import events

    def count(event):
        if event.kind == "failed":
            statsd.increment("after.failed", tags=[f"callback:{event.name}"])

    events.subscribe(count)

The kinds, in a callback's life:

* ``"queued"``: :func:`~wsgi_after.after` accepted it (in the request's thread);
* ``"started"``, then ``"finished"`` or ``"failed"`` (with ``error``): on the
  thread that runs it, *inside* the callback's :mod:`contextvars` snapshot, so
  a listener sees the request's trace context and may set context variables
  that the callback sees; ``queue_delay`` is the time from the response's
  ``close()`` to the start, ``run_time`` the callback's own duration;
* ``"dropped"`` (the runner's queue was full), ``"lost"`` (not run at
  shutdown; a :class:`~wsgi_after.celery.CeleryRunner` message given up on),
  ``"never_closed"`` (the server never called ``close()``): where the library
  logs the loss;
* ``"slow"``: a :class:`~wsgi_after.ThreadRunner` with ``slow_callback`` saw
  the callback run longer than that (``run_time`` so far), logged once.

An event's ``runner`` is the runner that ran, dropped or lost the callback, so
that a listener can tell runners apart (``CallbackStats().install(runner)``,
what ``ThreadRunner(callback_stats=True)`` does). The library's runners say who
they are: their worker threads with :func:`set_runner` once as they start, a
task run in another thread inside :func:`running_for`. It is None for
``"queued"`` and ``"never_closed"`` (no runner has the callback yet), for
another runner (a :class:`~concurrent.futures.ThreadPoolExecutor`), and on a
Celery worker.

Nothing is computed for events while nobody listens: the hot path checks one
list. A listener that raises anything (``BaseException`` included) is logged;
the callback and the request never see its error.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import typing as t
import weakref

logger = logging.getLogger("wsgi_after")

Kind = t.Literal[
    "queued", "started", "finished", "failed", "dropped", "lost", "never_closed", "slow"
]


class CallbackEvent(t.NamedTuple):
    """One thing that happened to one callback."""

    #: What happened (see the module's docstring).
    kind: Kind
    #: The callback's ``module.qualname``.
    name: str
    #: The request's method (raw: escape it with :func:`wsgi_after.naming.safe` for logs).
    method: str
    #: The request's path, ``SCRIPT_NAME + PATH_INFO`` (raw, as for ``method``).
    path: str
    #: Seconds from the response's ``close()`` to the callback's start (started and after).
    queue_delay: float | None = None
    #: Seconds the callback ran (finished and failed).
    run_time: float | None = None
    #: What the callback raised (failed).
    error: BaseException | None = None
    #: The runner that ran, dropped or lost it (see the module's docstring).
    runner: object | None = None


#: The outcome a metric counts for each kind of event that ends a callback's life
#: (a never-closed callback is lost; "slow" is counted apart by those who track it).
OUTCOMES: dict[str, str] = {
    "finished": "completed",
    "failed": "failed",
    "dropped": "dropped",
    "lost": "lost",
    "never_closed": "lost",
}

Listener = t.Callable[[CallbackEvent], object]

#: The listeners, in subscription order. The core tests this list's truth before
#: building any event, so it costs nothing while empty.
listeners: list[Listener] = []


def subscribe(listener: Listener) -> Listener:
    """Call ``listener(event)`` for every callback event in this process.

    Returns ``listener``, so it works as a decorator. Subscribing the same
    listener twice is a no-op.

    :raises TypeError: if ``listener`` is not callable.
    """
    if not callable(listener):
        raise TypeError(
            f"'subscribe()' needs a callable taking one 'CallbackEvent',"
            f" got {type(listener).__name__!r}."
        )
    if listener not in listeners:
        listeners.append(listener)
    return listener


def unsubscribe(listener: Listener) -> None:
    """Stop calling ``listener``; a listener that is not subscribed is ignored."""
    if listener in listeners:
        listeners.remove(listener)


class _Attribution(threading.local):
    """The runner whose tasks this thread runs, held weakly (a freed runner's
    threads must not keep it alive)."""

    runner: t.Callable[[], object | None] | None = None


_attribution = _Attribution()

#: The kinds emitted while the callback runs, in the thread that runs it.
_RUN_KINDS = frozenset(("started", "finished", "failed"))
_tuple_new = tuple.__new__


def current_runner() -> object | None:
    """The runner this thread runs tasks for now (see :func:`set_runner`), or None."""
    ref = _attribution.runner
    return None if ref is None else ref()


def set_runner(runner: object | None) -> object | None:
    """Attribute the events of the callbacks this thread runs to ``runner`` (held
    weakly) from now on; returns the previous one. A runner's worker threads
    call it once as they start, so that running a task costs nothing more."""
    previous = current_runner()
    _attribution.runner = None if runner is None else weakref.ref(runner)
    return previous


@contextlib.contextmanager
def running_for(runner: object) -> t.Iterator[None]:
    """Attribute the events of the callbacks run in this block to ``runner``: for a
    task a runner runs in another thread than its own (the submitting thread)."""
    previous = set_runner(runner)
    try:
        yield
    finally:
        set_runner(previous)


def emit(event: CallbackEvent) -> None:
    """Call every listener with ``event``; a listener's error is logged, never raised,
    whatever it is (a ``BaseException`` such as ``gevent.Timeout`` included).

    A ``"started"``, ``"finished"`` or ``"failed"`` event without a runner gets this
    thread's (:func:`current_runner`).
    """
    if event.runner is None and event.kind in _RUN_KINDS:
        runner = current_runner()
        if runner is not None:  # a copy that names it (cheaper than _replace)
            event = _tuple_new(CallbackEvent, (*event[:-1], runner))
    for listener in tuple(listeners):
        try:
            listener(event)
        except BaseException:  # gevent.Timeout too: it would skip the request's callbacks
            logger.exception("Event listener %r raised on a %r event.", listener, event.kind)


def emit_each(
    kind: Kind, names: t.Sequence[str], method: str, path: str, runner: object | None = None
) -> None:
    """Emit one ``kind`` event per callback name (drops and losses) of ``runner``."""
    for name in names:
        emit(CallbackEvent(kind, name, method, path, runner=runner))
