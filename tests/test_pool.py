"""ThreadRunner (wsgi_after._pool): submit, overload policies, workers, shutdown, fork and exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import types
import typing as t

import pytest

import wsgi_after._worker
from tests.helpers import TIMEOUT, serve, wait_for
from wsgi_after import AfterMiddleware, RunnerStats, ThreadRunner, after
from wsgi_after.losslog import LossLog

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def blocked_runner(
    on_full: t.Literal["block", "run", "drop"], max_pending: int = 2
) -> tuple[ThreadRunner, threading.Event, threading.Event]:
    """A one-worker runner whose worker is busy until ``release`` is set."""
    runner = ThreadRunner(max_workers=1, max_pending=max_pending, on_full=on_full, drain_timeout=5)
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(TIMEOUT)

    runner.submit(hold)
    assert busy.wait(TIMEOUT)
    return runner, busy, release


def wait_until_blocked(runner: ThreadRunner, count: int = 1) -> None:
    """Wait until ``count`` submitters wait for room in ``runner``'s full queue."""
    wait_for(lambda: runner.stats().blocked == count, what=f"{count} blocked submitter(s)")


def test_submit_runs_on_named_worker_threads(runner: ThreadRunner) -> None:
    names: list[str] = []
    done = threading.Event()

    def record() -> None:
        names.append(threading.current_thread().name)
        done.set()

    runner.submit(record)
    assert done.wait(TIMEOUT)
    assert names[0].startswith("test-runner-")


def test_threads_start_at_the_first_submit() -> None:
    runner = ThreadRunner(max_workers=3, name="lazy")
    assert not [th for th in threading.enumerate() if th.name.startswith("lazy-")]
    runner.submit(lambda: None)
    assert runner.wait_idle(TIMEOUT)
    # The whole pool: requests' chains run concurrently (see test_requests_run_concurrently).
    assert sorted(th.name for th in threading.enumerate() if th.name.startswith("lazy-")) == [
        "lazy-0",
        "lazy-1",
        "lazy-2",
    ]
    runner.shutdown(TIMEOUT)


def test_stats_count_completed_failed_and_delay(runner: ThreadRunner) -> None:
    runner.submit(lambda: None)
    runner.submit(lambda: False)  # a chain reports failed callbacks this way

    def raises() -> None:
        raise ValueError("task")

    runner.submit(raises)
    assert runner.wait_idle(TIMEOUT)
    stats = runner.stats()
    assert (stats.queued, stats.running, stats.completed, stats.failed, stats.dropped) == (
        0,
        0,
        3,
        2,
        0,
    )


def test_max_queue_delay_is_the_longest_wait_in_the_queue() -> None:
    runner, _, release = blocked_runner("block", max_pending=10)
    queued_at = time.monotonic()
    runner.submit(quick_task)  # waits behind the blocked worker
    time.sleep(0.3)  # the delay measured here; nothing is synchronised by it
    release.set()
    assert runner.wait_idle(TIMEOUT)
    waited = time.monotonic() - queued_at
    stats = runner.stats()
    assert 0.3 <= stats.max_queue_delay <= waited
    runner.shutdown(TIMEOUT)
    # Folded into the retired workers' counters once the threads ended.
    assert runner.stats().max_queue_delay == stats.max_queue_delay


def test_stats_while_tasks_wait_and_run() -> None:
    runner, _, release = blocked_runner("block", max_pending=10)
    runner.submit(quick_task)
    runner.submit(quick_task)
    assert runner.stats() == RunnerStats(
        queued=2,
        running=1,
        completed=0,
        failed=0,
        dropped=0,
        max_queue_delay=runner.stats().max_queue_delay,
        hung=0,
    )
    release.set()
    assert runner.wait_idle(TIMEOUT)
    stats = runner.stats()
    assert (stats.queued, stats.running, stats.completed) == (0, 0, 3)
    runner.shutdown(TIMEOUT)


def test_wait_idle_times_out_while_busy() -> None:
    runner, _, release = blocked_runner("block")
    assert runner.wait_idle(0.05) is False
    assert runner.stats().running == 1
    release.set()
    assert runner.wait_idle(TIMEOUT) is True
    runner.shutdown(TIMEOUT)


def test_queue_full_block_waits_for_room() -> None:
    runner, _, release = blocked_runner("block", max_pending=1)
    runner.submit(lambda: None)  # fills the queue
    returned = threading.Event()

    def submit_third() -> None:
        runner.submit(lambda: None)
        returned.set()

    thread = threading.Thread(target=submit_third, daemon=True)
    thread.start()
    wait_until_blocked(runner)
    assert not returned.is_set()  # blocked while the queue is full
    assert runner.stats().queued == 1
    release.set()
    assert returned.wait(TIMEOUT)
    thread.join(TIMEOUT)
    assert runner.wait_idle(TIMEOUT)
    assert runner.stats().completed == 3
    runner.shutdown(TIMEOUT)


def test_queue_full_run_runs_inline() -> None:
    runner, _, release = blocked_runner("run", max_pending=1)
    runner.submit(lambda: None)
    ran_in: list[str] = []
    runner.submit(lambda: ran_in.append(threading.current_thread().name))
    assert ran_in == [threading.current_thread().name]
    release.set()
    assert runner.wait_idle(TIMEOUT)
    runner.shutdown(TIMEOUT)


def test_queue_full_drop_logs_every_callback_by_name(log: pytest.LogCaptureFixture) -> None:
    runner, _, release = blocked_runner("drop", max_pending=1)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(notify_customer, 1)
        after(notify_customer, 2)
        start_response("200 OK", [])
        return [b""]

    middleware = AfterMiddleware(app, runner=runner)
    serve(middleware, "/a")  # queued
    serve(middleware, "/b")  # dropped
    messages = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert (
        messages
        == [
            "Callback 'tests.test_pool.notify_customer' queued by 'GET /b' was not run:"
            " the queue is full (max_pending=1).",
        ]
        * 2
    )
    assert runner.stats().dropped == 1
    release.set()
    assert runner.wait_idle(TIMEOUT)
    runner.shutdown(TIMEOUT)


def notify_customer(n: int) -> None:
    pass


def test_drop_log_names_the_first_then_counts(log: pytest.LogCaptureFixture) -> None:
    drops = LossLog("full.", burst=2, interval=60)
    for i in range(5):
        drops.record(["mod.a", "mod.b"] if i % 2 else ["mod.a"], f"GET /{i}")
    drops.close()
    messages = [r.getMessage() for r in log.records]
    assert messages == [
        "Callback 'mod.a' queued by 'GET /0' was not run: full.",
        "Callback 'mod.a' queued by 'GET /1' was not run: full.",
        "5 more callbacks were not run in the last 60.0 s: 'mod.a' x3, 'mod.b' x2 (full.)",
    ]


def test_drop_log_summarises_each_interval_by_itself(log: pytest.LogCaptureFixture) -> None:
    drops = LossLog("full.", burst=1, interval=0.05)
    drops.record(["mod.a", "mod.a", "mod.a"], "GET /")
    wait_for(lambda: len(log.records) >= 2, what="the summary line")
    drops.close()
    assert [r.getMessage() for r in log.records][:2] == [
        "Callback 'mod.a' queued by 'GET /' was not run: full.",
        "2 more callbacks were not run in the last 0.1 s: 'mod.a' x2 (full.)",
    ]


def test_shutdown_drains_then_runs_later_submits_inline(log: pytest.LogCaptureFixture) -> None:
    runner = ThreadRunner(max_workers=2, drain_timeout=5)
    ran: list[int] = []
    for i in range(100):
        runner.submit(lambda i=i: ran.append(i))  # type: ignore[misc]
    assert runner.shutdown() is True
    assert sorted(ran) == list(range(100))
    runner.submit(lambda: ran.append(100))
    assert ran[-1] == 100
    [warning] = [r for r in log.records if r.levelname == "WARNING"]
    assert "is shutting down" in warning.getMessage()


def test_shutdown_timeout_logs_what_did_not_run(log: pytest.LogCaptureFixture) -> None:
    runner, _, release = blocked_runner("block", max_pending=10)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(notify_customer, 1)
        start_response("200 OK", [])
        return [b""]

    serve(AfterMiddleware(app, runner=runner), "/late")
    assert runner.shutdown(timeout=0.1) is False
    errors = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    # The drain's length as measured: 0.1 s, or a little more on a loaded machine.
    assert re.fullmatch(
        r"Callback 'tests\.test_pool\.notify_customer' queued by 'GET /late' was not run:"
        r" 'wsgi-after' shut down before its turn \(it drained for \d+\.\d s\)\.",
        errors[0],
    ), errors[0]
    assert "were still running when 'wsgi-after' shut down" in errors[1]
    assert runner.stats().dropped == 1
    release.set()


def test_runner_used_before_fork_works_in_the_child() -> None:
    runner = ThreadRunner(max_workers=2, name="forked")
    runner.submit(lambda: None)
    assert runner.wait_idle(TIMEOUT)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its threads are gone, the runner must start new ones
        try:
            done = threading.Event()
            runner.submit(done.set)
            ok = done.wait(TIMEOUT) and runner.wait_idle(TIMEOUT)
            names = [th.name for th in threading.enumerate() if th.name.startswith("forked-")]
            os.write(write_end, f"{ok} {','.join(names)}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    # New threads, named from 0 again: the child does not count the parent's.
    assert report == "True forked-0,forked-1"
    runner.shutdown(TIMEOUT)


EXITING_PROGRAM = r"""
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
from wsgi_after import ThreadRunner

def quick(i):
    time.sleep(0.001)
    sys.stdout.write(f"ran {i}\n")  # one write: lines from two threads never interleave

def slow():
    time.sleep(30)

runner = ThreadRunner(max_workers=2, drain_timeout=float(sys.argv[1]))
mode = sys.argv[2]
for i in range(50):
    runner.submit(lambda i=i: quick(i))
if mode == "slow":
    for i in range(4):
        runner.submit(slow)
sys.stdout.write("exiting\n")
"""


def test_interpreter_exit_drains_pending_callbacks() -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXITING_PROGRAM, "10", "quick"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sum(line.startswith("ran ") for line in done.stdout.splitlines()) == 50


def test_interpreter_exit_stops_at_drain_timeout_and_names_the_rest() -> None:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXITING_PROGRAM, "0.5", "slow"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert elapsed < 10
    lines = done.stdout.splitlines()
    assert sum(line.startswith("ran ") for line in lines) == 50
    not_run = [line for line in lines if "was not run" in line]
    cut_off = [line for line in lines if "still running" in line]
    assert len(not_run) == 2
    assert len(cut_off) == 2
    assert all("'__main__.slow'" in line for line in not_run + cut_off)


def test_a_thread_that_cannot_start_is_logged_and_later_submits_retry(
    monkeypatch: pytest.MonkeyPatch, log: pytest.LogCaptureFixture
) -> None:
    runner = ThreadRunner(max_workers=2, on_full="block", drain_timeout=5, name="nothreads")
    real_start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    ran: list[str] = []
    runner.submit(lambda: ran.append(threading.current_thread().name))  # must not hang
    assert ran == [threading.current_thread().name]  # run in the submitting thread
    assert [r.getMessage() for r in log.records if r.levelname == "ERROR"] == [
        "'nothreads' could not start a worker thread (can't start new thread); its tasks"
        " run in the submitting threads until one starts."
    ]
    monkeypatch.setattr(threading.Thread, "start", real_start)
    done = threading.Event()
    runner.submit(done.set)  # tries again
    assert done.wait(TIMEOUT)
    assert runner.wait_idle(TIMEOUT)
    assert runner.shutdown(TIMEOUT) is True  # no "cannot join thread before it is started"


def test_a_worker_never_blocks_on_its_own_full_queue(log: pytest.LogCaptureFixture) -> None:
    runner = ThreadRunner(max_workers=1, max_pending=1, on_full="block", drain_timeout=5)
    ran: list[str] = []
    queued = threading.Event()

    def inner() -> None:
        ran.append("inner")

    def outer() -> None:
        runner.submit(lambda: ran.append("filler"))  # fills the queue
        queued.set()
        runner.submit(inner)  # full, and only this worker could empty it

    runner.submit(outer)
    assert queued.wait(TIMEOUT)
    assert runner.wait_idle(TIMEOUT)  # no deadlock
    assert ran == ["inner", "filler"]
    assert [r.getMessage() for r in log.records if r.levelname == "WARNING"] == [
        "A callback on 'wsgi-after' queued a request while its queue was full; its callbacks"
        " run in that worker instead of waiting for room, which would wait for itself"
        " (logged once)."
    ]
    runner.shutdown(TIMEOUT)


@pytest.mark.parametrize("method", ["wait_idle", "shutdown"])
def test_waiting_on_the_runner_from_its_own_callback_raises(method: str) -> None:
    runner = ThreadRunner(max_workers=1, drain_timeout=5)
    errors: list[BaseException] = []

    def waits() -> None:
        try:
            getattr(runner, method)()
        except RuntimeError as e:
            errors.append(e)

    runner.submit(waits)
    assert runner.wait_idle(TIMEOUT)
    assert [str(e) for e in errors] == [
        f"'{method}()' was called from a callback running on 'wsgi-after', and would wait"
        " for that callback itself. Call it from outside the runner's callbacks (a test, a"
        " shutdown hook)."
    ]
    runner.shutdown(TIMEOUT)


def test_timeouts_take_inf_and_refuse_nan() -> None:
    runner = ThreadRunner(drain_timeout=float("inf"))
    assert runner.wait_idle(timeout=float("inf")) is True
    runner.submit(lambda: None)
    assert runner.shutdown() is True  # inf: waits without limit (no OverflowError)
    with pytest.raises(ValueError, match="'drain_timeout' must be a number of seconds"):
        ThreadRunner(drain_timeout=float("nan"))
    with pytest.raises(ValueError, match="'timeout' must be a number of seconds"):
        runner.wait_idle(timeout=float("nan"))
    with pytest.raises(ValueError, match="'timeout' must be a number of seconds"):
        runner.shutdown(timeout=-1)


def test_shutdown_logs_lost_callbacks_aggregated(log: pytest.LogCaptureFixture) -> None:
    runner, _, release = blocked_runner("block", max_pending=200)
    for _ in range(200):
        runner.submit(quick_task)
    assert runner.shutdown(timeout=0.05) is False
    release.set()
    errors = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    named = [e for e in errors if e.startswith("Callback 'tests.test_pool.quick_task'")]
    summary = [e for e in errors if "more callbacks were not run" in e]
    assert len(named) == 5  # the first few by name...
    assert len(summary) == 1  # ...then one line of counts
    assert summary[0].startswith("195 more callbacks were not run in the last 10.0 s:")
    assert "'tests.test_pool.quick_task' x195" in summary[0]
    assert runner.stats().dropped == 200


def quick_task() -> None:
    pass


def test_blocked_submitters_are_woken_when_room_appears() -> None:
    # No polling: a worker taking a task wakes a blocked submitter at once.
    runner, _, release = blocked_runner("block", max_pending=1)
    runner.submit(quick_task)  # fills the queue
    returned = threading.Event()

    def submit_then_tell() -> None:
        runner.submit(quick_task)
        returned.set()

    threading.Thread(target=submit_then_tell, daemon=True).start()
    wait_until_blocked(runner)
    release.set()
    # The blocked submitter waits without a timeout: unless the worker that took a
    # task from the queue notifies it, it waits for ever.
    assert returned.wait(TIMEOUT)
    assert runner.wait_idle(TIMEOUT)
    runner.shutdown(TIMEOUT)


def test_threads_end_when_the_runner_is_freed() -> None:
    import gc

    runner = ThreadRunner(max_workers=2, name="freed")
    runner.start()
    threads = [th for th in threading.enumerate() if th.name.startswith("freed-")]
    assert len(threads) == 2
    del runner
    gc.collect()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(th.is_alive() for th in threads)


def test_idle_threads_end_and_come_back() -> None:
    runner = ThreadRunner(max_workers=2, idle_timeout=0.05, name="idle")
    runner.start()
    threads = [th for th in threading.enumerate() if th.name.startswith("idle-")]
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(th.is_alive() for th in threads)
    done = threading.Event()
    runner.submit(done.set)
    assert done.wait(TIMEOUT)
    assert runner.wait_idle(TIMEOUT)
    assert runner.stats().completed == 1
    runner.shutdown(TIMEOUT)


def test_a_plain_task_failing_on_a_worker_is_logged_with_its_error(
    runner: ThreadRunner, log: pytest.LogCaptureFixture
) -> None:
    runner.submit(failing_task)
    assert runner.wait_idle(TIMEOUT)
    [record] = log.records
    assert record.getMessage() == "Task ['tests.test_pool.failing_task'] queued by '?' raised."
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "task failed"
    assert runner.stats().failed == 1


def failing_task() -> None:
    raise ValueError("task failed")


def exits() -> None:
    raise SystemExit(4)


def test_an_interrupt_in_a_task_run_by_the_submitter_is_raised_there() -> None:
    # on_full="run" with a full queue, and after shutdown: the server's own thread
    # runs the task, so an interrupt reaches it.
    runner, _, release = blocked_runner("run", max_pending=1)
    runner.submit(quick_task)  # fills the queue
    with pytest.raises(SystemExit):
        runner.submit(exits)
    release.set()
    assert runner.shutdown(TIMEOUT) is True
    with pytest.raises(SystemExit):
        runner.submit(exits)


def test_after_shutdown_a_task_runs_in_the_submitter_with_a_warning(
    log: pytest.LogCaptureFixture,
) -> None:
    runner = ThreadRunner(max_workers=1, name="closed")
    assert runner.shutdown(TIMEOUT) is True
    ran: list[str] = []
    runner.submit(lambda: ran.append(threading.current_thread().name))
    assert ran == [threading.current_thread().name]
    runner.submit(quick_task)
    assert [r.getMessage() for r in log.records if r.levelname == "WARNING"][1] == (
        "Running ['tests.test_pool.quick_task'] queued by '?' in the submitting thread:"
        " 'closed' is shutting down."
    )


def test_every_drop_is_counted() -> None:
    runner, _, release = blocked_runner("drop", max_pending=1)
    runner.submit(quick_task)  # fills the queue
    runner.submit(quick_task)
    runner.submit(quick_task)
    assert runner.stats().dropped == 2
    release.set()
    assert runner.shutdown(TIMEOUT) is True


def test_every_blocked_submitter_is_woken() -> None:
    runner, _, release = blocked_runner("block", max_pending=1)
    runner.submit(quick_task)  # fills the queue
    returned = threading.Barrier(3, timeout=TIMEOUT)

    def submit() -> None:
        runner.submit(quick_task)
        returned.wait()

    for _ in range(2):
        threading.Thread(target=submit, daemon=True).start()
    wait_until_blocked(runner, 2)
    release.set()
    returned.wait()  # both returned
    assert runner.wait_idle(TIMEOUT)
    assert runner.stats().completed == 4
    runner.shutdown(TIMEOUT)


def test_a_submitter_blocked_when_shutdown_begins_runs_its_task_itself() -> None:
    runner, _, release = blocked_runner("block", max_pending=1)
    runner.submit(quick_task)  # fills the queue
    ran_in: list[str] = []
    done = threading.Event()

    def submit() -> None:
        runner.submit(lambda: ran_in.append(threading.current_thread().name))
        done.set()

    threading.Thread(target=submit, name="submitter", daemon=True).start()
    wait_until_blocked(runner)
    runner.begin_shutdown()
    assert done.wait(TIMEOUT)
    assert ran_in == ["submitter"]
    release.set()
    assert runner.finish_shutdown(time.monotonic() + TIMEOUT) is True


def test_a_worker_on_its_full_queue_is_warned_about_once(log: pytest.LogCaptureFixture) -> None:
    runner = ThreadRunner(max_workers=1, max_pending=1, on_full="block", drain_timeout=5)
    ran: list[str] = []

    def outer() -> None:
        runner.submit(lambda: ran.append("filler"))  # fills the queue
        runner.submit(lambda: ran.append("first"))  # run here, warned
        runner.submit(lambda: ran.append("second"))  # run here, not warned again

    runner.submit(outer)
    assert runner.wait_idle(TIMEOUT)
    assert ran == ["first", "second", "filler"]
    assert len([r for r in log.records if r.levelname == "WARNING"]) == 1
    runner.shutdown(TIMEOUT)


def test_a_submitter_that_got_room_no_longer_waits() -> None:
    # The count of waiting submitters is what makes every worker take the lock to
    # wake them; once they got room it must be back to zero.
    runner, _, release = blocked_runner("block", max_pending=1)
    runner.submit(lambda: None)  # the queue is full
    waiter = threading.Thread(target=runner.submit, args=(lambda: None,))
    waiter.start()
    wait_until_blocked(runner)
    release.set()
    waiter.join(TIMEOUT)
    assert not waiter.is_alive()
    assert runner.stats().blocked == 0
    assert runner.wait_idle(TIMEOUT)
    runner.shutdown(TIMEOUT)


def test_a_waiter_still_wakes_after_another_waiter_gave_up() -> None:
    runner, _, release = blocked_runner("block")
    assert runner.wait_idle(0.01) is False  # gives up: the worker is busy
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(runner.wait_idle(TIMEOUT)))
    impatient = threading.Thread(target=lambda: results.append(runner.wait_idle(0.05)))
    waiter.start()
    impatient.start()
    impatient.join(TIMEOUT)
    assert results == [False]  # one waiter gave up; the other still waits
    release.set()
    waiter.join(TIMEOUT)
    assert results == [False, True]
    assert runner.stats().idle_waiters == 0  # no worker wakes a waiter that left
    runner.shutdown(TIMEOUT)


def test_counts_of_worker_threads_that_ended_are_kept() -> None:
    runner = ThreadRunner(max_workers=1, idle_timeout=0.01, name="retiring")

    def threads() -> list[threading.Thread]:
        return [th for th in threading.enumerate() if th.name.startswith("retiring-")]

    for batch in ([lambda: None, lambda: False], [lambda: False, lambda: None, lambda: None]):
        for task in batch:
            runner.submit(task)
        assert runner.wait_idle(TIMEOUT)
        wait_for(lambda: not threads(), what="the idle worker thread to end")
    stats = runner.stats()
    assert (stats.completed, stats.failed, stats.queued, stats.running) == (5, 2, 0, 0)
    runner.shutdown(TIMEOUT)


def test_tasks_lost_at_shutdown_are_neither_queued_nor_running() -> None:
    runner, _, release = blocked_runner("block", max_pending=3)
    runner.submit(lambda: None)
    runner.submit(lambda: None)
    assert runner.shutdown(timeout=0.01) is False  # two lost, one cut off
    release.set()
    wait_for(lambda: runner.stats().completed == 1, what="the held task to end")
    stats = runner.stats()
    assert (stats.queued, stats.running, stats.dropped) == (0, 0, 2)


def test_wait_idle_waits_out_a_short_timeout() -> None:
    runner, _, release = blocked_runner("block")

    def release_once_waited_on() -> None:
        wait_for(lambda: runner.stats().idle_waiters, what="wait_idle() to wait")
        release.set()

    releaser = threading.Thread(target=release_once_waited_on)
    releaser.start()
    assert runner.wait_idle(1.0) is True  # under a second is still a wait
    releaser.join(TIMEOUT)
    runner.shutdown(TIMEOUT)


def test_an_idle_worker_stays_while_tasks_are_queued() -> None:
    # Through the worker loop's seam (ThreadRunner.retire): a worker whose wait for
    # work timed out just as a task arrived must not end (the task would wait for
    # the next submit to start a thread).
    runner, _, release = blocked_runner("block")
    runner.submit(lambda: None)  # queued behind the busy worker
    [worker] = runner.workers() or []
    assert runner.retire(worker, idle=True) is False
    assert runner.workers() == [worker]
    release.set()
    assert runner.wait_idle(TIMEOUT)
    runner.begin_shutdown()
    assert runner.retire(worker, idle=True) is False  # it takes its stop signal first
    assert runner.finish_shutdown(None) is True


def test_shutdown_without_a_timeout_drains_for_drain_timeout() -> None:
    runner = ThreadRunner(max_workers=1, drain_timeout=0.05)
    release = threading.Event()
    runner.submit(lambda: release.wait(TIMEOUT))
    started = time.monotonic()
    assert runner.shutdown() is False  # cut off after 0.05 s, not after the task
    assert time.monotonic() - started < TIMEOUT / 2
    release.set()


def test_a_bad_timeout_at_shutdown_is_named() -> None:
    runner = ThreadRunner(max_workers=1)
    with pytest.raises(ValueError, match=r"^'timeout' must be a number of seconds"):
        runner.shutdown(-1)
    runner.drain_timeout = float("nan")  # set after the check in __init__
    with pytest.raises(ValueError, match=r"^'drain_timeout' must be a number of seconds"):
        runner.shutdown()
    assert runner.shutdown(TIMEOUT) is True


def test_a_task_arriving_as_a_worker_times_out_is_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The race made certain, through the worker loop's seam (ThreadRunner.retire): a
    # task is submitted just as the worker's wait for work timed out, before it asks
    # to retire. The worker must stay and run it.
    runner = ThreadRunner(max_workers=1, idle_timeout=0.01)
    retire = runner.retire
    late = threading.Event()

    def submit_then_retire(worker: wsgi_after._worker.Worker, /, *, idle: bool) -> bool:
        if not late.is_set() and not runner.stats().queued:
            runner.submit(late.set)  # one worker is live: no new thread starts for it
        return retire(worker, idle=idle)

    monkeypatch.setattr(runner, "retire", submit_then_retire)
    runner.submit(lambda: None)
    assert late.wait(TIMEOUT)
    monkeypatch.undo()
    runner.shutdown(TIMEOUT)


def test_each_failed_task_of_a_worker_is_counted(runner: ThreadRunner) -> None:
    for _ in range(3):
        runner.submit(lambda: False)
    assert runner.wait_idle(TIMEOUT)
    assert (runner.stats().completed, runner.stats().failed) == (3, 3)


def test_a_task_still_running_at_shutdown_is_logged_with_its_stack(
    log: pytest.LogCaptureFixture,
) -> None:
    runner = ThreadRunner(max_workers=1, drain_timeout=5, name="cutoff")
    release = threading.Event()

    def stuck() -> None:
        release.wait(TIMEOUT)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(stuck)
        start_response("200 OK", [])
        return [b""]

    serve(AfterMiddleware(app, runner=runner), "/held")
    wait_for(lambda: runner.stats().running, what="the callback to start")
    started = time.monotonic()
    assert runner.shutdown(timeout=0.05) is False
    assert time.monotonic() - started < 0.9  # the deadline, not a second per thread
    release.set()
    [error] = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert re.match(
        r"Callbacks \['tests\.test_pool\.test_a_task_still_running_at_shutdown_is_logged_with"
        r"_its_stack\.<locals>\.stuck'\] queued by 'GET /held' were still running when 'cutoff'"
        r" shut down; they are cut off at exit\. The thread's stack:\n.*release\.wait\(TIMEOUT\)",
        error,
        re.DOTALL,
    ), error


def test_a_task_lost_at_shutdown_says_how_long_the_drain_was(
    log: pytest.LogCaptureFixture,
) -> None:
    runner, _, release = blocked_runner("block")
    runner.submit(lambda: None)  # lost
    assert runner.shutdown(timeout=0.01) is False
    release.set()
    lost = [r.getMessage() for r in log.records if "shut down before its turn" in r.getMessage()]
    assert lost
    assert re.search(
        r"'wsgi-after' shut down before its turn \(it drained for 0\.\d s\)\.", lost[0]
    )


def test_a_failed_thread_start_is_retried_after_a_second_only(
    monkeypatch: pytest.MonkeyPatch, log: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(
        wsgi_after._worker,
        "time",
        types.SimpleNamespace(monotonic=lambda: now[0], sleep=time.sleep),
    )
    runner = ThreadRunner(max_workers=2, drain_timeout=5, name="flaky")
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(TIMEOUT)

    attempts: list[str] = []
    real_start = threading.Thread.start

    def second_fails(self: threading.Thread) -> None:
        if self.name == "flaky-0":
            real_start(self)
            return
        attempts.append(self.name)
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", second_fails)
    runner.submit(hold)  # the pool starts: its second thread fails
    assert busy.wait(TIMEOUT)
    [worker] = [th for th in threading.enumerate() if th.name == "flaky-0"]
    assert worker.daemon  # never holds the interpreter's exit
    assert attempts == ["flaky-1"]
    errors = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert errors == [
        "'flaky' could not start a worker thread (can't start new thread); it goes on with 1."
    ]
    runner.submit(lambda: None)
    runner.start()
    assert attempts == ["flaky-1"]  # failed a moment ago: not tried on every submit
    now[0] += 1.5
    runner.submit(lambda: None)
    assert attempts == ["flaky-1", "flaky-1"]  # a second later: tried again
    monkeypatch.setattr(threading.Thread, "start", real_start)
    # The waits below take their deadlines from the real clock (wsgi_after.lifecycle):
    # the runner must read that clock too, however far from it the fake one is.
    monkeypatch.setattr(wsgi_after._worker, "time", time)
    release.set()
    assert runner.wait_idle(TIMEOUT)
    assert runner.shutdown(TIMEOUT) is True


def test_wait_idle_without_a_timeout_waits_until_idle() -> None:
    runner, _, release = blocked_runner("block")

    def release_once_waited_on() -> None:
        wait_for(lambda: runner.stats().idle_waiters, what="wait_idle() to wait")
        release.set()

    releaser = threading.Thread(target=release_once_waited_on)
    releaser.start()
    assert runner.wait_idle() is True
    releaser.join(TIMEOUT)
    runner.shutdown(TIMEOUT)


def test_a_drain_finished_from_a_worker_does_not_wait_for_itself(
    log: pytest.LogCaptureFixture,
) -> None:
    # The process-wide shutdown (lifecycle) may run in a callback's thread: that
    # worker is not joined (it cannot be), and it is reported as still running.
    runner = ThreadRunner(max_workers=1, drain_timeout=5, name="self-drain")
    results: list[bool] = []

    def drains() -> None:
        runner.begin_shutdown()
        results.append(runner.finish_shutdown(time.monotonic() + TIMEOUT))

    runner.submit(drains)
    wait_for(lambda: results, what="the drain to finish")
    assert results == [False]  # the worker running the drain was still running
    errors = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "were still running when 'self-drain' shut down" in errors[0]


def test_the_defaults_are_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = ThreadRunner()
    assert (runner.max_pending, runner.drain_timeout, runner.idle_timeout) == (1000, 25.0, 60.0)
    assert (runner.on_full, runner.slow_callback, runner.name) == ("block", None, "wsgi-after")
    for cpus, workers in ((2, 6), (None, 5), (64, 32)):
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        assert ThreadRunner().max_workers == workers  # like ThreadPoolExecutor


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"idle_timeout": -1}, "'idle_timeout' must be a number of seconds of at least 0"),
        ({"idle_timeout": 0}, "'idle_timeout' must be more than 0 seconds, got 0."),
        ({"slow_callback": -1}, "'slow_callback' must be a number of seconds of at least 0"),
        ({"slow_callback": 0}, "'slow_callback' must be more than 0 seconds (None: off), got 0."),
        (
            {"drain_timeout": "x"},
            "'drain_timeout' must be a number of seconds of at least 0 (inf: no limit), got 'x'.",
        ),
    ],
)
def test_bad_timeouts_are_named(options: dict[str, t.Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        ThreadRunner(**options)


def test_one_second_timeouts_are_allowed() -> None:
    runner = ThreadRunner(idle_timeout=1, slow_callback=1)
    assert (runner.idle_timeout, runner.slow_callback) == (1.0, 1.0)


def test_start_gives_up_when_no_thread_can_start(
    monkeypatch: pytest.MonkeyPatch, log: pytest.LogCaptureFixture
) -> None:
    def failing_start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", failing_start)
    runner = ThreadRunner(max_workers=2, name="none")
    runner.start()  # returns: it does not try for ever
    errors = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert errors == [
        "'none' could not start a worker thread (can't start new thread); its tasks run in the"
        " submitting threads until one starts."
    ]


def test_a_worker_still_running_when_the_drain_ends_stops_after_its_callback() -> None:
    # The drain takes what is left in the queue; the stop signal of a worker still
    # running is put back, so that worker ends after its callback rather than wait on.
    release = threading.Event()
    running = threading.Event()

    def blocker() -> None:
        running.set()
        assert release.wait(TIMEOUT)

    runner = ThreadRunner(max_workers=1, name="cut-off")
    runner.submit(blocker)
    assert running.wait(TIMEOUT)
    runner.submit(lambda: None)  # queued: lost by the drain
    assert runner.shutdown(0.05) is False
    [worker] = [thread for thread in threading.enumerate() if thread.name == "cut-off-0"]
    release.set()
    worker.join(TIMEOUT)
    assert not worker.is_alive()
