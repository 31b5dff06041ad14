"""Callbacks run by another process: the message, and its replay as a request's chain.

A runner that hands a request's callbacks to another process (a ``django.tasks``
backend's worker) sends a *message* naming each callback as ``module:function``
with JSON arguments (:class:`Message`, a named, versioned record; Celery's
messages are the same record). The process that runs it trusts nothing in it:
only plain functions defined at module level in a module of *its own* allow list
run (:mod:`wsgi_after.allowlist`, the one policy)::

    from wsgi_after import remote

    allow = remote.allowed_modules(["shop.tasks"])
    reference = remote.reference(send_receipt, allow, who="TasksRunner")  # in the request
    message = remote.make_message(chain, [remote.CallbackRef(reference, [order_id], {})])
    ...
    remote.run_message(remote.parse_message(message), allow)  # on the worker

:func:`run_message` runs the callbacks as a request's chain (in order, each
failure logged by name, :func:`wsgi_after.outcome` answering with the request's
status) through :func:`wsgi_after._execute.run_callbacks`, as every request's. Stdlib only.
"""

from __future__ import annotations

import contextvars
import json
import logging
import typing as t

from . import allowlist
from ._context import CURRENT
from ._execute import Received
from ._request import Callback, RequestView
from .naming import callback_name

logger = logging.getLogger("wsgi_after")

#: The version of the message format this module writes and reads.
VERSION = 1


class RemoteError(Exception):
    """The request's error as :func:`wsgi_after.outcome` reports it in the other process.

    Only the exception's type name and message travel.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class CallbackRef(t.NamedTuple):
    """One callback of a message: what it names and its encoded arguments."""

    #: ``module:function`` (or, for Celery, ``task:NAME``).
    reference: str
    args: list[t.Any]
    kwargs: dict[str, t.Any]

    def payload(self) -> dict[str, t.Any]:
        """The JSON-able dict the message carries for it."""
        return {"func": self.reference, "args": self.args, "kwargs": self.kwargs}


class Message(t.NamedTuple):
    """A request's chain on the wire: how the response ended, and the callbacks.

    Version 1: ``{"version": 1, "method", "path", "status", "completed", "error":
    null | [type name, message], "callbacks": [{"func", "args", "kwargs"}]}``. A
    payload without ``version`` (0.1's, or a ``TasksRunner`` row of 0.2) is read
    as version 1.
    """

    method: str
    path: str
    #: The status line the client got, or None.
    status: str | None
    #: Whether the body was fully sent.
    completed: bool
    #: The error the app raised, as its type name and message, or None.
    error: tuple[str, str] | None
    callbacks: list[CallbackRef]
    version: int = VERSION

    def payload(self) -> dict[str, t.Any]:
        """The JSON-able dict that is sent (and given to a dead-letter hook)."""
        return {
            "version": self.version,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "completed": self.completed,
            "error": None if self.error is None else list(self.error),
            "callbacks": [c.payload() for c in self.callbacks],
        }


def allowed_modules(allow: object, *, setting: str = "allow") -> tuple[str, ...]:
    """Check an allow list: see :func:`wsgi_after.allowlist.allowed_modules`.

    :param setting: how the caller's users name the list, for the error text.
    :raises ValueError: naming the fix.
    """
    return allowlist.allowed_modules(allow, setting=setting, example="['myapp.tasks']")


def reference(func: object, allow: tuple[str, ...], *, who: str, fix: str) -> str:
    """``module:function`` for ``func``, or :class:`TypeError` naming the fix.

    :param who: the runner, for the error text (``'TasksRunner'``).
    :param fix: how its users add a module to the allow list.
    """
    name = callback_name(func)
    problem = allowlist.refusal(func, allow)
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if problem == "shape":
        raise TypeError(
            f"'after()' cannot send '{name}' through {who}: its worker runs only"
            " module-level functions of the modules in the allow list. Define it at"
            " module level."
        )
    if problem == "module":
        raise TypeError(
            f"'after()' cannot send '{name}' through {who}: its module {module!r} is not"
            f" in the allow list. Add it: {fix.format(module=module)}."
        )
    if problem == "name":
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


def make_message(chain: RequestView, callbacks: list[CallbackRef]) -> dict[str, t.Any]:
    """The payload for ``callbacks`` of ``chain`` (its method, path and outcome)."""
    method, path = chain.method_and_path()
    error = chain.error
    pair = None if error is None else (type(error).__name__, str(error))
    return Message(method, path, chain.status, chain.sent_all(), pair, callbacks).payload()


def describe(message: t.Mapping[str, t.Any]) -> str:
    """``METHOD /path`` of a message, log-safe."""
    return f"{bounded(message.get('method'))} {bounded(message.get('path'))}"


bounded = allowlist.bounded


def parse_message(payload: object) -> Message:
    """The :class:`Message` of a payload, or ValueError saying what is malformed (no values)."""
    if not isinstance(payload, dict):
        raise ValueError("the message is not a mapping")
    version = payload.get("version", VERSION)
    if type(version) is not int or version != VERSION:
        raise ValueError(f"'version' must be {VERSION} (this worker's message format)")
    method, path = payload.get("method"), payload.get("path")
    status, completed = payload.get("status"), payload.get("completed")
    error, callbacks = payload.get("error"), payload.get("callbacks")
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
        reference, args = callback.get("func"), callback.get("args", [])
        kwargs = callback.get("kwargs", {})
        if not isinstance(reference, str) or not isinstance(args, list):
            raise ValueError("each callback needs a string 'func' and a list 'args'")
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError("each callback's 'kwargs' must map strings")
        parsed.append(CallbackRef(reference, args, kwargs))
    pair = None if error is None else (error[0], error[1])
    return Message(method, path, status, completed, pair, parsed)


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
            func = allowlist.resolve(sent.reference, allow, request, shown=f" {list(allow)}")
            if func is None:
                ok = False
                continue
            context = contextvars.copy_context()
            chain.callbacks.append(Callback(func, tuple(sent.args), sent.kwargs, context))
    finally:
        CURRENT.reset(token)
    return chain() is not False and ok
