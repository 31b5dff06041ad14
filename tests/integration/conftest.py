"""Session fixtures for the real-server tests, and the full matrix's switch.

Tests marked ``full_matrix`` (servers that take minutes to build, like an old uWSGI)
run only with ``WSGI_AFTER_FULL_MATRIX=1``; otherwise they are deselected (reported as
such by pytest), so that CI stays within its time.
"""

from __future__ import annotations

import collections.abc
import os
import shutil

import pytest

from tests.integration import mod_wsgi_express

FULL_MATRIX = os.environ.get("WSGI_AFTER_FULL_MATRIX") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "full_matrix: slow server builds; run with WSGI_AFTER_FULL_MATRIX=1"
    )
    config.addinivalue_line(
        "markers", "apache: needs mod_wsgi-express, built before the first test (conftest.py)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL_MATRIX:
        return
    slow = [item for item in items if item.get_closest_marker("full_matrix")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("full_matrix")]


#: mod_wsgi-express, built before the first test when a selected test needs it (or why not).
_built: list[mod_wsgi_express.Express | BaseException] = []


def _needs_apache(item: pytest.Item) -> bool:
    return "express" in getattr(item, "fixturenames", ()) or bool(item.get_closest_marker("apache"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build mod_wsgi-express (and get Apache) once, before the tests and outside their
    timeouts: the first run may install Debian's packages (about a minute) or build
    Apache from PyPI (about 11 minutes); each step has its own time limit."""
    if _built or not any(_needs_apache(item) for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("building mod_wsgi-express (Apache: apxs, apt-get or PyPI)...")
    try:
        _built.append(mod_wsgi_express.build())
    except Exception as error:  # the tests that need it fail with it, the others run
        _built.append(error)


@pytest.fixture(scope="session")
def express() -> collections.abc.Iterator[mod_wsgi_express.Express]:
    """mod_wsgi-express built before the session's first test, removed at the end."""
    if not _built:  # a test that asks for it by name (getfixturevalue) without the mark
        _built.append(mod_wsgi_express.build())
    built = _built[0]
    if isinstance(built, BaseException):
        raise RuntimeError(f"building mod_wsgi-express failed: {built}") from built
    yield built
    shutil.rmtree(built.root, ignore_errors=True)
