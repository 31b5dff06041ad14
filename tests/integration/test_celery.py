"""CeleryRunner with real Celery workers: on a private redis-server, and on RabbitMQ.

One worker per broker for the whole session (started on first use, stopped at the end).
RabbitMQ is the machine's, at 127.0.0.1:5672 (guest/guest); each session uses a queue and
a worker name of its own and deletes the queue at the end. A missing broker fails the
tests, naming the command that starts it.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
import typing as t

import kombu.connection
import kombu.serialization
import pytest
from celery import Celery

from tests.helpers import serve
from tests.integration.celery_worker import CeleryWorker, Redis, start_worker, wait_for_text
from tests.integration.poll import poll
from tests.integration.servers import APPS, free_port
from wsgi_after import AfterMiddleware, after
from wsgi_after.celery import TASK_NAME, CeleryRunner

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

SECRET = "reset-token-5f1c9e2a"


@dataclasses.dataclass
class Cluster:
    """One broker and one worker: what the tests publish to and read back from."""

    kind: str
    broker: str
    queue: str
    db: pathlib.Path
    log: pathlib.Path
    marker: pathlib.Path
    redis: Redis | None
    worker: subprocess.Popen[bytes]
    handle: CeleryWorker

    def web_app(self, broker: str | None = None, **conf: t.Any) -> Celery:
        """A Celery app of the web side, publishing to this cluster's queue."""
        app = Celery("web", broker=broker or self.broker)
        app.conf.update(task_default_queue=self.queue, **conf)
        return app

    def rows(self, count: int, timeout: float = 30.0) -> list[tuple[t.Any, ...]]:
        deadline = time.monotonic() + timeout
        found: list[tuple[t.Any, ...]] = []
        while time.monotonic() < deadline:
            with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as db, db:
                found = db.execute("select * from runs order by rowid").fetchall()
            if len(found) >= count:
                break
            time.sleep(0.05)
        return found

    def clear(self) -> None:
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as db, db:
            db.execute("delete from runs")


class Clusters:
    """Starts each broker's worker on first use; stops them all at the end."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.started: dict[str, Cluster] = {}

    def get(self, kind: str) -> Cluster:
        if kind not in self.started:
            self.started[kind] = self._start(kind)
        return self.started[kind]

    def _start(self, kind: str) -> Cluster:
        workdir = self.tmp / kind
        workdir.mkdir()
        marker = workdir / "marker"
        worker = start_worker(
            kind, workdir, "celery_tasks", "wsgi_after_tests", WSGI_AFTER_MARKER=str(marker)
        )
        return Cluster(
            kind, worker.broker, worker.queue, worker.runs, worker.log, marker,
            worker.redis, worker.process, worker,
        )  # fmt: skip

    def _stop(self, cluster: Cluster) -> None:
        cluster.handle.stop()

    def stop(self) -> None:
        for cluster in self.started.values():
            self._stop(cluster)


@pytest.fixture(scope="session")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> collections.abc.Iterator[Clusters]:
    sys.path.insert(0, str(APPS))
    clusters = Clusters(tmp_path_factory.mktemp("celery"))
    try:
        yield clusters
    finally:
        clusters.stop()
        sys.path.remove(str(APPS))


@pytest.fixture(scope="session")
def tasks(clusters: Clusters) -> types.ModuleType:
    return importlib.import_module("celery_tasks")


@pytest.fixture(params=["redis", "rabbitmq"])
def cluster(request: pytest.FixtureRequest, clusters: Clusters) -> Cluster:
    cluster = clusters.get(request.param)
    cluster.clear()
    return cluster


@pytest.fixture
def redis_cluster(clusters: Clusters) -> Cluster:
    cluster = clusters.get("redis")
    cluster.clear()
    return cluster


@pytest.fixture
def runner(cluster: Cluster) -> collections.abc.Iterator[CeleryRunner]:
    runner = CeleryRunner(cluster.web_app(), allow=["celery_tasks"], retry_window=60)
    yield runner
    runner.shutdown(10)


def app_with(view: t.Callable[[], object], status: str = "200 OK") -> t.Any:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        view()
        start_response(status, [])
        return [b"ok"]

    return app


def test_callbacks_and_tasks_run_on_the_worker_in_order_with_failures_isolated(
    cluster: Cluster, runner: CeleryRunner, tasks: types.ModuleType
) -> None:
    def view() -> None:
        after(tasks.record, "first")
        after(tasks.fails)
        after(tasks.task_record, "second")
        after(tasks.record, "third")

    serve(AfterMiddleware(app_with(view, "404 Not Found"), runner=runner), "/orders/1")
    found = cluster.rows(3)
    assert [row[0] for row in found] == ["first", "second", "third"]
    assert {row[1] for row in found} == {cluster.worker.pid}
    assert all(row[2:5] == (404, 1, None) for row in found)
    text = wait_for_text(
        cluster.log, "Callback 'celery_tasks.fails' queued by 'GET /orders/1' raised ValueError."
    )
    assert "ValueError: this callback failed" in text
    assert runner.wait_idle(10)
    assert runner.stats().published == 1


def test_outcome_on_the_worker_carries_the_error(
    cluster: Cluster, runner: CeleryRunner, tasks: types.ModuleType
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(tasks.record, "after error")
        raise KeyError("missing order")

    with pytest.raises(KeyError):
        serve(AfterMiddleware(app, runner=runner))
    [row] = cluster.rows(1)
    assert row[2:5] == (500, 0, "KeyError: 'missing order'")  # the server's own 500


def test_an_argument_mutated_after_after_is_sent_as_it_was_passed(
    cluster: Cluster, runner: CeleryRunner, tasks: types.ModuleType
) -> None:
    def view() -> None:
        order: dict[str, t.Any] = {"id": 7, "items": ["book"]}
        after(tasks.record_value, order)
        order["items"].append("pen")
        order["id"] = 8

    serve(AfterMiddleware(app_with(view), runner=runner))
    [row] = cluster.rows(1)
    assert json.loads(row[0]) == {"id": 7, "items": ["book"]}


def forged(marker: str) -> list[tuple[str, list[t.Any]]]:
    """``(reference, args)`` of callbacks a worker must refuse; each creates ``marker`` if run."""
    return [
        ("os:system", [f"touch {marker}"]),
        ("builtins:exec", [f"open({marker!r}, 'w').close()"]),
        ("subprocess:run", [["touch", marker]]),
        ("celery_not_allowed:anything", []),  # importing it creates the marker
        ("celery_tasks:system", [f"touch {marker}"]),  # os.system re-exported
        ("celery_tasks:run", [["touch", marker]]),  # subprocess.run re-exported
        ("celery_tasks:Marker", [marker]),  # a class
        ("celery_tasks:Marker.touch", [marker]),  # a function, but not at module level
        ("celery_tasks:marker", [marker]),  # a callable instance
        ("celery_tasks:touch_partial", [marker]),  # a partial
        ("celery_tasks:__getattr__", [marker]),  # a dunder
        ("task:celery.backend_cleanup", []),  # Celery's own tasks
        ("wsgi_after.celery:_run_chain", []),
    ]


def test_forged_messages_run_nothing_outside_the_allow_list(
    cluster: Cluster, tasks: types.ModuleType
) -> None:
    marker = str(cluster.marker)
    refused = forged(marker)
    callbacks = [{"func": func, "args": args, "kwargs": {}} for func, args in refused]
    callbacks.append({"func": "celery_tasks:record", "args": ["allowed"], "kwargs": {}})
    callbacks.append({"func": "task:celery_tasks.task_record", "args": ["task"], "kwargs": {}})
    payload = {"method": "POST", "path": f"/forged/{cluster.kind}", "status": "200 OK",
               "completed": True, "error": None, "callbacks": callbacks}  # fmt: skip
    with cluster.web_app() as app:
        app.send_task(TASK_NAME, args=[payload])
    assert [row[0] for row in cluster.rows(2)] == ["allowed", "task"]
    text = cluster.log.read_text()
    assert not cluster.marker.exists()
    for reference, _ in refused:
        assert f"Refused callback '{reference}' queued by 'POST /forged/{cluster.kind}'" in text
    assert "module 'os' is not in this worker's allow list" in text
    assert marker not in text  # refusals never log the arguments


def test_dead_broker_keeps_responses_fast_and_publishes_later(
    redis_cluster: Cluster, tasks: types.ModuleType
) -> None:
    cluster = redis_cluster
    assert cluster.redis is not None
    runner = CeleryRunner(cluster.web_app(), allow=["celery_tasks"], retry_window=60)
    cluster.redis.stop()
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
        # The broker stays down until an attempt has failed and been retried: a first
        # attempt still connecting (slow on a loaded machine) when the broker came back
        # would succeed at once, and nothing would have been retried.
        assert poll(lambda: runner.stats().retried, lambda n: n >= 1, timeout=30) >= 1
    finally:
        cluster.redis.start()
    try:
        found = cluster.rows(5, timeout=60)
        assert [row[0] for row in found] == ["queued while down"] * 5
        stats = runner.stats()
        assert (stats.published, stats.dead_lettered, stats.dropped) == (5, 0, 0)
        assert stats.retried >= 1
    finally:
        runner.shutdown(10)


def dead_broker(kind: str) -> Celery:
    """A web-side Celery app whose broker is down: nothing listens on its port."""
    port = free_port()
    scheme = "redis" if kind == "redis" else "amqp"
    app = Celery("web", broker=f"{scheme}://guest:guest@127.0.0.1:{port}/")
    # Each publish attempt fails at once rather than after kombu's own reconnection
    # attempts (about 6 s by default): the runner's retry_window does the retrying.
    app.conf.broker_transport_options = {"max_retries": 0}
    return app


def loud_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.INFO]


def assert_no_secret(records: list[logging.LogRecord]) -> None:
    for record in records:
        text = record.getMessage() + (logging.Formatter().formatException(record.exc_info)
                                      if record.exc_info else "")  # fmt: skip
        assert SECRET not in text, text


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_failed_publish_logs_names_only_and_dead_letters_the_payload(
    kind: str, tasks: types.ModuleType, clusters: Clusters, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    letters: list[dict[str, t.Any]] = []
    runner = CeleryRunner(
        dead_broker(kind), allow=["celery_tasks"], retry_window=0.3, dead_letter=letters.append
    )
    try:

        def view() -> None:
            after(tasks.record, SECRET)
            after(tasks.record_value, token=SECRET)

        serve(AfterMiddleware(app_with(view), runner=runner), "/reset")
        assert runner.wait_idle(20)
    finally:
        runner.shutdown(5)
    records = loud_records(caplog)
    assert_no_secret(records)
    messages = [r.getMessage() for r in records if r.name == "wsgi_after"]
    reason = (
        "the broker could not be reached within retry_window=0.3 s; payload given to the"
        " dead_letter hook 'list.append'."
    )
    assert messages == [
        f"Callback 'celery_tasks:record' queued by 'GET /reset' was not run: {reason}",
        f"Callback 'celery_tasks:record_value' queued by 'GET /reset' was not run: {reason}",
    ]
    [letter] = letters
    assert letter["callbacks"] == [
        {"func": "celery_tasks:record", "args": [SECRET], "kwargs": {}},
        {"func": "celery_tasks:record_value", "args": [], "kwargs": {"token": SECRET}},
    ]
    stats = runner.stats()
    assert (stats.published, stats.dead_lettered, stats.dropped, stats.queued) == (0, 1, 0, 0)


def test_dropped_messages_are_aggregated_without_payloads(
    tasks: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    runner = CeleryRunner(
        dead_broker("redis"),
        allow=["celery_tasks"],
        retry_window=60,
        max_pending=1,
    )
    app = AfterMiddleware(app_with(lambda: after(tasks.record, SECRET)), runner=runner)
    try:
        serve(app)  # the publisher takes it and retries it
        deadline = time.monotonic() + 10
        while runner.stats().retried == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(201):  # one waits in the queue, 200 are dropped
            serve(app, "/reset")
        stats = runner.stats()
        assert (stats.queued, stats.dropped) == (1, 200)
    finally:
        runner.shutdown(5)
    records = loud_records(caplog)
    assert_no_secret(records)
    messages = [r.getMessage() for r in records if r.name == "wsgi_after"]
    full = (
        "the Celery publisher's queue is full (max_pending=1); payload kept nowhere"
        " (pass 'dead_letter' to 'CeleryRunner' to keep it)."
    )
    assert (
        messages[:5]
        == [f"Callback 'celery_tasks:record' queued by 'GET /reset' was not run: {full}"] * 5
    )
    assert (
        f"195 more callbacks were not run in the last 10.0 s: 'celery_tasks:record' x195 ({full})"
        in messages
    )
    assert len(messages) <= 10
    assert runner.stats().dead_lettered == 2  # the two tried once more at shutdown


FLAKY = threading.Event()


def flaky_dumps(value: object) -> str:
    if FLAKY.is_set():
        raise ValueError(f"cannot encode {value!r}")
    return json.dumps(value)


kombu.serialization.register(  # type: ignore[no-untyped-call]
    "wsgi_after_flaky", flaky_dumps, json.loads, content_type="application/x-flaky"
)


def test_an_encoding_error_at_publish_is_logged_by_name_and_dead_lettered(
    redis_cluster: Cluster, tasks: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    letters: list[dict[str, t.Any]] = []
    app = redis_cluster.web_app(
        task_serializer="wsgi_after_flaky", accept_content=["json", "application/x-flaky"]
    )
    runner = CeleryRunner(app, allow=["celery_tasks"], dead_letter=letters.append)

    def view() -> None:
        after(tasks.record, SECRET)  # encodes now
        FLAKY.set()  # the publisher's encoding fails

    try:
        serve(AfterMiddleware(app_with(view), runner=runner), "/reset")
        assert runner.wait_idle(10)
    finally:
        FLAKY.clear()
        runner.shutdown(5)
    records = loud_records(caplog)
    assert_no_secret(records)
    assert [r.getMessage() for r in records if r.name == "wsgi_after"] == [
        "Callback 'celery_tasks:record' queued by 'GET /reset' was not run: its message could not"
        " be encoded with the 'wsgi_after_flaky' serializer at publish; payload given to the"
        " dead_letter hook 'list.append'."
    ]
    assert letters[0]["callbacks"][0]["args"] == [SECRET]
    assert runner.stats().dead_lettered == 1


def test_a_dead_letter_replays_on_the_worker(
    redis_cluster: Cluster, tasks: types.ModuleType
) -> None:
    letters: list[dict[str, t.Any]] = []
    runner = CeleryRunner(
        dead_broker("redis"),
        allow=["celery_tasks"],
        retry_window=0,
        dead_letter=letters.append,
    )
    try:
        serve(AfterMiddleware(app_with(lambda: after(tasks.record, "replayed")), runner=runner))
        assert runner.wait_idle(10)
    finally:
        runner.shutdown(5)
    with redis_cluster.web_app() as app:
        app.send_task(TASK_NAME, args=letters)
    [row] = redis_cluster.rows(1)
    assert row[0] == "replayed"


def test_the_trace_context_travels_to_the_worker(
    cluster: Cluster, runner: CeleryRunner, tasks: types.ModuleType
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("tests")

    def view() -> None:
        with tracer.start_as_current_span("request") as span:
            after(tasks.record_trace, "traced")
            trace_ids.append(f"{span.get_span_context().trace_id:032x}")

    trace_ids: list[str] = []
    serve(AfterMiddleware(app_with(view), runner=runner))
    [row] = cluster.rows(1)
    assert row[0] == f"traced {trace_ids[0]}"


def test_children_forked_after_the_parent_published_each_publish_on_their_own_connection(
    cluster: Cluster, tasks: types.ModuleType
) -> None:
    """gunicorn --preload whose master published once: a plain fork() shares the master's
    broker socket with every child (py-amqp's is not fork-safe: publishers hung in a
    socket read, messages lost without a word). Each child gets its own (issue 21, 2)."""
    runner = CeleryRunner(cluster.web_app(), allow=["celery_tasks"], retry_window=60)
    children, per_child = 4, 150
    try:
        serve(AfterMiddleware(app_with(lambda: after(tasks.record, "parent")), runner=runner))
        assert runner.wait_idle(20)  # the parent's connection is open, in the app's pool
        pids = []
        for n in range(children):
            pid = os.fork()
            if pid == 0:  # the child: publish, drain, and leave without pytest's teardown
                code = 1
                try:
                    for i in range(per_child):
                        view = functools.partial(after, tasks.record, f"child-{n}-{i}")
                        serve(AfterMiddleware(app_with(view), runner=runner))
                    drained = runner.shutdown(20)
                    code = 0 if drained and runner.stats().published == per_child else 2
                finally:
                    os._exit(code)
            pids.append(pid)
        deadline = time.monotonic() + 60
        codes = {}
        while pids and time.monotonic() < deadline:
            for pid in list(pids):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
                    pids.remove(pid)
            time.sleep(0.05)
        for pid in pids:  # hung: stop it by its PID
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert pids == [], "children hung while publishing"
        assert set(codes.values()) == {0}
        rows = cluster.rows(1 + children * per_child, timeout=30)
        assert len(rows) == 1 + children * per_child
        # The parent's connection still works after its children used theirs.
        serve(AfterMiddleware(app_with(lambda: after(tasks.record, "parent-2")), runner=runner))
        assert len(cluster.rows(2 + children * per_child, timeout=30)) == 2 + children * per_child
    finally:
        runner.shutdown(10)
