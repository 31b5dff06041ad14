"""A callbacks message that any JSON store keeps as it is, NUL characters included.

PostgreSQL's ``jsonb`` (django-tasks-db's table, there) refuses a string holding a
NUL character (``\\u0000``) or a lone surrogate, so a message carrying one, in an
argument or in its path (a URL's ``%00``), could not be enqueued at all.
:func:`pack` sends such a message as its JSON text instead, ASCII with those
characters escaped, under the one key ``"packed"``; :func:`unpack`, in the worker,
gives back the message exactly. Every other message goes as it is, readable in the
backend's table::

    task.enqueue(pack(message))  # TasksRunner
    message = unpack(received)  # the worker's run_callbacks

A worker older than this refuses a packed message as malformed, logged at ERROR,
rather than running it wrong.
"""

from __future__ import annotations

import json
import typing as t

KEY = "packed"


def pack(message: dict[str, t.Any]) -> dict[str, t.Any]:
    """``message`` itself, or ``{"packed": its JSON text}`` if a string in it holds a
    NUL character or a lone surrogate (what PostgreSQL's ``jsonb`` cannot store)."""
    text = json.dumps(message, ensure_ascii=False)  # NUL as \u0000; surrogates as they are
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        pass
    else:
        if "\\u0000" not in text:
            return message
    return {KEY: json.dumps(message)}  # ASCII: both escaped, as any JSON store keeps them


def unpack(received: object) -> object:
    """The message :func:`pack` was given (anything else as it is).

    :raises ValueError: if a packed message is not JSON text (no part of it is quoted).
    """
    if not isinstance(received, dict) or set(received) != {KEY}:
        return received
    text = received[KEY]
    if not isinstance(text, str):
        raise ValueError(f"{KEY!r} must be the message's JSON text")
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{KEY!r} is not JSON text") from None
