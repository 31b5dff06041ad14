"""Optional gunicorn hooks. Everything works without them; they tighten some edges.

At the end of ``gunicorn.conf.py``, after any hooks of your own::

    from wsgi_after.gunicorn import install

    install(globals())  # adds post_fork, worker_exit and child_exit, composed with yours

or call them from your own hooks (``wsgi_after.gunicorn.post_fork(server, worker)``).

* :func:`post_fork` starts the runners' threads in each new worker, so the
  first requests' callbacks do not wait for thread start-up (without it,
  threads start as tasks need them; a runner used in the master under
  ``--preload`` works in workers either way), and notes when the worker is
  told to stop (its SIGTERM, SIGQUIT or SIGINT).
* :func:`worker_exit` drains every runner against one deadline while gunicorn
  is still waiting for the worker: ``graceful_timeout`` from that stop signal
  (when the master started counting), less a margin, however much of it the
  worker spent finishing its requests. What cannot run by then is logged by
  name before the master's SIGKILL, never cut off without a word; without the
  hooks, the runners drain at interpreter exit for at most their
  ``drain_timeout`` (25 s by default, under gunicorn's 30 s ``graceful_timeout``).
* :func:`child_exit` (with :mod:`wsgi_after.prometheus` in prometheus_client's
  multiprocess mode) forgets a dead worker's queue-depth gauge.
"""

from __future__ import annotations

import math
import os
import time
import typing as t

from . import lifecycle

#: Seconds left to gunicorn after the drain, out of ``graceful_timeout``.
MARGIN = 2.0
#: Seconds gunicorn's master (23+) leaves its workers after a SIGQUIT or SIGINT that
#: comes during a graceful stop ("Quick shutdown requested").
QUICK_SHUTDOWN = 2.0

Hook = t.Callable[[t.Any, t.Any], object]
Handler = t.Callable[[int, t.Any], object]

#: When the master SIGKILLs this worker (``time.monotonic()``): ``graceful_timeout``
#: after its first stop signal; None until one came (set in the worker only).
_kill_at: float | None = None


def post_fork(server: t.Any, worker: t.Any) -> None:
    """gunicorn ``post_fork`` hook: start every runner's worker threads now, and
    note when the worker is told to stop (see :func:`worker_exit`)."""
    lifecycle.start()
    _note_stop_signals(graceful_timeout(server), worker)


def worker_exit(server: t.Any, worker: t.Any) -> None:
    """gunicorn ``worker_exit`` hook: drain every runner before the worker exits,
    all against one deadline (each runner also within its own ``drain_timeout``).

    The deadline is the master's, less :data:`MARGIN`: ``graceful_timeout`` from the
    stop signal :func:`post_fork` saw, not from now, since the worker may have spent
    most of it finishing its requests. What cannot run by then is logged by name
    (``was not run`` / ``were still running``) before the master's SIGKILL. Without
    :func:`post_fork`, or when the worker stops by itself (``max_requests``), the
    deadline is ``graceful_timeout`` from now.
    """
    now = time.monotonic()
    kill_at = _kill_at if _kill_at is not None else now + graceful_timeout(server)
    lifecycle.shutdown(max(0.0, kill_at - MARGIN - now))


def graceful_timeout(server: t.Any) -> float:
    """The master's ``graceful_timeout`` in seconds (gunicorn's default: 30)."""
    value = float(getattr(server.cfg, "graceful_timeout", 30))
    return value if value >= 0 and not math.isnan(value) else 30.0


def _note_stop_signals(graceful: float, worker: t.Any) -> None:
    """Wrap the worker's stop-signal handlers, before gunicorn installs them
    (``init_signals`` reads ``worker.handle_exit`` and ``worker.handle_quit`` after
    ``post_fork``), so the first stop signal sets :data:`_kill_at`.

    SIGTERM (``handle_exit``) and a first SIGQUIT or SIGINT (``handle_quit``) are
    the master's ``stop()``: ``graceful_timeout`` from now. A SIGQUIT or SIGINT
    after an earlier stop signal is a quick shutdown: :data:`QUICK_SHUTDOWN`. The
    handlers run when the worker's main thread next runs Python code, as gunicorn's
    own do: at once but for a request blocked in a system call.
    """

    def noting(handler: Handler, quick: float) -> Handler:
        def handle(sig: int, frame: t.Any) -> object:
            global _kill_at
            now = time.monotonic()
            _kill_at = now + graceful if _kill_at is None else min(_kill_at, now + quick)
            return handler(sig, frame)

        return handle

    for name, quick in (("handle_exit", graceful), ("handle_quit", QUICK_SHUTDOWN)):
        handler = getattr(worker, name, None)
        if callable(handler):
            setattr(worker, name, noting(handler, quick))


def child_exit(server: t.Any, worker: t.Any) -> None:
    """gunicorn ``child_exit`` hook (in the master): in prometheus_client's
    multiprocess mode, mark the dead worker so its live gauges (the queue depth)
    stop counting; its counters and histograms stay in the sums. Does nothing
    without ``PROMETHEUS_MULTIPROC_DIR`` or prometheus_client."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def install(namespace: dict[str, t.Any]) -> None:
    """Add the hooks to a gunicorn config module's namespace, composed with the user's own.

    Call it as ``install(globals())`` at the end of ``gunicorn.conf.py``: a hook the
    file already defines is kept and called too. The user's ``post_fork`` runs
    first (then the runners' threads start); in ``worker_exit`` the runners drain
    first, so the user's clean-up (closing pools the callbacks use) comes after;
    in ``child_exit`` the user's runs first.

    :param namespace: the config module's ``globals()``.
    :raises TypeError: if a hook already there is not callable.
    """
    for name, ours, first in (
        ("post_fork", post_fork, False),
        ("worker_exit", worker_exit, True),
        ("child_exit", child_exit, False),
    ):
        theirs = namespace.get(name)
        if theirs is None or theirs is ours:
            namespace[name] = ours
        elif not callable(theirs):
            raise TypeError(
                f"gunicorn hook {name!r} is {type(theirs).__name__!r}, not a function. Define"
                f" 'def {name}(server, worker): ...' before calling 'install(globals())'."
            )
        else:
            namespace[name] = _compose(ours, theirs) if first else _compose(theirs, ours)


def _compose(first: Hook, then: Hook) -> Hook:
    """A hook that calls ``first``, then ``then`` even if ``first`` raised."""

    def hook(server: t.Any, worker: t.Any) -> None:
        try:
            first(server, worker)
        finally:
            then(server, worker)

    hook.__name__ = getattr(then, "__name__", "hook")
    return hook
