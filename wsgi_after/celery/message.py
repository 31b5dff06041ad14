"""The message a request's chain travels in to a Celery worker.

The record itself (:class:`Message`, :class:`CallbackRef`, :func:`parse`,
:data:`VERSION`, :class:`RemoteError`) is :mod:`wsgi_after.remote`'s, stdlib
only, shared with ``TasksRunner``; what is Celery's lives here: the task's name,
arguments encoded with the app's kombu serializer, and task references::

    payload = Message("POST", "/orders", "200 OK", True, None,
                      [CallbackRef("shop.tasks:send_receipt", [42], {})]).payload()
    parse(payload).callbacks[0].reference  # 'shop.tasks:send_receipt'
"""

from __future__ import annotations

import typing as t

import kombu.serialization

from ..allowlist import bounded as safe_text
from ..remote import VERSION as VERSION
from ..remote import CallbackRef as CallbackRef
from ..remote import Message as Message
from ..remote import RemoteError as RemoteError
from ..remote import describe as describe
from ..remote import parse_message as parse

#: The Celery task that runs a request's callbacks on a worker.
TASK_NAME = "wsgi_after.run_chain"

__all__ = [
    "TASK_NAME",
    "VERSION",
    "CallbackRef",
    "Message",
    "RemoteError",
    "describe",
    "encode_arguments",
    "event_name",
    "parse",
    "safe_text",
]


def encode_arguments(
    name: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any], serializer: str
) -> tuple[list[t.Any], dict[str, t.Any]]:
    """The arguments as the worker will get them: encoded and decoded now."""
    try:
        # The lock's kombu is typed, Celery 5.3.0's (kombu 5.3, nox's oldest cell) is not.
        dumps, loads = kombu.serialization.dumps, kombu.serialization.loads
        content_type, encoding, data = dumps(  # type: ignore[no-untyped-call,unused-ignore]
            [list(args), kwargs], serializer=serializer
        )
        copied = loads(  # type: ignore[no-untyped-call,unused-ignore]
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
