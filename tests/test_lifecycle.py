"""The process's runners as one: exit, fork and one shutdown deadline (subprocesses)."""

from __future__ import annotations

import contextlib
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

from wsgi_after import ThreadRunner, lifecycle, shutdown_runners


def run_program(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def only_this_tests_runners(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process-wide shutdown sees only the runners this test makes: the ones made
    before it (the Django app's, which serves later tests) are not its to stop."""
    monkeypatch.setattr(lifecycle, "_registry", weakref.WeakSet())


@pytest.mark.usefixtures("only_this_tests_runners")
def test_one_deadline_for_every_runner() -> None:
    release = threading.Event()
    runners = [ThreadRunner(max_workers=1, drain_timeout=2.0) for _ in range(4)]
    for runner in runners:
        runner.submit(lambda: release.wait(60))
    started = time.monotonic()
    assert shutdown_runners() is False
    elapsed = time.monotonic() - started
    release.set()
    assert 2.0 <= elapsed < 6.0  # one shared 2 s deadline, not 8 s of four in a row


@pytest.mark.usefixtures("only_this_tests_runners")
def test_shutdown_runners_takes_the_servers_budget_over_drain_timeouts() -> None:
    release = threading.Event()
    runner = ThreadRunner(max_workers=1, drain_timeout=30.0)
    runner.submit(lambda: release.wait(30))
    started = time.monotonic()
    assert shutdown_runners(0.2) is False
    assert time.monotonic() - started < 15.0  # not the runner's own 30 s
    release.set()


FORKING_CALLBACK = """
import os, sys, threading, time
from wsgi_after import ThreadRunner

path = sys.argv[1]
runner = ThreadRunner(max_workers=1, drain_timeout=10)
forked = threading.Event()

def forks():
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # the child leaves: it must not run the parent's queued task
    os.waitpid(pid, 0)
    forked.set()

def record():
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\\n")

runner.submit(forks)
runner.submit(record)  # queued behind forks() when the fork happens
forked.wait(10)
runner.wait_idle(10)
"""


def test_a_forked_child_never_runs_the_parents_tasks(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "runs.txt"
    done = run_program(FORKING_CALLBACK, str(path))
    assert done.returncode == 0, done.stderr
    assert len(path.read_text().split()) == 1  # by the parent only, once


BLOCKED_AT_EXIT = """
import logging, sys, threading, time
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
from wsgi_after import ThreadRunner

runner = ThreadRunner(max_workers=1, max_pending=1, on_full="block", drain_timeout=1.0)
release = threading.Event()
runner.submit(lambda: release.wait(60))   # the worker is busy
runner.submit(lambda: None)               # the queue is full

def request_thread():  # like gunicorn gthread's non-daemon threads closing a response
    runner.submit(lambda: sys.stdout.write("late chain ran\\n"))

threading.Thread(target=request_thread).start()  # blocks in submit
deadline = time.monotonic() + 10
while not runner.stats().blocked and time.monotonic() < deadline:
    time.sleep(0.002)
sys.stdout.write("main thread exits\\n")
"""


def test_exit_is_not_held_by_a_thread_blocked_on_a_full_queue() -> None:
    started = time.monotonic()
    done = run_program(BLOCKED_AT_EXIT, timeout=30)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 20  # drain_timeout is 1 s; before, the exit hung for ever
    lines = done.stdout.splitlines()
    assert "main thread exits" in lines
    not_run = [line for line in lines if "was not run" in line]
    assert len(not_run) == 2  # the queued one and the late one: logged by name, not lost


BLOCKED_IN_AN_EXECUTOR_IMPORTED_LATER = """
import logging, sys, threading, time
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
from wsgi_after import ThreadRunner
from concurrent.futures import ThreadPoolExecutor  # its exit hook registered after ours

runner = ThreadRunner(max_workers=1, max_pending=1, on_full="block", drain_timeout=1.0)
release = threading.Event()
runner.submit(lambda: release.wait(60))   # a hung callback: the worker is busy
runner.submit(lambda: None)               # the queue is full
blocked = threading.Event()

def close_a_response():  # a request thread of the executor (gunicorn gthread's)
    blocked.set()
    runner.submit(lambda: sys.stdout.write("late chain ran\\n"))

ThreadPoolExecutor(1).submit(close_a_response)  # blocks in submit
blocked.wait(10)
sys.stdout.write("main thread exits\\n")
"""


def test_exit_is_bounded_whatever_the_import_order() -> None:
    # Python runs threading's exit hooks last registered first: the executor's join ran
    # before the hook that releases its thread blocked on the full queue (issue 21).
    started = time.monotonic()
    done = run_program(BLOCKED_IN_AN_EXECUTOR_IMPORTED_LATER, timeout=40)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 20  # drain_timeout is 1 s
    lines = done.stdout.splitlines()
    assert "main thread exits" in lines
    assert len([line for line in lines if "was not run" in line]) == 2


LOSSLOG_FORK = """
import os, sys, threading, time
import logging
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from wsgi_after import ThreadRunner

runner = ThreadRunner(max_workers=1, max_pending=1, on_full="drop")
held = threading.Event()
release = threading.Event()

class HeldTimer(threading.Timer):  # the drop log starts it under its lock: hold it there
    def start(self):
        if threading.current_thread().name == "dropper":
            held.set()
            release.wait(10)
        super().start()

threading.Timer = HeldTimer
busy = threading.Event()

def hold():
    busy.set()
    release.wait(10)

runner.submit(hold)
busy.wait(10)  # the worker is busy
runner.submit(lambda: None)  # the queue is full
# Another thread is inside the drop log (dropping the first task) at fork time.
threading.Thread(target=runner.submit, args=(lambda: None,), name="dropper").start()
held.wait(10)
pid = os.fork()
if pid == 0:
    logging.root.handlers[0].setFormatter(logging.Formatter("child: %(message)s"))
    runner.submit(lambda: time.sleep(1))
    runner.submit(lambda: None)
    runner.submit(lambda: None)  # dropped: must log, not hang on the parent's lock
    runner.shutdown(5)
    sys.stdout.flush()
    os._exit(0)
release.set()
_, status = os.waitpid(pid, 0)
print("child exit", status)
"""


def test_the_drop_log_is_reset_in_a_forked_child() -> None:
    done = run_program(LOSSLOG_FORK, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "child exit 0" in done.stdout
    assert re.search(
        r"^child: Callback .* was not run: the queue is full \(max_pending=1\)\.$",
        done.stdout,
        re.MULTILINE,
    ), done.stdout


def test_wsgi_after_imports_where_os_has_no_register_at_fork() -> None:
    done = run_program(
        """
        import os
        del os.fork, os.register_at_fork  # as on Windows (the stdlib checks for fork)
        import wsgi_after
        print("imported")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"


SIGTERM_TWICE = """
import atexit, logging, sys, threading, time
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
from wsgi_after import ThreadRunner, exit_on_sigterm

exit_on_sigterm()
runner = ThreadRunner(max_workers=1, drain_timeout=20)
started = threading.Event()

def slow():
    started.set()
    sys.stdin.readline()  # until the test saw the second SIGTERM logged
    sys.stdout.write("slow callback finished\\n")

runner.submit(slow)
started.wait(10)
atexit.register(print, "exiting", flush=True)  # runs before the runners' drain (LIFO)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_second_sigterm_does_not_cut_the_drain_short() -> None:
    # Each SIGTERM is sent once the previous step was seen: two signals sent back to
    # back may reach the process as one.
    process = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_TWICE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdin is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline().strip() == "exiting"  # the drain begins
        process.send_signal(signal.SIGTERM)  # a supervisor repeating itself
        seen = []
        for line in process.stdout:  # ends at the warning, or at exit (drain_timeout)
            seen.append(line)
            if "SIGTERM received again" in line:
                break
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write("go\n")
            process.stdin.flush()
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert seen[-1:] == [
        "WARNING SIGTERM received again while exiting; the drain goes on (at most the"
        " runners' drain_timeout). Send SIGKILL to stop at once.\n"
    ], seen
    assert "slow callback finished" in out, "".join(seen) + out + err
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err


FORKED_CHILD_EXITS = """
import os, sys
from wsgi_after import ThreadRunner

runner = ThreadRunner(max_workers=1, drain_timeout=10)
statuses = {}

def forks(how):
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child leaves through the worker, as the callback ends
        print(f"child {how} wrote this")  # buffered: flushed before the child ends
        if how == "exit3":
            sys.exit(3)
        if how == "exitmsg":
            sys.exit(f"child {how} message")
        if how == "exitnone":
            sys.exit()
        if how == "error":
            raise ValueError("child error")
        return
    statuses[how] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

for how in ("return", "exit3", "exitmsg", "exitnone", "error"):
    runner.submit(lambda how=how: forks(how))
runner.wait_idle(30)
print(sorted(statuses.items()))
"""


def test_a_forked_child_ends_with_its_callbacks_exit_code() -> None:
    done = run_program(FORKED_CHILD_EXITS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == str(
        [("error", 1), ("exit3", 3), ("exitmsg", 1), ("exitnone", 0), ("return", 0)]
    )
    assert sorted(lines[:-1]) == [
        f"child {how} wrote this" for how in ("error", "exit3", "exitmsg", "exitnone", "return")
    ]
    assert "child exitmsg message" in done.stderr.splitlines()
    assert "child error" not in done.stderr  # the parent's logging is not the child's


def test_a_forked_child_logs_its_own_never_closed_responses() -> None:
    # The parent filled the loss log's first window (five lines, then counts every 10 s
    # by a timer thread): a child that inherited it counted its losses for a timer that
    # does not exist there, and logged nothing, for ever (issue 21, item 11).
    result = run_program(
        """
        import contextvars, gc, os, sys
        from wsgi_after import AfterMiddleware, InlineRunner, after

        def app(environ, start_response):
            after(print, environ["PATH_INFO"])
            start_response("200 OK", [])
            return [b"ok"]

        app = AfterMiddleware(app, runner=InlineRunner())

        def never_closed(path):
            b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": path}, lambda s, h: None))

        for i in range(6):
            contextvars.copy_context().run(never_closed, f"/parent-{i}")
        gc.collect()
        pid = os.fork()
        if pid == 0:
            contextvars.copy_context().run(never_closed, "/child")
            gc.collect()
            sys.stderr.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        os._exit(0)  # the parent's summary is not this test's business
        """
    )
    assert result.returncode == 0, result.stderr
    assert "queued by 'GET /child' was not run" in result.stderr
