"""Runners: where a request's callbacks run once its response is closed.

The middleware hands each request's chain of callbacks to a runner as one task,
a callable taking no arguments, with ``runner.submit(task)``. Anything with that
method works (a :class:`concurrent.futures.ThreadPoolExecutor` does). This
module has the :class:`Runner` and :class:`Task` protocols and two runners:

* :class:`ThreadRunner`, the default: a bounded pool of worker threads on a
  bounded :class:`queue.SimpleQueue`, with an overload policy, fork safety and a
  bounded drain at interpreter exit;
* :class:`InlineRunner`, which runs each task at once inside ``close()``, for
  tests and debugging.

::

    runner = ThreadRunner(max_workers=8, max_pending=5000, on_full="drop")
    app = AfterMiddleware(app, runner=runner)

Runners know nothing about WSGI. Their process-wide lifecycle (fork, exit, one
shutdown deadline) lives in :mod:`wsgi_after.lifecycle`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import queue
import sys
import threading
import time
import traceback
import typing as t
import weakref

from . import events, lifecycle
from .callback_stats import CallbackStats, NameStats, Percentiles, for_runner
from .losslog import LossLog
from .naming import callback_name

logger = logging.getLogger("wsgi_after")

ON_FULL = ("block", "run", "drop")


class Submits(t.Protocol):
    """The least a runner needs: ``submit`` a task taking no arguments (a
    :class:`concurrent.futures.ThreadPoolExecutor` has it)."""

    def submit(self, fn: t.Callable[[], object], /) -> object: ...


class Runner(Submits, t.Protocol):
    """What the library's runners offer: ``submit`` a task taking no arguments,
    and ways to wait for it and to stop it.

    A runner may also have ``check_callback(func, args, kwargs)``, which
    :func:`~wsgi_after.after` calls at once so that a callback the runner cannot
    take fails in the request (:class:`~wsgi_after.celery.CeleryRunner` has one).
    """

    def submit(self, fn: t.Callable[[], object], /) -> object: ...

    def wait_idle(self, timeout: float | None = None) -> bool: ...

    def shutdown(self, timeout: float | None = None) -> bool: ...


class Task(t.Protocol):
    """What a runner is handed: a request's chain of callbacks.

    Calling it runs the callbacks; it returns False when one failed. It logs its
    own callbacks' failures and raises only a :class:`KeyboardInterrupt` or
    :class:`SystemExit` (already logged) after running the rest, which a runner
    passes on only in the server's own thread. ``describe()`` and
    ``callback_names()`` name it in log lines when it is dropped or lost;
    ``discard()`` forgets it without running it. A task may also have a
    ``lose(kind)`` method, which then logs, reports and forgets it in their place
    (see :func:`record_loss`).
    """

    def __call__(self) -> object: ...

    def describe(self) -> str: ...

    def callback_names(self) -> list[str]: ...

    def discard(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class RunnerStats:
    """A snapshot of a :class:`ThreadRunner` or an :class:`InlineRunner`; counts are of
    tasks (one per request), except in the per-callback fields.

    The per-callback fields are None unless the runner was built with
    ``callback_stats`` (see :mod:`wsgi_after.callback_stats`).
    """

    #: Tasks waiting for a worker.
    queued: int
    #: Tasks a worker is running now.
    running: int
    #: Tasks run to the end (including failed ones).
    completed: int
    #: Tasks that raised, or in which a callback raised.
    failed: int
    #: Tasks dropped because the queue was full (``on_full="drop"``) or lost at shutdown.
    dropped: int
    #: The longest time, in seconds, a task waited in the queue.
    max_queue_delay: float
    #: Callbacks seen running longer than ``slow_callback`` (each counted once).
    hung: int = 0
    #: Counts and timings by callback name (at most ``max_names``, then ``"other"``).
    callbacks: dict[str, NameStats] | None = None
    #: Percentiles of the seconds from the response's close to each callback's start,
    #: over the most recent callbacks.
    queue_delay: Percentiles | None = None
    #: Percentiles of the callbacks' run times, over the most recent callbacks.
    run_time: Percentiles | None = None


def callback_fields(stats: CallbackStats | None) -> dict[str, t.Any]:
    """The per-callback fields of :class:`RunnerStats` from a runner's statistics."""
    if stats is None:
        return {}
    snapshot = stats.snapshot()
    return {
        "callbacks": snapshot.by_name,
        "queue_delay": snapshot.queue_delay,
        "run_time": snapshot.run_time,
    }


def describe_task(task: object) -> tuple[str, list[str]]:
    """The request and the callback names of a task, for log lines."""
    describe = getattr(task, "describe", None)
    names = getattr(task, "callback_names", None)
    return (
        describe() if describe is not None else "?",
        names() if names is not None else [callback_name(task)],
    )


def record_loss(log: LossLog, kind: events.Kind, task: object, runner: object = None) -> None:
    """Log a task's callbacks as not run (aggregated), emit their events (of
    ``runner``), forget it.

    A task with a ``lose(kind)`` method reports its own loss instead (a runner
    built on this one, such as ``CeleryRunner``'s publisher, names its callbacks,
    its runner and where their payload went itself): one line and one event each.
    """
    lose = getattr(task, "lose", None)
    if lose is not None:
        lose(kind)
        return
    request, names = describe_task(task)
    log.record(names, request)
    if events.listeners:
        method, _, path = request.partition(" ")
        events.emit_each(kind, names, method, path, runner)
    _discard(task)


def thread_stack(ident: int) -> str:
    """The current stack of the thread ``ident``, formatted (empty if it is gone)."""
    frame = sys._current_frames().get(ident)
    return "".join(traceback.format_stack(frame)) if frame is not None else ""


def _discard(task: object) -> None:
    discard = getattr(task, "discard", None)
    if discard is not None:
        discard()


def run_task(task: t.Callable[[], object], *, in_caller: bool = False) -> bool:
    """Run a task in this thread; log it if it raises. Return False on failure.

    A :class:`Task` logs its own callbacks; anything else is logged here by
    name. With ``in_caller`` (the server's own thread runs it), a
    :class:`KeyboardInterrupt` or :class:`SystemExit` is raised again.
    """
    try:
        return task() is not False
    except BaseException as e:
        if getattr(task, "callback_names", None) is None:
            request, names = describe_task(task)
            logger.error("Task %s queued by '%s' raised.", names, request, exc_info=True)
        if in_caller and isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return False


def run_here(runner: object, task: t.Callable[[], object], *, in_caller: bool = True) -> bool:
    """:func:`run_task` for ``runner`` in a thread not its own: its callbacks'
    events name ``runner`` (while someone listens)."""
    if not events.listeners:
        return run_task(task, in_caller=in_caller)
    with events.running_for(runner):
        return run_task(task, in_caller=in_caller)


def _leave_forked_child(error: BaseException | None) -> t.NoReturn:
    """A callback forked, and the child came back to the worker: end the child now.

    The child must not run its parent's queued tasks, nor its parent's exit
    handlers (they own the parent's connections), like :mod:`multiprocessing`'s
    forked children. Exits with the ``SystemExit`` code, 1 after another error,
    0 when the callback returned.
    """
    code = 0
    if isinstance(error, SystemExit):
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
        if not isinstance(error.code, int) and error.code is not None:
            print(error.code, file=sys.stderr)
    elif error is not None:
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class _Worker:
    """One worker thread's counters; only that thread writes them, so no lock."""

    __slots__ = ("completed", "current", "failed", "ident", "max_delay")

    def __init__(self) -> None:
        self.current: t.Callable[[], object] | None = None
        self.completed = 0
        self.failed = 0
        self.max_delay = 0.0
        self.ident = 0


def _work(
    ref: weakref.ref[ThreadRunner],
    tasks: queue.SimpleQueue[tuple[t.Callable[[], object], float] | None],
    worker: _Worker,
    idle_timeout: float | None,
    generation: int,
) -> None:
    """A worker thread's loop. It holds its runner only weakly between tasks, so a
    runner nobody uses any more (a freed app's) is freed, and its threads end."""
    worker.ident = threading.get_ident()
    events.set_runner(ref())  # once: the events of the callbacks run here name it
    monotonic = time.monotonic
    while True:
        try:
            item = tasks.get(True, idle_timeout)
        except queue.Empty:
            runner = ref()
            if runner is None or runner._retire(worker, idle=True):
                return
            del runner
            continue
        if item is None:
            runner = ref()
            if runner is not None:
                runner._retire(worker, idle=False)
            return
        fn, queued_at = item
        del item
        runner = ref()  # held while the task runs: a runner in use is not freed
        if runner is not None and runner._blocked:
            runner._wake_blocked()
        delay = monotonic() - queued_at
        if delay > worker.max_delay:
            worker.max_delay = delay
        worker.current = fn
        error: BaseException | None = None
        try:
            ok = fn() is not False
        except BaseException as e:
            ok = False
            error = e
            if lifecycle.generation == generation and getattr(fn, "callback_names", None) is None:
                request, names = describe_task(fn)  # a Task logs its own callbacks
                logger.error("Task %s queued by '%s' raised.", names, request, exc_info=e)
        if lifecycle.generation != generation:
            _leave_forked_child(error)
        del error
        if not ok:
            worker.failed += 1
        worker.current = fn = None  # type: ignore[assignment]
        worker.completed += 1  # before reading _idle_waiters: wait_idle() relies on it
        if runner is not None and runner._idle_waiters:
            with runner._lock:
                runner._changed.notify_all()
        runner = None


def _watch(ref: weakref.ref[ThreadRunner], slow: float, generation: int) -> None:
    """A runner's watchdog: reports each callback that runs longer than ``slow``.

    It samples the workers every ``slow / 4`` seconds (at most 1 s), so a report
    comes at most that much late; the callbacks' hot path pays nothing for it.
    """
    period = min(1.0, slow / 4)
    seen: dict[_Worker, tuple[int, int, float, bool]] = {}  # task id, index, since, reported
    while lifecycle.generation == generation:
        time.sleep(period)
        runner = ref()
        if runner is None or runner._shutdown:
            return
        now = time.monotonic()
        task: object = None
        with runner._lock:
            workers = list(runner._threads)
        for worker in workers:
            task = worker.current
            if task is None:
                seen.pop(worker, None)
                continue
            key = (id(task), getattr(task, "started", 0))
            entry = seen.get(worker)
            if entry is None or entry[:2] != key:
                seen[worker] = (*key, now, False)
            elif not entry[3] and now - entry[2] >= slow:
                seen[worker] = (*key, entry[2], True)
                runner._report_slow(worker, task, now - entry[2])
        for worker in set(seen) - set(workers):
            del seen[worker]
        runner = task = None  # hold the runner only while sampling


def _wake(
    tasks: queue.SimpleQueue[tuple[t.Callable[[], object], float] | None],
    count: int,
    ref: object,
) -> None:
    """The runner was freed: its workers run what is queued, then end."""
    for _ in range(count):
        tasks.put(None)


class ThreadRunner:
    """A bounded pool of worker threads that runs tasks in submission order.

    ``submit()`` costs one lock and one :meth:`queue.SimpleQueue.put`, several
    times less than :meth:`concurrent.futures.ThreadPoolExecutor.submit`, because
    there is no future to make: nobody waits on a task's result.

    Error policy:

    * a task's failing callbacks are logged on the ``wsgi_after`` logger and
      counted; the worker goes on with the next task;
    * when ``max_pending`` tasks are queued, ``on_full`` decides: ``"block"``
      makes ``submit()`` wait for room (a worker of this runner submitting to
      it runs the task itself instead, as it must never wait for itself; when
      the interpreter starts to exit, waiting submitters queue past the bound
      so the exit's drain takes them), ``"run"`` runs the task in the
      submitting thread, ``"drop"`` drops it and logs every callback in it by
      name (the first drops of each 10 s one line each, then counts by name);
    * a task run in the submitting thread (``"run"``, after shutdown, or while
      no worker thread can be started) passes on a ``KeyboardInterrupt`` or
      ``SystemExit`` a callback raised, after the task's other callbacks ran;
    * a worker thread that cannot be started is logged; the tasks run in the
      submitting thread until one starts, and each ``submit()`` tries again;
    * at interpreter exit, and on :meth:`shutdown`, the queue is drained for at
      most ``drain_timeout`` seconds (one deadline shared by every runner of the
      process, see :mod:`wsgi_after.lifecycle`); every callback not run by then
      is logged by name (the first few one line each, then counts). A task
      submitted after shutdown began runs in the submitting thread (logged at
      WARNING) rather than being lost.

    The ``max_workers`` threads start at the first ``submit()`` (again after
    some ended), and end after ``idle_timeout`` seconds without work, or when the
    runner is freed. A runner
    built or used before ``fork()`` (gunicorn ``--preload``) works in the child;
    tasks queued in the parent stay with the parent.

    :param max_workers: worker threads. The default, ``min(32, cpu_count + 4)``
        like :class:`~concurrent.futures.ThreadPoolExecutor`, suits I/O-bound
        callbacks (HTTP calls, database writes) while bounding memory.
    :param max_pending: tasks that may wait in the queue. The default of 1000
        absorbs bursts of several seconds while keeping the backlog small
        enough to drain at shutdown and cheap for the garbage collector.
    :param on_full: ``"block"``, ``"run"`` or ``"drop"``, as above.
    :param drain_timeout: seconds to drain at exit; ``inf`` waits without limit.
        25 s stays under gunicorn's default ``graceful_timeout`` of 30 s, after
        which workers are killed.
    :param idle_timeout: seconds a worker thread waits for work before it ends
        (``inf``: never). 60 s keeps threads through pauses between bursts and
        frees them in processes that stopped using the runner.
    :param slow_callback: seconds after which a running callback is logged
        once at WARNING with its name, request and stack, and counted in
        ``stats().hung`` (threads cannot be killed, but they can be seen). Off
        (None) by default: it costs a watchdog thread.
    :param callback_stats: True (or a
        :class:`~wsgi_after.callback_stats.CallbackStats`, for its options) to
        count this runner's callbacks by name and keep percentiles of their
        queue delays and run times, in :meth:`stats`. Off by default: it makes
        every callback emit its events.
    :param name: prefix of the worker threads' names.
    :raises ValueError: if an option is out of range.
    :raises TypeError: if ``callback_stats`` is not a bool or a ``CallbackStats``.
    """

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        max_pending: int = 1000,
        on_full: t.Literal["block", "run", "drop"] = "block",
        drain_timeout: float = 25.0,
        idle_timeout: float = 60.0,
        slow_callback: float | None = None,
        callback_stats: bool | CallbackStats = False,
        name: str = "wsgi-after",
    ) -> None:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        check_options(max_workers, max_pending, on_full, drain_timeout)
        idle = lifecycle.check_timeout(idle_timeout, "idle_timeout")
        if idle == 0:
            raise ValueError(f"'idle_timeout' must be more than 0 seconds, got {idle_timeout!r}.")
        self.max_workers = max_workers
        self.max_pending = max_pending
        self.on_full = on_full
        self.drain_timeout = float(drain_timeout)
        self.idle_timeout = idle
        slow = lifecycle.check_timeout(slow_callback, "slow_callback")
        if slow == 0:
            raise ValueError(
                f"'slow_callback' must be more than 0 seconds (None: off), got {slow_callback!r}."
            )
        self.slow_callback = slow
        self.name = name
        self._drops = LossLog(f"the queue is full (max_pending={max_pending}).")
        self._lost = LossLog(f"{name!r} shut down before its turn.")
        self._reset()
        self.callback_stats = for_runner(callback_stats, self)
        lifecycle.register(self)

    def _reset(self) -> None:
        """Set up the per-process state: at init, and in the child after ``fork()``."""
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._changed = threading.Condition(self._lock)
        self._queue: queue.SimpleQueue[tuple[t.Callable[[], object], float] | None] = (
            queue.SimpleQueue()
        )
        # The workers hold the runner weakly; once it is freed, wake them to end.
        self._ref = weakref.ref(self, functools.partial(_wake, self._queue, self.max_workers))
        self._threads: dict[_Worker, threading.Thread] = {}
        self._live = 0  # len(self._threads), read on the hot path
        self._spawned = 0  # threads started in this process, for their names
        self._retired = _Worker()  # counters of the threads that ended
        self._submitted = 0  # tasks put on the queue; with the workers' counts, what is left
        self._blocked = 0  # submitters waiting for room ("block")
        self._idle_waiters = 0  # callers of wait_idle()
        self._dropped = 0  # refused because the queue was full
        self._lost_count = 0  # still queued when shutdown's drain ended
        self._shutdown = False
        self._shutdown_at = 0.0
        self._drained: bool | None = None  # the result of the drain, once it ended
        self._exiting = False
        self._start_error_at = -math.inf  # when a thread last failed to start
        self._warned_reentry = False
        self._hung = 0  # callbacks reported slow
        self._watchdog: threading.Thread | None = None
        self._drops.reset()
        self._lost.reset()

    def reset_after_fork(self) -> None:
        """In a child after ``fork()``: its own threads, queue, locks and counters."""
        self._reset()
        if self.callback_stats is not None:
            self.callback_stats.reset()

    #: It takes any callback: after() looks this up on every call, and a missing
    #: attribute costs more than None.
    check_callback = None

    def __repr__(self) -> str:
        return (
            f"<ThreadRunner {self.name!r} max_workers={self.max_workers}"
            f" max_pending={self.max_pending} on_full={self.on_full!r}>"
        )

    def submit(self, fn: t.Callable[[], object], /) -> None:
        """Queue ``fn`` to run on a worker thread (see the class's error policy)."""
        lock = self._lock
        lock.acquire()  # not 'with': that costs twice as much, per request
        try:
            if not self._shutdown and self._queue.qsize() < self.max_pending:
                if self._live < self.max_workers:
                    # The whole pool, so that requests' chains run concurrently: one
                    # that waits for another's (a barrier, a lock) never waits behind
                    # it for a thread.
                    self._start_missing()
                if self._live:
                    self._submitted += 1
                    self._queue.put((fn, time.monotonic()))
                    return
        finally:
            lock.release()
        self._submit_slow(fn)

    def _submit_slow(self, fn: t.Callable[[], object]) -> None:
        if self._shutdown:
            request, names = describe_task(fn)
            logger.warning(
                "Running %s queued by '%s' in the submitting thread: '%s' is shutting down.",
                names,
                request,
                self.name,
            )
            run_here(self, fn)
        elif (
            not self._live or self.on_full == "run"
        ):  # no worker thread could be started: run it here
            run_here(self, fn)
        elif self.on_full == "drop":
            with self._lock:
                self._dropped += 1
            record_loss(self._drops, "dropped", fn, self)
        elif self._in_worker():
            if not self._warned_reentry:
                self._warned_reentry = True
                logger.warning(
                    "A callback on '%s' queued a request while its queue was full; its"
                    " callbacks run in that worker instead of waiting for room, which"
                    " would wait for itself (logged once).",
                    self.name,
                )
            run_task(fn)
        else:
            self._submit_blocking(fn)

    def _submit_blocking(self, fn: t.Callable[[], object]) -> None:
        lifecycle.keep_exit_hook_first()  # so that exit releases this thread, whatever hook
        with self._lock:
            self._blocked += 1
            try:
                while (
                    self._queue.qsize() >= self.max_pending
                    and not self._shutdown
                    and not self._exiting
                ):
                    self._not_full.wait()
                if not self._shutdown:
                    # Past the bound only when the interpreter is exiting: the drain
                    # at exit runs it, or logs it by name.
                    self._submitted += 1
                    self._queue.put((fn, time.monotonic()))
                    return
            finally:
                self._blocked -= 1
        self._submit_slow(fn)  # shutdown began while we waited: run it here

    def _wake_blocked(self) -> None:
        with self._lock:
            self._not_full.notify()

    def _in_worker(self) -> bool:
        ident = threading.get_ident()
        return any(w.ident == ident for w in list(self._threads))

    def start(self) -> None:
        """Start every worker thread now rather than at the next ``submit()``."""
        with self._lock:
            if not self._shutdown:
                self._start_missing()

    def _start_missing(self) -> None:
        """Start worker threads up to ``max_workers`` (lock held); stop at a failure."""
        while self._live < self.max_workers:
            if not self._spawn():
                break

    def _spawn(self) -> bool:
        """Start one worker thread (lock held). False if it could not start."""
        now = time.monotonic()
        if self._live and now - self._start_error_at < 1.0:
            return False  # it failed a moment ago: do not try on every request
        lifecycle.keep_exit_hook_first()  # before an executor's, imported after us
        worker = _Worker()
        thread = threading.Thread(
            target=_work,
            args=(self._ref, self._queue, worker, self.idle_timeout, lifecycle.generation),
            name=f"{self.name}-{self._spawned}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as e:  # "can't start new thread"
            self._start_error_at = now
            logger.error(
                "'%s' could not start a worker thread (%s); %s",
                self.name,
                e,
                "its tasks run in the submitting threads until one starts."
                if not self._live
                else f"it goes on with {self._live}.",
            )
            return False
        self._threads[worker] = thread
        self._live += 1
        self._spawned += 1
        if self.slow_callback is not None and self._watchdog is None:
            self._start_watchdog(self.slow_callback)
        return True

    def _start_watchdog(self, slow: float) -> None:
        watchdog = threading.Thread(
            target=_watch,
            args=(self._ref, slow, lifecycle.generation),
            name=f"{self.name}-watchdog",
            daemon=True,
        )
        try:
            watchdog.start()
        except RuntimeError:
            return  # no thread to be had: try again with the next worker
        self._watchdog = watchdog

    def _report_slow(self, worker: _Worker, task: object, running_for: float) -> None:
        request, names = describe_task(task)
        name = names[0] if names else "?"
        logger.warning(
            "Callback '%s' queued by '%s' has been running for %.1f s on '%s'"
            " (slow_callback=%.1f s). Its thread's stack:\n%s",
            name,
            request,
            running_for,
            self.name,
            self.slow_callback,
            thread_stack(worker.ident),
        )
        if events.listeners:
            method, _, path = request.partition(" ")
            slow = events.CallbackEvent(
                "slow", name, method, path, run_time=running_for, runner=self
            )
            events.emit(slow)
        with self._lock:  # counted once it is logged: whoever sees the count sees the line
            self._hung += 1

    def _retire(self, worker: _Worker, *, idle: bool) -> bool:
        """A worker thread is about to end: fold its counters in. False keeps it
        working (an idle worker while tasks arrived after all)."""
        with self._lock:
            if idle and (self._queue.qsize() or self._shutdown):
                return False
            if self._threads.pop(worker, None) is not None:
                self._live -= 1
                retired = self._retired
                retired.completed += worker.completed
                retired.failed += worker.failed
                retired.max_delay = max(retired.max_delay, worker.max_delay)
            return True

    def _workers(self) -> list[_Worker]:
        return [self._retired, *self._threads]

    def _unfinished(self) -> int:
        """Tasks queued or running (call with the lock held)."""
        return self._submitted - self._lost_count - sum(w.completed for w in self._workers())

    def _refuse_in_worker(self, method: str) -> None:
        if self._in_worker():
            raise RuntimeError(
                f"'{method}()' was called from a callback running on '{self.name}', and"
                " would wait for that callback itself. Call it from outside the runner's"
                " callbacks (a test, a shutdown hook)."
            )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no task is queued or running; False if ``timeout`` passed first.

        :param timeout: seconds; None or ``inf`` waits without limit.
        :raises RuntimeError: if called from one of this runner's callbacks.
        :raises ValueError: if ``timeout`` is NaN or negative.
        """
        deadline = lifecycle.deadline_after(lifecycle.check_timeout(timeout))
        self._refuse_in_worker("wait_idle")
        with self._lock:
            self._idle_waiters += 1
            try:
                while self._unfinished():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._changed.wait(remaining)
                return True
            finally:
                self._idle_waiters -= 1

    def stats(self) -> RunnerStats:
        """Counters since this process started using the runner (and, with
        ``callback_stats``, its callbacks by name)."""
        with self._lock:
            queued = self._queue.qsize()
            unfinished = self._unfinished()
            workers = self._workers()
            dropped = self._dropped + self._lost_count
            hung = self._hung
        return RunnerStats(
            queued=min(queued, unfinished),
            running=max(0, unfinished - queued),
            completed=sum(w.completed for w in workers),
            failed=sum(w.failed for w in workers),
            dropped=dropped,
            max_queue_delay=max(w.max_delay for w in workers),
            hung=hung,
            **callback_fields(self.callback_stats),
        )

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop taking tasks, drain the queue, and log what could not run.

        Waits at most ``timeout`` seconds (``drain_timeout`` when None; ``inf``
        without limit) for the queued and running tasks. Every callback still
        queued then is logged at ERROR by name (the first few one line each,
        then counts) and counted as dropped; a task still running is logged as
        cut off. Later ``submit()`` calls run the task in the calling thread.
        To stop every runner of the process against one deadline, use
        :func:`wsgi_after.shutdown_runners`.

        :returns: True if everything ran.
        :raises RuntimeError: if called from one of this runner's callbacks.
        :raises ValueError: if ``timeout`` is NaN or negative.
        """
        limit = lifecycle.check_timeout(
            self.drain_timeout if timeout is None else timeout,
            "drain_timeout" if timeout is None else "timeout",
        )
        self._refuse_in_worker("shutdown")
        self.begin_shutdown()
        return self.finish_shutdown(lifecycle.deadline_after(limit))

    def begin_shutdown(self) -> None:
        """Stop taking tasks and tell the workers to end once the queue is drained."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            self._shutdown_at = time.monotonic()
            for _ in range(self._live):
                self._queue.put(None)  # after everything queued: workers drain, then stop
            self._not_full.notify_all()

    def finish_shutdown(self, deadline: float | None) -> bool:
        """Wait for the workers until ``deadline`` (``time.monotonic()``; None: no
        limit), then log what was not run. True if everything ran.

        Once a drain ended, later calls (the exit's, after a server hook's) do not
        wait again: what was still running has been logged already.
        """
        with self._lock:
            if self._drained is not None:
                return self._drained
            threads = list(self._threads.values())
        me = threading.current_thread()
        for thread in threads:
            if thread is not me:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._lost.reason = (
            f"{self.name!r} shut down before its turn"
            f" (it drained for {time.monotonic() - self._shutdown_at:.1f} s)."
        )
        lost = []
        stops = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                lost.append(item[0])
            else:
                stops += 1
        for _ in range(stops):  # a worker still running (or draining) ends after its task
            self._queue.put(None)
        for fn in lost:
            record_loss(self._lost, "lost", fn, self)
        with self._lock:
            self._lost_count += len(lost)
            running = [(w.current, w.ident) for w in self._threads if w.current is not None]
        for fn, ident in running:
            request, names = describe_task(fn)
            logger.error(
                "Callbacks %s queued by '%s' were still running when '%s' shut down;"
                " they are cut off at exit. The thread's stack:\n%s",
                names,
                request,
                self.name,
                thread_stack(ident),
            )
        self._lost.close()
        self._drops.close()
        self._drained = not lost and not running
        return self._drained

    def exiting(self) -> None:
        """The interpreter is exiting: release the submitters waiting for room."""
        with self._lock:
            self._exiting = True
            self._not_full.notify_all()


class InlineRunner:
    """Runs each task at once, in the thread that closes the response.

    The client has its response by then, but the server's worker is held until
    the callbacks finish: meant for tests and debugging, where it makes the
    callbacks' effects visible as soon as the response is closed. A callback
    that raises is logged, as with :class:`ThreadRunner`; a
    ``KeyboardInterrupt`` or ``SystemExit`` is raised again in the server's
    thread after the request's other callbacks ran.

    :param callback_stats: as :class:`ThreadRunner`'s: True (or a
        :class:`~wsgi_after.callback_stats.CallbackStats`) adds this runner's
        callbacks by name to :meth:`stats`.
    :raises TypeError: if ``callback_stats`` is not a bool or a ``CallbackStats``.
    """

    check_callback = None  # takes any callback (see ThreadRunner's)

    def __init__(self, *, callback_stats: bool | CallbackStats = False) -> None:
        self._lock = threading.Lock()
        self._running = self._completed = self._failed = 0
        self.callback_stats = for_runner(callback_stats, self)

    def submit(self, fn: t.Callable[[], object], /) -> None:
        """Run ``fn`` now."""
        with self._lock:
            self._running += 1
        ok = False
        try:
            ok = run_here(self, fn)
        finally:
            with self._lock:
                self._running -= 1
                self._completed += 1
                self._failed += not ok

    def stats(self) -> RunnerStats:
        """Counters since the runner was built: ``queued`` is always 0, and
        ``dropped`` too (nothing waits, nothing is refused)."""
        with self._lock:
            running, completed, failed = self._running, self._completed, self._failed
        return RunnerStats(
            queued=0,
            running=running,
            completed=completed,
            failed=failed,
            dropped=0,
            max_queue_delay=0.0,
            **callback_fields(self.callback_stats),
        )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Always True: nothing is ever pending."""
        return True

    def shutdown(self, timeout: float | None = None) -> bool:
        """Nothing to do; always True."""
        return True


def check_options(max_workers: int, max_pending: int, on_full: str, drain_timeout: float) -> None:
    """Raise :class:`ValueError` naming the allowed values for a bad option."""
    if type(max_workers) is not int or max_workers < 1:
        raise ValueError(f"'max_workers' must be an int of at least 1, got {max_workers!r}.")
    if type(max_pending) is not int or max_pending < 1:
        raise ValueError(f"'max_pending' must be an int of at least 1, got {max_pending!r}.")
    if on_full not in ON_FULL:
        raise ValueError(f"'on_full' must be one of 'block', 'run' or 'drop', got {on_full!r}.")
    try:
        lifecycle.check_timeout(drain_timeout, "drain_timeout")
    except TypeError as e:
        raise ValueError(str(e)) from None
