"""The server x scenario matrix: every callback runs exactly once, on real servers.

One server of each kind serves ``apps/matrix_app.py`` on 127.0.0.1 and a free port;
each scenario sends real requests and reads the callbacks' runs from SQLite.
"""

from __future__ import annotations

import collections.abc
import http.client
import pathlib
import signal
import typing as t
import uuid

import pytest

from tests.integration import servers
from tests.integration.client import disconnect_mid_stream, fetch, query, runs, wait_for_runs

FILE_SIZE = 5 * 1024 * 1024


class Spec(t.NamedTuple):
    #: The command serving matrix_app on a port (mod_wsgi also needs its build and a dir).
    command: t.Callable[[int, pytest.FixtureRequest, pathlib.Path], list[str]]
    stop_signal: int = signal.SIGTERM
    #: The server offers ``wsgi.file_wrapper``: its object must come back (its sendfile path).
    file_wrapper: bool = True
    #: The status a client gets when the app raises (None: uWSGI closes the connection).
    error_status: int | None = 500


def simple(build: t.Callable[[int], list[str]], **kwargs: t.Any) -> Spec:
    return Spec(lambda port, request, tmp: build(port), **kwargs)


def mod_wsgi(port: int, request: pytest.FixtureRequest, tmp: pathlib.Path) -> list[str]:
    express = request.getfixturevalue("express")
    return t.cast(list[str], express.command(port, tmp / "apache", "--threads", "4"))


SERVERS: dict[str, Spec] = {
    "gunicorn-sync": simple(servers.gunicorn),
    "gunicorn-gthread": simple(
        lambda port: servers.gunicorn(port, "--threads", "4", worker="gthread"),
    ),
    "gunicorn-gevent": simple(lambda port: servers.gunicorn(port, worker="gevent")),
    "waitress": simple(servers.waitress),
    "werkzeug": simple(servers.werkzeug, file_wrapper=False),
    "uwsgi-threads": simple(
        lambda port: servers.uwsgi(port, "--master", "--threads", "4", "--offload-threads", "1"),
        stop_signal=signal.SIGINT,
        error_status=None,
    ),
    "uwsgi-processes": simple(
        lambda port: servers.uwsgi(
            port,
            "--master",
            "--processes",
            "2",
            "--max-requests",
            "5",
            "--min-worker-lifetime",
            "0",
        ),
        stop_signal=signal.SIGINT,
        error_status=None,
    ),
    "uwsgi-lazy-apps": simple(
        lambda port: servers.uwsgi(port, "--master", "--processes", "2", "--lazy-apps"),
        stop_signal=signal.SIGINT,
        error_status=None,
    ),
    "mod_wsgi": Spec(mod_wsgi),
}


class Server(t.NamedTuple):
    name: str
    port: int
    db: pathlib.Path


@pytest.fixture(
    scope="module",
    params=[  # mod_wsgi is built before the first test (conftest.py): mark the ones that need it
        pytest.param(name, marks=[pytest.mark.apache] if name == "mod_wsgi" else [])
        for name in SERVERS
    ],
)
def server(request: pytest.FixtureRequest) -> collections.abc.Iterator[Server]:
    name = request.param
    spec = SERVERS[name]
    with servers.shared_dir(name) as tmp:
        db = tmp / "runs.sqlite"
        big = tmp / "big.bin"
        big.write_bytes(b"\x00" * FILE_SIZE)
        big.chmod(0o644)
        port = servers.free_port()
        env = {"MATRIX_DB": str(db), "MATRIX_FILE": str(big)}
        command = spec.command(port, request, tmp)
        with servers.running(
            command, port, env=env, log=tmp / "server.log", stop_signal=spec.stop_signal
        ):
            yield Server(name, port, db)
        # Stopped (and drained where the server exits gracefully): no callback ran twice.
        twice = query(
            db,
            "select request_id, name, count(*) from runs group by request_id, name"
            " having count(*) > 1",
        )
    assert twice == [], f"{name}: callbacks ran more than once: {twice}"


def new_id(server: Server, scenario: str) -> str:
    return f"{server.name}-{scenario}-{uuid.uuid4().hex[:8]}"


def test_normal(server: Server) -> None:
    rid = new_id(server, "normal")
    release = pathlib.Path(f"{server.db}.release")
    release.unlink(missing_ok=True)
    reply = fetch(server.port, "/normal?hold=1", rid)
    # The client has the whole response while the callback is still held.
    assert (reply.status, reply.body, reply.complete) == (200, b"normal body", True)
    assert runs(server.db, rid) == []
    release.touch()
    [(name, status, completed, finished_at, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("normal", 200, 1)
    assert finished_at >= reply.finished_at


def test_app_raises_before_returning(server: Server) -> None:
    rid = new_id(server, "raises")
    expected = SERVERS[server.name].error_status
    if expected is None:
        with pytest.raises(http.client.RemoteDisconnected):
            fetch(server.port, "/raises", rid)
    else:
        assert fetch(server.port, "/raises", rid).status == expected
    [(name, status, completed, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("raises", expected, 0)  # what the client got


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
    if SERVERS[server.name].file_wrapper:
        # The server's own file path: a Content-Length response, not chunked, and the
        # server got back the very object its wsgi.file_wrapper made.
        assert reply.headers["content-length"] == str(FILE_SIZE)
        assert "transfer-encoding" not in reply.headers
        [(kind, own)] = query(
            server.db, "select type, own from iterables where request_id = ?", rid
        )
        assert own == 1, kind


def test_head(server: Server) -> None:
    rid = new_id(server, "head")
    reply = fetch(server.port, "/normal", rid, method="HEAD")
    assert (reply.status, reply.body) == (200, b"")
    [(name, status, completed, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("normal", 200, 1)


def test_not_modified(server: Server) -> None:
    rid = new_id(server, "etag")
    reply = fetch(server.port, "/etag", rid, headers={"If-None-Match": '"v1"'})
    assert (reply.status, reply.body) == (304, b"")
    [(name, status, completed, _, _)] = wait_for_runs(server.db, rid, 1)
    assert (name, status, completed) == ("etag", 304, 1)


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
