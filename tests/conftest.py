"""Shared fixtures: runners that are shut down after each test, log capture, and a
clean "current request" for every test."""

from __future__ import annotations

import collections.abc
import logging
import os
import typing as t

import pytest

import wsgi_after.lifecycle
from wsgi_after import ThreadRunner
from wsgi_after._context import CURRENT


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


@pytest.fixture(autouse=True)
def no_forked_child_exit_in_the_test_process(
    monkeypatch: pytest.MonkeyPatch,
) -> collections.abc.Iterator[None]:
    """A worker leaves through ``os._exit`` only in a forked child, never here.

    Were a worker of this process to take the forked child's exit, the test run
    would end at once with status 0, and look like a pass: fail the test instead.
    """
    pid = os.getpid()
    leave = wsgi_after.lifecycle.leave_forked_child
    wrong: list[BaseException | None] = []

    def leave_only_in_a_child(error: BaseException | None) -> t.NoReturn:
        if os.getpid() == pid:
            wrong.append(error)
            raise AssertionError("a worker of the test process took a forked child's exit")
        leave(error)

    monkeypatch.setattr(wsgi_after.lifecycle, "leave_forked_child", leave_only_in_a_child)
    yield
    assert not wrong, "a worker of the test process took a forked child's exit"
