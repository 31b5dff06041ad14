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

A callback that runs in the request's own thread (``INLINE``, tests,
``ON_FULL="run"``) is left alone: that thread's connections are Django's to
manage, and in a ``TestCase`` closing them would end the test's transaction.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import typing as t

from django.db import close_old_connections, reset_queries

from .inline import record_error


def callback_scope() -> t.Callable[[], t.ContextManager[None]]:
    """A factory of the context manager entered around each of this request's callbacks."""
    return functools.partial(_around_callback, threading.get_ident())


@contextlib.contextmanager
def _around_callback(request_thread: int) -> t.Iterator[None]:
    worker = threading.get_ident() != request_thread
    if worker:
        reset_queries()  # DEBUG's query log, as request_started does
        close_old_connections()
    try:
        yield
    except Exception as e:
        record_error(e)  # kept only while the callbacks run inline (tests)
        raise
    finally:
        if worker:
            close_old_connections()
