"""The one HTTP client of the integration tests, and the reads of the runs table.

Servers record each callback run as a row in SQLite (see ``apps/matrix_app.py``);
the tests read those rows from outside the server.
"""

from __future__ import annotations

import contextlib
import http.client
import pathlib
import socket
import sqlite3
import time
import typing as t

from tests.integration.poll import poll


class Reply(t.NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool
    finished_at: float


def fetch(
    port: int,
    path: str,
    request_id: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
) -> Reply:
    """Send one request on a new connection; read the whole response (or what came)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(
            method, path, body=body, headers={"X-Request-Id": request_id, **(headers or {})}
        )
        response = connection.getresponse()
        complete = True
        try:
            body = response.read()
        except http.client.IncompleteRead as e:
            body, complete = e.partial, False
        return Reply(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            body,
            complete,
            time.time(),
        )
    finally:
        connection.close()


def disconnect_mid_stream(port: int, path: str, request_id: str) -> None:
    """Read the start of a streamed body, then drop the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: {request_id}\r\n\r\n".encode()
        )
        received = 0
        while received < 100_000:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += len(chunk)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def query(db: pathlib.Path, sql: str, *params: object) -> list[tuple[t.Any, ...]]:
    """Run one read of a server's SQLite file, on a connection closed at once."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection, connection:
        return connection.execute(sql, params).fetchall()


def runs(db: pathlib.Path, request_id: str) -> list[tuple[t.Any, ...]]:
    return query(
        db,
        "select name, status, completed, finished_at, pid from runs where request_id = ?",
        request_id,
    )


def pids(db: pathlib.Path) -> set[int]:
    """The processes that ran callbacks (a recycled worker is a new one)."""
    return {pid for (pid,) in query(db, "select distinct pid from runs")}


def wait_for_runs(
    db: pathlib.Path, request_id: str, count: int, timeout: float = 20.0
) -> list[tuple[t.Any, ...]]:
    """Poll until ``count`` runs of ``request_id`` are recorded, or the deadline passes."""
    return poll(lambda: runs(db, request_id), lambda found: len(found) >= count, timeout)


def count_runs(db: pathlib.Path, prefix: str) -> int:
    """How many runs the requests whose id starts with ``prefix`` recorded."""
    [(n,)] = query(db, "select count(*) from runs where request_id like ?", prefix + "%")
    return int(n)


def wait_for_count(db: pathlib.Path, prefix: str, count: int, timeout: float = 20.0) -> int:
    """Poll until the ``prefix`` requests recorded ``count`` runs, or the deadline passes."""
    return poll(lambda: count_runs(db, prefix), lambda n: n >= count, timeout)


def burst(port: int, prefix: str, requests: int, per_request: int, sleep: float = 0.001) -> None:
    """``requests`` requests of ``per_request`` callbacks, every request's first one held.

    Each request's first callback waits for :func:`release` (see ``apps/matrix_app.py``).
    Holding every request, not only the first, keeps them all pending on a one-thread
    runner whatever order a threaded server closes the responses in: it may close the
    second response before the first, whose client already has its reply.
    """
    for i in range(requests):
        path = f"/burst?n={per_request}&sleep={sleep}&hold=1"
        assert fetch(port, path, f"{prefix}-{i}").status == 200


def release(db: pathlib.Path) -> None:
    """Let the callbacks held by :func:`burst` (or ``?hold=1``) of the server using ``db`` go."""
    pathlib.Path(f"{db}.release").touch()
