"""uWSGI as users run it: reused environ dicts, prefork, its stop signals, recycling.

Each test starts its own uWSGI (``--http-socket`` on 127.0.0.1, this virtualenv)
serving an app from ``apps/``; the hooks of ``wsgi_after.uwsgi`` are installed by
``wsgi_after`` itself, with no flag or line in the app.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import pathlib
import signal
import socket
import time
import typing as t
import uuid

import pytest

from tests.integration import servers
from tests.integration.client import (
    burst,
    count_runs,
    fetch,
    pids,
    query,
    release,
    wait_for_count,
)
from tests.integration.poll import poll
from tests.integration.test_flask_isolation import post, seen

#: uWSGI keeps a worker for at least 10 s whatever --max-requests says; not in tests.
RECYCLE_AT_ONCE = ["--min-worker-lifetime", "0"]
CONCURRENT = 8  # requests held in flight at once, on uWSGI's 8 threads


def env_for(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    return {"MATRIX_DB": str(tmp_path / "runs.sqlite"), **extra}


def stats_of(port: int) -> dict[str, t.Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    return t.cast(dict[str, t.Any], json.loads(data))


def uwsgi_with_stats(port: int, *extra: str) -> tuple[list[str], int]:
    """uWSGI with its stats server, to see from outside when no worker is in a request."""
    stats = servers.free_port()
    return servers.uwsgi(port, "--stats", f"127.0.0.1:{stats}", *extra), stats


def wait_until_idle(stats: int) -> None:
    """Wait until no core of any worker is in a request.

    uWSGI counts a worker as in a request until after the response's close() returned,
    a little after the client has the response; a brutal stop in between skips every
    exit hook (see the README), which these tests are not about.
    """

    def busy() -> int:
        workers = stats_of(stats)["workers"]
        return sum(core["in_request"] for worker in workers for core in worker["cores"])

    assert poll(busy, lambda n: n == 0, timeout=10) == 0


def status_or_none(port: int, path: str) -> int | None:
    try:
        return fetch(port, path, f"probe-{uuid.uuid4().hex[:8]}", timeout=5).status
    except (ConnectionError, http.client.HTTPException, TimeoutError):
        return None


def concurrently(port: int, users: list[str], path: str) -> list[tuple[int, bytes]]:
    def send(user: str) -> tuple[int, bytes]:
        reply = fetch(port, path.format(user=user), user, headers={"X-User": user})
        return reply.status, reply.body

    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        return list(pool.map(send, users))


# -- 1. the environ dict is reused (wsgi-env-behaviour=cheat, uWSGI's default) ---------


def test_callbacks_see_their_own_environ_and_log_their_own_request(
    tmp_path: pathlib.Path,
) -> None:
    db = tmp_path / "seen.sqlite"
    log = tmp_path / "server.log"
    port = servers.free_port()
    command = servers.uwsgi(port, "--threads", str(CONCURRENT), module="environ_app:app")
    env = {"ENVIRON_DB": str(db), "BARRIER": str(CONCURRENT)}
    users = [f"user{i:02d}" for i in range(2 * CONCURRENT)]
    with servers.running(command, port, env=env, log=log, stop_signal=signal.SIGINT):
        replies = concurrently(port, users, "/users/{user}")
        assert replies == [(200, u.encode()) for u in users]

        rows = poll(
            lambda: query(db, "select sent, path, header from seen"),
            lambda rows: len(rows) >= len(users),
        )
    assert sorted(rows) == [(u, f"/users/{u}", u) for u in users]
    failures = [line for line in log.read_text().splitlines() if "'environ_app.fail'" in line]
    assert len(failures) == len(users), failures
    for user in users:  # each failure is logged with its own request's method and path
        assert sum(f"'GET /users/{user}'" in line for line in failures) == 1, failures


def test_flask_callbacks_see_their_own_request_headers(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "seen.sqlite"
    port = servers.free_port()
    command = servers.uwsgi(port, "--threads", str(CONCURRENT), module="isolation_app:app")
    env = {"ISOLATION_DB": str(db), "BARRIER": str(CONCURRENT)}
    users = [f"user{i:02d}" for i in range(2 * CONCURRENT)]
    log = tmp_path / "server.log"
    with servers.running(command, port, env=env, log=log, stop_signal=signal.SIGINT):
        with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
            responses = list(pool.map(lambda u: post(port, u), users))
        assert responses == [(200, u.encode()) for u in users]

        rows = poll(lambda: seen(db), lambda rows: len(rows) >= len(users))
    assert sorted(row[0] for row in rows) == users, log.read_text()[-3000:]
    assert [row for row in rows if len(set(row)) != 1] == []  # header, g, session, args, form


# -- 2. prefork without --lazy-apps: a runner used in the master -------------------------


# A runner used in the master has a thread there; forked while it takes or drops the GIL,
# a worker hangs on CPython's GIL, which only CPython's own fork hooks reset (the README).
FORK_HOOKS = "--py-call-uwsgi-fork-hooks"


@pytest.mark.parametrize(
    "lazy", [pytest.param([FORK_HOOKS], id="fork"), pytest.param(["--lazy-apps"], id="lazy-apps")]
)
def test_runner_used_in_the_master_works_in_every_worker(
    tmp_path: pathlib.Path, lazy: list[str]
) -> None:
    port = servers.free_port()
    command = servers.uwsgi(port, "--master", "--processes", "2", *lazy)
    # The app warms its runner up at import: in the master, unless --lazy-apps.
    env = env_for(tmp_path, USE_RUNNER_AT_IMPORT="1", AFTER_DRAIN_TIMEOUT="20")
    log = tmp_path / "server.log"
    with servers.running(command, port, env=env, log=log, stop_signal=signal.SIGINT) as process:
        for i in range(10):
            assert fetch(port, "/normal", f"prefork-{i}").status == 200
        assert wait_for_count(tmp_path / "runs.sqlite", "prefork", 10, timeout=20) == 10
        started = time.monotonic()
        servers.stop(process, signal.SIGINT)
        stopped_in = time.monotonic() - started
    assert pids(tmp_path / "runs.sqlite")
    assert stopped_in < 10, log.read_text()[-3000:]  # no worker waits out its 20 s drain


# -- 3. stopping with callbacks pending ----------------------------------------------


# A worker runs the same end_me() on SIGINT and SIGTERM whether a master sent it or not
# (uWSGI without a master is its only worker); the master is needed for --stats.
class Stop(t.NamedTuple):
    extra: list[str]
    sig: int


STOPS = {
    "SIGINT": Stop(["--master"], signal.SIGINT),
    "SIGTERM-die-on-term": Stop(["--master", "--die-on-term"], signal.SIGTERM),
    "SIGTERM-graceful-hook": Stop(
        ["--master", "--hook-master-start", "unix_signal:15 gracefully_kill_them_all"],
        signal.SIGTERM,
    ),
}


@pytest.mark.parametrize("how", list(STOPS))
def test_stop_runs_every_pending_callback(tmp_path: pathlib.Path, how: str) -> None:
    stop = STOPS[how]
    port = servers.free_port()
    command, stats = uwsgi_with_stats(port, "--threads", "2", *stop.extra)
    log = tmp_path / "server.log"
    env = env_for(tmp_path, AFTER_MAX_WORKERS="1")
    with servers.running(command, port, env=env, log=log) as process:
        burst(port, "stop", 5, 20)  # 100 callbacks, all held
        assert count_runs(tmp_path / "runs.sqlite", "stop") == 0
        wait_until_idle(stats)
        process.send_signal(stop.sig)
        release(tmp_path / "runs.sqlite")
        process.wait(30)
    assert count_runs(tmp_path / "runs.sqlite", "stop") == 100, log.read_text()[-3000:]


def test_single_process_sigquit_loses_callbacks(tmp_path: pathlib.Path) -> None:
    """Why the README says not to: uWSGI leaves SIGQUIT to the default action in workers."""
    port = servers.free_port()
    command = servers.uwsgi(port, "--threads", "2")
    env = env_for(tmp_path, AFTER_MAX_WORKERS="1")
    with servers.running(command, port, env=env, log=tmp_path / "server.log") as process:
        burst(port, "quit", 5, 20)
        process.send_signal(signal.SIGQUIT)
        release(tmp_path / "runs.sqlite")
        assert process.wait(30) == -signal.SIGQUIT
    assert count_runs(tmp_path / "runs.sqlite", "quit") < 100


def test_brutal_reload_runs_every_pending_callback(tmp_path: pathlib.Path) -> None:
    port = servers.free_port()
    command, stats = uwsgi_with_stats(port, "--master", "--threads", "2")
    log = tmp_path / "server.log"
    env = env_for(tmp_path, AFTER_MAX_WORKERS="1")
    with servers.running(command, port, env=env, log=log, stop_signal=signal.SIGINT) as process:
        burst(port, "reload", 5, 20)
        wait_until_idle(stats)
        process.send_signal(signal.SIGTERM)  # without --die-on-term: a brutal reload
        release(tmp_path / "runs.sqlite")
        assert wait_for_count(tmp_path / "runs.sqlite", "reload", 100, timeout=30) == 100
        # And the re-executed master's new worker serves (connections taken while the
        # master re-executes itself are dropped: try again).
        assert poll(lambda: status_or_none(port, "/empty"), lambda s: s == 200) == 200
    assert "reload" in log.read_text().lower()


def test_worker_reload_mercy_bounds_the_drain_and_names_what_did_not_run(
    tmp_path: pathlib.Path,
) -> None:
    port = servers.free_port()
    command, stats = uwsgi_with_stats(
        port, "--master", "--threads", "2", "--worker-reload-mercy", "4"
    )
    log = tmp_path / "server.log"
    env = env_for(tmp_path, AFTER_MAX_WORKERS="1", AFTER_DRAIN_TIMEOUT="20")
    with servers.running(command, port, env=env, log=log) as process:
        for i in range(2):  # one chain runs for 30 s, the other waits behind it
            assert fetch(port, "/burst?n=1&sleep=30", f"mercy-{i}").status == 200
        wait_until_idle(stats)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(30)
        elapsed = time.monotonic() - started
    text = log.read_text()
    assert elapsed < 4 + 2, text[-3000:]  # drained for mercy - 1 s, then exited
    not_run = [line for line in text.splitlines() if "was not run" in line]
    assert len(not_run) == 1, text[-3000:]
    assert "'matrix_app.record'" in not_run[0]
    assert "'GET /burst'" in not_run[0]
    assert any("were still running" in line for line in text.splitlines())


def test_max_requests_recycling_loses_nothing(tmp_path: pathlib.Path) -> None:
    port = servers.free_port()
    command = servers.uwsgi(port, "--master", "--max-requests", "5", *RECYCLE_AT_ONCE)
    with servers.running(
        command, port, env=env_for(tmp_path), log=tmp_path / "server.log"
    ) as process:
        for i in range(20):  # the master holds the socket: none is refused meanwhile
            assert fetch(port, "/normal?sleep=0.05", f"recycle-{i}").status == 200
        assert wait_for_count(tmp_path / "runs.sqlite", "recycle", 20) == 20
        servers.stop(process, signal.SIGINT)
    assert len(pids(tmp_path / "runs.sqlite")) >= 4  # the worker really was recycled


# -- 4. start-up lines -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        pytest.param([], True, id="default"),
        pytest.param(
            ["--hook-master-start", "unix_signal:15 gracefully_kill_them_all"], False, id="graceful"
        ),
    ],
)
def test_start_up_says_once_when_a_brutal_stop_can_lose_callbacks(
    tmp_path: pathlib.Path, extra: list[str], warned: bool
) -> None:
    port = servers.free_port()
    command = servers.uwsgi(port, "--master", "--processes", "2", *extra)
    log = tmp_path / "server.log"
    with servers.running(command, port, env=env_for(tmp_path), log=log, stop_signal=signal.SIGINT):
        assert fetch(port, "/normal", f"start-{uuid.uuid4().hex[:6]}").status == 200
    lines = [line for line in log.read_text().splitlines() if "gracefully_kill_them_all" in line]
    hook_lines = [line for line in lines if "callbacks queued just before it are lost" in line]
    assert len(hook_lines) == (1 if warned else 0), log.read_text()[-3000:]
    assert "uWSGI runs without Python threads" not in log.read_text()
