"""``AfterResponseBackend``: ``task.enqueue()`` in a view runs after the response.

::

    TASKS = {"default": {"BACKEND": "wsgi_after.django.tasks.AfterResponseBackend"}}

    @task
    def send_welcome(user_id: int) -> None: ...

    def signup(request):
        user = User.objects.create(...)
        send_welcome.enqueue(user.pk)  # runs once the response is sent
        return HttpResponse("ok")

In a request, ``enqueue()`` queues the task with :func:`wsgi_after.after`: it runs
on the same runner as the request's other callbacks (``WSGI_AFTER``), in order
with them, with the database hygiene of :mod:`wsgi_after.django.database`.
Outside a request (a management command, a shell, a thread, a Celery task) it is
queued on the thread pool of ``WSGI_AFTER`` at once. The returned ``TaskResult``
follows the task in this process; the signals are sent as Django's
``ImmediateBackend`` sends them.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import traceback
import typing as t
import weakref

from django.utils import timezone
from django.utils.crypto import get_random_string

from ... import after, current_chain
from ..._execute import Received
from ..._request import Callback
from ..conf import options
from ..database import callback_scope
from ..inline import run_inline, take_errors
from ..runner import thread_runner
from ..testing import active_capture
from .compat import (
    DEFAULT_TASK_PRIORITY,
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
    normalize_json,
    task_enqueued,
    task_finished,
    task_started,
)

logger = logging.getLogger("wsgi_after")

P = t.ParamSpec("P")
R = t.TypeVar("R")


class AfterResponseBackend(BaseTaskBackend):
    """Runs each task after the response of the request that enqueued it.

    - In a request (or in one of its callbacks): queued with ``after()``, so it
      runs where and when the request's callbacks run: on ``WSGI_AFTER``'s thread
      pool after the response was sent, inline with ``INLINE`` (tests), captured by
      :func:`~wsgi_after.django.capture_after_callbacks`. A request whose runner
      sends callbacks to another process (a ``CeleryRunner`` in ``wsgi.py``, or
      ``WSGI_AFTER["RUNNER"] = "tasks"``) refuses it with ``InvalidTask``: that
      process could not update the result; enqueue it on a backend there.
    - Outside a request: queued on ``WSGI_AFTER``'s thread pool at once (inline
      with ``INLINE``, captured by a capture), never dropped silently.

    The result moves from ``READY`` to ``RUNNING`` to ``SUCCESSFUL`` (with its
    ``return_value``) or ``FAILED`` (with ``errors``), with this process as its
    worker id; ``task_enqueued``, ``task_started`` and ``task_finished`` are sent
    with the backend's class as sender.

    Error policy: a task that raises is ``FAILED`` and ``task_finished`` is sent;
    the error is then raised to the runner, which logs it by name and request as
    any callback's (and with ``INLINE``, raises it from ``response.close()``, or
    from ``enqueue()`` outside a request). A task that will never run, because
    the runner dropped it (``ON_FULL = "drop"``), lost it at shutdown, or its
    response never closed, is logged by name by the runner, and its result is
    ``FAILED`` with a :class:`TaskNotRun` error saying so (``task_finished`` is
    sent), not ``READY`` for ever.

    Results live in this process only: ``supports_get_result`` is False. Tasks
    run in the order they were enqueued, as soon as the response is sent: no
    priority, no ``run_after``.
    """

    supports_defer = False  # runs right after the response
    supports_async_task = True  # Task.call runs a coroutine function to completion
    supports_get_result = False  # results are objects of this process
    supports_priority = False  # a request's tasks run in the order enqueued

    def validate_task(self, task: Task[..., t.Any]) -> None:
        """Refuse what this backend cannot do, naming the fix.

        :raises InvalidTask: for ``run_after``, a priority, an unknown queue, or
            what every backend refuses (a function not at module level...).
        """
        name = type(self).__name__
        if task.run_after is not None:
            raise InvalidTask(
                f"'{name}' runs tasks right after the response and cannot defer"
                f" '{task.module_path}': enqueue it without 'run_after', or use a backend"
                " with supports_defer (django-tasks-db's DatabaseBackend)."
            )
        if task.priority != DEFAULT_TASK_PRIORITY:
            raise InvalidTask(
                f"'{name}' runs tasks in the order they were enqueued and cannot honour"
                f" priority={task.priority!r} of '{task.module_path}': drop 'priority', or"
                " use a backend with supports_priority."
            )
        if self.queues and task.queue_name not in self.queues:
            raise InvalidTask(
                f"Queue {task.queue_name!r} of '{task.module_path}' is not in"
                f" TASKS[{self.alias!r}]['QUEUES'] {sorted(self.queues)}: add it there."
            )
        super().validate_task(task)

    def enqueue(
        self, task: Task[P, R], args: list[t.Any], kwargs: dict[str, t.Any]
    ) -> TaskResult[P, R]:
        """Queue ``task`` after the current response (or on the pool now); see the class.

        :raises InvalidTask: as :meth:`validate_task`; or in a request whose runner
            sends callbacks to another process.
        :raises TypeError: if the arguments are not JSON values (as every backend).
        :raises wsgi_after.OutsideRequestError: in a request whose response was
            already closed.
        """
        self.validate_task(task)
        try:
            result: TaskResult[P, R] = TaskResult(
                task=task,
                id=get_random_string(32),
                status=TaskResultStatus.READY,
                enqueued_at=None,
                started_at=None,
                last_attempted_at=None,
                finished_at=None,
                args=list(args),
                kwargs=dict(kwargs),
                backend=self.alias,
                errors=[],
                worker_ids=[],
            )
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"'{task.module_path}.enqueue()' needs JSON arguments: {e}. Pass values"
                " such as ids rather than objects."
            ) from None
        chain = current_chain()
        if chain is None:
            _set(result, enqueued_at=timezone.now())
            task_enqueued.send(type(self), task_result=result)
            _outside_request(TaskCall(self, result))
            return result
        if getattr(chain.runner, "check_callback", None) is not None:
            raise InvalidTask(
                f"'{task.module_path}' cannot run after this response: the request's"
                f" runner {chain.runner!r} sends callbacks to another process, which cannot"
                " update this TaskResult. Enqueue it on a backend of that process instead,"
                " with '.using(backend=...)'."
            )
        call = TaskCall(self, result)
        try:
            after(call)
        except BaseException:
            call.unrun.detach()  # never enqueued: enqueue() raises, no result to mark
            raise
        _set(result, enqueued_at=timezone.now())
        task_enqueued.send(type(self), task_result=result)
        return result


class TaskCall:
    """The callback that runs one enqueued task and records it in its result.

    What :func:`~wsgi_after.django.capture_after_callbacks` lists for a task:
    ``callback.func.task`` and ``callback.func.result``. Log lines and events name
    it as the task's function.
    """

    def __init__(self, backend: AfterResponseBackend, result: TaskResult[..., t.Any]) -> None:
        self.backend = backend
        self.task: Task[..., t.Any] = result.task
        self.result = result
        func = result.task.func
        vars(self).update(__module__=func.__module__, __qualname__=func.__qualname__)
        # Freed without running (dropped, lost, never closed): the result says so.
        self.unrun = weakref.finalize(self, not_run, result, type(backend))
        self.unrun.atexit = False  # the process is leaving: nobody reads its results

    def __repr__(self) -> str:
        return f"<TaskCall {self.task.module_path} id={self.result.id}>"

    def __call__(self) -> None:
        """Run the task; record how it ended; raise what it raised (after recording)."""
        self.unrun.detach()
        result, task, sender = self.result, self.task, type(self.backend)
        started = timezone.now()
        _set(result, status=TaskResultStatus.RUNNING, started_at=started)
        _set(result, last_attempted_at=started)
        result.worker_ids.append(worker_id())
        task_started.send(sender=sender, task_result=result)
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
            else:
                value = task.call(*result.args, **result.kwargs)
            _set(result, _return_value=normalize_json(value))
        except BaseException as e:
            _fail(result, e, sender)
            raise
        _set(result, finished_at=timezone.now(), status=TaskResultStatus.SUCCESSFUL)
        task_finished.send(sender=sender, task_result=result)


class TaskNotRun(RuntimeError):
    """The error in the result of a task that was never run: its runner dropped it
    (the queue was full), lost it (shut down before its turn), or its response was
    never closed. The ``wsgi_after`` log names it, with why."""


def not_run(result: TaskResult[..., t.Any], sender: type) -> None:
    """A task's call was freed without running: mark its result ``FAILED`` with
    :class:`TaskNotRun` and send ``task_finished`` (robustly: this runs wherever the
    call was let go, perhaps in the garbage collector)."""
    if result.status != TaskResultStatus.READY:
        return
    error = TaskNotRun(
        f"'{result.task.module_path}' was not run: its runner dropped it (queue full) or"
        " lost it (shut down, or the response never closed); the 'wsgi_after' log names it."
    )
    _fail(result, error, sender, robust=True)


def _fail(
    result: TaskResult[..., t.Any], error: BaseException, sender: type, *, robust: bool = False
) -> None:
    """Mark ``result`` ``FAILED`` with ``error`` and send ``task_finished`` (robustly
    where a receiver's error must not escape: a call let go unrun)."""
    error_class = type(error)
    result.errors.append(
        TaskError(
            exception_class_path=f"{error_class.__module__}.{error_class.__qualname__}",
            traceback="".join(traceback.format_exception(error)),
        )
    )
    _set(result, finished_at=timezone.now(), status=TaskResultStatus.FAILED)
    send = task_finished.send_robust if robust else task_finished.send
    send(sender=sender, task_result=result)


def worker_id() -> str:
    """This process, as the results' ``worker_ids`` name it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"[-64:]


def _set(result: TaskResult[..., t.Any], **fields: object) -> None:
    """Set fields of the frozen ``TaskResult``, as Django's own backends do."""
    for field, value in fields.items():
        object.__setattr__(result, field, value)


def _outside_request(call: TaskCall) -> None:
    """Outside a request: captured, inline (raising its error), or on the pool now."""
    job = _detached(call)
    capture = active_capture()
    if capture is not None:
        capture.take(job)
    elif options().inline:
        take_errors()  # nothing stale from elsewhere in this thread
        run_inline(job)
    else:
        thread_runner(options()).submit(job)
        return
    errors = take_errors()
    if errors:
        raise errors[0]


def _detached(call: TaskCall) -> Received:
    """A task enqueued outside a request, as a runner's task: a request of its own,
    run like any request's callbacks (:func:`wsgi_after._execute.run_callbacks`)."""
    job = Received(
        {"REQUEST_METHOD": "-", "PATH_INFO": "/"},
        scope=callback_scope(),
        description="a task enqueued outside a request",
    )
    job.callbacks.append(Callback(call, (), {}, contextvars.copy_context()))
    return job
