"""Callbacks run by another process: the allow-list policy, the message, the replay.

A runner that hands a request's callbacks to another process (a ``django.tasks``
backend's worker) sends a *message* naming each callback as ``module:function``
with JSON arguments. The process that runs it trusts nothing in it: only plain
functions defined at module level in a module of *its own* allow list run::

    from wsgi_after import remote

    allow = remote.allowed_modules(["shop.tasks"])
    reference = remote.reference(send_receipt, allow, who="TasksRunner")  # in the request
    message = remote.make_message(chain, [remote.Sent(reference, [order_id], {})])
    ...
    remote.run_message(remote.parse_message(message), allow)  # on the worker

:func:`run_message` runs the callbacks as a request's chain (in order, each
failure logged by name, :func:`wsgi_after.outcome` answering with the request's
status) through :func:`wsgi_after._execute.run_callbacks`, as every request's. Stdlib only.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import json
import logging
import re
import sys
import typing as t

from ._context import CURRENT
from ._execute import Received
from ._request import Callback, RequestView
from .naming import callback_name, safe

logger = logging.getLogger("wsgi_after")

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NAME = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*")  # module level, not a dunder


class RemoteError(Exception):
    """The request's error as :func:`wsgi_after.outcome` reports it in the other process.

    Only the exception's type name and message travel.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class Sent(t.NamedTuple):
    """One callback as the message carries it: ``module:function`` and JSON arguments."""

    func: str
    args: list[t.Any]
    kwargs: dict[str, t.Any]


class Message(t.NamedTuple):
    """A request's callbacks and the request's outcome, as the other process reads them."""

    method: str
    path: str
    status: str | None
    completed: bool
    error: tuple[str, str] | None
    callbacks: list[Sent]


def allowed_modules(allow: object, *, setting: str = "allow") -> tuple[str, ...]:
    """Check an allow list: module names outside the standard library.

    :param setting: how the caller's users name the list, for the error text.
    :raises ValueError: naming the fix, for anything else.
    """
    if isinstance(allow, str) or not isinstance(allow, (list, tuple, set, frozenset)):
        raise ValueError(
            f"{setting} must be a list of module names, got {type(allow).__name__!r}:"
            " write ['myapp.tasks']."
        )
    names = []
    for name in allow:
        if not isinstance(name, str) or not _MODULE.fullmatch(name):
            raise ValueError(f"{setting} must list module names like 'myapp.tasks', got {name!r}.")
        top = name.partition(".")[0]
        if name == "__main__" or top in sys.stdlib_module_names:
            raise ValueError(
                f"{setting} must not list {name!r}: a writer of the queue could call its"
                " functions. List only your own modules."
            )
        names.append(name)
    return tuple(sorted(set(names)))


def is_allowed(module: str, allow: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``allow`` or a submodule of one."""
    return any(module == name or module.startswith(name + ".") for name in allow)


def reference(func: object, allow: tuple[str, ...], *, who: str, fix: str) -> str:
    """``module:function`` for ``func``, or :class:`TypeError` naming the fix.

    :param who: the runner, for the error text (``'TasksRunner'``).
    :param fix: how its users add a module to the allow list.
    """
    name = callback_name(func)
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if (
        not inspect.isfunction(func)
        or not isinstance(module, str)
        or module == "__main__"  # a worker's __main__ is not this script
        or not isinstance(qualname, str)
        or not _NAME.fullmatch(qualname)
    ):
        raise TypeError(
            f"'after()' cannot send '{name}' through {who}: its worker runs only"
            " module-level functions of the modules in the allow list. Define it at"
            " module level."
        )
    if not is_allowed(module, allow):
        raise TypeError(
            f"'after()' cannot send '{name}' through {who}: its module {module!r} is not"
            f" in the allow list. Add it: {fix.format(module=module)}."
        )
    if module not in sys.modules or vars(sys.modules[module]).get(qualname) is not func:
        raise TypeError(
            f"'after()' cannot send '{name}' through {who}: '{module}.{qualname}' is not"
            " this function. Define it at module level under its own name."
        )
    return f"{module}:{qualname}"


def json_arguments(
    name: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any], *, who: str
) -> tuple[list[t.Any], dict[str, t.Any]]:
    """The arguments as the worker will get them: JSON-encoded and decoded now.

    :raises TypeError: naming the fix, if they are not JSON.
    """
    try:
        copied = json.loads(json.dumps([list(args), kwargs], allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"'after()' cannot send the arguments of '{name}' through {who}: {e}."
            " Pass JSON values, such as ids rather than objects."
        ) from None
    return copied[0], copied[1]


def make_message(chain: RequestView, callbacks: list[Sent]) -> dict[str, t.Any]:
    """The JSON message for ``callbacks`` of ``chain`` (its method, path and outcome)."""
    method, path = chain.method_and_path()
    error = chain.error
    return {
        "method": method,
        "path": path,
        "status": chain.status,
        "completed": chain.sent_all(),
        "error": None if error is None else [type(error).__name__, str(error)],
        "callbacks": [dict(c._asdict()) for c in callbacks],
    }


def describe(message: t.Mapping[str, t.Any]) -> str:
    """``METHOD /path`` of a message, log-safe."""
    return f"{bounded(message.get('method'))} {bounded(message.get('path'))}"


def bounded(text: object, limit: int = 200) -> str:
    """``text`` for a log line (it may come from a forged message): escaped, bounded."""
    text = safe(text)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_message(message: object) -> Message:
    """The fields of a message, or :class:`ValueError` saying what is malformed (no values)."""
    if not isinstance(message, dict):
        raise ValueError("the message is not a mapping")
    method, path = message.get("method"), message.get("path")
    status, completed = message.get("status"), message.get("completed")
    error, callbacks = message.get("error"), message.get("callbacks")
    if not isinstance(method, str) or not isinstance(path, str):
        raise ValueError("'method' and 'path' must be strings")
    if status is not None and not isinstance(status, str):
        raise ValueError("'status' must be a string or null")
    if not isinstance(completed, bool):
        raise ValueError("'completed' must be a boolean")
    if error is not None and not (
        isinstance(error, list) and len(error) == 2 and all(isinstance(e, str) for e in error)
    ):
        raise ValueError("'error' must be null or two strings")
    if not isinstance(callbacks, list):
        raise ValueError("'callbacks' must be a list")
    parsed = []
    for callback in callbacks:
        if not isinstance(callback, dict):
            raise ValueError("each callback must be a mapping")
        func, args, kwargs = callback.get("func"), callback.get("args", []), callback.get("kwargs")
        if not isinstance(func, str) or not isinstance(args, list):
            raise ValueError("each callback needs a string 'func' and a list 'args'")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError("each callback's 'kwargs' must map strings")
        parsed.append(Sent(func, args, kwargs))
    return Message(
        method, path, status, completed, None if error is None else (error[0], error[1]), parsed
    )


def resolve(func: str, allow: tuple[str, ...]) -> tuple[t.Any, str | None]:
    """The function ``func`` (``module:function``) names and None, or None and why it
    may not run here. A module outside ``allow`` is never imported."""
    module, _, name = func.partition(":")
    if not _MODULE.fullmatch(module) or not _NAME.fullmatch(name):
        return None, "it does not name a module-level function as 'module:function'"
    if not is_allowed(module, allow):
        return None, f"module '{module}' is not in this worker's allow list {list(allow)}"
    try:
        found = vars(importlib.import_module(module)).get(name)
    except Exception as e:
        return None, f"importing module '{module}' raised {type(e).__name__}"
    if not inspect.isfunction(found):
        return None, "it is not a plain Python function"
    if found.__module__ != module or found.__qualname__ != name:
        return None, f"it is defined as '{bounded(found.__module__)}.{bounded(found.__qualname__)}'"
    return found, None


def run_message(message: Message, allow: tuple[str, ...]) -> bool:
    """Run the message's allowed callbacks in order, as the request's chain would.

    Error policy: a callback refused (not allowed, not importable) is logged at
    ERROR by name and the request, and not run; one that raises is logged by the
    chain, and the rest still run. Returns False when one was refused or failed.

    :param allow: this process's allow list (see :func:`allowed_modules`), never
        the message's.
    """
    request = f"{bounded(message.method)} {bounded(message.path)}"
    environ = {"REQUEST_METHOD": bounded(message.method), "PATH_INFO": bounded(message.path, 2000)}
    error = None if message.error is None else RemoteError(*message.error)
    chain = Received(environ, message.status, completed=message.completed, error=error)
    ok = True
    token = CURRENT.set(chain)  # so that outcome() and nested after() find this chain
    try:
        for sent in message.callbacks:
            func, problem = resolve(sent.func, allow)
            if problem is not None:
                ok = False
                logger.error(
                    "Refused callback '%s' queued by '%s': %s; it was not run.",
                    bounded(sent.func),
                    request,
                    problem,
                )
                continue
            context = contextvars.copy_context()
            chain.callbacks.append(Callback(func, tuple(sent.args), sent.kwargs, context))
    finally:
        CURRENT.reset(token)
    return chain() is not False and ok
