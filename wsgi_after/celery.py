"""Run the same ``after()`` callbacks on a Celery cluster: :class:`CeleryRunner`.

::

    from celery import Celery
    from wsgi_after import AfterMiddleware
    from wsgi_after.celery import CeleryRunner

    celery_app = Celery("myapp", broker="redis://127.0.0.1:6379/0")
    app = AfterMiddleware(app, runner=CeleryRunner(celery_app))

Each request's chain is published as one message to the task
``wsgi_after.run_chain``; a Celery worker runs the callbacks in order, logging
each failure by name, with :func:`wsgi_after.outcome` working. Callbacks must be
importable by module and qualified name (module-level functions or Celery
tasks) and their arguments must serialize with the Celery app's serializer:
:func:`wsgi_after.after` checks both at once, in the request, and raises
:class:`TypeError` naming the fix. The :mod:`contextvars` of the request do not
travel to the worker.

Publishing happens on a background thread, never in the request: while the
broker is down, each message is retried with backoff until ``retry_window``
seconds after it was queued; what still cannot be published is logged at ERROR
with its whole payload (JSON, replayable). The worker must import a module that
builds the :class:`CeleryRunner` (or calls :func:`register`) on its Celery app,
so that the task is registered there.
"""

from __future__ import annotations

import atexit
import contextvars
import importlib
import json
import logging
import threading
import time
import typing as t
import weakref
from types import CoroutineType

import celery
import kombu.exceptions
import kombu.serialization

from ._chain import CURRENT, Chain
from .naming import callback_name
from .runner import ThreadRunner

logger = logging.getLogger("wsgi_after")

TASK_NAME = "wsgi_after.run_chain"

# What a dead or unreachable broker raises when publishing.
_BROKER_ERRORS = (kombu.exceptions.OperationalError, ConnectionError, OSError)


class RemoteError(Exception):
    """The error of the request, as :func:`wsgi_after.outcome` reports it on a worker.

    Only the exception's type name and message travel to the worker.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


def register(celery_app: celery.Celery) -> t.Any:
    """Register the ``wsgi_after.run_chain`` task on ``celery_app`` and return it."""
    return celery_app.task(name=TASK_NAME, bind=True, ignore_result=True)(run_chain)


class CeleryRunner:
    """A runner that publishes each request's chain to Celery instead of running it.

    :param celery_app: the Celery app whose broker and serializer to use.
    :param queue: the Celery queue to publish to (the app's default when None).
    :param retry_window: seconds after queueing during which a message is retried
        while the broker cannot be reached; then it is logged with its payload.
    :param max_pending: messages that may wait for the publisher; past that,
        further ones are dropped and logged with their payload rather than
        delaying responses.
    :param drain_timeout: seconds to keep publishing at interpreter exit.
    """

    def __init__(
        self,
        celery_app: celery.Celery,
        queue: str | None = None,
        *,
        retry_window: float = 30.0,
        max_pending: int = 10_000,
        drain_timeout: float = 25.0,
    ) -> None:
        if not isinstance(celery_app, celery.Celery):
            raise TypeError(
                f"'CeleryRunner' needs a 'celery.Celery' app, got {type(celery_app).__name__!r}."
            )
        if retry_window < 0:
            raise ValueError(f"'retry_window' must be at least 0, got {retry_window!r}.")
        self.celery_app = celery_app
        self.queue = queue
        self.retry_window = float(retry_window)
        self.task = register(celery_app)
        self.serializer: str = celery_app.conf.task_serializer
        self._closing = threading.Event()
        # One publishing thread keeps messages in order; it is a ThreadRunner, so the
        # bound, the drop logging, fork safety and the drain at exit come with it.
        self._publisher = ThreadRunner(
            max_workers=1,
            max_pending=max_pending,
            on_full="drop",
            drain_timeout=drain_timeout,
            name="wsgi-after-celery",
        )
        _celery_runners.add(self)

    def __repr__(self) -> str:
        return f"<CeleryRunner {self.celery_app.main!r} queue={self.queue!r}>"

    def check_callback(
        self, func: t.Any, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
    ) -> None:
        """Called by :func:`wsgi_after.after`: refuse what a worker could not run.

        :raises TypeError: if ``func`` is not importable by module and qualified
            name (nor a Celery task), or its arguments do not serialize.
        """
        name = callback_name(func)
        _reference(func, name)
        try:
            kombu.serialization.dumps(  # type: ignore[no-untyped-call]
                [list(args), kwargs], serializer=self.serializer
            )
        except Exception as e:
            raise TypeError(
                f"'after()' cannot send the arguments of '{name}' to Celery: {e}."
                f" Pass values the {self.serializer!r} serializer can encode, such as ids"
                " rather than objects."
            ) from None

    def submit(self, fn: t.Callable[[], object], /) -> None:
        """Queue the chain's message for the publisher thread; never blocks."""
        if not isinstance(fn, Chain):
            raise TypeError(
                f"'CeleryRunner' publishes request chains only, got {type(fn).__name__!r}."
            )
        payload = _payload(fn)
        fn.discard()  # its callbacks now live in the payload
        self._publisher.submit(_Publish(self, payload, time.monotonic()))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued message was published (or logged as lost)."""
        return self._publisher.wait_idle(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Publish what is queued, trying each message once more; log the rest."""
        self._closing.set()
        return self._publisher.shutdown(timeout)

    def _publish(self, payload: dict[str, t.Any], queued_at: float) -> bool:
        deadline = queued_at + self.retry_window
        delay = 0.1
        while True:
            try:
                self.task.apply_async(args=[payload], queue=self.queue, retry=False)
                return True
            except _BROKER_ERRORS as e:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing.is_set():
                    _log_lost(payload, f"the broker could not be reached ({e})")
                    return False
                self._closing.wait(min(delay, remaining))
                delay = min(delay * 2, 5.0)


class _Publish:
    """One message for the publisher thread; describes itself for the logs."""

    __slots__ = ("payload", "queued_at", "runner")

    def __init__(self, runner: CeleryRunner, payload: dict[str, t.Any], queued_at: float):
        self.runner = runner
        self.payload = payload
        self.queued_at = queued_at

    def __call__(self) -> bool:
        return self.runner._publish(self.payload, self.queued_at)

    def describe(self) -> str:
        return f"{self.payload['method']} {self.payload['path']}"

    def callback_names(self) -> list[str]:
        return [callback["name"] for callback in self.payload["callbacks"]]

    def discard(self) -> None:
        _log_lost(self.payload, "it was dropped before publishing")


def _log_lost(payload: dict[str, t.Any], reason: str) -> None:
    logger.error(
        "Could not publish the callbacks of '%s %s' to Celery: %s. Payload: %s",
        payload["method"],
        payload["path"],
        reason,
        json.dumps(payload, default=repr),
    )


def _reference(func: t.Any, name: str) -> str:
    """``task:NAME`` or ``module:qualname`` for ``func``, or TypeError naming the fix."""
    if isinstance(func, celery.Task):
        return f"task:{func.name}"
    fix = (
        f"'after()' cannot send '{name}' to Celery: a worker imports callbacks by module"
        " and qualified name. Define it at module level, or make it a Celery task."
    )
    if type(func) is CoroutineType:
        raise TypeError(fix.replace("Define it", "Pass the coroutine function, defined"))
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or module == "__main__" or not qualname or "<" in qualname:
        raise TypeError(fix)  # a worker's __main__ is Celery's, not this script
    try:
        found = _resolve(f"{module}:{qualname}")
    except (ImportError, AttributeError):
        raise TypeError(fix) from None
    if found is not func:
        raise TypeError(fix)
    return f"{module}:{qualname}"


def _resolve(reference: str) -> t.Any:
    module, _, qualname = reference.partition(":")
    found: t.Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _payload(chain: Chain) -> dict[str, t.Any]:
    method, path = chain.method_and_path()
    error = chain.error
    return {
        "method": method,
        "path": path,
        "status": chain.status,
        "completed": chain.completed,
        "error": None if error is None else [type(error).__name__, str(error)],
        "callbacks": [
            {
                "func": _reference(func, callback_name(func)),
                "name": callback_name(func),
                "args": list(args),
                "kwargs": kwargs,
            }
            for func, args, kwargs, _ in filter(None, chain.callbacks)
        ],
    }


def run_chain(task: celery.Task, payload: dict[str, t.Any]) -> None:
    """The worker side: run a request's callbacks in order, as the thread runner would."""
    environ = {"REQUEST_METHOD": payload["method"], "PATH_INFO": payload["path"]}
    chain = Chain(environ, runner=None, start_response=None)  # type: ignore[arg-type]
    chain.status = payload["status"]
    chain.completed = payload["completed"]
    if payload["error"] is not None:
        chain.error = RemoteError(*payload["error"])
    token = CURRENT.set(chain)  # so outcome() and nested after() find this chain
    try:
        for callback in payload["callbacks"]:
            reference = callback["func"]
            try:
                if reference.startswith("task:"):
                    func = task.app.tasks[reference[len("task:") :]]
                else:
                    func = _resolve(reference)
            except (ImportError, AttributeError, KeyError):
                logger.error(
                    "Callback '%s' queued by '%s' cannot be imported on this worker.",
                    callback["name"],
                    chain.describe(),
                    exc_info=True,
                )
                continue
            context = contextvars.copy_context()
            chain.callbacks.append((func, tuple(callback["args"]), callback["kwargs"], context))
    finally:
        CURRENT.reset(token)
    chain()


_celery_runners: weakref.WeakSet[CeleryRunner] = weakref.WeakSet()


def _close_at_exit() -> None:
    # Registered after wsgi_after.runner's handler, so it runs first (atexit is LIFO):
    # publishers stop backing off before their ThreadRunner drains.
    for runner in list(_celery_runners):
        runner._closing.set()


atexit.register(_close_at_exit)
