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
  shutdown), ``"never_closed"`` (the server never called ``close()``): where
  the library logs the loss;
* ``"slow"``: a :class:`~wsgi_after.ThreadRunner` with ``slow_callback`` saw
  the callback run longer than that (``run_time`` so far), logged once.

Nothing is computed for events while nobody listens: the hot path checks one
list. A listener that raises is logged; the callback and the request never
see its error.
"""

from __future__ import annotations

import logging
import typing as t

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


def emit(event: CallbackEvent) -> None:
    """Call every listener with ``event``; a listener's error is logged, never raised."""
    for listener in tuple(listeners):
        try:
            listener(event)
        except Exception:
            logger.exception("Event listener %r raised on a %r event.", listener, event.kind)


def emit_each(kind: Kind, names: t.Sequence[str], method: str, path: str) -> None:
    """Emit one ``kind`` event per callback name (drops and losses)."""
    for name in names:
        emit(CallbackEvent(kind, name, method, path))
