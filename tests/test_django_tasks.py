"""``wsgi_after.django.tasks`` in this process: ``AfterResponseBackend`` and ``TasksRunner``.

The test project's ``default`` task backend is ``AfterResponseBackend``; its
``durable`` one is django-tasks-db's ``DatabaseBackend`` (PostgreSQL). The
real ``db_worker`` and gunicorn are in ``tests/integration/test_django_tasks.py``.
"""

from __future__ import annotations

import collections.abc
import contextvars
import datetime
import gc
import os
import pathlib
import re
import socket
import sys
import threading
import typing as t

import pytest
from django.core import checks
from django.test import Client, override_settings

import tests.django_project.configured  # noqa: F401  (before the models)
from tests.django_project import tasks, views
from tests.django_project.shop.models import Note
from tests.helpers import package_with_a_command_line, serve
from wsgi_after import AfterMiddleware, InlineRunner, Outcome, ThreadRunner, after
from wsgi_after.django import capture_after_callbacks
from wsgi_after.django.conf import options
from wsgi_after.django.runner import thread_runner
from wsgi_after.django.tasks import AfterResponseBackend, TaskCall, TaskNotRun, TasksRunner
from wsgi_after.django.tasks.compat import (
    InvalidTask,
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)

if t.TYPE_CHECKING:
    from pytest_django import Settings as SettingsWrapper

pytestmark = pytest.mark.timeout(30)

OK = Outcome(200, True, None)
INLINE = {"INLINE": True, "ALLOW": ["tests.django_project.views"]}
TASKS_RUNNER = {
    "RUNNER": "tasks",
    "TASKS_BACKEND": "durable",
    "ALLOW": ["tests.django_project.views"],
}
WORKER = f"{socket.gethostname()}:{os.getpid()}"


@pytest.fixture(autouse=True)
def recorded() -> collections.abc.Iterator[list[t.Any]]:
    """What the tasks and callbacks remembered; the thread pool drained after."""
    views.recorded.clear()
    views.results.clear()
    views.gate.clear()
    yield views.recorded
    views.gate.set()
    assert thread_runner(options()).wait_idle(10)
    views.recorded.clear()
    views.results.clear()


@pytest.fixture
def signals() -> collections.abc.Iterator[list[tuple[str, type, str]]]:
    """The task signals sent: (signal, sender, the result's status then)."""
    sent: list[tuple[str, type, str]] = []
    receivers = []
    for name, signal in (
        ("enqueued", task_enqueued),
        ("started", task_started),
        ("finished", task_finished),
    ):

        def receiver(sender: type, task_result: t.Any, name: str = name, **kwargs: t.Any) -> None:
            sent.append((name, sender, str(task_result.status)))

        signal.connect(receiver, weak=False)
        receivers.append((signal, receiver))
    yield sent
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def wait_idle() -> None:
    assert thread_runner(options()).wait_idle(10)


def items(recorded: list[t.Any]) -> list[t.Any]:
    return [item for item, _ in recorded]


# -- AfterResponseBackend in a request ------------------------------------------------


def test_a_task_runs_after_the_response_in_order_with_the_callbacks(
    client: Client, recorded: list[t.Any], signals: list[tuple[str, type, str]]
) -> None:
    assert client.get("/task/greet?wait=1").status_code == 200
    [result] = views.results
    assert result.status == TaskResultStatus.READY  # "before" waits for the gate
    assert result.enqueued_at is not None
    assert result.started_at is None
    assert signals == [("enqueued", AfterResponseBackend, "READY")]
    views.gate.set()
    wait_idle()
    assert [item for item, _ in recorded] == [
        "before",
        ("ada", recorded[1][0][1]),
        "after",
    ]
    thread = recorded[1][0][1]
    assert thread.startswith("wsgi-after-django")
    assert recorded[1][1] == OK  # outcome() in the task: the request's
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "hello ada"
    assert result.worker_ids == [WORKER]
    assert result.backend == "default"
    assert result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    assert signals == [
        ("enqueued", AfterResponseBackend, "READY"),
        ("started", AfterResponseBackend, "RUNNING"),
        ("finished", AfterResponseBackend, "SUCCESSFUL"),
    ]


def test_a_failed_task_records_its_error_and_is_logged(
    client: Client,
    recorded: list[t.Any],
    signals: list[tuple[str, type, str]],
    log: pytest.LogCaptureFixture,
) -> None:
    assert client.get("/task/fail?arg=no+stock").status_code == 200
    wait_idle()
    [result] = views.results
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class is ValueError
    assert error.exception_class_path == "builtins.ValueError"
    assert error.traceback.endswith("ValueError: no stock\n")
    with pytest.raises(ValueError, match=r"^Task failed$"):
        result.return_value  # noqa: B018
    assert items(recorded) == ["before", "after"]  # the rest still ran
    assert signals[-1] == ("finished", AfterResponseBackend, "FAILED")
    assert (
        "Callback 'tests.django_project.tasks.fail' queued by 'GET /task/fail' raised ValueError."
        in log.messages
    )


def test_a_task_taking_the_context_gets_its_result(client: Client) -> None:
    client.get("/task/with_context")
    wait_idle()
    [result] = views.results
    assert result.return_value == [result.id, 1, "ada"]


def test_an_async_task_runs_to_completion(client: Client, recorded: list[t.Any]) -> None:
    client.get("/task/greet_async?arg=bo")
    wait_idle()
    [result] = views.results
    assert result.return_value == "hello bo"
    assert ("bo", "async") in items(recorded)


def test_inline_runs_the_task_when_the_response_closes(
    client: Client, settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    client.get("/task/greet")
    [result] = views.results
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert items(recorded) == ["before", ("ada", threading.current_thread().name), "after"]


def test_inline_a_failed_task_fails_the_request(
    client: Client, settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    with pytest.raises(ValueError, match=r"^oops$"):
        client.get("/task/fail?arg=oops")
    [result] = views.results
    assert result.status == TaskResultStatus.FAILED
    assert items(recorded) == ["before", "after"]


def test_capture_lists_the_task_without_running_it(client: Client, recorded: list[t.Any]) -> None:
    with capture_after_callbacks() as callbacks:
        client.get("/task/greet")
    [result] = views.results
    assert [c.func for c in callbacks][0::2] == [views.remember, views.remember]
    call = callbacks[1].func
    assert isinstance(call, TaskCall)
    assert (call.task, call.result) == (tasks.greet, result)
    assert result.status == TaskResultStatus.READY
    assert recorded == []


def test_capture_execute_runs_the_task(client: Client, recorded: list[t.Any]) -> None:
    with capture_after_callbacks(execute=True):
        client.get("/task/greet")
    [result] = views.results
    assert result.return_value == "hello ada"


# -- AfterResponseBackend outside a request -------------------------------------------


def test_outside_a_request_the_task_runs_on_the_pool_at_once(
    recorded: list[t.Any], signals: list[tuple[str, type, str]]
) -> None:
    result = tasks.greet.enqueue("cy")
    wait_idle()
    assert result.return_value == "hello cy"
    [((name, thread), outcome)] = recorded
    assert (name, outcome) == ("cy", None)  # no request: no outcome
    assert thread.startswith("wsgi-after-django")
    assert [s[0] for s in signals] == ["enqueued", "started", "finished"]


def test_outside_a_request_a_failure_is_logged_by_name(log: pytest.LogCaptureFixture) -> None:
    result = tasks.fail.enqueue("late")
    wait_idle()
    assert result.status == TaskResultStatus.FAILED
    assert (
        "Callback 'tests.django_project.tasks.fail' queued by 'a task enqueued outside a"
        " request' raised ValueError." in log.messages
    )


def test_outside_a_request_inline_runs_in_enqueue(
    settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    result = tasks.greet.enqueue("di")
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert items(recorded) == [("di", threading.current_thread().name)]
    with pytest.raises(ValueError, match=r"^bad$"):
        tasks.fail.enqueue("bad")


def test_outside_a_request_capture_takes_the_task(recorded: list[t.Any]) -> None:
    with capture_after_callbacks() as callbacks:
        result = tasks.greet.enqueue("ed")
    assert [c.func.result for c in callbacks] == [result]
    assert result.status == TaskResultStatus.READY
    assert recorded == []


def test_a_task_enqueued_by_a_callback_runs_after_it(recorded: list[t.Any]) -> None:
    enqueued: list[t.Any] = []

    def enqueue_in_a_callback() -> None:
        enqueued.append(tasks.greet.enqueue("fi"))
        views.remember("callback")

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        after(enqueue_in_a_callback)
        start_response("200 OK", [])
        return [b"ok"]

    serve(AfterMiddleware(app, runner=InlineRunner()))
    assert items(recorded) == ["callback", ("fi", threading.current_thread().name)]
    assert enqueued[0].status == TaskResultStatus.SUCCESSFUL


def test_a_task_the_runner_dropped_or_lost_is_failed_with_why(
    signals: list[tuple[str, type, str]], log: pytest.LogCaptureFixture
) -> None:
    """A task dropped (queue full) or lost (shut down before its turn) never runs: its
    result is FAILED, with the reason, not READY for ever."""
    runner = ThreadRunner(max_workers=1, max_pending=1, on_full="drop", name="tasks-lost")
    started = threading.Event()
    results: list[t.Any] = []

    def hold() -> None:
        started.set()
        assert views.gate.wait(10)

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/hold":
            after(hold)
        else:
            results.append(tasks.greet.enqueue(environ["PATH_INFO"][1:]))
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = AfterMiddleware(app, runner=runner)
    try:
        serve(wrapped, "/hold")
        assert started.wait(10)  # the runner's one thread is busy
        serve(wrapped, "/queued")  # waits: the one place in the queue
        serve(wrapped, "/dropped")  # the queue is full
        queued, dropped = results
        assert queued.status == TaskResultStatus.READY
        assert dropped.status == TaskResultStatus.FAILED
        assert runner.shutdown(0) is False  # 'queued' never gets its turn
        assert queued.status == TaskResultStatus.FAILED
    finally:
        views.gate.set()
        runner.shutdown(10)
    for result in (queued, dropped):
        [error] = result.errors
        assert error.exception_class is TaskNotRun
        assert error.traceback == (
            "wsgi_after.django.tasks.backend.TaskNotRun: 'tests.django_project.tasks.greet'"
            " was not run: its runner dropped it (queue full) or lost it (shut down, or the"
            " response never closed); the 'wsgi_after' log names it.\n"
        )
        assert result.started_at is None
        assert result.finished_at is not None
        assert result.worker_ids == []
    assert ("finished", AfterResponseBackend, "FAILED") in signals
    assert [s for s in signals if s[0] == "finished"] == [
        ("finished", AfterResponseBackend, "FAILED")
    ] * 2


def test_a_task_of_a_response_never_closed_is_failed_once_the_request_is_freed(
    log: pytest.LogCaptureFixture,
) -> None:
    results: list[t.Any] = []

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        results.append(tasks.greet.enqueue("never"))
        start_response("200 OK", [])
        return [b"ok"]

    # A gateway that never calls close(), in a context of its own (as its thread's or task's).
    wrapped = AfterMiddleware(app, runner=InlineRunner())
    contextvars.copy_context().run(serve, wrapped, "/never", close=False)
    gc.collect()  # the request and its environ refer to each other: freed by a GC pass
    [result] = results
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TaskNotRun
    assert any("'tests.django_project.tasks.greet'" in m for m in log.messages if "not run" in m)


def test_a_task_enqueue_refused_sends_no_signal(signals: list[tuple[str, type, str]]) -> None:
    """``after()`` refused it (max_callbacks): ``enqueue()`` raises, and no result of it
    is left to mark FAILED (no ``task_finished`` for a task never enqueued)."""

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        after(views.remember, "first")
        with pytest.raises(RuntimeError, match="more than 1 times"):
            tasks.greet.enqueue("over")
        start_response("200 OK", [])
        return [b"ok"]

    serve(AfterMiddleware(app, runner=InlineRunner(), max_callbacks=1))
    assert signals == []


# -- what the backend refuses ---------------------------------------------------------


def test_flags_say_what_is_true() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, AfterResponseBackend)
    assert (
        backend.supports_async_task,
        backend.supports_get_result,
        backend.supports_defer,
        backend.supports_priority,
    ) == (True, False, False, False)


def test_run_after_is_refused_naming_the_fix() -> None:
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    with pytest.raises(InvalidTask) as info:
        tasks.greet.using(run_after=later)
    assert str(info.value) == (
        "'AfterResponseBackend' runs tasks right after the response and cannot defer"
        " 'tests.django_project.tasks.greet': enqueue it without 'run_after', or use a"
        " backend with supports_defer (django-tasks-db's DatabaseBackend)."
    )


def test_priority_is_refused_naming_the_fix() -> None:
    with pytest.raises(InvalidTask, match=re.escape("cannot honour priority=5 of")):
        tasks.greet.using(priority=5)


def test_an_unknown_queue_is_refused_naming_the_setting() -> None:
    with pytest.raises(InvalidTask) as info:
        tasks.greet.using(queue_name="emails")
    assert str(info.value) == (
        "Queue 'emails' of 'tests.django_project.tasks.greet' is not in"
        " TASKS['default']['QUEUES'] ['default']: add it there."
    )


def test_arguments_must_be_json(client: Client) -> None:
    with pytest.raises(TypeError, match=r"^'tests\.django_project\.tasks\.greet\.enqueue\(\)'"):
        tasks.greet.enqueue(object())  # type: ignore[arg-type]


def test_a_request_on_the_tasks_runner_refuses_an_after_response_task(
    client: Client, settings: SettingsWrapper
) -> None:
    settings.WSGI_AFTER = TASKS_RUNNER
    with capture_after_callbacks(), pytest.raises(InvalidTask, match="cannot run after this"):
        client.get("/task/greet")


# -- TasksRunner: after() callbacks on a django.tasks backend -------------------------


@pytest.mark.django_db(transaction=True)
def test_the_tasks_runner_enqueues_one_task_per_request(
    client: Client, settings: SettingsWrapper
) -> None:
    from django_tasks_db.models import DBTaskResult

    settings.WSGI_AFTER = TASKS_RUNNER
    assert client.get("/note/row").status_code == 200
    [row] = DBTaskResult.objects.all()
    assert row.task_path == "wsgi_after.django.tasks.worker.run_callbacks"
    assert row.backend_name == "durable"
    [message] = row.args_kwargs["args"]
    assert message == {
        "version": 1,
        "method": "GET",
        "path": "/note/row",
        "status": "200 OK",
        "completed": True,
        "error": None,
        "callbacks": [
            {"func": "tests.django_project.views:write_note", "args": ["row"], "kwargs": {}}
        ],
    }
    assert Note.objects.count() == 0  # not run here
    row.task.call(*row.args_kwargs["args"])  # what db_worker does
    assert list(Note.objects.values_list("text", flat=True)) == ["row"]


def test_the_tasks_runner_refuses_a_function_outside_the_allow_list(
    settings: SettingsWrapper,
) -> None:
    settings.WSGI_AFTER = {**TASKS_RUNNER, "ALLOW": ["tests.django_project.shop"]}
    with pytest.raises(TypeError) as info:
        runner_check(views.write_note, ("x",))
    assert str(info.value) == (
        "'after()' cannot send 'tests.django_project.views.write_note' through"
        " 'TasksRunner': its module 'tests.django_project.views' is not in the allow list."
        " Add it: WSGI_AFTER = {..., 'ALLOW': ['tests.django_project.views']}."
    )


def test_the_tasks_runner_refuses_arguments_that_are_not_json(settings: SettingsWrapper) -> None:
    settings.WSGI_AFTER = TASKS_RUNNER
    with pytest.raises(TypeError, match=r"^'after\(\)' cannot send the arguments of"):
        runner_check(views.write_note, (object(),))


def test_the_tasks_runner_refuses_a_lambda(settings: SettingsWrapper) -> None:
    settings.WSGI_AFTER = TASKS_RUNNER
    with pytest.raises(TypeError, match="Define it at module level"):
        runner_check(lambda: None, ())


def test_the_tasks_worker_never_imports_a_dunder_module_of_an_allowed_package(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: SettingsWrapper,
    recorded: list[t.Any],
    log: pytest.LogCaptureFixture,
) -> None:
    # 'shop.__main__:x' passed the allow list ['shop'] of a django.tasks worker and ran the
    # package's command line on import; its SystemExit lost the message's other callbacks.
    marker = package_with_a_command_line(tmp_path, "shop_tasks", monkeypatch)
    settings.WSGI_AFTER = {**TASKS_RUNNER, "ALLOW": ["shop_tasks", "tests.django_project.views"]}
    message = {
        "method": "POST",
        "path": "/forged",
        "status": "200 OK",
        "completed": True,
        "error": None,
        "callbacks": [
            {"func": f"shop_tasks.{part}:x", "args": [], "kwargs": {}}
            for part in ("__main__", "__init__", "cli")
        ]
        + [{"func": "tests.django_project.views:remember", "args": ["ran"], "kwargs": {}}],
    }
    from wsgi_after.django.tasks.worker import CallbacksFailed, run_callbacks

    try:
        with pytest.raises(CallbacksFailed, match="failed or was refused"):
            run_callbacks.call(message)  # what the backend's worker does
    finally:
        for name in ("shop_tasks", "shop_tasks.cli"):
            sys.modules.pop(name, None)
    assert items(recorded) == ["ran"]
    assert not marker.exists()  # its __main__ never ran
    assert "shop_tasks.__init__" not in sys.modules
    assert [m for m in log.messages if "shop_tasks" in m] == [
        *(
            f"Refused callback 'shop_tasks.{part}:x' queued by 'POST /forged': it does not"
            " name a module-level function as 'module:function'; it was not run."
            for part in ("__main__", "__init__")
        ),
        "Callback 'shop_tasks.cli:x' queued by 'POST /forged' cannot be imported on this worker.",
    ]


def runner_check(func: t.Any, args: tuple[t.Any, ...]) -> None:
    TasksRunner("durable").check_callback(func, args, {})


@pytest.mark.django_db(transaction=True)
def test_a_failure_to_enqueue_is_logged_by_name(
    client: Client, settings: SettingsWrapper, log: pytest.LogCaptureFixture
) -> None:
    settings.WSGI_AFTER = {**TASKS_RUNNER, "TASKS_BACKEND": "missing"}
    assert client.get("/note/lost").status_code == 200
    # At ERROR, the class of what the backend raised (django.tasks: InvalidTaskBackend; the
    # backport: InvalidTaskBackendError); its message, which may quote arguments, at DEBUG.
    [line] = [m for m in log.messages if "was not run" in m]
    assert re.fullmatch(
        re.escape(
            "Callback 'tests.django_project.views.write_note' queued by 'GET /note/lost' was not"
            " run: enqueueing it on the django.tasks backend 'missing' raised InvalidTaskBackend"
        )
        + r"(Error)? "
        + re.escape("(its message, which may quote the arguments, is logged at DEBUG)."),
        line,
    ), line


def test_inline_overrides_the_tasks_runner(client: Client, recorded: list[t.Any]) -> None:
    with override_settings(WSGI_AFTER={**TASKS_RUNNER, "INLINE": True}):
        client.get("/record/inline")
    assert items(recorded) == ["inline"]


@pytest.mark.django_db(transaction=True)
def test_a_tasks_runner_given_to_the_core_middleware() -> None:
    from django_tasks_db.models import DBTaskResult

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        after(views.write_note, "core")
        with pytest.raises(TypeError, match="Define it at module level"):
            after(lambda: None)
        start_response("202 Accepted", [])
        return [b"ok"]

    serve(AfterMiddleware(app, runner=TasksRunner("durable")), "/core", "POST")
    [row] = DBTaskResult.objects.all()
    [message] = row.args_kwargs["args"]
    assert (message["method"], message["path"], message["status"]) == (
        "POST",
        "/core",
        "202 Accepted",
    )
    assert message["callbacks"] == [
        {"func": "tests.django_project.views:write_note", "args": ["core"], "kwargs": {}}
    ]


@pytest.mark.django_db(transaction=True)
def test_a_nul_character_and_a_lone_surrogate_reach_the_callback_through_postgresql(
    recorded: list[t.Any], log: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL's jsonb holds neither NUL nor a lone surrogate: a chain with one in its
    arguments, or in its path (a URL's %00), was lost, why only at DEBUG."""
    from django_tasks_db.models import DBTaskResult

    odd = "a\x00b\ud800c"

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        after(views.remember, odd)
        start_response("200 OK", [])
        return [b"ok"]

    serve(AfterMiddleware(app, runner=TasksRunner("durable")), "/nul\x00path")
    assert [m for m in log.messages if "was not run" in m] == []
    [row] = DBTaskResult.objects.all()
    row.task.call(*row.args_kwargs["args"])  # what db_worker does
    [(item, outcome)] = recorded
    assert item == odd
    assert outcome == OK


@pytest.mark.parametrize(
    ("packed", "why"),
    [
        pytest.param("{not json", "'packed' is not JSON text", id="not-json"),
        pytest.param(7, "'packed' must be the message's JSON text", id="not-text"),
    ],
)
def test_the_tasks_worker_refuses_a_malformed_packed_message(
    packed: object, why: str, log: pytest.LogCaptureFixture
) -> None:
    from wsgi_after.django.tasks.worker import CallbacksFailed, run_callbacks

    with pytest.raises(CallbacksFailed, match=r"^Refused a malformed callbacks message"):
        run_callbacks.call({"packed": packed})
    assert f"Refused a 'wsgi_after' callbacks message: {why}." in log.messages


def test_check_catches_a_tasks_backend_missing_from_tasks(settings: SettingsWrapper) -> None:
    settings.WSGI_AFTER = {**TASKS_RUNNER, "TASKS_BACKEND": "durabel"}
    errors = [m for m in checks.run_checks() if m.id == "wsgi_after.E004"]
    assert [m.msg for m in errors] == [
        "WSGI_AFTER['TASKS_BACKEND'] is 'durabel', which is not an alias of the TASKS setting"
        " (['default', 'durable']), so every request's callbacks would be lost."
    ]
    settings.WSGI_AFTER = TASKS_RUNNER
    assert [m for m in checks.run_checks() if m.id == "wsgi_after.E004"] == []
