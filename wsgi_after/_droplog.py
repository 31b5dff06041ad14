"""Rate-limited logging of dropped callbacks.

Under sustained overload a pool may drop thousands of callbacks a second, and a
log line for each floods the log. :class:`DropLog` names the first drops of each
interval at once, one line each, then logs one summary line per interval with
the count of every dropped callback by name. Every drop is logged one way or
the other; none is lost silently.
"""

from __future__ import annotations

import collections
import logging
import threading
import typing as t

logger = logging.getLogger("wsgi_after")


class DropLog:
    """Logs drops: the first ``burst`` of each ``interval`` by name, then counts.

    :param reason: the end of each line, saying why callbacks are dropped.
    :param burst: how many drops per interval get a line of their own.
    :param interval: seconds between summary lines while drops go on.
    """

    def __init__(self, reason: str, *, burst: int = 5, interval: float = 10.0) -> None:
        self.reason = reason
        self.burst = burst
        self.interval = interval
        self._lock = threading.Lock()
        self._logged = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._timer: threading.Timer | None = None

    def record(self, names: t.Sequence[str], request: str) -> None:
        """Log that the callbacks ``names`` queued by ``request`` were dropped."""
        with self._lock:
            if self._logged == 0 and self._timer is None:
                self._start_window()
            loud = names[: max(0, self.burst - self._logged)]
            self._logged += len(loud)
            self._counts.update(names[len(loud) :])
        for name in loud:
            logger.error("Dropped callback '%s' queued by '%s': %s", name, request, self.reason)

    def _start_window(self) -> None:
        timer = threading.Timer(self.interval, self.flush)
        timer.daemon = True
        timer.name = "wsgi-after-droplog"
        self._timer = timer
        timer.start()

    def flush(self) -> None:
        """Log the counts of the drops not yet named, and start a new interval."""
        with self._lock:
            counts, self._counts = self._counts, collections.Counter()
            self._logged = 0
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            if counts:
                # Drops go on: keep summarising them every interval.
                self._start_window()
        if counts:
            listed = ", ".join(f"'{name}' x{n}" for name, n in counts.most_common())
            logger.error(
                "Dropped %d more callbacks in the last %.1f s: %s (%s)",
                sum(counts.values()),
                self.interval,
                listed,
                self.reason,
            )

    def close(self) -> None:
        """Log what is pending and stop the timer (at shutdown)."""
        self.flush()
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
