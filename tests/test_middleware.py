"""AfterMiddleware: options, errors before and during the response, PEP 3333 care."""

from __future__ import annotations

import concurrent.futures
import contextvars
import io
import subprocess
import sys
import threading
import typing as t
import wsgiref.util
import wsgiref.validate

import pytest

from tests.helpers import TIMEOUT, call, make_environ, serve
from wsgi_after import (
    AfterMiddleware,
    InlineRunner,
    Outcome,
    ThreadRunner,
    after,
    current_chain,
    outcome,
)

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def test_default_runner_is_a_thread_runner_built_from_options() -> None:
    middleware = AfterMiddleware(
        lambda e, s: [], max_workers=3, max_pending=7, on_full="drop", drain_timeout=1.5
    )
    runner = middleware.runner
    assert isinstance(runner, ThreadRunner)
    assert (runner.max_workers, runner.max_pending, runner.on_full, runner.drain_timeout) == (
        3,
        7,
        "drop",
        1.5,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"on_full": "wait"},
            "'on_full' must be one of 'block', 'run' or 'drop', got 'wait'.",
            id="on_full",
        ),
        pytest.param(
            {"max_workers": 0},
            "'max_workers' must be None or an int of at least 1, got 0.",
            id="workers",
        ),
        pytest.param(
            {"max_pending": 1.5},
            "'max_pending' must be an int of at least 1, got 1.5.",
            id="pending",
        ),
        pytest.param(
            {"drain_timeout": -1},
            "'drain_timeout' must be a number of seconds of at least 0 (inf: no limit), got -1.",
            id="drain",
        ),
    ],
)
def test_invalid_options_name_the_allowed_values(options: dict[str, t.Any], message: str) -> None:
    with pytest.raises(ValueError, match="must be") as info:
        AfterMiddleware(lambda e, s: [], **options)
    assert str(info.value) == message


def test_runner_without_submit_is_refused() -> None:
    with pytest.raises(TypeError) as info:
        AfterMiddleware(lambda e, s: [], runner=object())  # type: ignore[call-overload]
    assert str(info.value) == (
        "'runner' must have a 'submit(fn)' method, like 'ThreadRunner' or a"
        " 'concurrent.futures.Executor', got 'object'."
    )


def test_runner_with_pool_options_is_refused() -> None:
    with pytest.raises(TypeError, match=r"got 'max_workers' with 'runner'\. Pass the options"):
        AfterMiddleware(lambda e, s: [], runner=InlineRunner(), max_workers=2)  # type: ignore[call-overload]


def test_an_executor_works_as_runner() -> None:
    ran = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(ran.set)
        start_response("200 OK", [])
        return [b""]

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        serve(AfterMiddleware(app, runner=pool))
        assert ran.wait(TIMEOUT)


def test_app_raising_before_returning_schedules_callbacks_and_reraises() -> None:
    seen: list[Outcome | None] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(lambda: seen.append(outcome()))
        raise KeyError("no")

    with pytest.raises(KeyError) as info:
        serve(AfterMiddleware(app, runner=InlineRunner()))
    assert seen == [Outcome(status=500, completed=False, error=info.value)]  # the server's
    assert seen[0] is not None
    assert seen[0].error is info.value


def test_error_while_iterating_is_recorded_and_callbacks_run() -> None:
    seen: list[Outcome | None] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        after(lambda: seen.append(outcome()))
        start_response("200 OK", [])
        yield b"first"
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone") as info:
        serve(AfterMiddleware(app, runner=InlineRunner()))
    [result] = seen
    assert result is not None
    assert (result.status, result.completed) == (200, False)
    assert result.error is info.value


def test_client_disconnect_mid_stream() -> None:
    """The server stops iterating and calls close() with the socket error in flight."""
    seen: list[Outcome | None] = []
    generator_closed = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        after(lambda: seen.append(outcome()))
        start_response("200 OK", [])
        try:
            for _ in range(100):
                yield b"chunk"
        finally:
            generator_closed.set()

    response = call(AfterMiddleware(app, runner=InlineRunner()))
    chunks = iter(response)
    assert next(chunks) == b"chunk"
    try:  # what a server does when the socket write fails
        raise BrokenPipeError("client went away")
    except BrokenPipeError:
        response.close()
    assert generator_closed.is_set()
    assert seen == [Outcome(200, False, None)]


def test_close_calls_inner_close_first_and_is_idempotent() -> None:
    events: list[str] = []

    class Body:
        def __iter__(self) -> t.Iterator[bytes]:
            return iter([b"x"])

        def close(self) -> None:
            events.append("inner close")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Body:
        after(events.append, "callback")
        start_response("200 OK", [])
        return Body()

    response = serve(AfterMiddleware(app, runner=InlineRunner()))
    response.iterable.close()
    response.iterable.close()
    assert events == ["inner close", "callback"]


def test_inner_close_error_propagates_and_callbacks_still_run() -> None:
    ran: list[str] = []

    class Body(list[bytes]):
        def close(self) -> None:
            raise RuntimeError("inner close failed")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Body:
        after(ran.append, "callback")
        start_response("200 OK", [])
        return Body([b"x"])

    with pytest.raises(RuntimeError, match="inner close failed"):
        serve(AfterMiddleware(app, runner=InlineRunner()))
    assert ran == ["callback"]


def test_concurrent_close_schedules_once() -> None:
    submitted: list[object] = []
    inner_closes: list[int] = []

    class Recorder:
        def submit(self, fn: t.Callable[[], object]) -> None:
            submitted.append(fn)

    class Body(list[bytes]):
        def close(self) -> None:
            inner_closes.append(1)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Body:
        after(print)
        start_response("200 OK", [])
        return Body([b"x"])

    middleware = AfterMiddleware(app, runner=Recorder())
    for _ in range(50):
        response = call(middleware)
        barrier = threading.Barrier(8, timeout=5)

        def close(response: t.Any = response, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            response.close()

        threads = [threading.Thread(target=close) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
    assert len(submitted) == 50
    assert len(inner_closes) == 50


def exiting_app(ran: list[str]) -> WSGIApplication:
    """An app whose first callback raises SystemExit(3) and whose second records."""

    def fatal() -> None:
        raise SystemExit(3)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(fatal)
        after(ran.append, "next")
        start_response("200 OK", [])
        return [b""]

    return app


def test_nothing_a_callback_raises_reaches_close_on_a_thread_runner(
    runner: ThreadRunner, log: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []
    serve(AfterMiddleware(exiting_app(ran), runner=runner))  # does not raise
    assert runner.wait_idle(TIMEOUT)
    assert ran == ["next"]
    assert [r.exc_info[0] for r in log.records if r.exc_info] == [SystemExit]


def test_an_interrupt_in_the_servers_thread_is_raised_after_the_chain(
    log: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    with pytest.raises(SystemExit) as info:
        serve(AfterMiddleware(exiting_app(ran), runner=InlineRunner()))
    assert info.value.code == 3
    assert ran == ["next"]  # the rest ran first
    assert [r.exc_info[0] for r in log.records if r.exc_info] == [SystemExit]


def test_start_response_exc_info_and_write_pass_through() -> None:
    calls: list[tuple[t.Any, ...]] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], *exc_info: t.Any) -> t.Any:
        calls.append((status, headers, *exc_info))
        return written.append

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("A", "1")])
        try:
            raise ValueError("late")
        except ValueError:
            write = start_response("500 Internal Server Error", [("B", "2")], sys.exc_info())
        write(b"via write")
        return [b"tail"]

    response = call(AfterMiddleware(app, runner=InlineRunner()), None, start_response)
    assert list(response) == [b"tail"]
    assert calls[0] == ("200 OK", [("A", "1")])
    assert calls[1][:2] == ("500 Internal Server Error", [("B", "2")])
    assert calls[1][2][0] is ValueError
    assert written == [b"via write"]


def test_chunks_are_yielded_as_they_come() -> None:
    produced: list[int] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        start_response("200 OK", [])
        for i in range(3):
            produced.append(i)
            yield str(i).encode()

    response = call(AfterMiddleware(app, runner=InlineRunner()))
    chunks = iter(response)
    assert next(chunks) == b"0"
    assert produced == [0]
    assert next(chunks) == b"1"
    assert produced == [0, 1]
    response.close()


def test_len_only_when_the_inner_iterable_has_it() -> None:
    def listing(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [b"a", b"b", b"c"]

    def generating(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"

    sized = call(AfterMiddleware(listing, runner=InlineRunner()))
    unsized = call(AfterMiddleware(generating, runner=InlineRunner()))
    assert len(sized) == 3
    assert not hasattr(unsized, "__len__")
    with pytest.raises(TypeError):
        len(unsized)
    sized.close()
    unsized.close()


@pytest.mark.parametrize(
    "queued", ["in the view", "after the app returned", "while the server iterates"]
)
@pytest.mark.parametrize(
    ("asks", "completed"),
    [(0, False), (1, False), (2, True)],
    ids=["never iterated", "last chunk taken, not asked past it", "asked past the last chunk"],
)
def test_a_list_body_is_complete_once_the_server_asked_past_its_last_chunk(
    queued: str, asks: int, completed: bool
) -> None:
    """A list body is handed to the server as the list's own iterator (unless a callback
    was queued before the app returned): completion is read from that iterator."""
    seen: list[Outcome | None] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        if queued == "in the view":
            after(lambda: seen.append(outcome()))
        start_response("200 OK", [])
        return [b"only"]

    response = call(AfterMiddleware(app, runner=InlineRunner()))
    if queued == "after the app returned":
        after(lambda: seen.append(outcome()))
    if asks:  # (0: the server never iterates it)
        chunks = iter(response)
        if queued == "while the server iterates":
            after(lambda: seen.append(outcome()))
        assert [next(chunks, None) for _ in range(asks)] == [b"only", None][:asks]
    elif queued == "while the server iterates":
        iter(response)
        after(lambda: seen.append(outcome()))
    assert len(response) == 1
    response.close()
    assert seen == [Outcome(status=200, completed=completed, error=None)]


def test_file_wrapper_response_is_returned_unwrapped() -> None:
    ran: list[Outcome | None] = []

    class ServerFileWrapper(wsgiref.util.FileWrapper):
        pass

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        after(lambda: ran.append(outcome()))
        start_response("200 OK", [("Content-Length", "5")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"hello"), 2)

    environ = make_environ(extra={"wsgi.file_wrapper": ServerFileWrapper})
    response = call(AfterMiddleware(app, runner=InlineRunner()), environ)
    assert type(response) is ServerFileWrapper  # the server still finds its sendfile path
    assert environ["wsgi.file_wrapper"] is ServerFileWrapper  # restored (gunicorn reads it again)
    assert response.filelike.fileno is not None
    assert b"".join(response) == b"hello"
    assert ran == []
    response.close()
    response.close()  # waitress may close twice
    assert ran == [Outcome(200, True, None)]


def test_file_wrapper_proxy_keeps_the_real_file_descriptor(tmp_path: t.Any) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 1000)
    seen: list[t.Any] = []

    def server_wrapper(filelike: t.Any, blksize: int = 8192) -> t.Any:
        seen.append(filelike)
        return wsgiref.util.FileWrapper(filelike, blksize)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        after(print)
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    environ = make_environ(extra={"wsgi.file_wrapper": server_wrapper})
    response = call(AfterMiddleware(app, runner=InlineRunner()), environ)
    proxy = seen[0]
    with open(path, "rb") as real:
        assert isinstance(proxy.fileno(), int)
        assert proxy.fileno() != real.fileno()
    assert proxy.seek(10) == 10
    assert proxy.tell() == 10
    response.close()
    assert proxy.closed


def test_file_wrapper_restored_when_the_app_raises() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        raise RuntimeError("x")

    environ = make_environ(extra={"wsgi.file_wrapper": wsgiref.util.FileWrapper})
    with pytest.raises(RuntimeError):
        call(AfterMiddleware(app, runner=InlineRunner()), environ)
    assert environ["wsgi.file_wrapper"] is wsgiref.util.FileWrapper


def test_nested_middleware_passes_through() -> None:
    ran: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(ran.append, "once")
        start_response("200 OK", [])
        return [b""]

    inner = AfterMiddleware(app, runner=InlineRunner())
    outer = AfterMiddleware(inner, runner=InlineRunner())
    iterable = call(outer)
    assert iterable._inner == [b""]  # wrapped once, by the outer one
    assert b"".join(iterable) == b""
    iterable.close()
    assert ran == ["once"]


def test_environ_is_released_after_the_callbacks_ran() -> None:
    import gc
    import weakref

    class Environ(dict[str, t.Any]):
        pass

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(print, end="")
        start_response("200 OK", [])
        return [b""]

    environ = Environ(make_environ())
    ref = weakref.ref(environ)
    gc.disable()  # reference counting alone must free it: no cycle left behind
    try:
        serve(AfterMiddleware(app, runner=InlineRunner()), environ=environ)
        del environ
        assert ref() is None
    finally:
        gc.enable()


VALIDATED_APP = """
import sys, wsgiref.validate, wsgiref.util
from wsgi_after import AfterMiddleware, InlineRunner, after

ran = []

def app(environ, start_response):
    after(ran.append, environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    if environ["PATH_INFO"] == "/stream":
        return iter([b"a", b"b"])
    if environ["PATH_INFO"] == "/file":
        return environ["wsgi.file_wrapper"](open(sys.executable, "rb"), 65536)
    return [b"hello"]

for stack in ("outside", "inside"):
    if stack == "outside":
        wrapped = wsgiref.validate.validator(AfterMiddleware(app, runner=InlineRunner()))
    else:
        wrapped = AfterMiddleware(wsgiref.validate.validator(app), runner=InlineRunner())
    for path in ("/", "/stream", "/file"):
        environ = {}
        wsgiref.util.setup_testing_defaults(environ)
        environ["PATH_INFO"] = path
        environ["QUERY_STRING"] = ""
        environ["wsgi.file_wrapper"] = wsgiref.util.FileWrapper
        result = wrapped(environ, lambda status, headers, exc_info=None: None)
        for chunk in result:
            pass
        result.close()
print(ran)
"""


def test_passes_wsgiref_validator_with_warnings_as_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", VALIDATED_APP],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(["/", "/stream", "/file"] * 2)


# --- Hardening (issue 9) ------------------------------------------------------------


def test_a_process_pool_is_refused_as_runner() -> None:
    with (
        concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool,
        pytest.raises(TypeError) as info,
    ):
        AfterMiddleware(lambda e, s: [], runner=pool)
    assert str(info.value) == (
        "'runner' cannot be a 'ProcessPoolExecutor': a request's callbacks and their"
        " contexts cannot be sent to another process. Use 'ThreadRunner', or"
        " 'wsgi_after.celery.CeleryRunner' to run them in other processes."
    )


def test_what_an_executors_future_reports_is_logged(log: pytest.LogCaptureFixture) -> None:
    started, release = threading.Event(), threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(print, end="")
        start_response("200 OK", [])
        return [b""]

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:

        def hold() -> None:
            started.set()
            release.wait(10)

        pool.submit(hold)
        assert started.wait(TIMEOUT)
        middleware = AfterMiddleware(app, runner=pool)
        serve(middleware, "/cancelled")  # queued behind the busy worker
        pool.shutdown(wait=False, cancel_futures=True)
        release.set()
    [message] = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert message == (
        "Callbacks ['builtins.print'] queued by 'GET /cancelled' were not run: the executor"
        " cancelled them."
    )


def test_a_closed_response_keeps_nothing_of_the_request_alive(runner: ThreadRunner) -> None:
    import gc
    import weakref

    class Body(list[bytes]):
        pass

    refs: list[weakref.ref[t.Any]] = []
    done = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(done.set)
        start_response("200 OK", [])
        body = Body([b"x" * 1024])
        refs.append(weakref.ref(body))
        return body

    gc.disable()  # reference counting alone must free it
    try:
        serve(AfterMiddleware(app, runner=runner))
        assert done.wait(TIMEOUT)
        assert runner.wait_idle(TIMEOUT)
        assert refs[0]() is None  # not kept until this thread's next request
    finally:
        gc.enable()


def test_an_app_errors_traceback_is_freed_without_the_gc() -> None:
    import gc
    import weakref

    class Local:
        pass

    refs: list[weakref.ref[Local]] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        local = Local()  # a view's local, kept alive by the error's traceback
        refs.append(weakref.ref(local))
        after(print, end="")
        raise ValueError("boom")

    gc.disable()
    try:
        with pytest.raises(ValueError, match="boom"):
            serve(AfterMiddleware(app, runner=InlineRunner()))
        assert refs[0]() is None  # no chain <-> traceback cycle left for the gc
    finally:
        gc.enable()


def test_file_wrapper_keywords_pass_through() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"hello"), blksize=2)

    environ = make_environ(extra={"wsgi.file_wrapper": wsgiref.util.FileWrapper})
    response = call(AfterMiddleware(app, runner=InlineRunner()), environ)
    assert b"".join(response) == b"hello"
    response.close()


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3"])
def test_max_callbacks_must_be_a_positive_int(bad: t.Any) -> None:
    with pytest.raises(ValueError, match=r"^'max_callbacks' must be an int of at least 1, got "):
        AfterMiddleware(lambda e, s: [], runner=InlineRunner(), max_callbacks=bad)


def test_one_callback_per_request_is_a_valid_max_callbacks() -> None:
    ran: list[int] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(ran.append, 1)
        start_response("200 OK", [])
        return [b""]

    middleware = AfterMiddleware(app, runner=InlineRunner(), max_callbacks=1)
    assert middleware.max_callbacks == 1
    serve(middleware)
    assert ran == [1]


def test_pool_options_with_a_runner_are_all_named() -> None:
    with pytest.raises(TypeError) as info:
        AfterMiddleware(
            lambda e, s: [],
            runner=InlineRunner(),
            max_workers=2,  # type: ignore[call-overload]
            on_full="drop",
        )
    message = str(info.value)
    assert message.startswith("'AfterMiddleware' got 'max_workers', 'on_full' with 'runner'.")


def test_nested_middleware_gives_the_inner_app_the_servers_environ_and_the_chain() -> None:
    seen: list[t.Any] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        seen.append(environ["wsgi_after.chain"])
        seen.append(current_chain())
        start_response("200 OK", [])
        return [b""]

    outer = AfterMiddleware(AfterMiddleware(app, runner=InlineRunner()), runner=InlineRunner())
    serve(outer, "/nested")
    assert seen[0] == "/nested"
    assert seen[1] is not None
    assert seen[1] is seen[2]  # environ["wsgi_after.chain"] is the request's chain


def test_one_file_wrapper_hook_per_server_wrapper() -> None:
    # The hook is built once for the server's file_wrapper, and again when the
    # server's file_wrapper changes; each request's file goes to its own server's.
    calls: list[str] = []
    hooks: list[t.Any] = []

    def wrapper_a(filelike: t.Any, blksize: int = 8192) -> t.Any:
        calls.append("a")
        return wsgiref.util.FileWrapper(filelike, blksize)

    def wrapper_b(filelike: t.Any, blksize: int = 8192) -> t.Any:
        calls.append("b")
        return wsgiref.util.FileWrapper(filelike, blksize)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        hooks.append(environ["wsgi.file_wrapper"])
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"x"))

    middleware = AfterMiddleware(app, runner=InlineRunner())
    for wrapper in (wrapper_a, wrapper_a, wrapper_b, wrapper_b):
        response = call(middleware, make_environ(extra={"wsgi.file_wrapper": wrapper}))
        assert b"".join(response) == b"x"
        response.close()
    assert calls == ["a", "a", "b", "b"]
    assert hooks[0] is hooks[1]
    assert hooks[2] is hooks[3]
    assert hooks[1] is not hooks[2]


@pytest.mark.parametrize("kind", [list, tuple])
def test_a_partly_sent_body_is_freed_once_the_response_is_closed(kind: type[t.Any]) -> None:
    """Even while something (a context the view copied) keeps the request's chain."""
    chunk = b"y" * 1000 + kind.__name__.encode()
    base = sys.getrefcount(chunk)
    kept: list[contextvars.Context] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        kept.append(contextvars.copy_context())
        start_response("200 OK", [])
        return kind([chunk, chunk, chunk])

    response = call(AfterMiddleware(app, runner=InlineRunner()))
    chunks = iter(response)
    assert next(chunks) == chunk  # the client went away after the first chunk
    response.close()
    del chunks, response
    assert sys.getrefcount(chunk) == base
    assert kept  # (the chain is still reachable from the copied context)


def test_outcome_of_a_status_whose_first_three_characters_are_not_decimal() -> None:
    """``"²00"`` passes ``str.isdigit()`` but not ``int()``; a server may still send it."""
    seen: list[Outcome | None] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(lambda: seen.append(outcome()))
        start_response("\u00b200 OK", [])
        return [b""]

    serve(AfterMiddleware(app, runner=InlineRunner()))
    assert seen == [Outcome(status=None, completed=True, error=None)]
