"""Who may run what on a worker: the allow-list policy (the one file to audit).

A message names its callbacks; a worker runs only Celery tasks registered on it
and plain functions defined at module level in the modules its *own*
configuration allows (``wsgi_after_allow``, never read from the message).
Anything else is refused before it is imported, so a writer to the broker cannot
run ``os.system``. The publisher applies the same rules in the request
(:func:`publishable_reference`), so that ``after()`` fails at once with the fix::

    celery_app.conf.wsgi_after_allow = ["shop"]   # shop and its submodules
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import sys
import typing as t
from types import CoroutineType

import celery
import celery.exceptions

from .message import TASK_NAME, safe_text

logger = logging.getLogger("wsgi_after")

#: The Celery configuration key listing the modules whose functions a worker may run.
ALLOW_KEY = "wsgi_after_allow"

# Dotted names with no dunder part: 'shop.__main__' (a package's command line, run
# on import) or 'shop.__init__' (the package imported again) would pass an allow list.
MODULE = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*(\.(?!__)[A-Za-z_][A-Za-z0-9_]*)*")
NAME = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*")  # module level, not a dunder


def allowed_modules(allow: object) -> tuple[str, ...]:
    """Check an allow list (``allow=`` or the ``wsgi_after_allow`` config key).

    :raises ValueError: naming the fix, for anything but a list of module names
        outside the standard library.
    """
    if isinstance(allow, str) or not isinstance(allow, (list, tuple, set, frozenset)):
        raise ValueError(
            f"'allow' must be a list of module names, got {type(allow).__name__!r}:"
            " write allow=['myapp.tasks']."
        )
    names = []
    for name in allow:
        if isinstance(name, str) and (
            name == "__main__" or name.partition(".")[0] in sys.stdlib_module_names
        ):
            raise ValueError(
                f"'allow' must not list {name!r}: a writer to the broker could call its"
                " functions. List only your own modules."
            )
        if not isinstance(name, str) or not MODULE.fullmatch(name):
            raise ValueError(f"'allow' must list module names like 'myapp.tasks', got {name!r}.")
        names.append(name)
    return tuple(sorted(set(names)))


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


def is_allowed(module: str, allow: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in allow)


def not_plain(found: object, module: str, name: str) -> str | None:
    """Why ``found`` (``module.name``) may not run on a worker, or None."""
    if not inspect.isfunction(found):
        return "it is not a plain Python function"
    if found.__module__ != module or found.__qualname__ != name:
        return f"it is defined as '{safe_text(found.__module__)}.{safe_text(found.__qualname__)}'"
    return None


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
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if (
        not inspect.isfunction(func)
        or not isinstance(module, str)
        or module == "__main__"  # a worker's __main__ is Celery's, not this script
        or not isinstance(qualname, str)
        or not NAME.fullmatch(qualname)
    ):
        raise TypeError(fix)
    if not is_allowed(module, allow):
        raise TypeError(
            f"'after()' cannot send '{name}' to Celery: its module {module!r} is not in"
            f" the runner's allow list. Add it: CeleryRunner(celery_app, allow=[{module!r}])"
            f" (the Celery config {ALLOW_KEY!r} on the worker), or make it a Celery task."
        )
    found = vars(sys.modules[module]).get(qualname) if module in sys.modules else None
    if found is not func:
        raise TypeError(fix)
    return f"{module}:{qualname}"


def resolve(app: celery.Celery, reference: str, allow: tuple[str, ...], request: str) -> t.Any:
    """The callback ``reference`` names, if this worker may run it; else log and None."""
    problem = None
    found: t.Any = None
    if reference.startswith("task:"):
        name = reference[len("task:") :]
        found = app.tasks.get(name)
        if name == TASK_NAME or name.startswith("celery.") or not isinstance(found, celery.Task):
            problem = "it is not a task registered on this worker"
    else:
        module, _, name = reference.partition(":")
        if not MODULE.fullmatch(module) or not NAME.fullmatch(name):
            problem = "it does not name a module-level function as 'module:function'"
        elif not is_allowed(module, allow):
            problem = (
                f"module '{module}' is not in this worker's allow list"
                f" (Celery config {ALLOW_KEY!r}: {list(allow)})"
            )
        else:
            try:
                found = vars(importlib.import_module(module)).get(name)
            except (
                KeyboardInterrupt,
                celery.exceptions.WorkerShutdown,
                celery.exceptions.WorkerTerminate,
            ):
                raise  # the worker itself is stopping
            except BaseException:  # an argparse SystemExit too: the message's other callbacks run
                logger.error(
                    "Callback '%s' queued by '%s' cannot be imported on this worker.",
                    safe_text(reference),
                    request,
                    exc_info=True,
                )
                return None
            problem = not_plain(found, module, name)
    if problem is None:
        return found
    logger.error(
        "Refused callback '%s' queued by '%s': %s; it was not run.",
        safe_text(reference),
        request,
        problem,
    )
    return None
