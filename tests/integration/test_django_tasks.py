"""Django's task framework on a real gunicorn, PostgreSQL and django-tasks-db's ``db_worker``.

- ``AfterResponseBackend``: ``task.enqueue()`` in a view runs after the response
  (the response comes while the task waits for a lock the test holds).
- ``TasksRunner`` (``WSGI_AFTER["RUNNER"] = "tasks"``): a request's ``after()``
  callbacks become rows of django-tasks-db after the response; a SIGKILL of
  gunicorn then loses none, and ``manage.py db_worker`` runs each once. A forged
  row naming a function outside ``WSGI_AFTER["ALLOW"]`` is refused by the worker.
"""

from __future__ import annotations

import collections.abc
import os
import pathlib
import signal
import subprocess
import sys
import typing as t

import pytest
from django.db import connections

import tests.django_project.configured  # noqa: F401  (Django's settings)
from tests.integration.client import fetch
from tests.integration.test_django import NOTES, ROOT, gunicorn, poll, scalar, sql
from wsgi_after.django.tasks.worker import run_callbacks

# The mark makes pytest-django create the test database; the tests use it committed.
pytestmark = [pytest.mark.timeout(180), pytest.mark.django_db(transaction=True)]

ROWS = "select count(*) from django_tasks_database_dbtaskresult"
READY = ROWS + " where status = 'READY'"
SUCCESSFUL = ROWS + " where status = 'SUCCESSFUL'"
FAILED = ROWS + " where status = 'FAILED'"


@pytest.fixture
def database(django_db_setup: None, django_db_blocker: t.Any) -> collections.abc.Iterator[str]:
    """The test database's name, with the notes and task rows emptied before and after."""
    name = str(connections["default"].settings_dict["NAME"])
    empty = "truncate shop_note, django_tasks_database_dbtaskresult"
    with sql(name) as db:
        db.execute(empty)
    yield name
    with sql(name) as db:
        db.execute(empty)


def db_worker(database: str, log: pathlib.Path) -> int:
    """Run django-tasks-db's ``db_worker`` until the queue is empty; its exit code."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.django_project.settings",
        "WSGI_AFTER_DJANGO_DB_NAME": database,
    }
    command = [
        *("python", "-m", "django", "db_worker", "--backend", "durable", "--batch"),
        *("--no-startup-delay", "--no-reload", "--interval", "0"),
    ]
    command[0] = sys.executable
    with open(log, "ab") as out:
        return subprocess.run(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False
        ).returncode


def get(port: int, path: str) -> None:
    reply = fetch(port, path, path)
    assert (reply.status, reply.body) == (200, b"queued"), reply


def test_after_response_backend_runs_the_task_after_the_response(
    database: str, tmp_path: pathlib.Path
) -> None:
    log = tmp_path / "gunicorn.log"
    with gunicorn(database, log) as port, sql(database) as db:
        db.execute("select pg_advisory_lock(4242)")  # the task waits for it
        try:
            get(port, "/task/write_note_locked?arg=welcome")
            assert scalar(database, NOTES) == 0  # the response came; the task waits
        finally:
            db.execute("select pg_advisory_unlock(4242)")
        assert poll(lambda: scalar(database, NOTES), 1) == 1
    assert "raised" not in log.read_text()


def test_tasks_runner_callbacks_survive_a_sigkill_and_run_once(
    database: str, tmp_path: pathlib.Path
) -> None:
    log = tmp_path / "gunicorn.log"
    pidfile = tmp_path / "gunicorn.pid"
    env = {"WSGI_AFTER_RUNNER": "tasks", "GUNICORN_CMD_ARGS": f"--pid {pidfile}"}
    with gunicorn(database, log, env=env) as port:
        for i in range(5):
            get(port, f"/note/kept{i}")
        # Each response's callbacks are a row once the worker closed the response.
        assert poll(lambda: scalar(database, READY), 5) == 5
        assert scalar(database, NOTES) == 0  # nothing ran them yet
        # gunicorn's whole process group: no graceful shutdown, no drain.
        os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    worker_log = tmp_path / "db_worker.log"
    assert db_worker(database, worker_log) == 0, worker_log.read_text()
    assert scalar(database, NOTES) == 5
    assert scalar(database, "select count(distinct text) from shop_note") == 5
    assert scalar(database, SUCCESSFUL) == 5
    assert db_worker(database, worker_log) == 0  # again: nothing runs twice
    assert scalar(database, NOTES) == 5
    assert "raised" not in log.read_text()


def test_the_worker_refuses_a_forged_callback(database: str, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "forged"
    run_callbacks.using(backend="durable").enqueue(
        {
            "method": "GET",
            "path": "/forged",
            "status": "200 OK",
            "completed": True,
            "error": None,
            "callbacks": [
                {"func": "os:system", "args": [f"touch {marker}"], "kwargs": {}},
                {"func": "tests.django_project.views:write_note", "args": ["ok"], "kwargs": {}},
            ],
        }
    )
    worker_log = tmp_path / "db_worker.log"
    assert db_worker(database, worker_log) == 0
    text = worker_log.read_text()
    assert (
        "Refused callback 'os:system' queued by 'GET /forged': module 'os' is not in this"
        " worker's allow list ['tests.django_project.views']; it was not run."
    ) in text
    assert not marker.exists()
    assert scalar(database, NOTES) == 1  # the allowed one still ran
    assert scalar(database, FAILED) == 1  # and the task says one was refused
