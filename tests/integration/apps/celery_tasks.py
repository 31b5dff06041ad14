"""The Celery side of the CeleryRunner tests: the worker's app, callbacks that record runs,
and the things a forged message must never get to run.

The worker learns what it may run from its own configuration (``wsgi_after_allow``) and
finds the ``wsgi_after.run_chain`` task through Celery's ``imports`` setting: this module
does not import the runner module at all.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import sqlite3
import time
from os import system as system  # re-exported: a forged 'celery_tasks:system' is refused
from subprocess import run as run  # likewise: defined in 'subprocess', not here

from celery import Celery, shared_task

from wsgi_after import outcome

celery_app = Celery("wsgi_after_tests", broker=os.environ.get("WSGI_AFTER_BROKER", "memory://"))
celery_app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("WSGI_AFTER_QUEUE", "celery"),
    imports=["wsgi_after.celery"],  # registers the wsgi_after.run_chain task
    wsgi_after_allow=["celery_tasks"],
)


def record(name: str) -> None:
    result = outcome()
    assert result is not None
    with (
        contextlib.closing(sqlite3.connect(os.environ["WSGI_AFTER_RUNS_DB"], timeout=30)) as db,
        db,
    ):
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


def record_value(value: object) -> None:
    record(json.dumps(value))


def record_trace(label: str) -> None:
    from opentelemetry import trace

    trace_id = trace.get_current_span().get_span_context().trace_id
    record(f"{label} {trace_id:032x}")


def fails() -> None:
    raise ValueError("this callback failed")


@shared_task(name="celery_tasks.task_record")  # type: ignore[untyped-decorator]
def task_record(name: str) -> None:
    record(name)


class Marker:
    """A class of an allowed module: calling it would create the marker file."""

    def __init__(self, path: str) -> None:
        pathlib.Path(path).touch()

    @staticmethod
    def touch(path: str) -> None:
        pathlib.Path(path).touch()

    def __call__(self, path: str) -> None:
        pathlib.Path(path).touch()


marker = Marker.__new__(Marker)  # a callable instance
touch_partial = functools.partial(Marker.touch)  # a partial, not a function
