"""Running a request's callbacks inline, in the thread that closes the response.

With ``WSGI_AFTER["INLINE"] = True`` (or inside ``capture_after_callbacks(execute=True)``)
the callbacks run synchronously when the test client closes the response. A
callback that raises is still logged like on a worker thread, and its exception
is also kept here, so that the middleware raises it from ``response.close()``:
the test that made the request fails instead of passing with an error in the log.

:func:`in_test_transaction` is the other way in: in Django's test mode, a chain
closed while this thread is inside a transaction (a ``TestCase``) runs inline
whatever ``INLINE`` says. On the thread pool its callbacks would commit through
connections of their own, outside the test's transaction (their rows would
outlive its rollback and show up in the next test), and could not see its rows.
"""

from __future__ import annotations

import threading
import typing as t

from django.core import mail
from django.db import connections

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


def in_test_transaction() -> bool:
    """True in Django's test mode while a connection of this thread is in a transaction.

    Test mode is what ``setup_test_environment()`` sets up (Django's test runner,
    pytest-django): it creates ``django.core.mail.outbox``. Only connections this
    thread already opened are looked at; none is opened here.
    """
    if not hasattr(mail, "outbox"):
        return False
    return any(c.in_atomic_block for c in connections.all(initialized_only=True))
