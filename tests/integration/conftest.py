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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL_MATRIX:
        return
    slow = [item for item in items if item.get_closest_marker("full_matrix")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("full_matrix")]


@pytest.fixture(scope="session")
def express() -> collections.abc.Iterator[mod_wsgi_express.Express]:
    """mod_wsgi-express built once per session (~20 s), removed at the end."""
    built = mod_wsgi_express.build()
    yield built
    shutil.rmtree(built.root, ignore_errors=True)
