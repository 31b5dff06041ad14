"""The worker side: the ``wsgi_after.run_chain`` task runs a message's callbacks.

The message is parsed (:func:`~wsgi_after.celery.message.parse`), each callback
is resolved under the worker's own allow list
(:func:`~wsgi_after.celery.policy.resolve`), and the callbacks run in order
through :func:`~wsgi_after._execute.run_callbacks`, as the thread runner would
run them, with :func:`wsgi_after.outcome` telling how the response ended.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import typing as t

import celery

from .._context import CURRENT
from .._execute import Received
from .._request import Callback
from .message import TASK_NAME, RemoteError, parse, safe_text
from .policy import ALLOW_KEY, allowed_modules, resolve

_OTEL_KEYS: tuple[str, ...]
_otel_trace: t.Callable[[t.Mapping[str, object]], t.ContextManager[None]] | None
try:  # optional: the trace context travels only when OpenTelemetry is installed
    from ..otel import TRACE_HEADERS as _OTEL_KEYS
    from ..otel import remote_trace as _otel_trace
except ImportError:  # pragma: no cover - depends on the environment
    _OTEL_KEYS = ()
    _otel_trace = None

logger = logging.getLogger("wsgi_after")


def _run_chain(task: celery.Task, payload: object) -> None:
    """Run a request's callbacks in order, as the thread runner would.

    Only what the worker's own configuration allows runs: Celery tasks registered
    here, and plain functions defined at module level in a module of
    ``wsgi_after_allow``. Anything else is refused before it is imported.
    """
    try:
        method, path, status, completed, error, callbacks, _ = parse(payload)
    except ValueError as e:
        logger.error("Refused a %r message: %s.", TASK_NAME, e)
        return
    request = f"{safe_text(method)} {safe_text(path)}"
    try:
        allow = allowed_modules(task.app.conf.get(ALLOW_KEY) or ())
    except ValueError as e:
        logger.error("The Celery config %r is invalid (%s): only tasks run.", ALLOW_KEY, e)
        allow = ()
    environ = {"REQUEST_METHOD": safe_text(method), "PATH_INFO": safe_text(path, 2000)}
    chain = Received(
        environ,
        status,
        completed=completed,
        error=None if error is None else RemoteError(*error),
    )
    trace: t.ContextManager[None] = contextlib.nullcontext()
    if _otel_trace is not None:
        trace = _otel_trace({key: getattr(task.request, key, None) for key in _OTEL_KEYS})
    with trace:
        token = CURRENT.set(chain)  # so outcome() and nested after() find this chain
        try:
            for reference, args, kwargs in callbacks:
                func = resolve(task.app, reference, allow, request)
                if func is not None:
                    context = contextvars.copy_context()
                    chain.callbacks.append(Callback(func, tuple(args), kwargs, context))
        finally:
            CURRENT.reset(token)
        chain()


run_chain = celery.shared_task(name=TASK_NAME, bind=True, ignore_result=True)(_run_chain)
