"""The server x scenario matrix: every callback runs exactly once, on real servers.

One server of each kind serves ``apps/matrix_app.py`` on 127.0.0.1 and a free port;
each scenario sends real requests and reads the callbacks' runs from SQLite.
"""

from __future__ import annotations

import collections.abc
import contextlib
import pathlib
import sqlite3
import typing as t
import uuid

import pytest

from tests.integration.client import disconnect_mid_stream, fetch, runs, wait_for_runs
from tests.integration.servers import free_port, python, running

FILE_SIZE = 5 * 1024 * 1024


def gunicorn(worker: str, *extra: str) -> t.Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return python(
            "-m", "gunicorn", "-k", worker, "-w", "1", *extra,
            "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", "matrix_app:app",
        )  # fmt: skip

    return command


def waitress(port: int) -> list[str]:
    return python(
        "-c",
        "from wsgi_after import exit_on_sigterm; exit_on_sigterm();"
        "import waitress, matrix_app;"
        f"waitress.serve(matrix_app.app, host='127.0.0.1', port={port}, threads=4, _quiet=True)",
    )


def werkzeug(port: int) -> list[str]:
    return python(
        "-c",
        "from werkzeug.serving import run_simple; import matrix_app;"
        f"run_simple('127.0.0.1', {port}, matrix_app.app, threaded=True)",
    )


SERVERS: dict[str, t.Callable[[int], list[str]]] = {
    "gunicorn-sync": gunicorn("sync"),
    "gunicorn-gthread": gunicorn("gthread", "--threads", "4"),
    "gunicorn-gevent": gunicorn("gevent"),
    "waitress": waitress,
    "werkzeug": werkzeug,
}

#: The object each server hands the app as ``wsgi.file_wrapper``, which must come back.
SERVER_FILE_WRAPPERS = {
    "gunicorn-sync": "gunicorn.http.wsgi.FileWrapper",
    "gunicorn-gthread": "gunicorn.http.wsgi.FileWrapper",
    "gunicorn-gevent": "gunicorn.http.wsgi.FileWrapper",
    "waitress": "waitress.buffers.ReadOnlyFileBasedBuffer",
}


class Server(t.NamedTuple):
    name: str
    port: int
    db: pathlib.Path


@pytest.fixture(scope="module", params=list(SERVERS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> collections.abc.Iterator[Server]:
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    db = tmp / "runs.sqlite"
    big = tmp / "big.bin"
    big.write_bytes(b"\x00" * FILE_SIZE)
    port = free_port()
    env = {"MATRIX_DB": str(db), "MATRIX_FILE": str(big)}
    with running(SERVERS[name](port), port, env=env, log=tmp / "server.log"):
        yield Server(name, port, db)
    # Stopped (and drained where the server exits gracefully): no callback ran twice.
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        twice = connection.execute(
            "select request_id, name, count(*) from runs group by request_id, name"
            " having count(*) > 1"
        ).fetchall()
    assert twice == [], f"{name}: callbacks ran more than once: {twice}"


def new_id(server: Server, scenario: str) -> str:
    return f"{server.name}-{scenario}-{uuid.uuid4().hex[:8]}"


def test_normal(server: Server) -> None:
    rid = new_id(server, "normal")
    reply = fetch(server.port, "/normal?sleep=0.5", rid)
    # The client has the whole response while the callback is still sleeping.
    assert (reply.status, reply.body, reply.complete) == (200, b"normal body", True)
    assert runs(server.db, rid) == []
    [(name, status, completed, finished_at, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("normal", 200, 1)
    assert finished_at >= reply.finished_at


def test_app_raises_before_returning(server: Server) -> None:
    rid = new_id(server, "raises")
    assert fetch(server.port, "/raises", rid).status == 500
    [(name, status, completed, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("raises", None, 0)


def test_error_while_iterating(server: Server) -> None:
    rid = new_id(server, "iter-error")
    reply = fetch(server.port, "/iter-error", rid)
    assert reply.status == 200
    assert reply.body.startswith(b"first chunk")
    [(name, status, completed, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("iter-error", 200, 0)


def test_client_disconnects_mid_stream(server: Server) -> None:
    rid = new_id(server, "disconnect")
    disconnect_mid_stream(server.port, "/disconnect", rid)
    [(name, status, completed, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("disconnect", 200, 0)


def test_send_file(server: Server) -> None:
    rid = new_id(server, "file")
    reply = fetch(server.port, "/file", rid)
    assert reply.status == 200
    assert len(reply.body) == FILE_SIZE
    [(name, status, completed, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("file", 200, 1)
    if server.name in SERVER_FILE_WRAPPERS:
        # The server's own file path: a Content-Length response, not chunked, and the
        # server got back its own wrapper object.
        assert reply.headers["content-length"] == str(FILE_SIZE)
        assert "transfer-encoding" not in reply.headers
        with contextlib.closing(sqlite3.connect(server.db)) as connection, connection:
            [(kind,)] = connection.execute(
                "select type from iterables where request_id = ?", (rid,)
            ).fetchall()
        assert kind == SERVER_FILE_WRAPPERS[server.name]


def test_head(server: Server) -> None:
    rid = new_id(server, "head")
    reply = fetch(server.port, "/normal", rid, method="HEAD")
    assert (reply.status, reply.body) == (200, b"")
    [(name, status, _, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status) == ("normal", 200)


def test_not_modified(server: Server) -> None:
    rid = new_id(server, "etag")
    reply = fetch(server.port, "/etag", rid, headers={"If-None-Match": '"v1"'})
    assert (reply.status, reply.body) == (304, b"")
    [(name, status, _, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status) == ("etag", 304)


def test_after_called_in_a_streaming_body(server: Server) -> None:
    rid = new_id(server, "stream-after")
    reply = fetch(server.port, "/stream-after", rid)
    assert (reply.status, reply.body) == (200, b"ab")
    [(name, status, completed, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("stream-after", 200, 1)


def test_empty_body(server: Server) -> None:
    rid = new_id(server, "empty")
    reply = fetch(server.port, "/empty", rid)
    assert (reply.status, reply.body) == (200, b"")
    [(name, status, completed, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("empty", 200, 1)
