"""A thread pool's worker threads: their loop, their records, and what they share
with their runner.

:class:`~wsgi_after.ThreadRunner` (:mod:`wsgi_after._pool`) decides *when* a
thread starts or ends and what happens to a task; this module is the threads
themselves. The seam between the two is public on both sides:

* :class:`Crew`, one per runner and process, with public fields: the queue, its
  lock and conditions, the counts of threads waiting on them (``blocked``
  submitters, ``idle_waiters``), the live threads by :class:`Worker` record, and
  the counters of the threads that ended. The runner writes it under ``lock``;
  a worker reads ``blocked`` and ``idle_waiters`` once per task;
* :class:`Pool`, what the loop calls back on its runner: ``retire()``, as a
  thread is about to end (the runner's lifecycle flags stay the runner's).

::

    crew = Crew()
    crew.start(ref, "wsgi-after", idle_timeout=60.0, live=0)  # lock held
    crew.queue.put((task, time.monotonic()))
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import typing as t

from . import events, lifecycle
from .runner import describe_task

logger = logging.getLogger("wsgi_after")

#: What the queue holds: a task and when it was queued, or None (a stop signal).
Item = tuple[t.Callable[[], object], float] | None


class Worker:
    """One worker thread's counters; only that thread writes them, so no lock."""

    __slots__ = ("completed", "current", "failed", "ident", "max_delay")

    def __init__(self) -> None:
        self.current: t.Callable[[], object] | None = None
        self.completed = 0
        self.failed = 0
        self.max_delay = 0.0
        self.ident = 0


class Pool(t.Protocol):
    """What a worker thread calls on its runner (held weakly)."""

    def retire(self, worker: Worker, /, *, idle: bool) -> bool:
        """A worker thread is about to end (``idle``: its wait for work timed out).
        False keeps it working; True: it ends, its counters folded into the crew's."""


class Crew:
    """What a runner and its worker threads share; one per runner and process
    (a forked child makes its own). Written under ``lock``, except where noted."""

    __slots__ = (
        "blocked",
        "changed",
        "idle_waiters",
        "lock",
        "not_full",
        "queue",
        "retired",
        "spawned",
        "start_error_at",
        "threads",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: Notified when a worker took a task: a submitter waiting for room ("block").
        self.not_full = threading.Condition(self.lock)
        #: Notified when a worker finished a task: the callers of ``wait_idle()``.
        self.changed = threading.Condition(self.lock)
        self.queue: queue.SimpleQueue[Item] = queue.SimpleQueue()  # put and get without the lock
        self.threads: dict[Worker, threading.Thread] = {}  # the live threads
        self.spawned = 0  # threads started in this process, for their names
        self.retired = Worker()  # counters of the threads that ended
        self.blocked = 0  # submitters waiting for room ("block"); read by workers per task
        self.idle_waiters = 0  # callers of wait_idle(); read by workers per task
        self.start_error_at = float("-inf")  # when a thread last failed to start

    def records(self) -> list[Worker]:
        """The counters of every thread, ended or live (lock held)."""
        return [self.retired, *self.threads]

    def in_worker(self) -> bool:
        """Whether the calling thread is one of the live workers."""
        ident = threading.get_ident()
        return any(w.ident == ident for w in list(self.threads))

    def wake_blocked(self) -> None:
        """Wake one submitter waiting for room: a worker took a task."""
        with self.lock:
            self.not_full.notify()

    def start(
        self, ref: t.Callable[[], Pool | None], name: str, idle_timeout: float | None, live: int
    ) -> bool:
        """Start one worker thread (lock held; ``live`` threads run now). False if it
        could not start: logged, and not tried again for a second while others run."""
        now = time.monotonic()
        if live and now - self.start_error_at < 1.0:
            return False  # it failed a moment ago: do not try on every request
        lifecycle.keep_exit_hook_first()  # before an executor's, imported after us
        worker = Worker()
        thread = threading.Thread(
            target=work,
            args=(ref, self, worker, idle_timeout, lifecycle.generation),
            name=f"{name}-{self.spawned}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as e:  # "can't start new thread"
            self.start_error_at = now
            logger.error(
                "'%s' could not start a worker thread (%s); %s",
                name,
                e,
                "its tasks run in the submitting threads until one starts."
                if not live
                else f"it goes on with {live}.",
            )
            return False
        self.threads[worker] = thread
        self.spawned += 1
        return True

    def remove(self, worker: Worker) -> bool:
        """Fold the counters of an ending thread into ``retired`` (lock held). False
        if it was not live (it retired already)."""
        if self.threads.pop(worker, None) is None:
            return False
        retired = self.retired
        retired.completed += worker.completed
        retired.failed += worker.failed
        retired.max_delay = max(retired.max_delay, worker.max_delay)
        return True

    def running(self) -> list[tuple[t.Callable[[], object], int]]:
        """The task each busy thread runs now, and the thread's ident (lock held)."""
        return [(w.current, w.ident) for w in self.threads if w.current is not None]

    def join(self, deadline: float | None) -> None:
        """Wait until ``deadline`` (``time.monotonic()``; None: no limit) for the live
        threads to end, the calling thread's own excepted."""
        with self.lock:
            threads = list(self.threads.values())
        me = threading.current_thread()
        for thread in threads:
            if thread is not me:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def stop(self, count: int) -> None:
        """Queue ``count`` stop signals, after everything queued: workers drain, then end."""
        for _ in range(count):
            self.queue.put(None)

    def take_queued(self) -> list[t.Callable[[], object]]:
        """Take the tasks still queued (at the end of a drain); stop signals stay, for
        the workers still running."""
        tasks = []
        stops = 0
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                tasks.append(item[0])
            else:
                stops += 1
        self.stop(stops)  # a worker still running (or draining) ends after its task
        return tasks


def work(
    ref: t.Callable[[], Pool | None],
    crew: Crew,
    worker: Worker,
    idle_timeout: float | None,
    generation: int,
) -> None:
    """A worker thread's loop. It holds its runner only weakly between tasks, so a
    runner nobody uses any more (a freed app's) is freed, and its threads end."""
    worker.ident = threading.get_ident()
    events.set_runner(ref())  # once: the events of the callbacks run here name it
    tasks = crew.queue
    monotonic = time.monotonic
    while True:
        try:
            item = tasks.get(True, idle_timeout)
        except queue.Empty:
            runner = ref()
            if runner is None or runner.retire(worker, idle=True):
                return
            del runner
            continue
        if item is None:
            runner = ref()
            if runner is not None:
                runner.retire(worker, idle=False)
            return
        fn, queued_at = item
        del item
        runner = ref()  # held while the task runs: a runner in use is not freed
        if crew.blocked:
            crew.wake_blocked()
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
            lifecycle.leave_forked_child(error)
        del error
        if not ok:
            worker.failed += 1
        worker.current = fn = None  # type: ignore[assignment]
        worker.completed += 1  # before reading idle_waiters: wait_idle() relies on it
        if crew.idle_waiters:
            with crew.lock:
                crew.changed.notify_all()
        runner = None


def wake(crew: Crew, count: int, ref: object) -> None:
    """The runner was freed (a weakref callback): its workers run what is queued,
    then end."""
    crew.stop(count)
