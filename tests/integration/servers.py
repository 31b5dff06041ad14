"""Real servers as subprocesses on 127.0.0.1 and free ports, always stopped."""

from __future__ import annotations

import collections.abc
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import typing as t

from wsgi_after.demo import free_port, wait_for_port

__all__ = ["APPS", "free_port", "python", "running", "wait_for_port"]

APPS = pathlib.Path(__file__).parent / "apps"


@contextlib.contextmanager
def running(
    args: list[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
    log: pathlib.Path | None = None,
) -> collections.abc.Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` (a server listening on ``port``), yield it, then stop it for sure."""
    full_env = {**os.environ, "PYTHONPATH": str(APPS), "PYTHONUNBUFFERED": "1", **(env or {})}
    out: t.Any = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        args, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_port(port, process)
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, stop_signal)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        if log:
            out.close()


def python(*args: str) -> list[str]:
    return [sys.executable, *args]
