"""The version matrix users run: Python x Flask (with its Werkzeug) x gunicorn and Celery.

::

    nox                 # the full matrix: 4 Pythons x 3 Flasks x (oldest | newest) = 24 sessions
    nox -s ci           # what CI runs: the newest of everything, and the oldest supported set
    nox -l              # list the sessions; run one with nox -s "<name>"
    nox -s ci -- -x     # arguments after -- go to pytest

Each session installs the project with its ``test`` extra into a fresh virtual environment,
pins Flask and Werkzeug to one release line and gunicorn and Celery to their oldest supported
releases (the lower bounds in ``pyproject.toml``) or leaves them at the newest, then runs the
whole suite. The Pythons are found on the ``PATH`` as ``python3.10`` ... ``python3.13``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True  # a missing Python fails, never skips

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: Each Flask line with the Werkzeug line it was released with.
FLASKS = {
    "2.3": ["flask~=2.3.0", "werkzeug~=2.3.0"],
    "3.0": ["flask~=3.0.0", "werkzeug~=3.0.0"],
    "3.1": ["flask~=3.1.0", "werkzeug~=3.1.0"],
}
#: gunicorn and Celery at the oldest releases ``pyproject.toml`` allows, or the newest.
SERVERS = {
    "oldest": ["gunicorn==21.2.0", "celery[redis]==5.3.0"],
    "newest": ["gunicorn", "celery[redis]"],
}
NEWEST = ("3.13", "3.1", "newest")
OLDEST = ("3.10", "2.3", "oldest")


def _pyenv_pythons() -> None:
    """Let pyenv's ``python3.X`` shims answer for every installed 3.10-3.13.

    A shim runs only the versions pyenv has selected (usually one); naming all of them in
    ``PYENV_VERSION`` makes each ``python3.X`` on the ``PATH`` work, as nox expects.
    """
    pyenv = shutil.which("pyenv")
    if pyenv is None or "PYENV_VERSION" in os.environ:
        return
    installed = subprocess.run(
        [pyenv, "versions", "--bare"], capture_output=True, text=True, check=False, timeout=30
    ).stdout.split()
    chosen = [v for v in installed if v.rsplit(".", 1)[0] in PYTHONS]
    if chosen:
        os.environ["PYENV_VERSION"] = ":".join(chosen)


_pyenv_pythons()


def cell(python: str, flask: str, servers: str) -> str:
    """The session name nox gives one cell of the matrix."""
    return f"tests-{python}(flask='{flask}', servers='{servers}')"


@nox.session(python=PYTHONS)
@nox.parametrize("servers", list(SERVERS))
@nox.parametrize("flask", list(FLASKS))
def tests(session: nox.Session, flask: str, servers: str) -> None:
    """Run the suite against one Python, one Flask line and one gunicorn/Celery set."""
    session.install("-e", ".[test]", *FLASKS[flask], *SERVERS[servers])
    session.run("python", "-m", "pip", "freeze", silent=False)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """The CI subset: the newest of everything, and the oldest supported set."""
    for python, flask, servers in (NEWEST, OLDEST):
        session.notify(cell(python, flask, servers), posargs=session.posargs)
