"""The README's first command: the demo runs, shows the point, and leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_and_stops_its_server() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wsgi_after.demo", "--requests", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    inline = re.search(r"in the view\s+([\d.]+)ms", done.stdout)
    with_after = re.search(r"with after\(\)\s+([\d.]+)ms", done.stdout)
    assert inline, done.stdout
    assert with_after, done.stdout
    assert float(inline.group(1)) >= 200  # the sink's 200 ms are on the client's clock
    assert float(with_after.group(1)) < float(inline.group(1)) / 2
    assert "5 of 5 audit rows queued with after() were written; 5 of them after" in done.stdout
    assert "gunicorn stopped." in done.stdout
    port = re.search(r"127\.0\.0\.1:(\d+)", done.stdout)
    assert port
    leftovers = subprocess.run(
        ["pgrep", "-f", f"127.0.0.1:{port.group(1)}"], capture_output=True, text=True
    )
    assert leftovers.stdout == ""
