"""Isolation under load: every callback sees only its own request (a security property)."""

from __future__ import annotations

import concurrent.futures
import pathlib
import urllib.parse

from tests.integration import servers
from tests.integration.client import fetch, query
from tests.integration.poll import poll

IN_FLIGHT = 200


def post(port: int, user: str) -> tuple[int, bytes]:
    """POST as ``user`` (header, query string and form all say so)."""
    reply = fetch(
        port,
        f"/users/{user}?user={user}",
        user,
        method="POST",
        body=urllib.parse.urlencode({"user": user}).encode(),
        headers={"X-User": user, "Content-Type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    return reply.status, reply.body


def seen(db: pathlib.Path) -> list[tuple[str, ...]]:
    return query(db, "select * from seen")


def test_callbacks_see_only_their_own_request(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "seen.sqlite"
    port = servers.free_port()
    env = {"ISOLATION_DB": str(db), "BARRIER": str(IN_FLIGHT)}
    command = servers.werkzeug(port, module="isolation_app")
    with servers.running(command, port, env=env, log=tmp_path / "server.log"):
        users = [f"user{i:03d}" for i in range(IN_FLIGHT)]
        with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
            responses = list(pool.map(lambda u: post(port, u), users))
        assert responses == [(200, u.encode()) for u in users]
        rows = poll(lambda: seen(db), lambda rows: len(rows) >= IN_FLIGHT, timeout=30)
    assert len(rows) == IN_FLIGHT
    assert sorted(row[0] for row in rows) == users
    mixed = [row for row in rows if len(set(row)) != 1]
    assert mixed == []
