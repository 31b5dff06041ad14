"""Helpers for the unit tests: call a WSGI app the way a server does, and wait.

Tests synchronise with :class:`threading.Event` and barriers; where there is
nothing to wait on (a counter, a log line from another thread), they poll with
:func:`wait_for`, the one poll loop of the unit tests, under a generous deadline
(:data:`TIMEOUT`) so that a loaded machine slows them down but never fails them.
"""

from __future__ import annotations

import sys
import threading
import time
import typing as t
import wsgiref.util

from wsgi_after import after

if t.TYPE_CHECKING:
    import pathlib

    import pytest
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


T = t.TypeVar("T")

#: Seconds a test waits for something that should happen at once: far more than it
#: ever takes, so that only a real hang (a bug) reaches it.
TIMEOUT = 10.0


def wait_for(condition: t.Callable[[], T], timeout: float = TIMEOUT, what: str = "") -> T:
    """Poll ``condition`` until it returns something true; return that.

    :raises AssertionError: naming ``what`` (or the condition) if ``timeout``
        seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what or condition!r}")
        time.sleep(0.002)


class Response(t.NamedTuple):
    status: str
    headers: list[tuple[str, str]]
    body: bytes
    iterable: t.Any


def make_environ(
    path: str = "/", method: str = "GET", extra: dict[str, t.Any] | None = None
) -> dict[str, t.Any]:
    environ: dict[str, t.Any] = {"PATH_INFO": path, "REQUEST_METHOD": method}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update(extra or {})
    return environ


def _ignore_start_response(status: str, headers: list[tuple[str, str]], *exc_info: t.Any) -> t.Any:
    return lambda data: None


def call(
    app: WSGIApplication, environ: dict[str, t.Any] | None = None, start_response: t.Any = None
) -> t.Any:
    """Call ``app`` once and return its iterable untouched, for tests that drive it."""
    environ = environ if environ is not None else make_environ()
    return app(environ, start_response or _ignore_start_response)


def serve(
    app: WSGIApplication,
    path: str = "/",
    method: str = "GET",
    *,
    environ: dict[str, t.Any] | None = None,
    close: bool = True,
) -> Response:
    """Call ``app`` the way a server does: call, iterate, then close."""
    environ = environ if environ is not None else make_environ(path, method)
    started: list[t.Any] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Any:
        started[:] = [status, headers]
        return lambda data: None

    iterable = app(environ, start_response)
    try:
        body = b"".join(iterable)
    finally:
        if close and hasattr(iterable, "close"):
            iterable.close()
    return Response(started[0], started[1], body, iterable)


# Callbacks and an app queuing them, for the tests of listeners (their names show in metrics).
def ok() -> None:
    pass


def broken() -> None:
    raise ValueError("broken")


def queuing(*callbacks: t.Callable[[], None]) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        for callback in callbacks:
            after(callback)
        start_response("200 OK", [])
        return [b""]

    return app


def text_app(
    view: t.Callable[[WSGIEnvironment], object],
) -> t.Callable[[WSGIEnvironment, StartResponse], list[bytes]]:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        view(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def hold(busy: threading.Event, release: threading.Event) -> None:
    """Keep a runner's worker busy until ``release`` is set."""
    busy.set()
    release.wait(TIMEOUT)


class Returns:
    """A runner that calls each chain at once and keeps what it returned or raised."""

    def __init__(self) -> None:
        self.results: list[object] = []

    def submit(self, fn: t.Callable[[], object]) -> None:
        try:
            self.results.append(fn())
        except BaseException as e:  # the test looks at it
            self.results.append(e)


def package_with_a_command_line(
    tmp_path: pathlib.Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> pathlib.Path:
    """A package ``name`` on ``sys.path`` whose ``__main__`` and ``cli`` modules exit on import.

    What a forged ``name.__main__:x`` would run on a worker allowing ``name``. Returns
    the file its ``__main__`` creates when it is imported.
    """
    package = tmp_path / name
    package.mkdir()
    marker = tmp_path / "cli-ran"
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        f"open({str(marker)!r}, 'a').close()\nraise SystemExit(2)\n"
    )
    (package / "cli.py").write_text("raise SystemExit(2)  # argparse with no arguments\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in (name, f"{name}.__main__", f"{name}.__init__", f"{name}.cli"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return marker
