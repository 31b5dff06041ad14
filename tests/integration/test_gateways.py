"""WSGI apps behind ASGI servers and gateways: callbacks run, or their loss is logged.

A gateway that never calls the response's ``close()`` gives the middleware no moment
to run the callbacks; when the garbage collector frees the unclosed chain,
``wsgi_after`` logs each lost callback by name ("the server never called close()").
Versions checked: asgiref 3.13 (``WsgiToAsgi`` never closes), a2wsgi 1.10 and
hypercorn 0.18 (both close).
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import signal
import uuid

import pytest

from tests.integration import servers
from tests.integration.client import fetch, runs, wait_for_runs
from tests.integration.poll import poll


def uvicorn(port: int, app: str) -> list[str]:
    return servers.python(
        "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--workers", "1",
    )  # fmt: skip


def hypercorn(port: int, app: str) -> list[str]:
    return servers.python("-m", "hypercorn", "--bind", f"127.0.0.1:{port}", app)


CLOSING = {
    "a2wsgi-uvicorn": lambda port: uvicorn(port, "gateway_app:a2wsgi_app"),
    "hypercorn-wsgi": lambda port: hypercorn(port, "matrix_app:app"),
}


@pytest.mark.parametrize("gateway", list(CLOSING))
def test_gateways_that_close_run_the_callbacks(tmp_path: pathlib.Path, gateway: str) -> None:
    db = tmp_path / "runs.sqlite"
    port = servers.free_port()
    with servers.running(
        CLOSING[gateway](port), port, env={"MATRIX_DB": str(db)}, log=tmp_path / "server.log"
    ):
        for path, expected in [("/normal", ("normal", 200, 1)), ("/empty", ("empty", 200, 1))]:
            rid = f"{gateway}-{uuid.uuid4().hex[:8]}"
            reply = fetch(port, path, rid)
            assert reply.status == 200
            [(name, status, completed, _, _)] = wait_for_runs(db, rid, 1)
            assert (name, status, completed) == expected


def test_asgiref_never_closes_and_the_loss_is_logged(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "runs.sqlite"
    log = tmp_path / "server.log"
    port = servers.free_port()
    command = uvicorn(port, "gateway_app:asgiref_app")
    with servers.running(command, port, env={"MATRIX_DB": str(db)}, log=log) as process:
        rid = f"asgiref-{uuid.uuid4().hex[:8]}"
        assert fetch(port, "/normal", rid).status == 200

        def log_after_more_requests() -> str:
            # The unclosed chain is freed by the garbage collector (it still references its
            # environ), which runs as the server allocates: send requests without callbacks.
            assert fetch(port, "/no-callbacks", "filler").status == 404
            return log.read_text()

        lost = poll(
            log_after_more_requests, lambda text: "never called close()" in text, timeout=30
        ).splitlines()
        servers.stop(process, signal.SIGTERM)
    assert runs(db, rid) == [], importlib.metadata.version("asgiref")
    lines = [line for line in lost if "never called close()" in line]
    assert len(lines) == 1, lost
    assert "'matrix_app.record'" in lines[0]
    assert "'GET /normal'" in lines[0]
