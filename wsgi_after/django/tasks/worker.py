"""The task that runs a request's ``after()`` callbacks on a django.tasks worker.

:class:`~wsgi_after.django.tasks.TasksRunner` enqueues :data:`run_callbacks`
with one message per request; the backend's worker (django-tasks-db's
``manage.py db_worker``, an RQ worker...) imports this module by the task's path
and runs it. Safe by construction: the message names its callbacks as
``module:function``, and only plain functions defined at module level in the
modules of *this process's* ``WSGI_AFTER["ALLOW"]`` run; anything else is
refused, logged by name, before it is imported. The callbacks run in order as
the request's chain: each failure logged by name, :func:`wsgi_after.outcome`
answering with the request's status, a nested ``after()`` running after them.
"""

from __future__ import annotations

import logging
import typing as t

from ... import remote
from ..conf import options
from . import envelope
from .compat import task

logger = logging.getLogger("wsgi_after")


class CallbacksFailed(RuntimeError):
    """Raised by :data:`run_callbacks` (so the task is ``FAILED``) when a callback
    failed or was refused; each one was logged by name already."""


def _run_callbacks(message: dict[str, t.Any]) -> None:
    """Run the callbacks of one request's message (packed or not); see the module."""
    try:
        parsed = remote.parse_message(envelope.unpack(message))
    except ValueError as e:
        logger.error("Refused a 'wsgi_after' callbacks message: %s.", e)
        raise CallbacksFailed(f"Refused a malformed callbacks message: {e}.") from None
    if not remote.run_message(parsed, options().allow):
        raise CallbacksFailed(
            f"A callback queued by '{remote.describe(parsed._asdict())}' failed or was"
            " refused; the log names it."
        )


# The task's path, wsgi_after.django.tasks.worker.run_callbacks, must name the task: the
# function carries that name, and __getattr__ builds the task under it at first use (it
# reads the settings, which importing this module must not need).
_run_callbacks.__name__ = _run_callbacks.__qualname__ = "run_callbacks"


def __getattr__(name: str) -> t.Any:
    """``run_callbacks``: the task, on the backend ``WSGI_AFTER["TASKS_BACKEND"]``
    (``TasksRunner`` picks its own with ``.using()``), built at first use."""
    if name != "run_callbacks":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = task(backend=options().tasks_backend)(_run_callbacks)
    globals()[name] = built
    return built
