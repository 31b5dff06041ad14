"""The process's runners: one registry, one fork rule, one shutdown deadline.

Every runner that owns threads or a queue registers here (weakly), so that the
process can treat them as one:

* **exit**: when the interpreter exits, :func:`shutdown` drains every runner
  against *one* deadline, however many runners there are (a Flask app's runner
  and a Celery publisher, several apps...): all are told to stop first, then
  all are joined until the deadline;
* **exit of the server's threads**: before Python joins non-daemon threads
  (gunicorn's gthread workers, a ``ThreadPoolExecutor``), which happens before
  ``atexit`` handlers run, every runner is told the interpreter is exiting, so a
  request thread blocked in ``close()`` (``on_full="block"``) is released
  rather than hanging the exit;
* **fork**: in a child, every runner forgets its parent's threads, queue and
  locks (:func:`after_fork_in_child`), and starts its own threads when first
  used. Servers that do not run Python's fork hooks (uWSGI without
  ``--lazy-apps``) call it from their own post-fork hook;
* **requests still open at exit**: a server that stops waiting for its request
  threads (waitress waits 5 s) exits with some requests still in the view; once
  the runners drained, the reports of :func:`report_at_exit` name their callbacks.

Server hooks (gunicorn's ``worker_exit``, uWSGI's ``atexit``, mod_wsgi's
shutdown event) call :func:`shutdown` with the time the server allows; uWSGI's
and mod_wsgi's are installed by :func:`install_server_hooks`, from the first
middleware or runner (never by ``import wsgi_after``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import sys
import threading
import time
import typing as t
import weakref


class Drainable(t.Protocol):
    """What the registry needs of a runner."""

    #: Seconds this runner may drain for at exit (at most; the deadline is shared).
    drain_timeout: float

    def start(self) -> None:
        """Start its threads now, if it has any."""

    def begin_shutdown(self) -> None:
        """Stop taking tasks and wake its workers; never blocks."""

    def finish_shutdown(self, deadline: float | None) -> bool:
        """Wait until ``deadline`` (``time.monotonic()``; None: no limit) for the work
        taken, then log by name what was not run. True if everything ran."""

    def exiting(self) -> None:
        """The interpreter is exiting: release threads blocked on this runner."""

    def reset_after_fork(self) -> None:
        """Forget the parent's threads, queue and locks (in a child after ``fork()``)."""


_registry: weakref.WeakSet[Drainable] = weakref.WeakSet()

#: Bumped in every child after ``fork()``: code running on a thread compares it
#: with the value it started with to notice that it now runs in a forked child.
generation = 0


def register(runner: Drainable) -> None:
    """Add ``runner`` to the process's registry (held weakly); the first one also
    installs the server's hooks (:func:`install_server_hooks`)."""
    install_server_hooks()
    _registry.add(runner)


_server_hooks = False


def install_server_hooks() -> None:
    """Install, once, the hooks of the server this process runs under.

    The one place they are installed from: called by every
    :class:`~wsgi_after.AfterMiddleware` and every runner registered here, so
    that nothing is needed of uWSGI or mod_wsgi users, while ``import
    wsgi_after`` changes nothing in the server. Under uWSGI (the ``uwsgi``
    module exists): its fork, exit and threads hooks (:mod:`wsgi_after.uwsgi`);
    under mod_wsgi: a drain at its shutdown event (:mod:`wsgi_after.mod_wsgi`).
    """
    global _server_hooks
    if _server_hooks:
        return
    _server_hooks = True
    if "uwsgi" in sys.modules:
        from . import uwsgi

        uwsgi.install()
    if "mod_wsgi" in sys.modules:
        from . import mod_wsgi

        mod_wsgi.install()


def unregister(runner: Drainable) -> None:
    """Take ``runner`` out of the registry (a runner owned by another one, which
    drains it itself)."""
    _registry.discard(runner)


def runners() -> list[Drainable]:
    """The registered runners that are still alive."""
    return list(_registry)


def start() -> None:
    """Start every registered runner's threads now (from a post-fork hook)."""
    for runner in runners():
        runner.start()


def check_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    """``timeout`` as seconds, None (or ``inf``) meaning no limit.

    :raises ValueError: if it is NaN or negative.
    :raises TypeError: if it is not a number.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"'{name}' must be a number of seconds or None, got {timeout!r}.")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(
            f"'{name}' must be a number of seconds of at least 0 (inf: no limit), got {timeout!r}."
        )
    return None if math.isinf(timeout) else float(timeout)


def deadline_after(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` deadline ``timeout`` seconds from now (None: none)."""
    return None if timeout is None else time.monotonic() + timeout


def shutdown(timeout: float | None = None) -> bool:
    """Drain every registered runner against one deadline (:func:`drain`).

    Called at interpreter exit with no ``timeout``; server hooks pass what the
    server allows. Public as :func:`wsgi_after.shutdown_runners`.

    :param timeout: seconds for the whole process; None: each runner's own
        ``drain_timeout``. ``inf`` waits without limit.
    :returns: True if every runner ran everything it had.
    :raises ValueError: if ``timeout`` is NaN or negative.
    """
    return drain(runners(), timeout)


def drain(found: t.Iterable[object], timeout: float | None = None) -> bool:
    """Stop ``found`` runners against one deadline: all stop taking work first, then
    each is waited for until the earlier of the shared deadline and its own
    ``drain_timeout``; what could not run is logged by name. A runner without
    ``begin_shutdown``/``finish_shutdown`` is asked to ``shutdown(seconds_left)``.

    :param timeout: seconds for them all; None: each runner's own ``drain_timeout``.
    :returns: True if every runner ran everything it had.
    """
    limit = check_timeout(timeout)
    stopping = list(dict.fromkeys(found))  # a runner listed twice stops once
    started = time.monotonic()
    for runner in stopping:
        begin = getattr(runner, "begin_shutdown", None)
        if begin is not None:
            begin()
    ok = True
    for runner in stopping:
        own = getattr(runner, "drain_timeout", None)
        if own is None and timeout is None:
            own = 0.0  # no drain_timeout of its own (an executor), and none given
        own = check_timeout(own, "drain_timeout")
        ends = [started + x for x in (own, limit) if x is not None]
        if timeout is not None and limit is None:  # inf given: no limit at all
            ends = []
        deadline = min(ends) if ends else None
        finish = getattr(runner, "finish_shutdown", None)
        if finish is not None:
            ok = finish(deadline) and ok
        else:
            left = math.inf if deadline is None else max(0.0, deadline - time.monotonic())
            ok = runner.shutdown(left) and ok  # type: ignore[attr-defined]
    return ok


def after_fork_in_child() -> None:
    """Reset every runner in a child process (the parent's threads do not exist here,
    and its locks may be held by them)."""
    global _registry, generation
    generation += 1
    found = list(_registry)  # WeakSet iteration takes no lock of another thread's
    _registry = weakref.WeakSet(found)
    for runner in found:
        runner.reset_after_fork()


def leave_forked_child(error: BaseException | None) -> t.NoReturn:
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


_exit_reports: list[t.Callable[[], None]] = []


def report_at_exit(report: t.Callable[[], None]) -> None:
    """Call ``report`` at interpreter exit, once the runners drained (so that what it
    finds then, such as requests still open, is really lost)."""
    _exit_reports.append(report)


def _report_at_exit() -> None:
    for report in _exit_reports:
        try:
            report()
        except Exception:
            logging.getLogger("wsgi_after").exception("A report at exit raised.")


def _interpreter_exiting() -> None:
    for runner in runners():
        runner.exiting()


def keep_exit_hook_first() -> None:
    """Make ours the first of the hooks Python runs before it joins threads.

    They run last registered first, and ``concurrent.futures`` registers one (that
    joins its executors' threads) when it is first imported: imported after
    ``wsgi_after``, it joined a request thread blocked on a full queue before ours
    could release it, and the process never exited. Called as a runner starts a
    thread and as a submitter starts to wait; cheap when ours is last already.
    """
    hooks = getattr(threading, "_threading_atexits", None)
    if _register_atexit is None or hooks is None or (hooks and hooks[-1] is _interpreter_exiting):
        return
    with contextlib.suppress(RuntimeError):  # exiting already: too late to reorder
        _register_atexit(_interpreter_exiting)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=after_fork_in_child)
atexit.register(_report_at_exit)  # before shutdown: atexit runs it after (last in, first out)
atexit.register(shutdown)
# Runs before Python joins non-daemon threads (and so before atexit handlers):
# the only moment to release a request thread blocked on a full queue.
_register_atexit: t.Callable[[t.Callable[[], None]], None] | None = getattr(
    threading, "_register_atexit", None
)
if _register_atexit is not None:
    _register_atexit(_interpreter_exiting)
