"""wsgi_after.runner: the task helpers, InlineRunner and the pool options (one set of defaults)."""

from __future__ import annotations

import sys
import threading
import traceback
import typing as t

import pytest

from tests.helpers import TIMEOUT
from wsgi_after import (
    InlineRunner,
    PoolOptions,
    ThreadRunner,
)
from wsgi_after.runner import run_task, thread_stack

if t.TYPE_CHECKING:
    pass


def test_inline_runner_runs_at_once_and_logs_failures(log: pytest.LogCaptureFixture) -> None:
    runner = InlineRunner()
    ran: list[int] = []
    runner.submit(lambda: ran.append(1))
    assert ran == [1]

    def broken() -> None:
        raise ValueError("x")

    runner.submit(broken)
    assert any(r.levelname == "ERROR" for r in log.records)
    assert runner.wait_idle() is True
    assert runner.shutdown() is True


def quick_task() -> None:
    pass


def failing_task() -> None:
    raise ValueError("task failed")


def test_run_task_reports_success_and_logs_a_plain_task_by_name(
    log: pytest.LogCaptureFixture,
) -> None:
    assert run_task(quick_task) is True
    assert run_task(lambda: False) is False  # a chain whose callback failed
    assert run_task(failing_task) is False
    [record] = log.records
    assert record.getMessage() == "Task ['tests.test_runner.failing_task'] queued by '?' raised."
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "task failed"


def test_thread_stack_shows_a_live_thread_and_nothing_for_a_gone_one() -> None:
    parked, release = threading.Event(), threading.Event()

    def park() -> None:
        parked.set()
        release.wait(TIMEOUT)

    thread = threading.Thread(target=park)
    thread.start()
    assert parked.wait(TIMEOUT)
    assert thread.ident is not None
    stack = thread_stack(thread.ident)
    frame = sys._current_frames()[thread.ident]
    assert stack == "".join(traceback.format_stack(frame))
    assert "release.wait(TIMEOUT)" in stack
    release.set()
    thread.join(TIMEOUT)
    assert thread_stack(thread.ident) == ""


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit], ids=["KI", "exit"])
def test_run_task_keeps_an_interrupt_unless_run_in_the_callers_thread(
    error: type[BaseException], log: pytest.LogCaptureFixture
) -> None:
    def interrupted() -> None:
        raise error

    try:
        result = run_task(interrupted)  # a worker: logged, not raised
    except BaseException as e:  # pytest would take it for the user's Ctrl-C
        pytest.fail(f"run_task() raised {e!r} outside the caller's thread")
    assert result is False
    with pytest.raises(error):
        run_task(interrupted, in_caller=True)


def test_the_pool_options_are_one_set_of_defaults() -> None:
    # PoolOptions is where the defaults live: the runner, the Flask extension and Django's
    # WSGI_AFTER show the same ones.
    import inspect

    from wsgi_after.flask import After
    from wsgi_after.runner import DEFAULT_POOL

    assert PoolOptions(None, 1000, "block", 25.0) == DEFAULT_POOL
    for signature in (inspect.signature(ThreadRunner), inspect.signature(After)):
        defaults = {name: p.default for name, p in signature.parameters.items()}
        assert {k: defaults[k] for k in ("max_pending", "on_full", "drain_timeout")} == {
            "max_pending": 1000,
            "on_full": "block",
            "drain_timeout": 25.0,
        }


def test_pool_option_problems_name_each_option_as_its_user_wrote_it() -> None:
    bad = PoolOptions(0, 1.5, "wait", float("nan"))  # type: ignore[arg-type]
    assert bad.problems(lambda name: f"AFTER_{name.upper()}") == [
        "AFTER_MAX_WORKERS must be None or an int of at least 1, got 0.",
        "AFTER_MAX_PENDING must be an int of at least 1, got 1.5.",
        "AFTER_ON_FULL must be one of 'block', 'run' or 'drop', got 'wait'.",
        "AFTER_DRAIN_TIMEOUT must be a number of seconds of at least 0 (inf: no limit), got nan.",
    ]
    with pytest.raises(ValueError, match=r"^'max_workers' must be None or an int"):
        bad.check()
    assert PoolOptions(drain_timeout=float("inf")).problems() == []
