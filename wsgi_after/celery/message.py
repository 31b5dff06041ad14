"""The message a request's chain travels in: a named, versioned record.

:class:`Message` is what :class:`~wsgi_after.celery.CeleryRunner` publishes (as
:meth:`Message.payload`, a JSON-able dict) and what the worker reads back with
:func:`parse`, which checks every field's type and never trusts a value::

    payload = Message("POST", "/orders", "200 OK", True, None,
                      [CallbackRef("shop.tasks:send_receipt", [42], {})]).payload()
    parse(payload).callbacks[0].reference  # 'shop.tasks:send_receipt'

Version 1: ``{"version": 1, "method", "path", "status", "completed", "error":
null | [type name, message], "callbacks": [{"func", "args", "kwargs"}]}``. A
payload without ``version`` (0.1's) is read as version 1.
"""

from __future__ import annotations

import typing as t

import kombu.serialization

from ..naming import safe

#: The Celery task that runs a request's callbacks on a worker.
TASK_NAME = "wsgi_after.run_chain"
#: The version of the message format this module writes and reads.
VERSION = 1


class RemoteError(Exception):
    """The error of the request, as :func:`wsgi_after.outcome` reports it on a worker.

    Only the exception's type name and message travel to the worker.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class CallbackRef(t.NamedTuple):
    """One callback of a message: what it names and its encoded arguments."""

    #: ``task:NAME`` (a Celery task) or ``module:function``.
    reference: str
    args: list[t.Any]
    kwargs: dict[str, t.Any]


class Message(t.NamedTuple):
    """A request's chain on the wire: how the response ended, and the callbacks."""

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
        """The JSON-able dict that is published (and given to ``dead_letter``)."""
        return {
            "version": self.version,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "completed": self.completed,
            "error": None if self.error is None else list(self.error),
            "callbacks": [
                {"func": c.reference, "args": c.args, "kwargs": c.kwargs} for c in self.callbacks
            ],
        }


def parse(payload: object) -> Message:
    """The :class:`Message` of a payload, or ValueError saying what is malformed (no values)."""
    if not isinstance(payload, dict):
        raise ValueError("the payload is not a mapping")
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


def encode_arguments(
    name: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any], serializer: str
) -> tuple[list[t.Any], dict[str, t.Any]]:
    """The arguments as the worker will get them: encoded and decoded now."""
    try:
        content_type, encoding, data = kombu.serialization.dumps(  # type: ignore[no-untyped-call]
            [list(args), kwargs], serializer=serializer
        )
        copied = kombu.serialization.loads(  # type: ignore[no-untyped-call]
            data, content_type, encoding, accept={content_type}
        )
    except Exception as e:
        raise TypeError(
            f"'after()' cannot send the arguments of '{name}' to Celery: {e}."
            f" Pass values the {serializer!r} serializer can encode, such as ids"
            " rather than objects."
        ) from None
    return copied[0], copied[1]


def event_name(reference: str) -> str:
    """The ``module.qualname`` (or task name) events give a callback the message names."""
    if reference.startswith("task:"):
        return reference[len("task:") :]
    return reference.replace(":", ".", 1)


def describe(payload: dict[str, t.Any]) -> str:
    return f"{safe_text(payload['method'])} {safe_text(payload['path'])}"


def safe_text(text: object, limit: int = 200) -> str:
    """``text`` for a log line (it may come from a forged message): escaped, bounded."""
    text = safe(text)
    return text if len(text) <= limit else text[:limit] + "..."
