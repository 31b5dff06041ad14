"""mod_wsgi hooks: drain at shutdown within what Apache allows, installed automatically.

``wsgi_after`` calls :func:`install` (from the first middleware or runner) when the
``mod_wsgi`` module exists;
it subscribes to mod_wsgi's shutdown event (``mod_wsgi.subscribe_shutdown``), which
mod_wsgi publishes in each interpreter of a daemon process as it stops: Apache
stop or restart, ``--maximum-requests`` or ``--restart-interval`` recycling, an
idle or request timeout. Named sub-interpreters (``--application-group``) get it
too, where Python's ``atexit`` alone never drained.

The drain is bounded by :data:`DRAIN_TIMEOUT` (2 s by default): Apache kills a
daemon process about 3 s after a stop or restart whatever ``--shutdown-timeout``
says, and mod_wsgi's own reaper aborts it after ``shutdown-timeout`` (5 s with
mod_wsgi-express) when it recycles itself. What cannot run by then is logged by
name (:func:`wsgi_after.shutdown_runners`). Set ``wsgi_after.mod_wsgi.DRAIN_TIMEOUT``
in the WSGI script to change it (keep it under both limits). Requests still in
flight when the event comes finish afterwards; their callbacks then run in the
request's thread as the runners have stopped (logged at WARNING).
"""

from __future__ import annotations

import logging
import sys
import typing as t

from . import lifecycle

logger = logging.getLogger("wsgi_after")

#: Seconds the shutdown hook may drain; under Apache's ~3 s and mod_wsgi's shutdown-timeout.
DRAIN_TIMEOUT = 2.0

_installed = False


def on_shutdown(*args: t.Any, **event: t.Any) -> None:
    """mod_wsgi shutdown subscriber: drain every runner for at most :data:`DRAIN_TIMEOUT`."""
    reason = event.get("shutdown_reason", "")
    if not lifecycle.shutdown(DRAIN_TIMEOUT):
        logger.error(
            "mod_wsgi stopped the process (%s) before every after() callback ran"
            " within %.1f s; those that did not are logged above by name.",
            reason or "shutdown",
            DRAIN_TIMEOUT,
        )


def install() -> bool:
    """Subscribe :func:`on_shutdown` once; False if not under mod_wsgi or already done."""
    global _installed
    mod_wsgi = sys.modules.get("mod_wsgi")
    subscribe = getattr(mod_wsgi, "subscribe_shutdown", None)
    if _installed or subscribe is None:
        return False
    _installed = True
    subscribe(on_shutdown)
    return True
