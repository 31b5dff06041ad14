"""The version matrix users run: Python x Flask (with its Werkzeug) x gunicorn and Celery.

::

    nox                 # the full matrix: 4 Pythons x 3 Flasks x (oldest | newest) = 24 sessions
    nox -s ci           # what CI runs: the newest of everything, and the oldest supported set
    nox -l              # list the sessions; run one with nox -s "<name>"
    nox -s ci -- -x     # arguments after -- go to pytest
    nox -s lock         # refresh constraints.txt, the lock of the test and dev extras
    nox -s newest       # nothing pinned: the whole suite on the newest release of everything
    nox -s sentry       # the Sentry recipe on sentry-sdk 2.x and 3.x

Each matrix session installs the project with its ``test`` extra into a fresh virtual
environment, pins Flask and Werkzeug to one release line and gunicorn and Celery to their
oldest supported releases (the lower bounds in ``pyproject.toml``) or to the lock's, then runs
the whole suite. Everything else comes from ``constraints.txt`` (less the packages the cell
pins itself), so that a new upstream release cannot fail a landing; ``newest`` is where such
a release shows first. The Pythons are found on the ``PATH`` as ``python3.10`` ...
``python3.13``.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True  # a missing Python fails, never skips
nox.options.sessions = ["tests"]  # plain `nox`: the matrix (not lock, newest or sentry)

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: Each Flask line with the Werkzeug line it was released with.
FLASKS = {
    "2.3": ["flask~=2.3.0", "werkzeug~=2.3.0"],
    "3.0": ["flask~=3.0.0", "werkzeug~=3.0.0"],
    "3.1": ["flask~=3.1.0", "werkzeug~=3.1.0"],
}
#: gunicorn and Celery at the oldest releases ``pyproject.toml`` allows, or the lock's.
SERVERS = {
    # Celery 5.3.0 needs redis<5, and so a kombu of its own time: the lock's kombu asks
    # for redis-py 6.1 or later, and its worker never started.
    "oldest": ["gunicorn==21.2.0", "celery[redis]==5.3.0", "redis<5", "kombu~=5.3.0"],
    "newest": ["gunicorn", "celery[redis]"],
}
#: The lock of the ``test`` and ``dev`` extras (``nox -s lock``), for Python 3.10-3.13.
CONSTRAINTS = pathlib.Path(__file__).parent / "constraints.txt"
README = pathlib.Path(__file__).parent / "README.md"
#: The Sentry SDK's major releases the Sentry recipe is tested on (``nox -s sentry``).
SENTRY_SDKS = {"2": "sentry-sdk>=2,<3", "3": "sentry-sdk>=3,<4"}
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


def _name(requirement: str) -> str:
    """A requirement's normalised project name (``celery[redis]==5.3.0`` -> ``celery``)."""
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def constraints_without(session: nox.Session, pinned: list[str]) -> str:
    """``constraints.txt`` less the packages ``pinned`` names, in a file of the session's."""
    names = {_name(p) for p in pinned}
    kept = [
        line
        for line in CONSTRAINTS.read_text().splitlines()
        if line.startswith((" ", "#")) or not line.strip() or _name(line) not in names
    ]
    path = pathlib.Path(session.create_tmp()) / "constraints.txt"
    path.write_text("\n".join(kept) + "\n")
    return str(path)


@nox.session(python=PYTHONS)
@nox.parametrize("servers", list(SERVERS))
@nox.parametrize("flask", list(FLASKS))
def tests(session: nox.Session, flask: str, servers: str) -> None:
    """Run the suite against one Python, one Flask line and one gunicorn/Celery set."""
    pinned = [*FLASKS[flask], *[p for p in SERVERS[servers] if re.search("[=<>~]", p)]]
    constraints = constraints_without(session, pinned)
    session.install("-e", ".[test]", *pinned, "-c", constraints)
    session.run("python", "-m", "pip", "freeze", silent=False)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHONS[-1])
def newest(session: nox.Session) -> None:
    """The whole suite on the newest release of every dependency: nothing pinned.

    Not part of CI (a new upstream release must not fail someone else's landing): run it
    before closing an issue and record what it found.
    """
    session.install("--upgrade", "-e", ".[test]")
    session.run("python", "-m", "pip", "freeze", silent=False)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHONS[-1])
@nox.parametrize("sdk", list(SENTRY_SDKS))
def sentry(session: nox.Session, sdk: str) -> None:
    """The Sentry recipe (its test and README's block) on one major release of sentry-sdk."""
    constraints = constraints_without(session, ["sentry-sdk"])
    session.install("-e", ".[test]", SENTRY_SDKS[sdk], "-c", constraints)
    session.run("python", "-m", "pip", "show", "sentry-sdk", silent=False)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    readme = [
        f"tests/test_readme.py::{test}[block{i}]"
        for i, block in enumerate(blocks)
        if "import sentry_sdk" in block
        for test in ("test_readme_block_runs", "test_readme_block_passes_mypy_strict")
    ]
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", "tests/test_sentry.py", *readme,
        *session.posargs,
    )  # fmt: skip


@nox.session(python=False)
def lock(session: nox.Session) -> None:
    """Refresh ``constraints.txt``: the newest releases of the ``test`` and ``dev`` extras
    that resolve together on Python 3.10-3.13 (``uv pip compile --universal``)."""
    session.run(
        "uv", "pip", "compile", "--universal", "--python-version", "3.10", "--quiet",
        "--extra", "dev", "--no-emit-package", "wsgi-after", "--upgrade",
        "--output-file", CONSTRAINTS.name, "pyproject.toml",
        external=True,
    )  # fmt: skip


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """The CI subset: the lock's versions on the newest Python, and the oldest supported set."""
    for python, flask, servers in (NEWEST, OLDEST):
        session.notify(cell(python, flask, servers), posargs=session.posargs)
