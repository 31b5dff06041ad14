"""Optional gunicorn hooks. Everything works without them; they tighten some edges.

At the end of ``gunicorn.conf.py``, after any hooks of your own::

    from wsgi_after.gunicorn import install

    install(globals())  # adds post_fork, worker_exit and child_exit, composed with yours

or call them from your own hooks (``wsgi_after.gunicorn.post_fork(server, worker)``).

* :func:`post_fork` starts the runners' threads in each new worker, so the
  first requests' callbacks do not wait for thread start-up (without it,
  threads start as tasks need them; a runner used in the master under
  ``--preload`` works in workers either way).
* :func:`worker_exit` drains every runner against one deadline while gunicorn
  is still waiting for the worker, bounded by ``graceful_timeout`` less a
  margin, so the master never SIGKILLs a worker in the middle of a callback;
  without it, the runners drain at interpreter exit for at most their
  ``drain_timeout`` (25 s by default, under gunicorn's 30 s ``graceful_timeout``).
* :func:`child_exit` (with :mod:`wsgi_after.prometheus` in prometheus_client's
  multiprocess mode) forgets a dead worker's queue-depth gauge.
"""

from __future__ import annotations

import os
import typing as t

from . import lifecycle

#: Seconds left to gunicorn after the drain, out of ``graceful_timeout``.
MARGIN = 2.0

Hook = t.Callable[[t.Any, t.Any], object]


def post_fork(server: t.Any, worker: t.Any) -> None:
    """gunicorn ``post_fork`` hook: start every runner's worker threads now."""
    lifecycle.start()


def worker_exit(server: t.Any, worker: t.Any) -> None:
    """gunicorn ``worker_exit`` hook: drain every runner before the worker exits,
    all against one deadline (each runner also within its own ``drain_timeout``)."""
    graceful = float(getattr(server.cfg, "graceful_timeout", 30))
    lifecycle.shutdown(max(0.0, graceful - MARGIN))


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
