"""Shared fixtures: runners that are shut down after each test, log capture, a
clean "current request" for every test, and a check that no test leaks global state."""

from __future__ import annotations

import collections.abc
import gc
import logging
import os
import signal
import sys
import threading
import time
import typing as t

import pytest

import wsgi_after.lifecycle
from wsgi_after import ThreadRunner, events, lifecycle
from wsgi_after._context import CURRENT

#: The signals whose handlers a test must leave as it found them.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Process-wide threads, started on first use by design: the loss log's, and the workers
#: of the Django app's runner (one per process, like a server's, drained at exit).
PROCESS_THREADS = ("wsgi-after-losslog", "wsgi-after-django-")


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    """A logger's handlers, less those pytest's logging plugin adds around each phase."""
    return [h for h in logger.handlers if not type(h).__module__.startswith("_pytest.")]


def _logger_state(logger: logging.Logger) -> tuple[object, ...]:
    return (_handlers(logger), logger.level, logger.disabled, logger.propagate)


def _global_state() -> dict[str, object]:
    """What one test may change only for its own duration: compared after each test."""
    return {
        "events.listeners": list(events.listeners),
        "logging 'wsgi_after' (handlers, level, disabled, propagate)": _logger_state(
            logging.getLogger("wsgi_after")
        ),
        "logging root (handlers, level, disabled, propagate)": _logger_state(logging.getLogger()),
        "logging.disable level": logging.root.manager.disable,
        "signal handlers (SIGTERM, SIGINT, SIGHUP)": [signal.getsignal(s) for s in SIGNALS],
        "os.environ": {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},
        "os.getcwd()": os.getcwd(),
    }


def _running_runners() -> list[lifecycle.Drainable]:
    """The registered runners not shut down: a test must not stop one it did not start
    (a process-wide one, like the Django app's, serves the tests after it)."""
    return [r for r in lifecycle.runners() if getattr(r, "_shutdown", None) is False]


def _threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.is_alive()}


def _asgiref_threads() -> set[threading.Thread]:
    """The thread of asgiref's process-wide executor (``sync_to_async``, which Django's
    async ORM uses): started on first use and kept, by design."""
    sync = sys.modules.get("asgiref.sync")
    executor = getattr(getattr(sync, "SyncToAsync", None), "single_thread_executor", None)
    return set(getattr(executor, "_threads", ()))


def _left_running(before: set[threading.Thread]) -> list[str]:
    """Threads the test started that still run (a runner's workers, a server's), after
    giving those that are ending a moment to end; each with the runner it serves."""
    deadline = time.monotonic() + 2.0
    if _threads() - before:
        gc.collect()  # a runner freed ends its idle workers
    for thread in _threads() - before:
        thread.join(max(0.0, deadline - time.monotonic()))
    names = sorted(
        t.name
        for t in _threads() - before - _asgiref_threads()
        if not t.name.startswith(PROCESS_THREADS)
    )
    if not names:
        return []
    gc.collect()
    runners = [r for r in lifecycle.runners() if not getattr(r, "_shutdown", True)]
    return [f"{names} (runners not shut down: {runners!r})"]


def _difference(before: object, after: object) -> str:
    """What changed, short: the keys of a dict, or both values."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        return ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys)
    return f"{before!r} -> {after!r}"


def _restore(name: str, before: object) -> None:
    """Put back one piece of global state a test leaked, so the next test starts clean."""
    if name == "events.listeners":
        events.listeners[:] = t.cast("list[events.Listener]", before)
    elif name.startswith("logging ") and "(" in name:
        logger = logging.getLogger("wsgi_after" if "'wsgi_after'" in name else None)
        handlers, level, disabled, propagate = t.cast("tuple[t.Any, ...]", before)
        for handler in _handlers(logger):
            logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.disabled, logger.propagate = disabled, propagate
    elif name == "logging.disable level":
        logging.disable(t.cast("int", before))
    elif name.startswith("signal handlers"):
        for sig, handler in zip(SIGNALS, t.cast("list[t.Any]", before), strict=True):
            signal.signal(sig, handler)
    elif name == "os.environ":
        current = os.environ.get("PYTEST_CURRENT_TEST")
        os.environ.clear()
        os.environ.update(t.cast("dict[str, str]", before))
        if current is not None:
            os.environ["PYTEST_CURRENT_TEST"] = current
    elif name == "os.getcwd()":
        os.chdir(t.cast("str", before))


@pytest.fixture(autouse=True)
def leaves_global_state_as_it_found_it(
    monkeypatch: pytest.MonkeyPatch,
) -> collections.abc.Iterator[None]:
    """Fail the test that leaves process-wide state changed, naming what it changed.

    Tests share one process: a listener, a runner's threads, a log handler, a signal
    handler, an environment variable or a working directory left behind changes what
    later tests see, and makes their outcome depend on the order they run in. The
    leak is undone before failing (threads excepted), so the next test starts clean.
    ``monkeypatch`` (set up before this by pytest-django's own autouse fixture) is
    undone first: what it changed is put back by design.
    """
    before = _global_state()
    threads = _threads()
    running = _running_runners()
    yield
    monkeypatch.undo()  # every fixture set up after this one is torn down already
    after = _global_state()
    if after != before:  # a listener may be held only by garbage (a freed runner's stats)
        gc.collect()
        after = _global_state()
    leaked = [name for name, value in before.items() if after[name] != value]
    for name in leaked:
        _restore(name, before[name])
    what = [f"{name}: {_difference(before[name], after[name])}" for name in leaked]
    what += [f"threads left running: {t}" for t in _left_running(threads)]
    stopped = [r for r in running if getattr(r, "_shutdown", False)]
    what += [f"shut down a runner it did not start: {r!r}" for r in stopped]
    if what:
        pytest.fail("the test leaked global state:\n" + "\n".join(what), pytrace=False)


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
