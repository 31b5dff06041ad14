"""uWSGI hooks: fork, exit and threads, installed when the app runs under uWSGI.

``wsgi_after`` calls :func:`install` (from the first middleware or runner,
:func:`wsgi_after.lifecycle.install_server_hooks`) when the ``uwsgi`` module exists,
which is only inside a uWSGI process; nothing is needed in the app or the ini file.

* **Fork**: uWSGI forks its workers from the master without running Python's
  at-fork hooks (unless ``--lazy-apps`` or ``--py-call-osafterfork``), so a runner
  used in the master (a warm-up request, threads started at import) would be dead in
  the workers. uWSGI's post-fork hook (``uwsgidecorators.postfork`` when available,
  else ``uwsgi.post_fork_hook``, chained to any hook already set) calls
  :func:`wsgi_after.lifecycle.after_fork_in_child` in every worker. CPython's own state
  (its GIL) is reset only by ``--py-call-uwsgi-fork-hooks``: without it, a worker forked
  while a runner's thread in the master takes or drops the GIL can hang (the README).
* **Exit**: uWSGI calls ``uwsgi.atexit`` (chained to any hook already set) as a
  worker leaves; it drains every runner with :func:`wsgi_after.shutdown_runners`,
  bounded by ``--worker-reload-mercy`` (60 s by default, after which the master
  SIGKILLs the worker) less :data:`MARGIN`; what cannot run is logged by name.
  uWSGI skips both ``uwsgi.atexit`` and Python's ``atexit`` for a worker that is
  still *in a request* when it is told to die at once (SIGINT, SIGTERM with
  ``--die-on-term``, a brutal reload), and a worker has no SIGQUIT handler at all:
  then its queued callbacks are lost and nothing can log it. On uWSGI 2.0 a plain
  SIGTERM is such a brutal reload (the master stays up). :func:`install` says so
  once at start-up unless SIGTERM is graceful
  (``hook-master-start = unix_signal:15 gracefully_kill_them_all``).
* **Threads**: without Python threads (uWSGI before 2.0.27 without
  ``--enable-threads``) the runner's threads only move while a request runs, so
  callbacks stall; :func:`install` logs one ERROR naming the fix.
"""

from __future__ import annotations

import importlib
import logging
import typing as t

from . import lifecycle

logger = logging.getLogger("wsgi_after")

#: Seconds left to uWSGI after the drain, out of ``--worker-reload-mercy``.
MARGIN = 1.0
#: uWSGI's own default for ``--worker-reload-mercy``.
DEFAULT_MERCY = 60.0
#: The master hook that makes SIGTERM a graceful shutdown (uWSGI's documented recipe).
GRACEFUL_SIGTERM = "unix_signal:15 gracefully_kill_them_all"

_installed = False


def _server() -> t.Any:
    """uWSGI's ``uwsgi`` module: it exists only inside a uWSGI process, so this module
    imports anywhere (for documentation, type checking) and looks it up when used."""
    return importlib.import_module("uwsgi")


def _option(name: str) -> list[str]:
    """Every value uWSGI was given for ``--name`` (``uwsgi.opt`` holds bytes, or a list)."""
    value = _server().opt.get(name)
    values = value if isinstance(value, list) else [] if value is None else [value]
    return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values]


def drain_budget() -> float:
    """Seconds the exit hook may drain: ``--worker-reload-mercy`` less :data:`MARGIN`."""
    mercy = _option("worker-reload-mercy")
    try:
        seconds = float(mercy[-1]) if mercy else DEFAULT_MERCY
    except ValueError:
        seconds = DEFAULT_MERCY
    return max(0.0, seconds - MARGIN)


def after_fork() -> None:
    """uWSGI post-fork hook: make the runners usable in this new worker."""
    lifecycle.after_fork_in_child()


def at_exit() -> None:
    """uWSGI exit hook: drain every runner within what uWSGI allows this worker."""
    lifecycle.shutdown(drain_budget())


def _chain(
    first: t.Callable[[], object] | None, then: t.Callable[[], None]
) -> t.Callable[[], None]:
    def hook() -> None:
        try:
            if first is not None:
                first()
        finally:
            then()

    return hook


def _register_post_fork() -> None:
    try:
        import uwsgidecorators
    except Exception:  # missing, or "you have to enable the uWSGI master process"
        uwsgi = _server()
        uwsgi.post_fork_hook = _chain(getattr(uwsgi, "post_fork_hook", None), after_fork)
    else:  # shares uWSGI's one hook with the app's own @postfork functions
        uwsgidecorators.postfork(after_fork)


def _check_threads() -> None:
    if not getattr(_server(), "has_threads", True):
        logger.error(
            "uWSGI runs without Python threads, so after() callbacks stall until the next"
            " request. Start uWSGI with '--enable-threads' (or '--threads N'),"
            " or upgrade to uWSGI 2.0.27 or later."
        )


def _check_stop_signals() -> None:
    if not any(GRACEFUL_SIGTERM in hook for hook in _option("hook-master-start")):
        logger.warning(
            "SIGTERM on uWSGI 2.0 is a brutal reload, not a stop: the master stays up and"
            " kills its workers at once, and after() callbacks queued just before it are lost"
            " without a log line (so are those of a worker in a request on SIGINT, and on"
            " SIGTERM with '--die-on-term'). Add 'hook-master-start = %s' to the uWSGI config"
            " and stop uWSGI with SIGTERM.",
            GRACEFUL_SIGTERM,
        )


def install() -> bool:
    """Install the hooks once per process; False if they were already installed."""
    global _installed
    if _installed:
        return False
    _installed = True
    _register_post_fork()
    uwsgi = _server()
    uwsgi.atexit = _chain(getattr(uwsgi, "atexit", None), at_exit)
    _check_threads()
    _check_stop_signals()
    return True
