"""A Flask app whose callbacks record what request they see, for the isolation test.

Every request waits at a barrier until BARRIER requests are in flight at once, so the
server really holds them all concurrently; each callback then writes the identities it
sees (header, g, session, args, form) to a SQLite file.
"""

import contextlib
import os
import random
import sqlite3
import threading
import time

from flask import Flask, g, request, session

from wsgi_after import after
from wsgi_after.flask import After

DB = os.environ["ISOLATION_DB"]
barrier = threading.Barrier(int(os.environ["BARRIER"]), timeout=30)

app = Flask(__name__)
app.config.update(SECRET_KEY="isolation", AFTER_MAX_WORKERS=16, AFTER_MAX_PENDING=1000)
After(app)

with contextlib.closing(sqlite3.connect(DB)) as db, db:
    db.execute("create table if not exists seen (sent, header, g, session, args, form)")


def record() -> None:
    time.sleep(random.random() * 0.01)  # interleave the callbacks
    row = (
        request.path.rsplit("/", 1)[1],
        request.headers["X-User"],
        g.user,
        session["user"],
        request.args["user"],
        request.form["user"],
    )
    with contextlib.closing(sqlite3.connect(DB, timeout=30)) as db, db:
        db.execute("insert into seen values (?, ?, ?, ?, ?, ?)", row)


@app.post("/users/<user>")
def view(user: str) -> str:
    g.user = request.headers["X-User"]
    session["user"] = request.form["user"]
    after(record)
    barrier.wait()
    return user
