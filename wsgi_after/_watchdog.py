"""The slow-callback watchdog of a :class:`~wsgi_after.ThreadRunner` (``slow_callback``).

A thread of its own samples the pool's workers; the callbacks' hot path pays
nothing for it. Each callback seen running longer than ``slow_callback`` is
reported once, by the pool (:meth:`~wsgi_after.ThreadRunner.report_slow`: a
WARNING with the thread's stack, a ``"slow"`` event, ``stats().hung``)::

    runner = ThreadRunner(slow_callback=30.0)  # starts its watchdog with its first worker
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

from . import events, lifecycle
from .runner import describe_task, thread_stack

if t.TYPE_CHECKING:
    import weakref

    from ._pool import ThreadRunner
    from ._worker import Worker

logger = logging.getLogger("wsgi_after")


def start_watchdog(
    ref: weakref.ref[ThreadRunner], name: str, slow: float
) -> threading.Thread | None:
    """Start the watchdog thread of the runner ``ref``; None if no thread can be had."""
    watchdog = threading.Thread(
        target=watch,
        args=(ref, slow, lifecycle.generation),
        name=f"{name}-watchdog",
        daemon=True,
    )
    try:
        watchdog.start()
    except RuntimeError:
        return None  # no thread to be had: try again with the next worker
    return watchdog


def watch(ref: weakref.ref[ThreadRunner], slow: float, generation: int) -> None:
    """A runner's watchdog: reports each callback that runs longer than ``slow``.

    It samples the workers every ``slow / 4`` seconds (at most 1 s), so a report
    comes at most that much late; the callbacks' hot path pays nothing for it.
    """
    period = min(1.0, slow / 4)
    seen: dict[Worker, tuple[int, int, float, bool]] = {}  # task id, index, since, reported
    while lifecycle.generation == generation:
        time.sleep(period)
        runner = ref()
        workers = runner.workers() if runner is not None else None
        if runner is None or workers is None:
            return
        now = time.monotonic()
        task: object = None
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
                runner.report_slow(worker, task, now - entry[2])
        for worker in set(seen) - set(workers):
            del seen[worker]
        runner = task = None  # hold the runner only while sampling


def report_slow(runner: ThreadRunner, worker: Worker, task: object, running_for: float) -> None:
    """Log a callback seen running for ``running_for`` seconds on ``runner``'s
    ``worker`` at WARNING, with its thread's stack, and emit a ``"slow"`` event."""
    request, names = describe_task(task)
    name = names[0] if names else "?"
    logger.warning(
        "Callback '%s' queued by '%s' has been running for %.1f s on '%s'"
        " (slow_callback=%.1f s). Its thread's stack:\n%s",
        name,
        request,
        running_for,
        runner.name,
        runner.slow_callback,
        thread_stack(worker.ident),
    )
    if events.listeners:
        method, _, path = request.partition(" ")
        slow = events.CallbackEvent("slow", name, method, path, run_time=running_for, runner=runner)
        events.emit(slow)
