"""mod_wsgi-express (Apache + mod_wsgi in daemon mode) for the integration tests.

The set-up the session does itself (before the first test that needs it, see
``conftest.py``), because each step failed once by hand:

* Apache comes from the first of: an ``apxs`` already on the ``PATH`` (Apache's
  development files); Debian's packages, installed with ``apt-get`` when the run is
  root and has it (``apache2 apache2-dev python3-dev python3-venv``, about a
  minute); else ``mod_wsgi-standalone`` from PyPI, which builds Apache into the venv
  without root (about 11 minutes the first time; pip caches its wheels).
* mod_wsgi is compiled against the Python that runs it and the Apache it loads into,
  so against a system Apache it is built fresh (``pip install --no-cache-dir``: a
  cached wheel may belong to another Python or Apache).
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
from tests.integration.servers import APPS, SHORT_TMP

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


#: Debian's packages for a system Apache, and the headers and venv of its Python.
APT_PACKAGES = ("apache2", "apache2-dev", "python3-dev", "python3-venv")
#: Seconds for ``apt-get`` (about a minute), and for building Apache from PyPI.
APT_TIMEOUT = 600
STANDALONE_TIMEOUT = 1800


def system_python() -> str:
    """The Python the daemon runs: the system's as root (readable by ``www-data``)."""
    if os.geteuid() != 0:
        return sys.executable  # not root: the daemon runs as this user and can read it
    for candidate in SYSTEM_PYTHONS:
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def _has_headers(python: str) -> bool:
    """``python`` can make a venv and compile an extension (``Python.h``, ``ensurepip``)."""
    check = "import ensurepip, os, sysconfig\n"
    check += "assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))"
    return subprocess.run([python, "-c", check], capture_output=True, timeout=60).returncode == 0


def _run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    """Run one step quietly; if it fails, raise with the end of what it printed.

    :raises RuntimeError: if the command exits non-zero (its output's last lines).
    """
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"{' '.join(command)!r} exited with {done.returncode}:\n{output}")


def apache() -> str:
    """Where Apache comes from: ``"apxs"`` (installed, or installed now) or ``"standalone"``.

    :raises RuntimeError: if ``apt-get`` fails.
    """
    if shutil.which("apxs") and _has_headers(system_python()):
        return "apxs"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["update", "-qq"], ["install", "-y", "-qq", *APT_PACKAGES]):
            _run(["apt-get", *command], APT_TIMEOUT, env)
        return "apxs"
    return "standalone"


def build(parent: pathlib.Path | None = None, source: str | None = None) -> Express:
    """Build mod_wsgi-express in a fresh, world-readable directory.

    :param source: ``"apxs"`` (about 20 s) or ``"standalone"`` (Apache from PyPI: about
        11 minutes the first time); None: :func:`apache` decides, installing Debian's
        packages when it may.
    """
    source = source or apache()
    root = pathlib.Path(tempfile.mkdtemp(prefix="wsgi-after-mod-wsgi-", dir=parent or SHORT_TMP))
    root.chmod(0o755)
    express = Express(root)
    subprocess.run([system_python(), "-m", "venv", str(express.venv)], check=True, timeout=120)
    pip = [str(express.venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    if source == "apxs":
        packages, timeout = ["--no-cache-dir", "mod_wsgi"], 600
    else:  # its Apache (mod_wsgi-httpd) is the slow part: its wheel cached is what we want
        # --use-pep517: wheels, which pip caches (not a legacy 'setup.py install')
        packages, timeout = ["--use-pep517", "mod_wsgi-standalone"], STANDALONE_TIMEOUT
    _run([*pip, *packages, "flask"], timeout)
    shutil.copytree(PACKAGE, express.site / "wsgi_after", ignore=shutil.ignore_patterns("__py*"))
    for app in APPS.glob("*.py"):
        shutil.copy(app, express.site / app.name)
    for path in [express.site, *express.site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return express
