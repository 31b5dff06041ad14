"""The app every server in the matrix serves. Callbacks record their runs in SQLite.

Each request carries an ``X-Request-Id``; each callback inserts one row
``(request_id, name, status, completed, finished_at, pid)``, so the test process
counts runs from outside the server. With ``?hold=1`` the request's first callback
waits until the test creates the file ``<MATRIX_DB>.release`` (at most 60 s), so a
test knows for sure that callbacks are still pending while it looks or signals. The
outermost layer records whether a file response reached the server as the server's
own ``wsgi.file_wrapper`` object (its sendfile path).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import typing as t

from flask import Flask, Response, request, send_file, stream_with_context

from wsgi_after import ThreadRunner, after, outcome
from wsgi_after.flask import After

DB = os.environ["MATRIX_DB"]
BIG_FILE = os.environ.get("MATRIX_FILE", "")

# No WAL: its -wal and -shm files are made by whichever process opens the database
# first, and when that is the test (root) reading runs, Apache's www-data can no longer
# write ("attempt to write a readonly database"): a callback would fail now and then.
with contextlib.closing(sqlite3.connect(DB)) as _db, _db:
    _db.execute(
        "create table if not exists runs (request_id, name, status, completed, finished_at, pid)"
    )
    _db.execute("create table if not exists iterables (request_id, type, own)")

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = True  # let /raises reach the WSGI layer, as it would bare
app.config["AFTER_DRAIN_TIMEOUT"] = float(os.environ.get("AFTER_DRAIN_TIMEOUT", "25"))
app.config["AFTER_MAX_WORKERS"] = int(os.environ.get("AFTER_MAX_WORKERS", "8"))
after_ext = After(app)

if os.environ.get("USE_RUNNER_AT_IMPORT"):
    # Under --preload this runs in the master: its threads will not exist in workers.
    runner = after_ext.get_runner(app)
    assert isinstance(runner, ThreadRunner)
    runner.submit(lambda: None)
    assert runner.wait_idle(10)


RELEASE = DB + ".release"


def hold() -> None:
    """Wait until the test releases the callbacks (polled: the test is another process)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(RELEASE) and time.monotonic() < deadline:
        time.sleep(0.01)


def record(name: str, request_id: str, sleep: float = 0.0, held: bool = False) -> None:
    if held:
        hold()
    if sleep:
        time.sleep(sleep)
    result = outcome()
    assert result is not None
    with contextlib.closing(sqlite3.connect(DB, timeout=30)) as db, db:
        db.execute(
            "insert into runs values (?, ?, ?, ?, ?, ?)",
            (request_id, name, result.status, result.completed, time.time(), os.getpid()),
        )


def queue(name: str, sleep: float = 0.0, held: bool = False) -> None:
    after(record, name, request.headers["X-Request-Id"], sleep, held)


@app.route("/normal", methods=["GET", "HEAD"])
def normal() -> str:
    queue("normal", float(request.args.get("sleep", "0")), "hold" in request.args)
    return "normal body"


@app.get("/raises")
def raises() -> str:
    queue("raises")
    raise RuntimeError("the view failed")


@app.get("/iter-error")
def iter_error() -> Response:
    queue("iter-error")

    def body() -> t.Iterator[bytes]:
        yield b"first chunk\n"
        raise RuntimeError("failed while streaming")

    return Response(body())


@app.get("/disconnect")
def disconnect() -> Response:
    queue("disconnect")

    def body() -> t.Iterator[bytes]:
        for _ in range(2000):  # about 20 s at most: the client leaves long before
            yield b"x" * 65536
            time.sleep(0.01)

    return Response(body())


@app.get("/file")
def file() -> Response:
    queue("file")
    return send_file(BIG_FILE, mimetype="application/octet-stream")


@app.get("/in-flight")
def in_flight() -> str:
    """Queue a callback, mark that it is queued (``<MATRIX_DB>.in-flight``), then keep
    running until released (at most 60 s): a request still open when the server exits."""
    queue("in-flight")
    with open(DB + ".in-flight", "w"):
        pass
    hold()
    return "late"


@app.get("/etag")
def etag() -> Response:
    queue("etag")
    response = Response("cached body")
    response.set_etag("v1")
    response.make_conditional(request)
    return response


@app.get("/stream-after")
def stream_after() -> Response:
    def body() -> t.Iterator[str]:
        yield "a"
        queue("stream-after")
        yield "b"

    return Response(stream_with_context(body()))


@app.get("/empty")
def empty() -> str:
    queue("empty")
    return ""


@app.get("/burst")
def burst() -> str:
    held = "hold" in request.args
    for i in range(int(request.args["n"])):
        queue(f"burst-{i}", float(request.args.get("sleep", "0.001")), held and i == 0)
    return "queued"


flask_wsgi_app = app.wsgi_app


def spy(environ: t.Any, start_response: t.Any) -> t.Any:
    """Outermost layer: record whether the server got back its own file wrapper object."""
    made: list[object] = []
    server_file_wrapper = environ.get("wsgi.file_wrapper")
    if server_file_wrapper is not None:

        def file_wrapper(*args: t.Any) -> object:
            made.append(server_file_wrapper(*args))
            return made[-1]

        environ["wsgi.file_wrapper"] = file_wrapper
    result = flask_wsgi_app(environ, start_response)
    if server_file_wrapper is not None:
        environ["wsgi.file_wrapper"] = server_file_wrapper  # gunicorn isinstance()s with it
    if environ.get("PATH_INFO") == "/file":
        kind = f"{type(result).__module__}.{type(result).__qualname__}"
        own = any(result is wrapper for wrapper in made)
        with contextlib.closing(sqlite3.connect(DB, timeout=30)) as db, db:
            db.execute(
                "insert into iterables values (?, ?, ?)", (environ["HTTP_X_REQUEST_ID"], kind, own)
            )
    return result


app.wsgi_app = spy  # type: ignore[method-assign]
