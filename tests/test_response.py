"""The response wrapper's file-wrapper paths: a close() hooked in place, and
ClosingFile with FileWrapperHook."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import io
import threading
import types
import typing as t
import weakref
import wsgiref.util

import pytest

from tests.helpers import TIMEOUT, call, hold, make_environ
from wsgi_after import AfterMiddleware, InlineRunner, Outcome, ThreadRunner, after, outcome
from wsgi_after._response import ClosingResponse, ListMixin, closes_in_place

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


class GunicornLike:
    """A server's file wrapper class whose object takes the file's own ``close``."""

    def __init__(self, filelike: t.Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(lambda: self.filelike.read(8192), b"")


class WaitressLike:
    """A server's file wrapper class with a ``close()`` method of its own."""

    def __init__(self, file: t.Any, block_size: int = 32768) -> None:
        self.file = file

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(lambda: self.file.read(8192), b"")

    def close(self) -> None:
        if hasattr(self.file, "close"):
            self.file.close()


class Slotted:
    """A file wrapper class whose objects take no new attributes."""

    __slots__ = ("file",)

    def __init__(self, file: t.Any) -> None:
        self.file = file

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(lambda: self.file.read(8192), b"")

    def close(self) -> None:
        self.file.close()


class ClosedByProperty(WaitressLike):
    @property
    def close(self) -> t.Callable[[], None]:
        return t.cast("t.Callable[[], None]", self.file.close)


@pytest.mark.parametrize("server_class", [GunicornLike, WaitressLike, wsgiref.util.FileWrapper])
@pytest.mark.parametrize("has_close", [True, False], ids=["file with close", "without"])
def test_a_server_file_wrapper_class_stays_in_the_environ_and_its_objects_close_is_hooked(
    server_class: type[t.Any], has_close: bool
) -> None:
    file: t.Any = io.BytesIO(b"abc") if has_close else ReadOnly()
    seen: list[object] = []
    ran: list[bool] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        seen.append(environ["wsgi.file_wrapper"])
        after(lambda: ran.append(getattr(file, "closed", True)))
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](file)

    middleware = AfterMiddleware(app, runner=InlineRunner())
    for _ in range(2):  # the first request finds out, the second relies on it
        environ = make_environ(extra={"wsgi.file_wrapper": server_class})
        response = call(middleware, environ)
        assert seen.pop() is server_class  # nothing stands in for it
        assert type(response) is server_class  # the server's object, for its sendfile path
        assert vars(response).get("filelike", vars(response).get("file")) is file  # no proxy
        assert environ["wsgi.file_wrapper"] is server_class
        assert ran == []
        response.close()
        response.close()  # waitress may close twice: the callbacks run once
        assert ran == [True]  # after the file was closed
        ran.clear()


@pytest.mark.parametrize("server_class", [Slotted, ClosedByProperty])
def test_a_file_wrapper_class_that_cannot_be_hooked_in_place_gets_a_stand_in(
    server_class: type[t.Any],
) -> None:
    file = io.BytesIO(b"abc")
    seen: list[object] = []
    ran: list[tuple[bool, Outcome | None]] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        seen.append(environ["wsgi.file_wrapper"])
        after(lambda: ran.append((file.closed, outcome())))
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](file)

    environ = make_environ(extra={"wsgi.file_wrapper": server_class})
    response = call(AfterMiddleware(app, runner=InlineRunner()), environ)
    assert seen[0] is not server_class  # the hook stood in for it ...
    assert environ["wsgi.file_wrapper"] is server_class  # ... and was put back
    assert type(response) is server_class
    assert response.file is not file  # the proxy whose close() fires
    response.close()
    assert ran == [(True, Outcome(200, True, None))]  # a file response counts as sent


def test_a_file_wrapper_subclass_made_by_the_app_is_wrapped_like_any_body() -> None:
    class Own(WaitressLike):
        pass

    ran: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        after(ran.append, "ran")
        start_response("200 OK", [])
        return Own(io.BytesIO(b"abc"))

    environ = make_environ(extra={"wsgi.file_wrapper": WaitressLike})
    response = call(AfterMiddleware(app, runner=InlineRunner()), environ)
    assert type(response) is not Own
    assert b"".join(response) == b"abc"
    t.cast(t.Any, response).close()
    assert ran == ["ran"]


@pytest.mark.parametrize(
    ("file_wrapper", "expected"),
    [
        (WaitressLike, True),
        (GunicornLike, True),
        (wsgiref.util.FileWrapper, True),
        (Slotted, False),
        (ClosedByProperty, False),
        (io.BytesIO, False),  # a C type (with a __dict__ on Python 3.13)
        (types.FunctionType, False),  # a C type with a __dict__ and no close
        (lambda filelike, blksize=8192: filelike, False),  # uWSGI's is a function
        (ServerWrapper(), False),
    ],
    ids=[
        "method",
        "attribute",
        "wsgiref",
        "slots",
        "property",
        "C type",
        "C type with dict",
        "function",
        "object",
    ],
)
def test_closes_in_place(file_wrapper: object, expected: bool) -> None:
    assert closes_in_place(file_wrapper) is expected


def test_an_environ_without_a_file_wrapper_gets_none() -> None:
    """PEP 3333 makes ``wsgi.file_wrapper`` optional: none appears, even on a middleware
    that served a server with one before."""
    seen: list[bool] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        seen.append("wsgi.file_wrapper" in environ)
        start_response("200 OK", [])
        return [b"x"]

    middleware = AfterMiddleware(app, runner=InlineRunner())
    for file_wrapper in (wsgiref.util.FileWrapper, None, ServerWrapper(), None):
        environ = make_environ()
        environ.pop("wsgi.file_wrapper", None)
        if file_wrapper is not None:
            environ["wsgi.file_wrapper"] = file_wrapper
        t.cast(t.Any, call(middleware, environ)).close()
        assert ("wsgi.file_wrapper" in environ) is (file_wrapper is not None)
        assert environ.get("wsgi.file_wrapper") is file_wrapper
    assert seen == [True, False, True, False]


def test_a_file_wrapper_object_that_refuses_the_hook_is_wrapped_and_its_callbacks_run() -> None:
    class Frozen(WaitressLike):
        def __setattr__(self, name: str, value: object) -> None:
            if name == "close":
                raise ValueError("frozen")
            super().__setattr__(name, value)

    ran: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        after(ran.append, "ran")
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"abc"))

    environ = make_environ(extra={"wsgi.file_wrapper": Frozen})
    response = call(AfterMiddleware(app, runner=InlineRunner()), environ)
    assert type(response) is not Frozen  # wrapped like any body: no sendfile, but closed
    assert b"".join(response) == b"abc"
    t.cast(t.Any, response).close()
    assert ran == ["ran"]


class StopTheGreenlet(BaseException):
    """What gevent.Timeout is: a BaseException, not an Exception."""


def outcome_of(app: t.Any, environ: dict[str, t.Any] | None = None) -> Outcome | None:
    """Serve ``app`` as a server does (iterate, close) and return its callback's outcome()."""
    seen: list[Outcome | None] = []

    def view_app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        after(lambda: seen.append(outcome()))
        return app(environ, start_response)

    response = call(AfterMiddleware(view_app, runner=InlineRunner()), environ)
    try:
        for _ in response:
            pass
    except BaseException:
        pass  # the server logs it (and sends a 500 if nothing was sent yet)
    finally:
        with contextlib.suppress(Exception):  # the server logs it
            response.close()
    [result] = seen
    return result


def test_a_base_exception_raised_while_the_server_iterates_is_the_outcome_error() -> None:
    # Also open in issue 21: gevent.Timeout while the body is sent was not outcome().error.
    stop = StopTheGreenlet()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        raise stop

    result = outcome_of(app)
    assert result is not None
    assert result.error is stop
    assert result.completed is False


class BodyClosingBadly:
    """A body whose own close() raises."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __iter__(self) -> t.Iterator[bytes]:
        return iter([b"body"])

    def close(self) -> None:
        raise self.error


def test_an_error_from_the_bodys_own_close_is_the_outcome_error() -> None:
    # Also open in issue 21: it reached the server, but not outcome().error.
    error = OSError("could not release the cursor")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        start_response("200 OK", [])
        return BodyClosingBadly(error)

    result = outcome_of(app)
    assert result == Outcome(200, True, error)


class Proxy:
    """A body behind a lazy proxy whose __getattr__ raises what is not AttributeError."""

    def __iter__(self) -> t.Iterator[bytes]:
        return iter([b"lazy"])

    def __getattr__(self, name: str) -> t.Any:
        raise LookupError(f"the proxy has no {name!r} yet")


def test_a_body_whose_getattr_raises_something_else_is_wrapped_and_sent() -> None:
    # Also open in issue 21: wrap() asked hasattr(body, '__len__'), which passes on only
    # AttributeError: the request failed, and its callbacks were reported never closed.
    ran: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        after(ran.append, "ran")
        start_response("200 OK", [])
        return Proxy()

    response = call(AfterMiddleware(app, runner=InlineRunner()))
    assert b"".join(response) == b"lazy"
    response.close()
    assert ran == ["ran"]


class SendFile:
    """What a server's file_wrapper function (uWSGI's, mod_wsgi's) returns."""

    def __init__(self, filelike: t.Any) -> None:
        self.filelike = filelike

    def __iter__(self) -> t.Iterator[bytes]:
        return iter([b"file"])

    def close(self) -> None:
        self.filelike.close()


def server_file_wrapper(filelike: t.Any, block_size: int = 8192) -> SendFile:
    return SendFile(filelike)


def test_an_app_that_calls_the_file_wrapper_twice_keeps_sendfile() -> None:
    # Also open in issue 21: only the object of the last call went back to the server
    # unwrapped; returning the first one lost the server's sendfile path.
    ran: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        after(ran.append, "ran")
        start_response("200 OK", [])
        first = environ["wsgi.file_wrapper"](io.BytesIO(b"first"))
        environ["wsgi.file_wrapper"](io.BytesIO(b"second"))  # made, then dropped
        made.append(first)
        return first

    made: list[SendFile] = []
    environ = make_environ(extra={"wsgi.file_wrapper": server_file_wrapper})
    response = call(AfterMiddleware(app, runner=InlineRunner()), environ)
    assert response is made[0]  # the server's own object: its sendfile path
    assert ran == []
    response.close()
    assert ran == ["ran"]


@pytest.mark.parametrize("where", ["view", "body"])
def test_the_status_is_the_500_the_server_sent_for_an_error_before_the_body(where: str) -> None:
    # Also open in issue 21: the server itself answers 500 for an error raised before any
    # of the body was sent; outcome().status said the app's 200 (or None).
    import http.client
    import threading
    import wsgiref.simple_server

    seen: list[Outcome | None] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        after(lambda: seen.append(outcome()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        if where == "view":
            raise RuntimeError("the view failed")
        return failing_body()

    def failing_body() -> t.Iterator[bytes]:
        raise RuntimeError("the body failed")
        yield b"never"

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *args: t.Any) -> None:
            pass

    class QuietServer(wsgiref.simple_server.WSGIServer):
        def handle_error(self, request: t.Any, client_address: t.Any) -> None:
            pass  # the view's error, raised into the server: logged by it, as a real one

    server = wsgiref.simple_server.make_server(
        "127.0.0.1",
        0,
        AfterMiddleware(app, runner=InlineRunner()),
        server_class=QuietServer,
        handler_class=Quiet,
    )
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    try:
        client = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=TIMEOUT)
        client.request("GET", "/")
        status = client.getresponse().status
        client.close()
        thread.join(TIMEOUT)
    finally:
        server.server_close()
    assert status == 500
    [result] = seen
    assert result is not None
    assert result.status == 500
    assert isinstance(result.error, RuntimeError)


class Body:
    """An app's body holding what a real one holds (a big buffer, a file handle)."""

    def __init__(self) -> None:
        self.buffer = bytearray(1 << 20)
        self.closed = False

    def __iter__(self) -> t.Iterator[bytes]:
        yield b"one"
        yield b"two"

    def close(self) -> None:
        self.closed = True


class SizedBody(Body):
    def __len__(self) -> int:
        return 2


class SentFile:
    """What a server's ``wsgi.file_wrapper`` function returns: it holds the file."""

    def __init__(self, filelike: t.Any, block_size: int = 8192) -> None:
        self.filelike = filelike

    def __iter__(self) -> t.Iterator[bytes]:
        yield self.filelike.read()

    def close(self) -> None:
        self.filelike.close()


def _send_file(environ: WSGIEnvironment) -> tuple[t.Any, object]:
    file = io.BytesIO(b"file")
    return environ["wsgi.file_wrapper"](file), file


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda environ: (body := Body(), body), id="iterable"),
        pytest.param(lambda environ: (body := SizedBody(), body), id="sized"),
        pytest.param(_send_file, id="file-wrapper"),
    ],
)
def test_the_body_is_freed_at_close_while_the_callbacks_wait_in_the_queue(
    make: t.Callable[[WSGIEnvironment], tuple[t.Any, object]],
) -> None:
    # After close() the server is done with the body: what it holds (buffers, a file
    # handle) must not live on until the request's callbacks have run on the pool.
    busy, release = threading.Event(), threading.Event()
    made: list[weakref.ref[t.Any]] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        after(hold, busy, release)
        start_response("200 OK", [])
        body, held = make(environ)  # (a file response holds the file)
        made.append(weakref.ref(held))
        return body

    runner = ThreadRunner(max_workers=1, name="test-body-freed")
    try:
        # A function, not a class: the middleware stands in for it (FileWrapperHook).
        environ = make_environ(extra={"wsgi.file_wrapper": lambda f, *a: SentFile(f, *a)})
        response = call(AfterMiddleware(app, runner=runner), environ)
        assert list(response) in ([b"one", b"two"], [b"file"])
        response.close()
        del response  # the server drops it once closed
        assert busy.wait(TIMEOUT)  # the callback runs, and waits: the chain is alive
        gc.collect()
        assert made[0]() is None, gc.get_referrers(made[0]())
    finally:
        release.set()
        assert runner.wait_idle(TIMEOUT)
        runner.shutdown(TIMEOUT)


@pytest.mark.parametrize("queued", ["in-the-view", "once-the-view-returned"])
@pytest.mark.parametrize(("sent", "completed"), [(1, False), (2, True)])
def test_a_list_body_is_freed_at_close_and_the_outcome_still_says_how_much_was_sent(
    sent: int, completed: bool, queued: str
) -> None:
    # Queued once the view returned, the chain hands the server the list's own iterator,
    # which is read for the outcome before it is let go.
    busy, release = threading.Event(), threading.Event()
    seen: list[Outcome | None] = []
    body = [b"one", b"two"]

    def wait_then_record() -> None:
        hold(busy, release)
        seen.append(outcome())

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        if queued == "in-the-view":
            after(wait_then_record)
        start_response("200 OK", [])
        return body

    runner = ThreadRunner(max_workers=1, name="test-list-freed")
    try:
        response = call(AfterMiddleware(app, runner=runner))
        if queued == "once-the-view-returned":
            after(wait_then_record)  # the request is still current here, as for a body
        assert isinstance(response, ListMixin) is (queued == "once-the-view-returned")
        chunks = iter(response)
        for _ in range(sent):
            next(chunks)
        if completed:
            assert next(chunks, None) is None  # the server asked past the end
        response.close()
        del chunks
        assert busy.wait(TIMEOUT)
        gc.collect()
        holders = [
            r
            for r in gc.get_referrers(body)
            if isinstance(r, ClosingResponse) or type(r).__name__ == "list_iterator"
        ]
        assert holders == []
        del response
    finally:
        release.set()
        assert runner.wait_idle(TIMEOUT)
        runner.shutdown(TIMEOUT)
    [result] = seen
    assert result is not None
    assert result.completed is completed
