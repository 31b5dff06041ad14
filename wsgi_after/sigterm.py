"""Graceful SIGTERM for servers that have no handler of their own (waitress, wsgiref).

Without a handler, SIGTERM kills the process at once: no ``atexit`` handler runs,
so callbacks still queued are lost without a word. :func:`exit_on_sigterm` turns
SIGTERM into :class:`SystemExit` in the main thread; waitress catches it, stops
accepting connections and finishes its in-flight requests, the interpreter exits
normally, and the runners drain (see :class:`~wsgi_after.ThreadRunner`). A
second SIGTERM during the drain is logged and does not cut it short::

    from waitress import serve
    from wsgi_after import exit_on_sigterm

    exit_on_sigterm()
    serve(app, host="127.0.0.1", port=8080)

gunicorn has its own handler and needs nothing of this.
"""

from __future__ import annotations

import logging
import signal
import types

logger = logging.getLogger("wsgi_after")

_received = False


def _exit(signum: int, frame: types.FrameType | None) -> None:
    # Only the first SIGTERM exits: a second one (a supervisor repeating itself)
    # must not abort the drain that the first one started.
    global _received
    if _received:
        logger.warning(
            "SIGTERM received again while exiting; the drain goes on (at most the"
            " runners' drain_timeout). Send SIGKILL to stop at once."
        )
        return
    _received = True
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM raise :class:`SystemExit` in the main thread, so that exit drains.

    :raises RuntimeError: if SIGTERM already has a handler (the server's own), or if
        called outside the main thread.
    """
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, _exit):
        raise RuntimeError(
            "SIGTERM already has a handler, probably the server's own."
            " Call 'exit_on_sigterm()' only for servers without one, like waitress."
        )
    try:
        signal.signal(signal.SIGTERM, _exit)
    except ValueError:
        raise RuntimeError(
            "'exit_on_sigterm()' must be called from the main thread, before serving."
        ) from None
