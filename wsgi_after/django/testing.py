"""Test helper: :func:`capture_after_callbacks`, in the spirit of ``captureOnCommitCallbacks``.

::

    from wsgi_after.django import capture_after_callbacks

    def test_signup(client):
        with capture_after_callbacks() as callbacks:
            client.post("/signup", {"email": "ada@example.com"})
        assert [c.func for c in callbacks] == [send_welcome_email]
        assert callbacks[0].args == ("ada@example.com",)
"""

from __future__ import annotations

import collections.abc
import contextlib
import threading
import typing as t

from .inline import run_inline


class CapturedCallback(t.NamedTuple):
    """One callback queued with ``after()`` or ``after_commit()``."""

    func: t.Any
    args: tuple[t.Any, ...]
    kwargs: dict[str, t.Any]


class Capture:
    """An active :func:`capture_after_callbacks` block."""

    def __init__(self, execute: bool) -> None:
        self.execute = execute
        self.callbacks: list[CapturedCallback] = []

    def take(self, task: t.Callable[[], object]) -> None:
        """Record the task's callbacks; run them inline, or forget them."""
        queued = getattr(task, "queued", None)  # a request's callbacks (RequestView)
        for entry in queued() if queued is not None else ():
            self.callbacks.append(CapturedCallback(entry.func, entry.args, entry.kwargs))
        if self.execute:
            run_inline(task)
        else:
            discard = getattr(task, "discard", None)
            if discard is not None:
                discard()


_lock = threading.Lock()
_active: list[Capture] = []


def active_capture() -> Capture | None:
    """The innermost :func:`capture_after_callbacks` block now active, if any."""
    return _active[-1] if _active else None


@contextlib.contextmanager
def capture_after_callbacks(
    *, execute: bool = False
) -> collections.abc.Iterator[list[CapturedCallback]]:
    """Capture the callbacks that requests handled by Django queue, instead of running them.

    Yields a list that fills up as responses are closed: one
    :class:`CapturedCallback` ``(func, args, kwargs)`` per callback, in the order
    they were queued. With ``execute=True`` the callbacks also run inline when
    the response is closed, in the test's thread (so they see the test's
    uncommitted data), and the first exception a callback raises is raised from
    ``response.close()`` (the test client's request). Callbacks queued by running
    callbacks run too, but are not listed.

    Like ``override_runner``, it applies to the whole process while active, not
    to one thread. It captures what the Django middleware's chains queue (the
    test client never goes through ``wsgi.py``).
    """
    capture = Capture(execute)
    with _lock:
        _active.append(capture)
    try:
        yield capture.callbacks
    finally:
        with _lock:
            _active.remove(capture)
