"""Broker connections of a forked child: its own, never the parent's.

A web server that loads the app before forking (gunicorn ``--preload``) hands each
child the parent's broker connections; a socket shared with the parent and the
other children interleaves their frames (py-amqp publishers hung in a read, for
ever). Celery resets its pools only in the children of its own pool, so
:class:`~wsgi_after.celery.CeleryRunner` calls :func:`forget_inherited` in a
child after ``fork()``::

    forget_inherited(celery_app)  # the next publish opens a connection of its own
"""

from __future__ import annotations

import logging

import celery
import kombu.pools

logger = logging.getLogger("wsgi_after")

# Broker connections a forked child inherited: kept referenced, so that nothing closes
# them (closing shuts down a socket the parent still uses), and never used again.
_inherited: list[object] = []


def forget_inherited(celery_app: celery.Celery) -> None:
    """In a child after a plain ``fork()`` (gunicorn ``--preload``): make the app and
    kombu's pools open new connections."""
    # The app's pools are kombu's (its connection pool and producer pool come from
    # kombu.pools' groups): keep them all, then empty the groups.
    _inherited.append((dict(kombu.pools.connections), dict(kombu.pools.producers)))
    kombu.pools.connections.clear()
    kombu.pools.producers.clear()
    # What Celery runs in the children of its own pool: the app drops its references.
    after_fork = getattr(celery_app, "_after_fork", None)
    if after_fork is not None:
        try:
            after_fork()
        except Exception:  # a fork hook must not fail the child's other resets
            logger.exception("Could not reset the Celery app's broker pools after fork().")
