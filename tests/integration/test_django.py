"""The Django test project served by a real gunicorn, against PostgreSQL on 127.0.0.1:5432.

gunicorn serves pytest-django's test database; the test reads it with its own
psycopg connection (autocommit), so it sees what the callbacks committed.
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
import pathlib
import time
import typing as t

import psycopg
import pytest
from django.db import connections

import tests.django_project.configured  # noqa: F401  (Django's settings)
from tests.integration.client import fetch
from tests.integration.servers import free_port, python, running

# The mark makes pytest-django create the test database; the tests use it committed.
pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

ROOT = pathlib.Path(__file__).parent.parent.parent


@pytest.fixture
def database(django_db_setup: None, django_db_blocker: t.Any) -> collections.abc.Iterator[str]:
    """The test database's name, with the notes table emptied before and after."""
    name = str(connections["default"].settings_dict["NAME"])
    with sql(name) as db:
        db.execute("truncate shop_note")
    yield name
    with sql(name) as db:  # a new connection: the test may have terminated every other one
        db.execute("truncate shop_note")


@contextlib.contextmanager
def sql(database: str) -> collections.abc.Iterator[psycopg.Connection[t.Any]]:
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname=database, autocommit=True
    ) as connection:
        yield connection


def scalar(database: str, query: str) -> int:
    with sql(database) as db:
        row = db.execute(query).fetchone()
        assert row is not None
        return int(row[0])


NOTES = "select count(*) from shop_note"
OTHERS = (
    "select count(*) from pg_stat_activity where datname = current_database()"
    " and pid <> pg_backend_pid()"
)


def poll(read: t.Callable[[], int], expected: int, timeout: float = 30.0) -> int:
    """Read until the value is ``expected`` or the deadline passes; return the last value."""
    deadline = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


@contextlib.contextmanager
def gunicorn(
    database: str,
    log: pathlib.Path,
    *,
    module: str = "wsgi",
    max_age: int = 0,
    health_checks: bool = False,
    env: dict[str, str] | None = None,
) -> collections.abc.Iterator[int]:
    port = free_port()
    command = python(
        "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-w", "2",
        "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10",
        f"tests.django_project.{module}:application",
    )  # fmt: skip
    env = {
        **(env or {}),
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.django_project.settings",
        "WSGI_AFTER_DJANGO_DB_NAME": database,
        "WSGI_AFTER_CONN_MAX_AGE": str(max_age),
        "WSGI_AFTER_CONN_HEALTH_CHECKS": "1" if health_checks else "0",
    }
    with running(command, port, env={**os.environ, **env}, log=log):
        yield port


def get(port: int, path: str) -> None:
    reply = fetch(port, path, path)
    assert (reply.status, reply.body) == (200, b"queued"), reply


def test_callbacks_run_after_the_response(database: str, tmp_path: pathlib.Path) -> None:
    with gunicorn(database, tmp_path / "gunicorn.log") as port, sql(database) as db:
        db.execute("select pg_advisory_lock(4242)")  # the callback waits for it
        try:
            get(port, "/locked/first")
            assert scalar(database, NOTES) == 0  # the response came; the callback waits
        finally:
            db.execute("select pg_advisory_unlock(4242)")
        assert poll(lambda: scalar(database, NOTES), 1) == 1
    assert "raised" not in (tmp_path / "gunicorn.log").read_text()


@pytest.mark.parametrize(
    "module",
    [
        pytest.param("wsgi", id="django-middleware"),
        pytest.param("wsgi_wrapped", id="wsgi-py-wrapped-too"),
    ],
)
def test_connections_return_to_the_baseline_after_200_requests(
    database: str, tmp_path: pathlib.Path, module: str
) -> None:
    baseline = scalar(database, OTHERS)
    log = tmp_path / "gunicorn.log"
    with gunicorn(database, log, module=module) as port:
        for i in range(200):
            get(port, f"/note/n{i}")
        assert poll(lambda: scalar(database, NOTES), 200) == 200
        # Still serving: every worker thread closed its connection (CONN_MAX_AGE=0).
        assert poll(lambda: scalar(database, OTHERS), baseline, timeout=10) == baseline
        distinct = scalar(database, "select count(distinct text) from shop_note")
        assert distinct == 200  # each callback ran once: no double chain
    assert "raised" not in log.read_text()


@pytest.mark.parametrize(
    ("max_age", "health_checks"),
    [
        pytest.param(0, False, id="conn-max-age-0"),
        pytest.param(60, True, id="persistent-with-health-checks"),
    ],
)
def test_callbacks_succeed_after_the_database_dropped_every_connection(
    database: str, tmp_path: pathlib.Path, max_age: int, health_checks: bool
) -> None:
    log = tmp_path / "gunicorn.log"
    with gunicorn(database, log, max_age=max_age, health_checks=health_checks) as port:
        for i in range(20):
            get(port, f"/note/before{i}")
        assert poll(lambda: scalar(database, NOTES), 20) == 20
        if max_age:
            assert scalar(database, OTHERS) > 0  # the worker threads kept theirs
        connections.close_all()  # this process's own, so that Django's teardown reconnects
        with sql(database) as db:
            db.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                " where datname = current_database() and pid <> pg_backend_pid()"
            )
        for i in range(20):
            get(port, f"/note/after{i}")
        assert poll(lambda: scalar(database, NOTES), 40) == 40
    assert "raised" not in log.read_text()


# -- what a server says at start-up and when a callback fails -----------------------------

#: The project as ``startproject`` writes it: no ``LOGGING``, ``DEBUG = False``.
DEFAULT_LOGGING = {"WSGI_AFTER_DEFAULT_LOGGING": "1"}


def lines_with(log: pathlib.Path, text: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if text in line]


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        pytest.param(
            "missing",
            "'wsgi_after.django.AfterMiddleware' is not in MIDDLEWARE, so 'after()' raises"
            " 'OutsideRequestError' in views. Put 'wsgi_after.django.AfterMiddleware' first:"
            " MIDDLEWARE = ['wsgi_after.django.AfterMiddleware', ...]. (System check"
            " wsgi_after.E002; run 'manage.py check --deploy' in CI to catch it before"
            " deploying.)",
            id="missing",
        ),
        pytest.param(
            "last",
            "'wsgi_after.django.AfterMiddleware' is entry 2 of MIDDLEWARE, below"
            " 'django.middleware.common.CommonMiddleware': middleware above it runs outside"
            " the request's callbacks, and one that replaces the response would keep them from"
            " ever running. Put 'wsgi_after.django.AfterMiddleware' first: MIDDLEWARE ="
            " ['wsgi_after.django.AfterMiddleware', ...]. (System check wsgi_after.E003; run"
            " 'manage.py check --deploy' in CI to catch it before deploying.)",
            id="last",
        ),
    ],
)
def test_a_missing_or_misplaced_middleware_is_one_error_line_per_worker_at_start_up(
    database: str, tmp_path: pathlib.Path, placement: str, message: str
) -> None:
    log = tmp_path / "gunicorn.log"
    env = {**DEFAULT_LOGGING, "WSGI_AFTER_MIDDLEWARE": placement}
    with gunicorn(database, log, env=env):  # two workers, each loads the app
        assert poll(lambda: len(lines_with(log, message)), 2) == 2, log.read_text()
    assert lines_with(log, "wsgi_after.E00") == [message, message]


def test_a_failing_callback_is_logged_with_its_traceback_under_djangos_default_logging(
    database: str, tmp_path: pathlib.Path
) -> None:
    log = tmp_path / "gunicorn.log"
    failed = "Callback 'tests.django_project.views.explode' queued by 'GET /fail' raised"
    with gunicorn(database, log, env=DEFAULT_LOGGING) as port:
        reply = fetch(port, "/fail", "fail")
        assert (reply.status, reply.body) == (200, b"ok"), reply
        assert poll(lambda: len(lines_with(log, "RuntimeError: the callback failed")), 1) == 1
    text = log.read_text()
    assert f"{failed} RuntimeError." in text
    assert "Traceback (most recent call last)" in text
    assert "wsgi_after.E00" not in text  # the project's middleware is first: no start-up line
