"""Who may run what in another process: the allow-list policy (the one file to audit).

A runner that hands callbacks to another process (``CeleryRunner``'s worker, a
``django.tasks`` worker) names each one as ``module:function``. That process runs
only plain functions defined at module level in the modules of *its own* allow
list, never one read from the message; anything else is refused before it is
imported, so a writer of the queue cannot run ``os.system``. The sending side
applies the same rules in the request (:func:`refusal`), so that ``after()`` fails
at once with the fix. Stdlib only: both runners share it::

    allow = allowed_modules(["shop"])  # shop and its submodules
    refusal(send_receipt, allow)  # None: a worker would run it
    func = resolve("shop.tasks:send_receipt", allow, "POST /orders", shown=" ['shop']")
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import sys
import typing as t

from .naming import safe

logger = logging.getLogger("wsgi_after")

# Dotted names with no dunder part: 'shop.__main__' (a package's command line, run
# on import) or 'shop.__init__' (the package imported again) would pass an allow list.
MODULE = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*(\.(?!__)[A-Za-z_][A-Za-z0-9_]*)*")
NAME = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*")  # module level, not a dunder


def allowed_modules(
    allow: object, *, setting: str = "'allow'", example: str = "allow=['myapp.tasks']"
) -> tuple[str, ...]:
    """Check an allow list: module names outside the standard library, sorted.

    :param setting: how the caller's users name the list, for the error text.
    :param example: how they write one, for the error text.
    :raises ValueError: naming the fix, for anything else.
    """
    if isinstance(allow, str) or not isinstance(allow, (list, tuple, set, frozenset)):
        raise ValueError(
            f"{setting} must be a list of module names, got {type(allow).__name__!r}:"
            f" write {example}."
        )
    names = []
    for name in allow:
        if isinstance(name, str) and (
            name == "__main__" or name.partition(".")[0] in sys.stdlib_module_names
        ):
            raise ValueError(
                f"{setting} must not list {name!r}: a writer of the queue could call its"
                " functions. List only your own modules."
            )
        if not isinstance(name, str) or not MODULE.fullmatch(name):
            raise ValueError(f"{setting} must list module names like 'myapp.tasks', got {name!r}.")
        names.append(name)
    return tuple(sorted(set(names)))


def is_allowed(module: str, allow: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``allow`` or a submodule of one."""
    return any(module == name or module.startswith(name + ".") for name in allow)


Refusal = t.Literal["shape", "module", "name"]


def refusal(func: object, allow: tuple[str, ...]) -> Refusal | None:
    """Why a worker under ``allow`` would refuse ``func``, or None if it would run it.

    ``"shape"``: not a plain function defined at module level of a module the
    worker would import (not ``__main__``, no dunder part); ``"module"``: its
    module is not allowed; ``"name"``: its module holds something else under its
    name. Callers word the error for their users.
    """
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if (
        not inspect.isfunction(func)
        or not isinstance(module, str)
        or not MODULE.fullmatch(module)  # '__main__' too: a worker's is not this script
        or not isinstance(qualname, str)
        or not NAME.fullmatch(qualname)
    ):
        return "shape"
    if not is_allowed(module, allow):
        return "module"
    if module not in sys.modules or vars(sys.modules[module]).get(qualname) is not func:
        return "name"
    return None


def resolve(
    reference: str,
    allow: tuple[str, ...],
    request: str,
    *,
    shown: str,
    stopping: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
) -> t.Any:
    """The function ``reference`` (``module:function``) names, if ``allow`` lets it
    run here; else None, logged at ERROR by name and ``request``.

    A module outside ``allow`` (or with a dunder part) is never imported. An import
    that fails in any way, ``SystemExit`` included (an argparse command line), is
    logged with its traceback: the message's other callbacks still run.

    :param shown: how the log line shows the allow list after its name.
    :param stopping: exceptions that stop the process itself, raised through.
    """
    module, _, name = reference.partition(":")
    if not MODULE.fullmatch(module) or not NAME.fullmatch(name):
        return refuse(
            reference, request, "it does not name a module-level function as 'module:function'"
        )
    if not is_allowed(module, allow):
        return refuse(
            reference, request, f"module '{module}' is not in this worker's allow list{shown}"
        )
    try:
        found = vars(importlib.import_module(module)).get(name)
    except stopping:
        raise
    except BaseException:
        logger.error(
            "Callback '%s' queued by '%s' cannot be imported on this worker.",
            bounded(reference),
            request,
            exc_info=True,
        )
        return None
    if not inspect.isfunction(found):
        return refuse(reference, request, "it is not a plain Python function")
    if found.__module__ != module or found.__qualname__ != name:
        where = f"{bounded(found.__module__)}.{bounded(found.__qualname__)}"
        return refuse(reference, request, f"it is defined as '{where}'")
    return found


def refuse(reference: str, request: str, problem: str) -> None:
    """Log that the callback ``reference`` queued by ``request`` is refused, and why."""
    logger.error(
        "Refused callback '%s' queued by '%s': %s; it was not run.",
        bounded(reference),
        request,
        problem,
    )


def bounded(text: object, limit: int = 200) -> str:
    """``text`` for a log line (it may come from a forged message): escaped, bounded."""
    text = safe(text)
    return text if len(text) <= limit else text[:limit] + "..."
