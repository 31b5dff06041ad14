"""mod_wsgi as users run it: Apache stop, daemon recycling, named sub-interpreters.

mod_wsgi-express (built by the session fixture ``express``, see
``mod_wsgi_express.py``) serves ``apps/matrix_app.py`` in daemon mode; the shutdown
hook of ``wsgi_after.mod_wsgi`` is installed by ``wsgi_after`` itself.
"""

from __future__ import annotations

import collections.abc
import contextlib
import pathlib
import signal
import time
import typing as t

import pytest

from tests.integration import servers
from tests.integration.client import burst, count_runs, fetch, pids, release, wait_for_count
from tests.integration.mod_wsgi_express import Express
from tests.integration.poll import poll

# Building mod_wsgi (the session fixture, ~20 s alone) may take minutes on a busy machine.
pytestmark = pytest.mark.timeout(300)


class Apache(t.NamedTuple):
    port: int
    db: pathlib.Path
    log: pathlib.Path
    process: t.Any


@pytest.fixture
def apache(express: Express) -> t.Callable[..., t.ContextManager[Apache]]:
    """Start mod_wsgi-express with extra options and environment; stopped for sure."""

    @contextlib.contextmanager
    def start(*extra: str, **env: str) -> collections.abc.Iterator[Apache]:
        with servers.shared_dir("mod-wsgi") as tmp:
            port = servers.free_port()
            db, log = tmp / "runs.sqlite", tmp / "server.log"
            command = express.command(port, tmp / "apache", *extra)
            with servers.running(command, port, env={"MATRIX_DB": str(db), **env}, log=log) as p:
                yield Apache(port, db, log, p)

    return start


def test_stop_runs_every_pending_callback(apache: t.Callable[..., t.Any]) -> None:
    with apache(AFTER_MAX_WORKERS="1") as server:
        # 20 callbacks, held by the first: few enough to run within the 2 s that the
        # drain has under Apache even on a loaded machine.
        burst(server.port, "stop", 4, 5)
        assert count_runs(server.db, "stop") == 0
        server.process.send_signal(signal.SIGTERM)
        release(server.db)
        assert server.process.wait(30) == 0
        assert count_runs(server.db, "stop") == 20, server.log.read_text()[-3000:]


def test_stop_drains_within_what_apache_allows_and_names_what_did_not_run(
    apache: t.Callable[..., t.Any],
) -> None:
    with apache(AFTER_MAX_WORKERS="1") as server:
        for i in range(2):  # one chain runs for 30 s, the other waits behind it
            assert fetch(server.port, "/burst?n=1&sleep=30", f"cut-{i}").status == 200
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        elapsed = time.monotonic() - started
        text = server.log.read_text()
    assert elapsed < 6, text[-3000:]
    not_run = [line for line in text.splitlines() if "was not run" in line]
    assert len(not_run) == 1, text[-3000:]
    assert "'matrix_app.record'" in not_run[0]
    assert "'GET /burst'" in not_run[0]
    assert any("were still running" in line for line in text.splitlines()), text[-3000:]


def test_maximum_requests_recycling_loses_nothing(apache: t.Callable[..., t.Any]) -> None:
    with apache("--maximum-requests", "5") as server:
        sent: list[int] = []

        def one_more() -> int:
            """Send one request; return how many daemons have run callbacks so far."""
            sent.append(len(sent))
            assert fetch(server.port, "/normal?sleep=0.05", f"recycle-{len(sent)}").status == 200
            return len(pids(server.db))

        # mod_wsgi restarts a daemon when its fifth request ends, unless the next one has
        # already reached it (a busy machine: the client is quicker than the daemon's
        # bookkeeping); then its monitor, which looks once a second, restarts it when idle,
        # and the daemon may serve a few more first. Send until it was recycled three times,
        # each time with a callback still sleeping.
        assert poll(one_more, lambda daemons: daemons >= 4, timeout=120) >= 4
        total = len(sent)
        assert wait_for_count(server.db, "recycle", total) == total, server.log.read_text()[-3000:]


def test_named_sub_interpreter_drains_at_stop(apache: t.Callable[..., t.Any]) -> None:
    with apache("--application-group", "shop", AFTER_MAX_WORKERS="1") as server:
        burst(server.port, "group", 2, 20)
        server.process.send_signal(signal.SIGTERM)
        release(server.db)
        server.process.wait(30)
        count = poll(lambda: count_runs(server.db, "group"), lambda n: n >= 40, timeout=5)
        assert count == 40, server.log.read_text()[-3000:]
