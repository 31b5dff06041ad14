"""A real Celery worker on a real broker, for the Celery integration tests.

The broker is a private redis-server on a free port, or the machine's RabbitMQ at
127.0.0.1:5672 (guest/guest) on a queue of the caller's own, deleted when the
worker stops. A missing RabbitMQ fails the test, naming the command that starts it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import socket
import sqlite3
import subprocess
import sys
import time
import uuid

import kombu.connection
import pytest

from tests.integration.servers import APPS, free_port, wait_for_port

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


class Redis:
    """A redis-server of the test's own, on 127.0.0.1, keeping nothing on disk."""

    def __init__(self, port: int, workdir: pathlib.Path) -> None:
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def wait_for_text(path: pathlib.Path, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in {path} within {timeout} s")


def require_rabbitmq() -> None:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        pytest.fail(
            "RabbitMQ is not reachable at 127.0.0.1:5672: start it with"
            " 'rabbitmq-server -detached'.",
            pytrace=False,
        )


@dataclasses.dataclass
class CeleryWorker:
    """A ``celery worker -P solo`` process, its broker, and the runs table it writes."""

    kind: str  # "redis" or "rabbitmq"
    broker: str
    queue: str
    runs: pathlib.Path  # SQLite: one row per callback the worker ran
    log: pathlib.Path
    redis: Redis | None  # the private redis-server (kind "redis")
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop the worker (by PID), then its redis-server, or delete its RabbitMQ queue."""
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.redis is not None:
            self.redis.stop()
        else:
            with kombu.connection.Connection(  # type: ignore[no-untyped-call]
                self.broker, connect_timeout=5
            ) as connection:
                connection.default_channel.queue_delete(self.queue)


def start_worker(
    kind: str, workdir: pathlib.Path, tasks: str, queue_prefix: str, **env: str
) -> CeleryWorker:
    """Start a broker of ``kind`` and a worker of the Celery app in module ``tasks``
    (in ``tests/integration/apps``) on a queue of its own; return once it is ready.

    The worker gets the broker, the queue and the runs table in ``WSGI_AFTER_*``
    variables, and ``env`` besides.
    """
    redis = None
    if kind == "redis":
        redis = Redis(free_port(), workdir)
        redis.start()
        broker = f"redis://127.0.0.1:{redis.port}/0"
    else:
        require_rabbitmq()
        broker = RABBITMQ
    queue = f"{queue_prefix}_{uuid.uuid4().hex[:12]}"
    runs, log = workdir / "runs.sqlite", workdir / "worker.log"
    with contextlib.closing(sqlite3.connect(runs)) as db, db:
        db.execute("create table runs (name, pid, status, completed, error, at)")
    full_env = {
        **os.environ,
        "PYTHONPATH": str(APPS),
        "WSGI_AFTER_BROKER": broker,
        "WSGI_AFTER_QUEUE": queue,
        "WSGI_AFTER_RUNS_DB": str(runs),
        **env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", tasks, "worker", "-P", "solo",
             "-l", "INFO", "-Q", queue, "-n", f"{queue}@127.0.0.1", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    worker = CeleryWorker(kind, broker, queue, runs, log, redis, process)
    try:
        wait_for_text(log, "ready.")
    except BaseException:
        worker.stop()
        raise
    return worker
