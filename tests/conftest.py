"""Shared fixtures: runners that are shut down after each test, log capture, and a
clean "current request" for every test."""

from __future__ import annotations

import collections.abc
import logging

import pytest

from wsgi_after import ThreadRunner
from wsgi_after._chain import CURRENT


@pytest.fixture(autouse=True)
def no_current_request() -> collections.abc.Iterator[None]:
    """Every test starts outside a request, whatever the one before it left.

    Tests run one after another in the same thread and context: a test that calls
    the middleware and never closes the response (on purpose) leaves its request
    current, and a later test's ``after()`` would append to it.
    """
    token = CURRENT.set(None)
    yield
    CURRENT.reset(token)


@pytest.fixture
def runner() -> collections.abc.Iterator[ThreadRunner]:
    runner = ThreadRunner(max_workers=4, drain_timeout=5.0, name="test-runner")
    yield runner
    runner.shutdown(5.0)


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="wsgi_after")
    return caplog
