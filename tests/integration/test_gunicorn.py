"""``wsgi_after.gunicorn``'s hooks on a real gunicorn: the drain within the master's deadline.

The master gives a stopping worker ``graceful_timeout`` from the moment it signals it, then
SIGKILLs it; the worker spends part of that finishing its requests before ``worker_exit``.
(The other hook tests, with the rest of the lifecycle, are in ``test_lifecycle.py``.)
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import threading
import time

import pytest

from tests.integration.client import fetch, release
from tests.integration.poll import poll
from tests.integration.servers import free_port, gunicorn, running

HOOKS = str(pathlib.Path(__file__).parent / "gunicorn_hooks.conf.py")


@pytest.mark.parametrize(
    "worker", [pytest.param("gthread", id="gthread"), pytest.param("sync", id="sync")]
)
def test_the_drain_ends_within_graceful_timeout_of_the_stop_signal(
    tmp_path: pathlib.Path, worker: str
) -> None:
    """A request still running for 4 s of a 6 s graceful_timeout leaves the drain 0 s
    (6 - 4 - 2 s of margin), not 4 s from worker_exit: the callbacks that cannot run are
    logged by name, and the worker exits by itself before the master's SIGKILL at 6 s."""
    port = free_port()
    db = tmp_path / "runs.sqlite"
    log = tmp_path / "server.log"
    marker = pathlib.Path(f"{db}.in-flight")
    env = {"MATRIX_DB": str(db), "AFTER_MAX_WORKERS": "1"}
    threads = ("--threads", "2") if worker == "gthread" else ()
    command = gunicorn(port, "-c", HOOKS, "--graceful-timeout", "6", *threads, worker=worker)

    def in_flight() -> None:
        with contextlib.suppress(OSError):
            fetch(port, "/in-flight", "in-flight-1", timeout=60)

    client = threading.Thread(target=in_flight, daemon=True)
    with running(command, port, env=env, log=log) as process:
        # A callback that runs for 60 s, on the runner's only thread.
        assert fetch(port, "/normal?sleep=60", "slow-1").status == 200
        client.start()
        assert poll(marker.exists, bool, 30), "the view never queued its callback"
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(4)  # the request keeps the worker this long: 4 s of graceful_timeout
        release(db)
        process.wait(30)
        elapsed = time.monotonic() - stopped
    client.join(30)
    text = log.read_text()
    lost = [line for line in text.splitlines() if "matrix_app.record" in line]
    assert any("'GET /in-flight' was not run" in line for line in lost), text
    assert any("were still running" in line for line in lost), text
    # The master SIGKILLs at 6 s without a word: the lines above, and exiting before, show
    # the worker ended its drain by itself.
    assert elapsed < 6, text
