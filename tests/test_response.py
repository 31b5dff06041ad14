"""The response wrapper's file-wrapper path: ClosingFile and FileWrapperHook."""

from __future__ import annotations

import concurrent.futures
import io
import typing as t

from tests.helpers import TIMEOUT, call, make_environ
from wsgi_after import AfterMiddleware, InlineRunner, after

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


class ServerWrapper:
    """A server's ``wsgi.file_wrapper`` that records how it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, tuple[object, ...], dict[str, object]]] = []

    def __call__(self, filelike: object, *args: object, **kwargs: object) -> list[bytes]:
        self.calls.append((filelike, args, kwargs))
        return [b"sent"]


class ReadOnly:
    """A file-like object with no ``close()`` (PEP 3333 allows it)."""

    def read(self, size: int = -1) -> bytes:
        return b""


def test_file_wrapper_gets_every_argument_in_and_outside_the_request() -> None:
    server = ServerWrapper()
    ran: list[str] = []
    outside: list[object] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        after(ran.append, "closed")
        start_response("200 OK", [])
        hook = environ["wsgi.file_wrapper"]
        # Another thread, outside the request's context: passed through as given.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            outside.append(pool.submit(hook, "other", 7, blksize=3).result(TIMEOUT))
        return hook(ReadOnly(), 4096, blksize=2)

    environ = make_environ(extra={"wsgi.file_wrapper": server})
    response = call(AfterMiddleware(app, runner=InlineRunner()), environ)
    assert outside == [[b"sent"]]
    (other, other_args, other_kwargs), (proxy, args, kwargs) = server.calls
    assert (other, other_args, other_kwargs) == ("other", (7,), {"blksize": 3})
    assert (args, kwargs) == ((4096,), {"blksize": 2})
    assert response == [b"sent"]  # the server's own object, unwrapped
    assert ran == []
    t.cast(t.Any, proxy).close()  # the server closes the file it was given
    assert ran == ["closed"]  # a file without close() still ends the request


def test_a_file_proxy_closes_the_file_then_hands_over_once() -> None:
    server = ServerWrapper()
    ran: list[bool] = []
    file = io.BytesIO(b"abc")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        after(lambda: ran.append(file.closed))
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](file)

    environ = make_environ(extra={"wsgi.file_wrapper": server})
    call(AfterMiddleware(app, runner=InlineRunner()), environ)
    [(proxy, _, _)] = server.calls
    closing = t.cast(t.Any, proxy)
    assert list(closing) == [b"abc"]  # iterates the file itself
    closing.close()
    closing.close()  # the server may close twice: the callbacks run once
    assert ran == [True]  # the file was closed before the callbacks ran
