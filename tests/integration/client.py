"""A small HTTP client for the integration tests, and polling of the runs table."""

from __future__ import annotations

import contextlib
import http.client
import pathlib
import socket
import sqlite3
import time
import typing as t


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
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, headers={"X-Request-Id": request_id, **(headers or {})})
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


def runs(db: pathlib.Path, request_id: str) -> list[tuple[t.Any, ...]]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection, connection:
        return connection.execute(
            "select name, status, completed, finished_at, pid from runs where request_id = ?",
            (request_id,),
        ).fetchall()


def wait_for_runs(
    db: pathlib.Path, request_id: str, count: int, timeout: float = 20.0
) -> list[tuple[t.Any, ...]]:
    """Poll until ``count`` runs of ``request_id`` are recorded, or the deadline passes."""
    deadline = time.monotonic() + timeout
    found = runs(db, request_id)
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.02)
        found = runs(db, request_id)
    return found
