"""uWSGI 2.0.26, the last release that starts without Python threads by default.

Built with pip (one to three minutes of compiling), so only in the full matrix
(``WSGI_AFTER_FULL_MATRIX=1 python -m pytest tests/integration``): without
``--enable-threads`` the runner's threads would only move while a request runs, so
``wsgi_after`` says so in one ERROR at start-up; with it, callbacks run as usual.
"""

from __future__ import annotations

import collections.abc
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid

import pytest

from tests.integration import servers
from tests.integration.client import fetch, wait_for_runs

OLD = "2.0.26"


@pytest.fixture(scope="module")
def old_uwsgi() -> collections.abc.Iterator[str]:
    target = pathlib.Path(tempfile.mkdtemp(prefix="wsgi-after-uwsgi-old-"))
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(target), f"uwsgi=={OLD}"],
            check=True, timeout=600, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        yield str(target / "bin" / "uwsgi")
    finally:
        shutil.rmtree(target, ignore_errors=True)


@pytest.mark.full_matrix
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("extra", "error"),
    [pytest.param([], True, id="threads-off"), pytest.param(["--enable-threads"], False, id="on")],
)
def test_threads_disabled_is_one_error_at_start_up(
    old_uwsgi: str, tmp_path: pathlib.Path, extra: list[str], error: bool
) -> None:
    port = servers.free_port()
    command = [old_uwsgi, *servers.uwsgi(port, *extra)[1:]]
    db = tmp_path / "runs.sqlite"
    log = tmp_path / "server.log"
    with servers.running(
        command, port, env={"MATRIX_DB": str(db)}, log=log, stop_signal=signal.SIGINT
    ):
        rid = f"old-{uuid.uuid4().hex[:8]}"
        assert fetch(port, "/normal", rid).status == 200  # the app is loaded by now
        if not error:
            [(name, status, completed, _, _)] = wait_for_runs(db, rid, 1)
            assert (name, status, completed) == ("normal", 200, 1)
    text = log.read_text()
    assert f"uWSGI {OLD}" in text
    lines = [line for line in text.splitlines() if "uWSGI runs without Python threads" in line]
    assert len(lines) == (1 if error else 0), text[-3000:]
