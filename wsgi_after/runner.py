"""Runners: where a request's callbacks run once its response is closed.

The middleware hands each request's chain of callbacks to a runner as one task,
a callable taking no arguments, with ``runner.submit(task)``. Anything with that
method works (a :class:`concurrent.futures.Executor` does). This module has the
:class:`Runner` protocol and two runners:

* :class:`ThreadRunner`, the default: a fixed pool of worker threads on a
  bounded :class:`queue.SimpleQueue`, with an overload policy, fork safety and a
  bounded drain at interpreter exit;
* :class:`InlineRunner`, which runs each task at once inside ``close()``, for
  tests and debugging.

::

    runner = ThreadRunner(max_workers=8, max_pending=5000, on_full="drop")
    app = AfterMiddleware(app, runner=runner)

Runners know nothing about WSGI. A task may offer ``describe()``,
``callback_names()`` and ``discard()`` (a chain of callbacks does) so that what is
dropped or cut off at shutdown is logged by the callbacks' names; a task that
returns ``False`` is counted as failed.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import queue
import threading
import time
import typing as t
import weakref

from ._chain import callback_name
from ._droplog import DropLog

logger = logging.getLogger("wsgi_after")

ON_FULL = ("block", "run", "drop")


class Runner(t.Protocol):
    """What the middleware needs of a runner: ``submit`` a task taking no arguments.

    A runner may also have ``check_callback(func, args, kwargs)``, which
    :func:`~wsgi_after.after` calls at once so that a callback the runner cannot
    take fails in the request (:class:`~wsgi_after.celery.CeleryRunner` has one).
    """

    def submit(self, fn: t.Callable[[], object], /) -> object: ...


@dataclasses.dataclass(frozen=True)
class RunnerStats:
    """A snapshot of a :class:`ThreadRunner`; counts are of tasks (one per request)."""

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


def _describe(task: object) -> tuple[str, list[str]]:
    """The request and the callback names of a task, for log lines."""
    describe = getattr(task, "describe", None)
    names = getattr(task, "callback_names", None)
    return (
        describe() if describe is not None else "?",
        names() if names is not None else [callback_name(task)],
    )


def _discard(task: object) -> None:
    discard = getattr(task, "discard", None)
    if discard is not None:
        discard()


def run_task(task: t.Callable[[], object]) -> bool:
    """Run a task in this thread; log it by name if it raises. Return False on failure."""
    try:
        return task() is not False
    except BaseException:
        request, names = _describe(task)
        logger.error("Task %s queued by '%s' raised.", names, request, exc_info=True)
        return False


class _Worker:
    """One worker thread's counters; only that thread writes them, so no lock."""

    __slots__ = ("completed", "current", "failed", "max_delay")

    def __init__(self) -> None:
        self.current: t.Callable[[], object] | None = None
        self.completed = 0
        self.failed = 0
        self.max_delay = 0.0


class ThreadRunner:
    """A bounded pool of worker threads that runs tasks in submission order.

    ``submit()`` costs one lock and one :meth:`queue.SimpleQueue.put`, several
    times less than :meth:`concurrent.futures.ThreadPoolExecutor.submit`, because
    there is no future to make: nobody waits on a task's result.

    Error policy:

    * a task that raises is logged on the ``wsgi_after`` logger and counted;
      the worker goes on with the next task;
    * when ``max_pending`` tasks are queued, ``on_full`` decides: ``"block"``
      makes ``submit()`` wait for room, ``"run"`` runs the task in the
      submitting thread, ``"drop"`` drops it and logs every callback in it by
      name (the first drops of each 10 s one line each, then counts by name);
    * at interpreter exit, and on :meth:`shutdown`, the queue is drained for at
      most ``drain_timeout`` seconds; every callback not run by then is logged
      by name. A task submitted after shutdown began runs in the submitting
      thread (logged at WARNING) rather than being lost.

    Threads start at the first ``submit()`` in each process, so a runner built
    or used before ``fork()`` (gunicorn ``--preload``, uWSGI) works in the child;
    tasks queued in the parent stay with the parent.

    :param max_workers: worker threads. The default, ``min(32, cpu_count + 4)``
        like :class:`~concurrent.futures.ThreadPoolExecutor`, suits I/O-bound
        callbacks (HTTP calls, database writes) while bounding memory.
    :param max_pending: tasks that may wait in the queue. The default of 1000
        absorbs bursts of several seconds while keeping the backlog small
        enough to drain at shutdown and cheap for the garbage collector.
    :param on_full: ``"block"``, ``"run"`` or ``"drop"``, as above.
    :param drain_timeout: seconds to drain at exit. 25 s stays under gunicorn's
        default ``graceful_timeout`` of 30 s, after which workers are killed.
    :param name: prefix of the worker threads' names.
    :raises ValueError: if an option is out of range.
    """

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        max_pending: int = 1000,
        on_full: t.Literal["block", "run", "drop"] = "block",
        drain_timeout: float = 25.0,
        name: str = "wsgi-after",
    ) -> None:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        check_options(max_workers, max_pending, on_full, drain_timeout)
        self.max_workers = max_workers
        self.max_pending = max_pending
        self.on_full = on_full
        self.drain_timeout = float(drain_timeout)
        self.name = name
        self._drops = DropLog(f"the queue is full (max_pending={max_pending}).")
        self._reset()
        _runners.add(self)

    def _reset(self) -> None:
        """Set up the per-process state: at init, and in the child after ``fork()``."""
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._changed = threading.Condition(self._lock)
        self._queue: queue.SimpleQueue[tuple[t.Callable[[], object], float] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._workers: list[_Worker] = []
        self._submitted = 0  # tasks put on the queue; with the workers' counts, what is left
        self._blocked = 0  # submitters waiting for room ("block")
        self._idle_waiters = 0  # callers of wait_idle()
        self._dropped = 0  # refused because the queue was full
        self._lost = 0  # still queued when shutdown's drain ended
        self._shutdown = False

    def __repr__(self) -> str:
        return (
            f"<ThreadRunner {self.name!r} max_workers={self.max_workers}"
            f" max_pending={self.max_pending} on_full={self.on_full!r}>"
        )

    def submit(self, fn: t.Callable[[], object], /) -> None:
        """Queue ``fn`` to run on a worker thread (see the class's error policy)."""
        with self._lock:
            if self._queue.qsize() < self.max_pending and not self._shutdown:
                self._submitted += 1
                self._queue.put((fn, time.monotonic()))
                if not self._threads:
                    self._start()
                return
        self._submit_slow(fn)

    def _submit_slow(self, fn: t.Callable[[], object]) -> None:
        if self._shutdown:
            request, names = _describe(fn)
            logger.warning(
                "Running %s queued by '%s' in the submitting thread: '%s' is shutting down.",
                names,
                request,
                self.name,
            )
            run_task(fn)
            return
        if self.on_full == "run":
            run_task(fn)
        elif self.on_full == "drop":
            with self._lock:
                self._dropped += 1
            request, names = _describe(fn)
            self._drops.record(names, request)
            _discard(fn)
        else:
            with self._lock:
                self._blocked += 1
                try:
                    while self._queue.qsize() >= self.max_pending and not self._shutdown:
                        self._not_full.wait(1.0)
                    if not self._shutdown:
                        self._submitted += 1
                        self._queue.put((fn, time.monotonic()))
                        return
                finally:
                    self._blocked -= 1
            self._submit_slow(fn)  # shutdown began while we waited: run it here

    def start(self) -> None:
        """Start the worker threads now rather than at the first ``submit()``."""
        with self._lock:
            if not self._threads and not self._shutdown:
                self._start()

    def _start(self) -> None:
        for i in range(self.max_workers):
            worker = _Worker()
            thread = threading.Thread(
                target=self._work, args=(worker,), name=f"{self.name}-{i}", daemon=True
            )
            self._workers.append(worker)
            self._threads.append(thread)
            thread.start()

    def _work(self, worker: _Worker) -> None:
        get = self._queue.get
        monotonic = time.monotonic
        while True:
            item = get()
            if item is None:
                return
            if self._blocked:
                with self._lock:
                    self._not_full.notify()
            fn, queued_at = item
            del item
            delay = monotonic() - queued_at
            if delay > worker.max_delay:
                worker.max_delay = delay
            worker.current = fn
            if not run_task(fn):
                worker.failed += 1
            worker.current = fn = None  # type: ignore[assignment]
            worker.completed += 1  # before reading _idle_waiters: wait_idle() relies on it
            if self._idle_waiters:
                with self._lock:
                    self._changed.notify_all()

    def _unfinished(self) -> int:
        """Tasks queued or running (call with the lock held)."""
        return self._submitted - self._lost - sum(w.completed for w in self._workers)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no task is queued or running; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
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
        """Counters since this process started using the runner."""
        with self._lock:
            queued = self._queue.qsize()
            unfinished = self._unfinished()
            workers = list(self._workers)
            dropped = self._dropped + self._lost
        return RunnerStats(
            queued=min(queued, unfinished),
            running=max(0, unfinished - queued),
            completed=sum(w.completed for w in workers),
            failed=sum(w.failed for w in workers),
            dropped=dropped,
            max_queue_delay=max((w.max_delay for w in workers), default=0.0),
        )

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop taking tasks, drain the queue, and log what could not run.

        Waits at most ``timeout`` seconds (``drain_timeout`` when None) for the
        queued and running tasks. Every callback still queued then is logged at
        ERROR by name and counted as dropped; a task still running is logged as
        cut off. Later ``submit()`` calls run the task in the calling thread.

        :returns: True if everything ran.
        """
        with self._lock:
            already = self._shutdown
            self._shutdown = True
            threads = list(self._threads)
            self._not_full.notify_all()
        if not already:
            for _ in threads:
                self._queue.put(None)  # after everything queued: workers drain, then stop
        deadline = time.monotonic() + (self.drain_timeout if timeout is None else timeout)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        lost = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                lost.append(item[0])
        for fn in lost:
            request, names = _describe(fn)
            for name in names:
                logger.error(
                    "Callback '%s' queued by '%s' was not run: '%s' shut down before"
                    " its turn (drain timeout %.1f s).",
                    name,
                    request,
                    self.name,
                    self.drain_timeout if timeout is None else timeout,
                )
            _discard(fn)
        for worker in self._workers:
            running = worker.current
            if running is not None:
                request, names = _describe(running)
                logger.error(
                    "Callbacks %s queued by '%s' were still running when '%s' shut down;"
                    " they are cut off at exit.",
                    names,
                    request,
                    self.name,
                )
        with self._lock:
            self._lost += len(lost)
        self._drops.close()
        return not lost and not any(w.current is not None for w in self._workers)


class InlineRunner:
    """Runs each task at once, in the thread that closes the response.

    The client has its response by then, but the server's worker is held until
    the callbacks finish: meant for tests and debugging, where it makes the
    callbacks' effects visible as soon as the response is closed. A task that
    raises is logged, as with :class:`ThreadRunner`.
    """

    def submit(self, fn: t.Callable[[], object], /) -> None:
        """Run ``fn`` now."""
        run_task(fn)

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
    if not isinstance(drain_timeout, (int, float)) or drain_timeout < 0:
        raise ValueError(
            f"'drain_timeout' must be a number of seconds of at least 0, got {drain_timeout!r}."
        )


_runners: weakref.WeakSet[ThreadRunner] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's threads do not exist here, and its locks may be held by them.
    for runner in list(_runners):
        runner._reset()


def _drain_at_exit() -> None:
    for runner in list(_runners):
        if runner._threads and not runner._shutdown:
            runner.shutdown()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_drain_at_exit)
