"""Session fixtures for the real-server tests: servers that take a build to set up."""

from __future__ import annotations

import collections.abc
import shutil

import pytest

from tests.integration import mod_wsgi_express


@pytest.fixture(scope="session")
def express() -> collections.abc.Iterator[mod_wsgi_express.Express]:
    """mod_wsgi-express built once per session (~20 s), removed at the end."""
    built = mod_wsgi_express.build()
    yield built
    shutil.rmtree(built.root, ignore_errors=True)
