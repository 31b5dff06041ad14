"""mod_wsgi-express (Apache + mod_wsgi in daemon mode) for the integration tests.

The set-up the fixture does itself, because each step failed once by hand:

* Apache's development files must be installed (``apxs``); the test fails naming
  ``apt-get install apache2 apache2-dev`` when they are missing.
* mod_wsgi is compiled against the Python that runs it, so it is built fresh
  (``pip install --no-cache-dir``: a cached wheel may belong to another Python).
* Run as root, Apache's daemon processes run as ``--user``/``--group``
  (``www-data``), which must be able to read that Python: a Python under root's home
  (pyenv) is not readable, so the venv is made from the system Python
  (``/usr/bin/python3``) in a world-readable directory, and ``wsgi_after`` and the
  test apps are copied beside it (a checkout may live under ``/root`` too).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import wsgi_after
from tests.integration.servers import APPS

#: The Python the daemon runs: readable by the daemon user, with its headers.
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
USER = GROUP = "www-data"
#: The wsgi_after these tests import (a checkout, or an installed wheel), copied for Apache.
PACKAGE = pathlib.Path(wsgi_after.__file__).parent


class Express:
    """A built mod_wsgi-express: its venv and the readable directory the apps are in."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.site = root / "site"

    def command(self, port: int, server_root: pathlib.Path, *extra: str) -> list[str]:
        """``mod_wsgi-express start-server`` for ``matrix_app:app``-like modules on ``port``."""
        user = ["--user", USER, "--group", GROUP] if os.geteuid() == 0 else []
        return [
            str(self.venv / "bin" / "mod_wsgi-express"), "start-server",
            "--application-type", "module", "--entry-point", "matrix_app",
            "--callable-object", "app", "--python-path", str(self.site),
            "--host", "127.0.0.1", "--port", str(port), "--server-root", str(server_root),
            "--locale", "C.UTF-8", "--log-to-terminal", *user, *extra,
        ]  # fmt: skip


def system_python() -> str:
    for candidate in SYSTEM_PYTHONS:
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable  # not root: the daemon runs as this user and can read it


def build(parent: pathlib.Path | None = None) -> Express:
    """Build mod_wsgi-express in a fresh, world-readable directory (about 20 s)."""
    if not shutil.which("apxs"):
        raise RuntimeError(
            "mod_wsgi needs Apache and its development files: apt-get install apache2 apache2-dev"
        )
    root = pathlib.Path(tempfile.mkdtemp(prefix="wsgi-after-mod-wsgi-", dir=parent))
    root.chmod(0o755)
    express = Express(root)
    subprocess.run([system_python(), "-m", "venv", str(express.venv)], check=True, timeout=120)
    subprocess.run(
        [str(express.venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--no-cache-dir", "mod_wsgi", "flask"],
        check=True, timeout=600, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    shutil.copytree(PACKAGE, express.site / "wsgi_after", ignore=shutil.ignore_patterns("__py*"))
    for app in APPS.glob("*.py"):
        shutil.copy(app, express.site / app.name)
    for path in [express.site, *express.site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return express
