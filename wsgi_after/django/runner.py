"""Where the Django middleware's chains run: chosen per chain from ``WSGI_AFTER``.

:class:`SettingsRunner` is the runner the middleware gives the core. For each
request that queued callbacks it looks at the settings as they are *now*, so
``override_settings(WSGI_AFTER={"INLINE": True})`` in a test takes effect at
once: an active :func:`~wsgi_after.django.capture_after_callbacks` takes the
chain; ``INLINE`` runs it in the thread that closes the response, and so does a
test's transaction (a ``TestCase``: see :func:`~wsgi_after.django.inline.in_test_transaction`);
with ``RUNNER = "tasks"`` a :class:`~wsgi_after.django.tasks.TasksRunner` hands it to
a ``django.tasks`` backend; otherwise the process's
:class:`~wsgi_after.ThreadRunner` for these options gets it.
"""

from __future__ import annotations

import dataclasses
import threading
import typing as t

from ..runner import InlineRunner, ThreadRunner
from .conf import Options, options
from .inline import in_test_transaction, run_inline
from .testing import active_capture

if t.TYPE_CHECKING:
    from .tasks.runner import TasksRunner

_lock = threading.Lock()
_thread_runners: dict[Options, ThreadRunner] = {}
_tasks_runners: dict[str, TasksRunner] = {}
Check = t.Callable[[t.Any, tuple[t.Any, ...], dict[str, t.Any]], None]


def get_runner() -> ThreadRunner | InlineRunner:
    """The runner the current ``WSGI_AFTER`` setting selects (for ``stats()``, ``wait_idle()``).

    One :class:`~wsgi_after.ThreadRunner` per process and set of options, built
    at first use (so after gunicorn's fork); an :class:`~wsgi_after.InlineRunner`
    when ``INLINE`` is True.
    """
    opts = options()
    if opts.inline:
        return InlineRunner()
    return thread_runner(opts)


def thread_runner(opts: Options) -> ThreadRunner:
    """The process's :class:`~wsgi_after.ThreadRunner` for ``opts``."""
    # Only the pool's own options: switching INLINE or RUNNER keeps one pool.
    key = dataclasses.replace(opts, inline=False, runner="threads", tasks_backend="", allow=())
    runner = _thread_runners.get(key)
    if runner is None:
        with _lock:
            runner = _thread_runners.get(key)
            if runner is None:
                runner = _thread_runners[key] = ThreadRunner(
                    max_workers=opts.max_workers,
                    max_pending=opts.max_pending,
                    on_full=opts.on_full,
                    drain_timeout=opts.drain_timeout,
                    name="wsgi-after-django",
                )
    return runner


def tasks_runner(opts: Options) -> TasksRunner:
    """The process's :class:`~wsgi_after.django.tasks.TasksRunner` for ``opts``."""
    from .tasks.runner import TasksRunner  # needs Django's task framework: only when chosen

    runner = _tasks_runners.get(opts.tasks_backend)
    if runner is None:
        with _lock:
            runner = _tasks_runners.setdefault(opts.tasks_backend, TasksRunner(opts.tasks_backend))
    return runner


class SettingsRunner:
    """Hands each chain to a capture, runs it inline, or queues it on its runner."""

    @property
    def check_callback(
        self,
    ) -> t.Callable[[t.Any, tuple[t.Any, ...], dict[str, t.Any]], None] | None:
        """With ``RUNNER = "tasks"``, the check :func:`wsgi_after.after` makes at once
        (module-level functions of ``ALLOW``, JSON arguments); else None."""
        opts = options()
        return tasks_runner(opts).check_callback if opts.runner == "tasks" else None

    def submit(self, task: t.Callable[[], object], /) -> None:
        """Run or queue ``task`` as the settings say now."""
        capture = active_capture()
        if capture is not None:
            capture.take(task)
        elif options().inline or in_test_transaction():
            run_inline(task)
        elif options().runner == "tasks":
            tasks_runner(options()).submit(task)
        else:
            thread_runner(options()).submit(task)

    def __repr__(self) -> str:
        return "<SettingsRunner WSGI_AFTER>"
