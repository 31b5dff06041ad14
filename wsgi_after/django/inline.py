"""Running a request's callbacks inline, in the thread that closes the response.

With ``WSGI_AFTER["INLINE"] = True`` (or inside ``capture_after_callbacks(execute=True)``)
the callbacks run synchronously when the test client closes the response. A
callback that raises is still logged like on a worker thread, and its exception
is also kept here, so that the middleware raises it from ``response.close()``:
the test that made the request fails instead of passing with an error in the log.
"""

from __future__ import annotations

import threading
import typing as t

from ..runner import run_task

_local = threading.local()


def run_inline(task: t.Callable[[], object]) -> None:
    """Run ``task`` now; keep what its callbacks raise for :func:`take_errors`."""
    errors: list[BaseException] = []
    previous = getattr(_local, "errors", None)
    _local.errors = errors
    try:
        run_task(task)
    finally:
        _local.errors = previous
    pending: list[BaseException] = getattr(_local, "pending", [])
    pending.extend(errors)
    _local.pending = pending


def record_error(error: BaseException) -> None:
    """Keep ``error`` if a callback raised it while :func:`run_inline` runs in this thread."""
    errors = getattr(_local, "errors", None)
    if errors is not None:
        errors.append(error)


def take_errors() -> list[BaseException]:
    """The errors kept in this thread since the last call, oldest first."""
    pending: list[BaseException] = getattr(_local, "pending", [])
    _local.pending = []
    return pending
