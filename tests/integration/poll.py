"""The one poll-with-deadline of the integration tests.

Servers run in other processes, so a test cannot wait on their events; it polls what
it can see (a port, a table, a log file) against one deadline, and then asserts on
the last value, so a timeout fails with what was seen rather than hanging::

    rows = poll(lambda: runs(db, rid), lambda rows: len(rows) >= 3, timeout=20)
    assert len(rows) == 3
"""

from __future__ import annotations

import time
import typing as t

T = t.TypeVar("T")

#: Seconds between two looks; short enough to add nothing noticeable to a test.
INTERVAL = 0.02


def poll(get: t.Callable[[], T], done: t.Callable[[T], bool], timeout: float = 20.0) -> T:
    """Call ``get()`` until ``done(value)`` or ``timeout`` seconds pass; return the last value."""
    deadline = time.monotonic() + timeout
    value = get()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(INTERVAL)
        value = get()
    return value
