"""Aggregated logging of callbacks that were not run.

Under sustained overload a pool may drop thousands of callbacks a second, and
at shutdown thousands may still be queued: a log line for each floods the log.
:class:`LossLog` names the first losses of each interval at once, one ERROR line
each, then logs one summary line per interval with the count of every lost
callback by name. Every loss is logged one way or the other; none is silent::

    drops = LossLog("the queue is full (max_pending=1000).")
    drops.record(["app.audit", "app.notify"], "POST /orders")
    ...
    drops.close()  # at shutdown: the summary of what is pending, at once

Names and requests should already be log-safe (:mod:`wsgi_after.naming`).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import typing as t
import weakref


class _AlwaysEnabled(logging.Logger):
    """The ``wsgi_after`` logger's class: ``disabled`` is always False.

    ``logging.config.dictConfig`` with ``disable_existing_loggers`` (its default, and
    Django's ``LOGGING`` without ``'disable_existing_loggers': False``) disables every
    logger that exists and that it does not name, so one configured after the import
    would silence every loss. Silence the logger with a level instead.
    """

    @property
    def disabled(self) -> bool:
        return False

    @disabled.setter
    def disabled(self, value: bool) -> None:
        pass  # never disabled: losses are not lost silently


logger = logging.getLogger("wsgi_after")
# Every module's getLogger("wsgi_after") returns this one object: switch its class
# once, here (the core imports this module before anything logs).
logger.__class__ = _AlwaysEnabled


class LossLog:
    """Logs lost callbacks: the first ``burst`` of each ``interval`` by name, then counts.

    :param reason: the end of each line, saying why the callbacks were not run.
    :param burst: how many losses per interval get a line of their own.
    :param interval: seconds between summary lines while losses go on.
    """

    def __init__(self, reason: str, *, burst: int = 5, interval: float = 10.0) -> None:
        self.reason = reason
        self.burst = burst
        self.interval = interval
        self.reset()
        _every.add(self)

    def reset(self) -> None:
        """Forget everything: at init, and in a child after ``fork()`` (the parent's
        lock may be held by a thread that does not exist there, and its timer is gone).
        Every loss log, a module's own included, is reset in a forked child."""
        self._lock = threading.RLock()  # re-entrant: a chain's __del__ may log from a GC pass
        self._logged = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._timer: threading.Timer | None = None

    def record(self, names: t.Sequence[str], request: str) -> None:
        """Log that the callbacks ``names`` queued by ``request`` were not run."""
        with self._lock:
            if self._logged == 0 and self._timer is None:
                self._start_window()
            loud = names[: max(0, self.burst - self._logged)]
            self._logged += len(loud)
            self._counts.update(names[len(loud) :])
        for name in loud:
            logger.error("Callback '%s' queued by '%s' was not run: %s", name, request, self.reason)

    def _start_window(self) -> None:
        timer = threading.Timer(self.interval, self.flush)
        timer.daemon = True
        timer.name = "wsgi-after-losslog"
        self._timer = timer
        try:
            timer.start()
        except RuntimeError:  # no thread to be had (or the interpreter is exiting)
            self._timer = None

    def flush(self) -> None:
        """Log the counts of the losses not yet named, and start a new interval."""
        with self._lock:
            counts, self._counts = self._counts, collections.Counter()
            self._logged = 0
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            if counts:
                # Losses go on: keep summarising them every interval.
                self._start_window()
        if counts:
            listed = ", ".join(f"'{name}' x{n}" for name, n in counts.most_common())
            logger.error(
                "%d more callbacks were not run in the last %.1f s: %s (%s)",
                sum(counts.values()),
                self.interval,
                listed,
                self.reason,
            )

    def close(self) -> None:
        """Log what is pending now and stop the timer (at shutdown)."""
        self.flush()
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


# Every loss log of the process, for the fork hook below (held weakly).
_every: weakref.WeakSet[LossLog] = weakref.WeakSet()


def _reset_every_loss_log() -> None:
    for loss_log in list(_every):
        loss_log.reset()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_reset_every_loss_log)
