"""Who may run what on a Celery worker: the allow list's Celery side.

The rules are :mod:`wsgi_after.allowlist`'s (the one file to audit, shared with
``TasksRunner``): a worker runs only plain functions defined at module level in
the modules its *own* configuration allows (``wsgi_after_allow``, never read from
the message), and refuses anything else before it is imported, so a writer to
the broker cannot run ``os.system``. This module adds what is Celery's: the
config key, Celery tasks registered on the worker, and the errors the publisher
raises in the request (:func:`publishable_reference`), so that ``after()`` fails
at once with the fix::

    celery_app.conf.wsgi_after_allow = ["shop"]   # shop and its submodules
"""

from __future__ import annotations

import typing as t
from types import CoroutineType

import celery
import celery.exceptions

from .. import allowlist
from ..allowlist import MODULE as MODULE
from ..allowlist import NAME as NAME
from ..allowlist import is_allowed as is_allowed
from .message import TASK_NAME

#: The Celery configuration key listing the modules whose functions a worker may run.
ALLOW_KEY = "wsgi_after_allow"


def allowed_modules(allow: object) -> tuple[str, ...]:
    """Check an allow list (``allow=`` or the ``wsgi_after_allow`` config key).

    :raises ValueError: naming the fix, for anything but a list of module names
        outside the standard library (:func:`wsgi_after.allowlist.allowed_modules`).
    """
    return allowlist.allowed_modules(allow)


def configure_allow(celery_app: celery.Celery, allow: t.Iterable[str] | None) -> tuple[str, ...]:
    configured = celery_app.conf.get(ALLOW_KEY)
    if allow is None:
        return () if configured is None else allowed_modules(configured)
    names = allowed_modules(list(allow) if not isinstance(allow, str) else allow)
    if configured is None:
        celery_app.conf[ALLOW_KEY] = list(names)  # what a worker of this app reads
    elif allowed_modules(configured) != names:
        raise ValueError(
            f"'allow' {list(names)} differs from the Celery config {ALLOW_KEY!r}"
            f" {list(allowed_modules(configured))}: set one of them."
        )
    return names


def publishable_reference(func: t.Any, name: str, allow: tuple[str, ...]) -> str:
    """``task:NAME`` or ``module:name`` for ``func``, or TypeError naming the fix."""
    if isinstance(func, celery.Task):
        return f"task:{func.name}"
    fix = (
        f"'after()' cannot send '{name}' to Celery: a worker runs only Celery tasks and"
        " module-level functions of the modules in 'allow'. Define it at module level,"
        " or make it a Celery task."
    )
    if type(func) is CoroutineType:
        raise TypeError(fix.replace("Define it", "Pass the coroutine function, defined"))
    problem = allowlist.refusal(func, allow)
    module = getattr(func, "__module__", None)
    if problem == "module":
        raise TypeError(
            f"'after()' cannot send '{name}' to Celery: its module {module!r} is not in"
            f" the runner's allow list. Add it: CeleryRunner(celery_app, allow=[{module!r}])"
            f" (the Celery config {ALLOW_KEY!r} on the worker), or make it a Celery task."
        )
    if problem is not None:
        raise TypeError(fix)
    qualname = getattr(func, "__qualname__", None)
    return f"{module}:{qualname}"


def resolve(app: celery.Celery, reference: str, allow: tuple[str, ...], request: str) -> t.Any:
    """The callback ``reference`` names, if this worker may run it; else log and None.

    ``task:NAME`` is a Celery task registered here; ``module:function`` follows
    :func:`wsgi_after.allowlist.resolve`. A stopping worker's exceptions go through.
    """
    if not reference.startswith("task:"):
        return allowlist.resolve(
            reference,
            allow,
            request,
            shown=f" (Celery config {ALLOW_KEY!r}: {list(allow)})",
            stopping=(
                KeyboardInterrupt,
                celery.exceptions.WorkerShutdown,
                celery.exceptions.WorkerTerminate,
            ),
        )
    name = reference[len("task:") :]
    found = app.tasks.get(name)
    if name == TASK_NAME or name.startswith("celery.") or not isinstance(found, celery.Task):
        return allowlist.refuse(reference, request, "it is not a task registered on this worker")
    return found
