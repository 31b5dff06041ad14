"""The thread pool: :class:`ThreadRunner`, its queue, policies and drain.

``submit()`` takes one lock and puts the task on a :class:`queue.SimpleQueue`;
worker threads (started on demand, ended when idle or when the runner is freed)
take tasks in order and run them. The pool knows nothing about WSGI: a task is a
callable (a request's chain), see :class:`wsgi_after.runner.Task`. This module
decides when threads start and end and what happens to a task (the ``on_full``
policy, the drain at shutdown, the counters); the threads themselves, their loop
and what they share with the runner (a :class:`~wsgi_after._worker.Crew`):
:mod:`wsgi_after._worker`. Options and their defaults:
:class:`wsgi_after.runner.PoolOptions`; the slow-callback watchdog:
:mod:`wsgi_after._watchdog`; fork, exit and the shared shutdown deadline:
:mod:`wsgi_after.lifecycle`::

    runner = ThreadRunner(max_workers=8, max_pending=5000, on_full="drop")
    runner.submit(task)
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import typing as t
import weakref

from . import lifecycle
from ._watchdog import report_slow, start_watchdog
from ._worker import Crew, Worker, wake
from .callback_stats import CallbackStats, for_runner
from .losslog import LossLog
from .runner import (
    DEFAULT_POOL,
    OnFull,
    PoolOptions,
    RunnerStats,
    callback_fields,
    describe_task,
    lose,
    run_here,
    run_task,
    thread_stack,
)

logger = logging.getLogger("wsgi_after")


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
        max_workers: int | None = DEFAULT_POOL.max_workers,
        max_pending: int = DEFAULT_POOL.max_pending,
        on_full: OnFull = DEFAULT_POOL.on_full,
        drain_timeout: float = DEFAULT_POOL.drain_timeout,
        idle_timeout: float = 60.0,
        slow_callback: float | None = None,
        callback_stats: bool | CallbackStats = False,
        name: str = "wsgi-after",
    ) -> None:
        PoolOptions(max_workers, max_pending, on_full, drain_timeout).check()
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
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
        crew = self._crew = Crew()  # shared with the worker threads (public fields)
        # Bound here too: submit() reads them per request, one attribute load each.
        self._lock = crew.lock
        self._queue = crew.queue
        # The workers hold the runner weakly; once it is freed, wake them to end.
        self._ref = weakref.ref(self, functools.partial(wake, crew, self.max_workers))
        self._live = 0  # len(crew.threads), read on the hot path
        self._submitted = 0  # tasks put on the queue; with the workers' counts, what is left
        self._dropped = 0  # refused because the queue was full
        self._lost_count = 0  # still queued when shutdown's drain ended
        self._shutdown = False
        self._shutdown_at = 0.0
        self._drained: bool | None = None  # the result of the drain, once it ended
        self._exiting = False
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
            lose(self._drops, "dropped", fn, self)
        elif self._crew.in_worker():
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
        crew = self._crew
        with self._lock:
            crew.blocked += 1
            try:
                while (
                    self._queue.qsize() >= self.max_pending
                    and not self._shutdown
                    and not self._exiting
                ):
                    crew.not_full.wait()
                if not self._shutdown:
                    # Past the bound only when the interpreter is exiting: the drain
                    # at exit runs it, or logs it by name.
                    self._submitted += 1
                    self._queue.put((fn, time.monotonic()))
                    return
            finally:
                crew.blocked -= 1
        self._submit_slow(fn)  # shutdown began while we waited: run it here

    def start(self) -> None:
        """Start every worker thread now rather than at the next ``submit()``."""
        with self._lock:
            if not self._shutdown:
                self._start_missing()

    def _start_missing(self) -> None:
        """Start worker threads up to ``max_workers`` (lock held); stop at a failure."""
        while self._live < self.max_workers:
            if not self._crew.start(self._ref, self.name, self.idle_timeout, self._live):
                break
            self._live += 1
            if self.slow_callback is not None and self._watchdog is None:
                self._watchdog = start_watchdog(self._ref, self.name, self.slow_callback)

    def workers(self) -> list[Worker] | None:
        """The records of the live worker threads (what each runs now), for the
        watchdog; None once the runner shuts down."""
        with self._lock:
            return None if self._shutdown else list(self._crew.threads)

    def report_slow(self, worker: Worker, task: object, running_for: float) -> None:
        """Report, once, a callback the watchdog saw running for ``running_for`` seconds:
        a WARNING with its thread's stack, a ``"slow"`` event, ``stats().hung``."""
        report_slow(self, worker, task, running_for)
        with self._lock:  # counted once it is logged: whoever sees the count sees the line
            self._hung += 1

    def retire(self, worker: Worker, /, *, idle: bool) -> bool:
        """A worker thread of this runner is about to end (the worker loop's call,
        :class:`wsgi_after._worker.Pool`): its counters are kept. False keeps it
        working: an idle one (``idle``: its wait for work timed out) while tasks
        arrived after all, or while the runner shuts down (it takes its stop signal).
        """
        with self._lock:
            if idle and (self._queue.qsize() or self._shutdown):
                return False
            if self._crew.remove(worker):
                self._live -= 1
            return True

    def _unfinished(self) -> int:
        """Tasks queued or running (call with the lock held)."""
        return self._submitted - self._lost_count - sum(w.completed for w in self._crew.records())

    def _refuse_in_worker(self, method: str) -> None:
        if self._crew.in_worker():
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
        crew = self._crew
        with self._lock:
            crew.idle_waiters += 1
            try:
                while self._unfinished():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    crew.changed.wait(remaining)
                return True
            finally:
                crew.idle_waiters -= 1

    def stats(self) -> RunnerStats:
        """Counters since this process started using the runner (and, with
        ``callback_stats``, its callbacks by name)."""
        with self._lock:
            queued = self._queue.qsize()
            unfinished = self._unfinished()
            workers = self._crew.records()
            dropped = self._dropped + self._lost_count
            hung = self._hung
            blocked = self._crew.blocked
            idle_waiters = self._crew.idle_waiters
        return RunnerStats(
            queued=min(queued, unfinished),
            running=max(0, unfinished - queued),
            completed=sum(w.completed for w in workers),
            failed=sum(w.failed for w in workers),
            dropped=dropped,
            max_queue_delay=max(w.max_delay for w in workers),
            hung=hung,
            blocked=blocked,
            idle_waiters=idle_waiters,
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
            self._crew.stop(self._live)  # after everything queued: workers drain, then stop
            self._crew.not_full.notify_all()

    def finish_shutdown(self, deadline: float | None) -> bool:
        """Wait for the workers until ``deadline`` (``time.monotonic()``; None: no
        limit), then log what was not run. True if everything ran.

        Once a drain ended, later calls (the exit's, after a server hook's) do not
        wait again: what was still running has been logged already.
        """
        with self._lock:
            if self._drained is not None:
                return self._drained
        self._crew.join(deadline)
        self._lost.reason = (
            f"{self.name!r} shut down before its turn"
            f" (it drained for {time.monotonic() - self._shutdown_at:.1f} s)."
        )
        lost = self._crew.take_queued()
        for fn in lost:
            lose(self._lost, "lost", fn, self)
        with self._lock:
            self._lost_count += len(lost)
            running = self._crew.running()
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
            self._crew.not_full.notify_all()
