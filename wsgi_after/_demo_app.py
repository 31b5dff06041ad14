"""The Flask app ``python -m wsgi_after.demo`` serves: the same audit write, twice.

``/inline`` writes the audit row in the view; ``/after`` queues the same write with
:func:`wsgi_after.after`. The sink is deliberately slow (~200 ms), like a remote
audit service. Importing it needs nothing; writing needs ``WSGI_AFTER_DEMO_DB``,
which the demo sets.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time

from flask import Flask, request

from wsgi_after import after
from wsgi_after.flask import After

SINK_SECONDS = 0.2

app = Flask(__name__)
After(app)


def database() -> str:
    """The SQLite file ``python -m wsgi_after.demo`` made for this run."""
    path = os.environ.get("WSGI_AFTER_DEMO_DB")
    if not path:
        raise RuntimeError(
            "'WSGI_AFTER_DEMO_DB' is not set. Run the demo with 'python -m wsgi_after.demo',"
            " which creates the database and sets it."
        )
    return path


def write_audit(request_id: str, variant: str) -> None:
    """Write one audit row through a slow sink."""
    time.sleep(SINK_SECONDS)
    with contextlib.closing(sqlite3.connect(database(), timeout=30)) as db, db:
        db.execute("insert into audit values (?, ?, ?)", (request_id, variant, time.time()))


@app.get("/inline")
def inline() -> str:
    write_audit(request.headers["X-Request-Id"], "inline")
    return "ok\n"


@app.get("/after")
def with_after() -> str:
    after(write_audit, request.headers["X-Request-Id"], "after")
    return "ok\n"
