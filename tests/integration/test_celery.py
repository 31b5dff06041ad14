"""CeleryRunner with a private redis-server and a real Celery worker."""

from __future__ import annotations

import collections.abc
import contextlib
import importlib
import logging
import os
import pathlib
import sqlite3
import subprocess
import sys
import time
import types
import typing as t

import pytest

from tests.helpers import serve
from tests.integration.servers import APPS, free_port, wait_for_port
from wsgi_after import AfterMiddleware, after

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


class Redis:
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


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> collections.abc.Iterator[tuple[types.ModuleType, Redis, pathlib.Path]]:
    tmp = tmp_path_factory.mktemp("celery")
    redis = Redis(free_port(), tmp)
    redis.start()
    env = {
        "WSGI_AFTER_BROKER": f"redis://127.0.0.1:{redis.port}/0",
        "WSGI_AFTER_RUNS_DB": str(tmp / "runs.sqlite"),
    }
    os.environ.update(env)
    sys.path.insert(0, str(APPS))
    tasks = importlib.import_module("celery_tasks")
    log = tmp / "worker.log"
    log_file = log.open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "-P", "solo",
         "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env={**os.environ, "PYTHONPATH": str(APPS)},
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_text(log, "ready.")
        yield tasks, redis, log
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        log_file.close()
        redis.stop()
        sys.path.remove(str(APPS))
        sys.modules.pop("celery_tasks", None)


def rows(tasks: types.ModuleType, count: int, timeout: float = 30.0) -> list[tuple[t.Any, ...]]:
    deadline = time.monotonic() + timeout
    found: list[tuple[t.Any, ...]] = []
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(tasks.DB, timeout=30)) as db, db:
            found = db.execute("select * from runs order by rowid").fetchall()
        if len(found) >= count:
            break
        time.sleep(0.05)
    return found


@pytest.fixture
def runner(
    cluster: tuple[types.ModuleType, Redis, pathlib.Path],
) -> collections.abc.Iterator[t.Any]:
    from wsgi_after.celery import CeleryRunner

    tasks = cluster[0]
    with contextlib.closing(sqlite3.connect(tasks.DB)) as db, db:
        db.execute("delete from runs")
    runner = CeleryRunner(tasks.celery_app, retry_window=60)
    yield runner
    runner.shutdown(10)


def app_with(view: t.Callable[[], object], status: str = "200 OK") -> t.Any:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        view()
        start_response(status, [])
        return [b"ok"]

    return app


def test_callbacks_run_on_the_worker_in_order_with_failures_isolated(
    cluster: tuple[types.ModuleType, Redis, pathlib.Path], runner: t.Any
) -> None:
    tasks, _, log = cluster

    def view() -> None:
        after(tasks.record, "first")
        after(tasks.fails)
        after(tasks.task_record, "second")
        after(tasks.record, "third")

    serve(AfterMiddleware(app_with(view, "404 Not Found"), runner=runner), "/orders/1")
    found = rows(tasks, 3)
    assert [row[0] for row in found] == ["first", "second", "third"]
    assert {row[1] for row in found} != {os.getpid()}
    assert len({row[1] for row in found}) == 1
    assert all(row[2:5] == (404, 1, None) for row in found)
    text = wait_for_text(
        log, "Callback 'celery_tasks.fails' queued by 'GET /orders/1' raised ValueError."
    )
    assert "ValueError: this callback failed" in text


def test_outcome_on_the_worker_carries_the_error(
    cluster: tuple[types.ModuleType, Redis, pathlib.Path], runner: t.Any
) -> None:
    tasks = cluster[0]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(tasks.record, "after error")
        raise KeyError("missing order")

    with pytest.raises(KeyError):
        serve(AfterMiddleware(app, runner=runner))
    [row] = rows(tasks, 1)
    assert row[2:5] == (None, 0, "KeyError: 'missing order'")


@pytest.mark.parametrize(
    ("make_callback", "message"),
    [
        pytest.param(
            lambda tasks: (lambda: None, ()),
            "'after()' cannot send 'tests.integration.test_celery.<lambda>.<locals>.<lambda>'"
            " to Celery: a worker imports callbacks by module and qualified name."
            " Define it at module level, or make it a Celery task.",
            id="lambda",
        ),
        pytest.param(
            lambda tasks: (tasks.record, (object(),)),
            "'after()' cannot send the arguments of 'celery_tasks.record' to Celery",
            id="unserializable",
        ),
    ],
)
def test_bad_callback_is_refused_in_the_request(
    cluster: tuple[types.ModuleType, Redis, pathlib.Path],
    runner: t.Any,
    make_callback: t.Callable[[types.ModuleType], tuple[t.Any, tuple[t.Any, ...]]],
    message: str,
) -> None:
    func, args = make_callback(cluster[0])
    with pytest.raises(TypeError) as info:
        serve(AfterMiddleware(app_with(lambda: after(func, *args)), runner=runner))
    assert str(info.value).startswith(message)


def test_dead_broker_keeps_responses_fast_and_publishes_later(
    cluster: tuple[types.ModuleType, Redis, pathlib.Path], runner: t.Any
) -> None:
    tasks, redis, _ = cluster
    redis.stop()
    try:
        app = AfterMiddleware(
            app_with(lambda: after(tasks.record, "queued while down")), runner=runner
        )
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            serve(app)
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 0.1
        assert runner.wait_idle(0.5) is False  # still retrying
    finally:
        redis.start()
    found = rows(tasks, 5, timeout=60)
    assert [row[0] for row in found] == ["queued while down"] * 5


def test_what_cannot_be_published_is_logged_with_its_payload(
    cluster: tuple[types.ModuleType, Redis, pathlib.Path], caplog: pytest.LogCaptureFixture
) -> None:
    from wsgi_after.celery import CeleryRunner

    tasks, redis, _ = cluster
    caplog.set_level(logging.ERROR, logger="wsgi_after")
    runner = CeleryRunner(tasks.celery_app, retry_window=0.5)
    redis.stop()
    try:
        serve(AfterMiddleware(app_with(lambda: after(tasks.record, "lost")), runner=runner), "/x")
        assert runner.wait_idle(10)
    finally:
        redis.start()
        runner.shutdown(5)
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith(
        "Could not publish the callbacks of 'GET /x' to Celery: the broker could not be reached"
    )
    assert (
        '"func": "celery_tasks:record", "name": "celery_tasks.record", "args": ["lost"]' in message
    )
