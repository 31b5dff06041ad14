"""The one way the integration tests start and stop a real server.

Every server runs as a subprocess in its own session on 127.0.0.1 and a free port;
:func:`running` waits until it listens, yields the process, and stops it by PID (a
signal to its process group, then SIGKILL after a deadline), whatever the test did.
The command builders below are the only place each server's command line is written.
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import typing as t

from tests.integration.poll import poll

__all__ = [
    "APPS",
    "default_quit_action",
    "free_port",
    "gunicorn",
    "python",
    "require",
    "running",
    "shared_dir",
    "stop",
    "uwsgi",
    "wait_for_port",
    "waitress",
    "werkzeug",
]

APPS = pathlib.Path(__file__).parent / "apps"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until ``port`` accepts connections; fail at once if ``process`` died first."""
    listening = poll(lambda: process.poll() is None and _accepts(port), bool, timeout)
    if process.poll() is not None:
        raise RuntimeError(f"the server exited with {process.returncode} before listening")
    if not listening:
        raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Send ``sig`` to the server's process group; SIGKILL it if it outlives ``timeout``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    # Whatever the server left in its group (a worker, a daemon) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


@contextlib.contextmanager
def default_quit_action() -> collections.abc.Iterator[None]:
    """Let a server started meanwhile have SIGQUIT's default action, as from a terminal.

    An ignored signal stays ignored across exec, and a background job of a
    non-interactive shell (``nox &`` in a script) starts with SIGQUIT ignored: its
    servers would then survive the SIGQUIT a test sends them.
    """
    if signal.getsignal(signal.SIGQUIT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)


@contextlib.contextmanager
def running(
    args: list[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
    log: pathlib.Path | None = None,
    start_timeout: float = 30.0,
) -> collections.abc.Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` (a server listening on ``port``), yield it, then stop it for sure."""
    full_env = {**os.environ, "PYTHONPATH": str(APPS), "PYTHONUNBUFFERED": "1", **(env or {})}
    out: t.Any = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        with default_quit_action():
            process = subprocess.Popen(
                args, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for_port(port, process, start_timeout)
            yield process
        finally:
            stop(process, stop_signal)
    finally:
        if log:
            out.close()


#: Where servers' folders go: ``/tmp``, not ``$TMPDIR``, which nox sets deep inside the
#: session's folder. Apache keeps its daemons' Unix sockets in its server root, and a
#: socket's path has at most 107 bytes: past that every request was a 503.
SHORT_TMP = "/tmp" if os.path.isdir("/tmp") else None


@contextlib.contextmanager
def shared_dir(name: str) -> collections.abc.Iterator[pathlib.Path]:
    """A temporary directory that a server's own user (Apache's ``www-data``) may use too.

    pytest's ``tmp_path`` is private to the test's user; servers that drop privileges
    write their SQLite files here instead. Removed afterwards.
    """
    path = pathlib.Path(tempfile.mkdtemp(prefix=f"wsgi-after-{name}-", dir=SHORT_TMP))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def require(program: str, install: str) -> str:
    """The path of ``program`` next to this Python or on PATH; fail naming ``install``."""
    here = pathlib.Path(sys.executable).parent / program
    found = str(here) if here.exists() else shutil.which(program)
    if not found:
        raise RuntimeError(f"'{program}' is required for these tests: {install}")
    return found


def gunicorn(
    port: int, *extra: str, worker: str = "sync", app: str = "matrix_app:app"
) -> list[str]:
    return python(
        "-m", "gunicorn", "-k", worker, "-w", "1", "-b", f"127.0.0.1:{port}", *extra, app,
    )  # fmt: skip


def waitress(port: int, *, recipe: bool = True, module: str = "matrix_app") -> list[str]:
    """waitress serving ``module.app``, with the README's ``exit_on_sigterm()`` recipe or bare."""
    prelude = "from wsgi_after import exit_on_sigterm; exit_on_sigterm();" if recipe else ""
    return python(
        "-c",
        f"{prelude}import waitress, {module};"
        f"waitress.serve({module}.app, host='127.0.0.1', port={port}, threads=4, _quiet=True)",
    )


def werkzeug(port: int, module: str = "matrix_app") -> list[str]:
    return python(
        "-c",
        f"from werkzeug.serving import run_simple; import {module};"
        f"run_simple('127.0.0.1', {port}, {module}.app, threaded=True)",
    )


def uwsgi(port: int, *extra: str, module: str = "matrix_app:app") -> list[str]:
    """uWSGI speaking HTTP itself on ``port`` (no router process), in this virtualenv."""
    binary = require("uwsgi", "python -m pip install -e '.[test]'")
    return [
        binary, "--http-socket", f"127.0.0.1:{port}", "--module", module, "--home", sys.prefix,
        "--need-app", "--strict", "--disable-logging", *extra,
    ]  # fmt: skip
