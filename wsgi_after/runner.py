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

import dataclasses
import logging
import math
import sys
import threading
import traceback
import typing as t

from . import events
from .callback_stats import CallbackStats, NameStats, Percentiles, for_runner
from .losslog import LossLog
from .naming import callback_name

logger = logging.getLogger("wsgi_after")

OnFull = t.Literal["block", "run", "drop"]
ON_FULL = ("block", "run", "drop")


def _quoted(name: str) -> str:
    return f"'{name}'"


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    """The options of a thread pool, their defaults and their checks, in one place.

    :class:`ThreadRunner`, :class:`~wsgi_after.AfterMiddleware`, the Flask
    extension's ``AFTER_*`` config and Django's ``WSGI_AFTER`` all take these.
    """

    #: Worker threads; None: ``min(32, cpu_count + 4)``, like
    #: :class:`~concurrent.futures.ThreadPoolExecutor`, for I/O-bound callbacks.
    max_workers: int | None = None
    #: Tasks that may wait in the queue: 1000 absorbs bursts of several seconds
    #: while keeping the backlog small enough to drain at shutdown.
    max_pending: int = 1000
    #: What ``submit()`` does when ``max_pending`` tasks wait.
    on_full: OnFull = "block"
    #: Seconds to drain at exit (``inf``: no limit): 25 s stays under gunicorn's
    #: default ``graceful_timeout`` of 30 s, after which workers are killed.
    drain_timeout: float = 25.0

    def problems(self, name: t.Callable[[str], str] = _quoted) -> list[str]:
        """What is wrong, one sentence per option naming the fix; ``name`` spells an
        option's name as its user wrote it (``WSGI_AFTER['MAX_PENDING']``)."""
        found = []
        workers, pending, drain = self.max_workers, self.max_pending, self.drain_timeout
        if workers is not None and (type(workers) is not int or workers < 1):
            found.append(
                f"{name('max_workers')} must be None or an int of at least 1, got {workers!r}."
            )
        if type(pending) is not int or pending < 1:
            found.append(f"{name('max_pending')} must be an int of at least 1, got {pending!r}.")
        if self.on_full not in ON_FULL:
            found.append(
                f"{name('on_full')} must be one of 'block', 'run' or 'drop', got {self.on_full!r}."
            )
        if type(drain) not in (int, float) or math.isnan(drain) or drain < 0:
            found.append(
                f"{name('drain_timeout')} must be a number of seconds of at least 0"
                f" (inf: no limit), got {drain!r}."
            )
        return found

    def check(self) -> None:
        """:raises ValueError: the first of :meth:`problems`."""
        found = self.problems()
        if found:
            raise ValueError(found[0])


#: The defaults every integration shows.
DEFAULT_POOL: PoolOptions = PoolOptions()


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
    (see ``lose()``).
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
    #: Threads waiting inside ``submit()`` for room in the full queue (``on_full="block"``).
    blocked: int = 0
    #: Threads waiting inside ``wait_idle()``.
    idle_waiters: int = 0


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


def lose(log: LossLog, kind: events.Kind, task: object, runner: object = None) -> None:
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


# The thread pool lives in its own module; it is part of this module's API.
from ._pool import ThreadRunner as ThreadRunner  # noqa: E402
