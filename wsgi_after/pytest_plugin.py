"""pytest fixtures for apps that use :func:`wsgi_after.after`.

Installed with the package (entry point ``pytest11``), so the fixtures are there
in every test session:

* ``after_inline``: every :class:`~wsgi_after.AfterMiddleware` (and so every
  Flask app with :class:`~wsgi_after.flask.After`) runs its callbacks inline,
  in ``close()``, for the test; the first callback exception is raised again
  when the test ends, so a failing callback fails the test instead of only
  being logged (it is seen through the callback events, not the log: a
  silenced ``wsgi_after`` logger hides nothing). Under Django, an
  ``after_commit()`` callback whose transaction commits after its response
  closed runs inline too.
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
import contextlib
import sys
import time
import typing as t

import pytest

from . import events, lifecycle
from ._chain import override_runner
from .runner import describe_task, run_here


class _InlineCollector:
    """Runs each task inline and collects the exceptions its callbacks raised.

    The failures come from the callback events (:mod:`wsgi_after.events`), not
    from the log, so a ``wsgi_after`` logger silenced by a level, a filter,
    ``logging.disable()`` or a ``dictConfig`` hides nothing. Only the callbacks
    run through this collector count (their events name it as their runner): a
    failure on another app's background runner is not blamed on this test. A
    ``KeyboardInterrupt`` or ``SystemExit`` from a callback fails the test
    instead of ending the test session.
    """

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def submit(self, fn: t.Callable[[], object], /) -> None:
        before = len(self.errors)
        # Not in_caller: an interrupt is collected, not raised.
        if not run_here(self, fn, in_caller=False) and len(self.errors) == before:
            # Failed, yet no callback event said so: not a request's chain.
            request, names = describe_task(fn)
            self.errors.append(
                RuntimeError(f"Task {names} queued by '{request}' failed when run inline.")
            )

    def wait_idle(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> bool:
        return True

    def on_event(self, event: events.CallbackEvent) -> None:
        """The events listener: keep what a callback run here raised."""
        if event.kind == "failed" and event.runner is self and event.error is not None:
            self.errors.append(event.error)


_collector_key = pytest.StashKey[_InlineCollector]()


@pytest.fixture
def after_inline(request: pytest.FixtureRequest) -> collections.abc.Iterator[None]:
    """Run every request's callbacks inline in ``close()``; re-raise the first failure."""
    collector = _InlineCollector()
    request.node.stash[_collector_key] = collector
    events.subscribe(collector.on_event)
    try:
        with override_runner(collector), _django_inline():
            yield
    finally:
        events.unsubscribe(collector.on_event)
    _raise_first(collector)  # a callback that failed while fixtures were torn down


def _django_inline() -> t.ContextManager[object]:
    """Under Django, what no chain carries (a late ``after_commit()``) runs inline too."""
    django = sys.modules.get("wsgi_after.django")
    if django is None:
        return contextlib.nullcontext()
    return t.cast(t.ContextManager[object], django.capture_after_callbacks(execute=True))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> collections.abc.Generator[None, object, object]:
    """Fail the test itself (not its teardown) when a callback failed during it."""
    result = yield
    collector = item.stash.get(_collector_key, None)
    if collector is not None:
        _raise_first(collector)
    return result


def _raise_first(collector: _InlineCollector) -> None:
    if collector.errors:
        error, collector.errors = collector.errors[0], []
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            pytest.fail(f"A callback raised {error!r}.", pytrace=False)
        raise error


@pytest.fixture
def after_wait() -> t.Callable[..., None]:
    """A function that waits, with a deadline, until every runner is idle."""

    def wait(timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for runner in lifecycle.runners():
            wait_idle = getattr(runner, "wait_idle", None)
            if wait_idle is not None and not wait_idle(max(0.0, deadline - time.monotonic())):
                stats = getattr(runner, "stats", None)
                raise TimeoutError(
                    f"{runner!r} still had callbacks after {timeout} s"
                    + (f": {stats()}" if stats is not None else ".")
                )

    return wait
