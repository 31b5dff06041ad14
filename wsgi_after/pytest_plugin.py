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
  :class:`~wsgi_after.ThreadRunner` of the process is idle and every request
  that queued callbacks during the test has run them, whatever its runner (a
  :class:`~concurrent.futures.ThreadPoolExecutor` too), and raises
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
import threading
import time
import typing as t

import pytest

from . import events, lifecycle
from ._chain import override_runner
from ._context import current_chain
from ._request import DONE, OPEN, RequestView
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


class _Handed:
    """The requests that queued callbacks while an ``after_wait`` test runs.

    Found through the ``"queued"`` callback events, so that :func:`after_wait` can
    wait for a request's callbacks whatever its runner is: one of the registered
    runners, which it waits for with ``wait_idle()``, or any object with
    ``submit`` (a :class:`concurrent.futures.ThreadPoolExecutor`), which has no
    such method and is in no registry. Held until they are done, or the test ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chains: list[RequestView] = []

    def on_event(self, event: events.CallbackEvent) -> None:
        """The events listener: note the request that queued a callback."""
        if event.kind != "queued":
            return
        chain = current_chain()  # "queued" is emitted in after(), where it is current
        if chain is None:
            return
        with self._lock:
            if len(self._chains) >= _PRUNE_AT:
                self._chains = [c for c in self._chains if c.state != DONE]
            if not any(c is chain for c in self._chains[-8:]):  # a request's next after()
                self._chains.append(chain)

    def pending(self) -> list[RequestView]:
        """The requests handed to their runner whose callbacks have not all run; forgets
        the finished ones (an open request has handed nothing yet: not waited for)."""
        with self._lock:
            self._chains = [c for c in self._chains if c.state != DONE]
            return [c for c in self._chains if c.state != OPEN]

    def forget(self) -> None:
        with self._lock:
            self._chains = []


#: How many requests :class:`_Handed` holds before it forgets the finished ones.
_PRUNE_AT = 1000
#: The longest pause, in seconds, between two looks at the requests ``after_wait`` waits for.
_MAX_POLL = 0.05


@pytest.fixture
def after_wait() -> collections.abc.Iterator[t.Callable[..., None]]:
    """A function that waits, with a deadline, until every runner is idle and every
    request's callbacks queued during the test have run, whatever their runner."""
    handed = _Handed()

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
        pause = 0.001
        while pending := handed.pending():  # bounded by the deadline
            left = deadline - time.monotonic()
            if left <= 0:
                chain = pending[0]
                raise TimeoutError(
                    f"{chain.runner!r} had not run the callbacks {chain.callback_names()}"
                    f" queued by '{chain.describe()}' after {timeout} s"
                    f" ({len(pending)} requests waited for)."
                )
            time.sleep(min(pause, left))  # no event says a chain is done: a bounded poll
            pause = min(pause * 2, _MAX_POLL)

    events.subscribe(handed.on_event)
    try:
        yield wait
    finally:
        events.unsubscribe(handed.on_event)
        handed.forget()
