"""The Django middleware: every request gets a chain, run when Django's response closes.

::

    MIDDLEWARE = [
        "wsgi_after.django.AfterMiddleware",  # first
        ...
    ]

Django's test client, ``runserver`` and every WSGI server call the middleware, so
``after()`` works in all of them without touching ``wsgi.py``. For each request
the middleware calls the core's :class:`wsgi_after.AfterMiddleware` (which makes
the request's chain current and records the status), then ties the chain to the
response Django returns: it wraps that response's ``close`` (an instance
attribute, so Django's own ``close()`` still runs first, with its resource closers
and ``request_finished``). Django reads ``response.close`` only after the
middleware returns, so the wrapper is also what runs when a ``FileResponse`` is
sent by the server's ``wsgi.file_wrapper`` (sendfile): Django hands that file
``response.close`` as its ``close``. Nothing private of Django is used.

When ``wsgi.py`` is also wrapped with :class:`wsgi_after.AfterMiddleware`, that
one owns the request's chain (and its runner): this middleware then only adds the
database hygiene of :mod:`wsgi_after.django.database`, so nothing runs twice.
"""

from __future__ import annotations

import sys
import typing as t

from django.core.signals import got_request_exception
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponseBase

from ..middleware import AfterMiddleware as WSGIAfterMiddleware
from .database import callback_scope
from .inline import take_errors
from .runner import SettingsRunner
from .startup import report_placement

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

_REQUEST = "wsgi_after.django.request"
_RESPONSE = "wsgi_after.django.response"


class AfterMiddleware:
    """Runs the callbacks queued with ``after()`` once Django's response is closed.

    Put it first in ``MIDDLEWARE`` (a system check says so): middleware above it
    would run outside the request's chain, and one that returns another response
    object would keep this one's ``close()`` from ever being called. Options come
    from the ``WSGI_AFTER`` setting (see :mod:`wsgi_after.django.conf`).

    Error policy: as in the core, callbacks' errors are logged, never raised into
    the server; an exception Django turned into a 500 response is the chain's
    ``error`` (``outcome().error``). With ``INLINE`` (tests) the first exception a
    callback raised is raised again from ``response.close()``.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: t.Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        self.wsgi = WSGIAfterMiddleware(self._respond, runner=SettingsRunner())
        report_placement()  # misplaced: said as Django loads MIDDLEWARE (servers run no checks)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        environ = request.META  # a WSGIRequest's META is its environ
        chain = environ.get("wsgi_after.chain")
        if chain is not None:  # wsgi.py is wrapped too: that middleware owns the chain
            if chain.scope is None:
                chain.scope = callback_scope()
            return self.get_response(request)
        environ[_REQUEST] = request
        try:
            closer = self.wsgi(environ, _no_server)
        finally:
            environ.pop(_REQUEST, None)
        response: HttpResponseBase = environ.pop(_RESPONSE)
        _close_together(response, closer)
        return response

    def _respond(self, environ: WSGIEnvironment, start_response: StartResponse) -> tuple[()]:
        """The WSGI app the core middleware calls: Django's response goes in the environ."""
        request = environ.pop(_REQUEST)
        environ["wsgi_after.chain"].scope = callback_scope()
        response = self.get_response(request)
        start_response(f"{response.status_code} {response.reason_phrase}", [])
        environ[_RESPONSE] = response
        return ()


def _no_server(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> t.Any:
    """The server's ``start_response`` is Django's business: the core only records the status."""


def _close_together(response: HttpResponseBase, closer: t.Iterable[bytes]) -> None:
    """Make ``response.close()`` close Django's response, then hand the chain over.

    The chain counts the body as fully sent once ``closer`` was iterated: for a
    streaming response when its content was exhausted; for any other response at
    close (Django handed the whole body over; a ``FileResponse`` sent with the
    server's file wrapper counts as sent, as in the core).
    """
    close = response.close
    streaming = (
        response.streaming
        and getattr(response, "file_to_stream", None) is None
        and not getattr(response, "is_async", False)
    )
    if streaming:
        response.streaming_content = _complete_when_exhausted(  # type: ignore[attr-defined]
            response.streaming_content,  # type: ignore[attr-defined]
            closer,
        )

    def close_then_run() -> None:
        try:
            close()
        finally:
            if not streaming:
                for _ in closer:
                    pass
            take_errors()  # nothing stale from another response of this thread
            closer.close()  # type: ignore[attr-defined]
            errors = take_errors()  # only callbacks run inline keep their errors
            if errors:
                raise errors[0]

    response.close = close_then_run  # type: ignore[method-assign]


def _complete_when_exhausted(
    content: t.Iterable[bytes], closer: t.Iterable[bytes]
) -> t.Iterator[bytes]:
    yield from content
    for _ in closer:
        pass


@receiver(got_request_exception, dispatch_uid="wsgi_after.django.record_error")
def _record_error(sender: object, request: HttpRequest | None = None, **kwargs: object) -> None:
    """An exception Django turned into a response is the chain's ``error``."""
    error = sys.exc_info()[1]
    chain = request.META.get("wsgi_after.chain") if request is not None else None
    if chain is not None and error is not None and chain.error is None:
        chain.error = error
