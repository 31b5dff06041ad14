"""pytest fixtures for apps that use :func:`wsgi_after.after`.

Installed with the package (entry point ``pytest11``), so the fixtures are there
in every test session:

* ``after_inline``: every :class:`~wsgi_after.AfterMiddleware` (and so every
  Flask app with :class:`~wsgi_after.flask.After`) runs its callbacks inline,
  in ``close()``, for the test; the first callback exception is raised again
  when the test ends, so a failing callback fails the test instead of only
  being logged.
* ``after_wait``: a function ``wait(timeout=5.0)`` that waits until every
  :class:`~wsgi_after.ThreadRunner` of the process is idle, and raises
  :class:`TimeoutError` when the deadline passes first.

::

    def test_signup_sends_email(client, after_inline):
        with client.post("/signup", data={"email": "ada@example.com"}):
            pass  # leaving the block closes the response: the callbacks have run
        assert outbox == ["ada@example.com"]
"""

from __future__ import annotations

import collections.abc
import logging
import time
import typing as t

import pytest

from . import _chain
from .runner import InlineRunner, _runners


class _CallbackErrors(logging.Handler):
    """Collects the exceptions logged for failed callbacks."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


_handler_key = pytest.StashKey[_CallbackErrors]()


@pytest.fixture
def after_inline(request: pytest.FixtureRequest) -> collections.abc.Iterator[None]:
    """Run every request's callbacks inline in ``close()``; re-raise the first failure."""
    handler = _CallbackErrors()
    request.node.stash[_handler_key] = handler
    logger = logging.getLogger("wsgi_after")
    logger.addHandler(handler)
    previous, _chain.forced_runner = _chain.forced_runner, InlineRunner()
    try:
        yield
    finally:
        _chain.forced_runner = previous
        logger.removeHandler(handler)
    _raise_first(handler)  # a callback that failed while fixtures were torn down


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> collections.abc.Generator[None, object, object]:
    """Fail the test itself (not its teardown) when a callback failed during it."""
    result = yield
    handler = item.stash.get(_handler_key, None)
    if handler is not None:
        _raise_first(handler)
    return result


def _raise_first(handler: _CallbackErrors) -> None:
    if handler.errors:
        error, handler.errors = handler.errors[0], []
        raise error


@pytest.fixture
def after_wait() -> t.Callable[..., None]:
    """A function that waits, with a deadline, until every ``ThreadRunner`` is idle."""

    def wait(timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for runner in list(_runners):
            if not runner.wait_idle(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(
                    f"{runner!r} still had callbacks after {timeout} s: {runner.stats()}"
                )

    return wait
