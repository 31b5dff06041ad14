"""Isolation under load: every callback sees only its own request (a security property)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import pathlib
import sqlite3
import time
import urllib.parse

from tests.integration.servers import free_port, python, running

IN_FLIGHT = 200


def post(port: int, user: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        body = urllib.parse.urlencode({"user": user})
        connection.request(
            "POST",
            f"/users/{user}?user={user}",
            body=body,
            headers={"X-User": user, "Content-Type": "application/x-www-form-urlencoded"},
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_callbacks_see_only_their_own_request(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "seen.sqlite"
    port = free_port()
    server = python(
        "-c",
        "from werkzeug.serving import run_simple; import isolation_app, sys;"
        f" run_simple('127.0.0.1', {port}, isolation_app.app, threaded=True)",
    )
    env = {"ISOLATION_DB": str(db), "BARRIER": str(IN_FLIGHT)}
    with running(server, port, env=env, log=tmp_path / "server.log"):
        users = [f"user{i:03d}" for i in range(IN_FLIGHT)]
        with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
            responses = list(pool.map(lambda u: post(port, u), users))
        assert responses == [(200, u.encode()) for u in users]
        deadline = time.monotonic() + 30
        rows: list[tuple[str, ...]] = []
        while time.monotonic() < deadline:
            with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection, connection:
                rows = connection.execute("select * from seen").fetchall()
            if len(rows) >= IN_FLIGHT:
                break
            time.sleep(0.05)
    assert len(rows) == IN_FLIGHT
    assert sorted(row[0] for row in rows) == users
    mixed = [row for row in rows if len(set(row)) != 1]
    assert mixed == []
