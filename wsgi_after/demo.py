"""``python -m wsgi_after.demo``: see what ``after()`` saves your users, in one command.

Starts a real gunicorn on 127.0.0.1 serving a Flask app whose views write an audit
row through a slow (~200 ms) sink, once in the view and once with ``after()``;
sends the same requests to both; prints the client latency of each; shows that
every audit row queued with ``after()`` was written after its response had
arrived; then stops gunicorn, leaving no process behind. Needs the ``demo``
extra (Flask and gunicorn).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import pathlib
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll until ``port`` accepts connections; fail at once if ``process`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def _get(port: int, path: str, request_id: str) -> float:
    """GET ``path``; return the time the whole response had arrived."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"X-Request-Id": request_id})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{path} answered {response.status}")
        return time.time()
    finally:
        connection.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    """Run the demo, as ``python -m wsgi_after.demo [--requests N]`` does.

    :param argv: the command-line arguments (``sys.argv[1:]`` when None).
    :returns: 0 when every ``after()`` row was written after its response and gunicorn
        stopped cleanly, else 1.
    """
    parser = argparse.ArgumentParser(prog="python -m wsgi_after.demo", description=__doc__)
    parser.add_argument("--requests", type=int, default=20, help="requests per variant (20)")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")

    with tempfile.TemporaryDirectory(prefix="wsgi-after-demo-") as tmp:
        db = pathlib.Path(tmp) / "audit.sqlite"
        with contextlib.closing(sqlite3.connect(db)) as connection, connection:
            connection.execute("create table audit (request_id, variant, written_at)")
        port = _free_port()
        env = {**os.environ, "WSGI_AFTER_DEMO_DB": str(db)}
        command = [
            sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-w", "1",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", "wsgi_after._demo_app:app",
        ]  # fmt: skip
        print(f"Starting gunicorn on http://127.0.0.1:{port} ...")
        process = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            try:
                _wait_for_port(port, process)
            except (RuntimeError, TimeoutError) as e:
                raise SystemExit(f"gunicorn did not start: {e}") from None
            latencies: dict[str, list[float]] = {"inline": [], "after": []}
            arrived: dict[str, float] = {}
            for i in range(args.requests):
                for variant in latencies:
                    request_id = f"{variant}-{i}"
                    started = time.time()
                    arrived[request_id] = _get(port, f"/{variant}", request_id)
                    latencies[variant].append(arrived[request_id] - started)

            print(f"\nClient latency over {args.requests} requests each (audit sink ~200 ms):\n")
            print(f"  {'audit write':<26}{'median':>10}{'p95':>10}")
            labels = {"inline": "in the view", "after": "with after()"}
            for variant, values in latencies.items():
                median = statistics.median(values) * 1000
                p95 = _percentile(values, 0.95) * 1000
                print(f"  {labels[variant]:<26}{median:>8.1f}ms{p95:>8.1f}ms")

            deadline = time.monotonic() + 30
            rows: list[tuple[str, float]] = []
            while time.monotonic() < deadline:
                with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection, connection:
                    rows = connection.execute(
                        "select request_id, written_at from audit where variant = 'after'"
                    ).fetchall()
                if len(rows) >= args.requests:
                    break
                time.sleep(0.05)
            later = [written - arrived[rid] for rid, written in rows]
            after_response = sum(delay > 0 for delay in later)
            print(
                f"\n{len(rows)} of {args.requests} audit rows queued with after() were written;"
                f" {after_response} of them after their response had arrived"
                + (
                    f" (by {min(later) * 1000:.0f} to {max(later) * 1000:.0f} ms)."
                    if later
                    else "."
                )
            )
            ok = len(rows) == args.requests and after_response == len(rows)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # gunicorn drains, then exits
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        print("gunicorn stopped." if process.returncode == 0 else f"gunicorn: {process.returncode}")
    return 0 if ok and process.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
