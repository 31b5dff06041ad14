"""The Celery side of the CeleryRunner tests: the app, and callbacks that record runs."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time

from celery import Celery

from wsgi_after import outcome
from wsgi_after.celery import register

DB = os.environ["WSGI_AFTER_RUNS_DB"]

celery_app = Celery("wsgi_after_tests", broker=os.environ["WSGI_AFTER_BROKER"])
celery_app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)
register(celery_app)  # the worker runs wsgi_after.run_chain

with contextlib.closing(sqlite3.connect(DB)) as _db, _db:
    _db.execute("create table if not exists runs (name, pid, status, completed, error, at)")


def record(name: str) -> None:
    result = outcome()
    assert result is not None
    with contextlib.closing(sqlite3.connect(DB, timeout=30)) as db, db:
        db.execute(
            "insert into runs values (?, ?, ?, ?, ?, ?)",
            (
                name,
                os.getpid(),
                result.status,
                result.completed,
                None if result.error is None else str(result.error),
                time.time(),
            ),
        )


def fails() -> None:
    raise ValueError("this callback failed")


@celery_app.task(name="celery_tasks.task_record")  # type: ignore[untyped-decorator]
def task_record(name: str) -> None:
    record(name)
