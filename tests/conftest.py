"""Shared fixtures: runners that are shut down after each test, and log capture."""

from __future__ import annotations

import collections.abc
import logging

import pytest

from wsgi_after import ThreadRunner


@pytest.fixture
def runner() -> collections.abc.Iterator[ThreadRunner]:
    runner = ThreadRunner(max_workers=4, drain_timeout=5.0, name="test-runner")
    yield runner
    runner.shutdown(5.0)


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="wsgi_after")
    return caplog
