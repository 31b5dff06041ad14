"""Database hygiene around each callback: what Django does around a request.

Django opens a connection per thread and closes it only at the start and end of
requests (``close_old_connections`` on ``request_started`` and
``request_finished``). Worker threads serve no requests, so without this their
connections would stay open for ever (one per worker thread per process), and one
broken by a database restart would stay broken. :func:`callback_scope` is the
factory the middleware sets as ``chain.scope``: around each callback on a worker
thread it calls ``close_old_connections()`` before and after, which honours
``CONN_MAX_AGE`` (0 closes the connection after every callback; a longer age
keeps one connection per worker thread) and ``CONN_HEALTH_CHECKS`` (a persistent
connection is checked before its first use in each callback).

An ``async def`` callback using the async ORM runs its queries on asgiref's one
thread for thread-sensitive code, not on the worker thread: once a callback has
opened a connection there, ``close_old_connections()`` runs on that thread too,
before and after each callback on a worker thread (else, with ``CONN_MAX_AGE=0``,
it stayed open, and one broken by a restart stayed broken for every later callback).

A callback that runs in the request's own thread (``INLINE``, tests,
``ON_FULL="run"``) is left alone: that thread's connections are Django's to
manage, and in a ``TestCase`` closing them would end the test's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import typing as t

from asgiref.sync import sync_to_async
from django.db import close_old_connections, reset_queries
from django.db.backends.signals import connection_created
from django.dispatch import receiver

from .inline import record_error

# The worker thread running a callback in this context (asgiref copies the context
# into the threads it runs sync code on), else None.
_worker: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "wsgi_after.django.worker", default=None
)
# Set once a callback's code opened a connection on a thread other than its worker's.
_elsewhere = threading.Event()


@receiver(connection_created)
def _note_connection(**kwargs: object) -> None:
    worker = _worker.get()
    if worker is not None and worker != threading.get_ident():
        _elsewhere.set()


def _close_old_connections() -> None:
    """``close_old_connections()`` here and, once used, on asgiref's thread for
    thread-sensitive code (where the async ORM's queries run)."""
    close_old_connections()
    if _elsewhere.is_set():
        asyncio.run(sync_to_async(close_old_connections)())


def callback_scope() -> t.Callable[[], t.ContextManager[None]]:
    """A factory of the context manager entered around each of this request's callbacks."""
    return functools.partial(_around_callback, threading.get_ident())


@contextlib.contextmanager
def _around_callback(request_thread: int) -> t.Iterator[None]:
    worker = threading.get_ident() != request_thread
    token = None
    if worker:
        reset_queries()  # DEBUG's query log, as request_started does
        _close_old_connections()
        token = _worker.set(threading.get_ident())
    try:
        yield
    except Exception as e:
        record_error(e)  # kept only while the callbacks run inline (tests)
        raise
    finally:
        if token is not None:
            _worker.reset(token)
            _close_old_connections()
