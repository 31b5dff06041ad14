"""CeleryRunner's checks in the request and on the worker; they need no broker."""

from __future__ import annotations

import collections.abc
import functools
import logging
import os
import pathlib
import subprocess
import sys
import threading
import typing as t

import pytest
from celery import Celery
from django.core.handlers.wsgi import WSGIRequest
from django.views.debug import ExceptionReporter

import tests.django_project.configured  # noqa: F401  (Django's error report, below)
from tests.helpers import TIMEOUT, package_with_a_command_line, serve, wait_for
from wsgi_after import AfterMiddleware, after, events
from wsgi_after.callback_stats import NameStats
from wsgi_after.celery import (
    ALLOW_KEY,
    TASK_NAME,
    CeleryRunner,
    RemoteError,
    allowed_modules,
)

HERE = "tests.test_celery"
DEAD = "redis://127.0.0.1:1/0"  # never reached: publishing fails at once
app = Celery("checks", broker=DEAD)
app.conf.broker_transport_options = {"max_retries": 0}


def module_level(order_id: object, note: object = None) -> None:
    pass


async def module_level_async(order_id: int) -> None:
    pass


@app.task(name="checks.as_task")  # type: ignore[untyped-decorator]
def as_task(order_id: int) -> None:
    pass


class Service:
    def method(self) -> None:
        pass

    @staticmethod
    def static() -> None:
        pass


@pytest.fixture
def runner() -> collections.abc.Iterator[CeleryRunner]:
    runner = CeleryRunner(Celery("checks", broker=DEAD), allow=[HERE])
    yield runner
    runner.shutdown(1)


def test_module_level_functions_and_tasks_pass(runner: CeleryRunner) -> None:
    runner.check_callback(module_level, (1,), {})
    runner.check_callback(module_level_async, (1,), {})
    runner.check_callback(as_task, (1,), {})


def test_without_allow_only_tasks_pass() -> None:
    runner = CeleryRunner(Celery("checks", broker=DEAD))
    runner.check_callback(as_task, (1,), {})
    with pytest.raises(TypeError) as info:
        runner.check_callback(module_level, (1,), {})
    assert str(info.value) == (
        f"'after()' cannot send '{HERE}.module_level' to Celery: its module '{HERE}' is not in"
        f" the runner's allow list. Add it: CeleryRunner(celery_app, allow=['{HERE}'])"
        " (the Celery config 'wsgi_after_allow' on the worker), or make it a Celery task."
    )


def test_submodules_of_an_allowed_package_pass() -> None:
    runner = CeleryRunner(Celery("checks", broker=DEAD), allow=["tests"])
    runner.check_callback(module_level, (1,), {})


def closure() -> t.Callable[[], None]:
    def inner() -> None:
        pass

    return inner


def in_main() -> None:
    pass


in_main.__module__ = "__main__"


@pytest.mark.parametrize(
    ("func", "name"),
    [
        pytest.param(lambda: None, f"{HERE}.<lambda>", id="lambda"),
        pytest.param(closure(), f"{HERE}.closure.<locals>.inner", id="closure"),
        pytest.param(Service().method, f"{HERE}.Service.method", id="method"),
        pytest.param(Service.static, f"{HERE}.Service.static", id="class-level function"),
        pytest.param(Service, f"{HERE}.Service", id="class"),
        pytest.param(in_main, "__main__.in_main", id="__main__"),
        pytest.param(print, "builtins.print", id="builtin"),
        pytest.param(os.system, "posix.system", id="os.system"),
        pytest.param(subprocess.run, "subprocess.run", id="subprocess.run"),
        pytest.param(
            functools.partial(module_level, 1),
            f"functools.partial({HERE}.module_level)",
            id="partial",
        ),
    ],
)
def test_callbacks_a_worker_would_refuse_are_refused(
    runner: CeleryRunner, func: t.Any, name: str
) -> None:
    with pytest.raises(TypeError) as info:
        runner.check_callback(func, (), {})
    message = str(info.value)
    assert message.startswith(f"'after()' cannot send '{name}' to Celery:")
    if name.startswith(HERE) or name == "__main__.in_main" or "." not in name[6:]:
        assert message.endswith(
            "a worker runs only Celery tasks and module-level functions of the modules in"
            " 'allow'. Define it at module level, or make it a Celery task."
        )


def test_unserializable_arguments_are_refused(runner: CeleryRunner) -> None:
    with pytest.raises(TypeError) as info:
        runner.check_callback(module_level, (object(),), {})
    message = str(info.value)
    assert message.startswith(f"'after()' cannot send the arguments of '{HERE}.module_level'")
    assert message.endswith(
        "Pass values the 'json' serializer can encode, such as ids rather than objects."
    )


@pytest.mark.parametrize(
    ("allow", "message"),
    [
        pytest.param(
            "myapp",
            "'allow' must be a list of module names, got 'str': write allow=['myapp.tasks'].",
            id="str",
        ),
        pytest.param(
            ["my app"], "'allow' must list module names like 'myapp.tasks', got 'my app'.", id="bad"
        ),
        pytest.param(
            ["os"],
            "'allow' must not list 'os': a writer of the queue could call its functions."
            " List only your own modules.",
            id="stdlib",
        ),
        pytest.param(
            ["subprocess"],
            "'allow' must not list 'subprocess': a writer of the queue could call its"
            " functions. List only your own modules.",
            id="subprocess",
        ),
        pytest.param(
            ["__main__"],
            "'allow' must not list '__main__': a writer of the queue could call its"
            " functions. List only your own modules.",
            id="__main__",
        ),
    ],
)
def test_bad_allow_lists_are_refused(allow: t.Any, message: str) -> None:
    with pytest.raises(ValueError, match=r"^'allow' must") as info:
        CeleryRunner(Celery("checks", broker=DEAD), allow=allow)
    assert str(info.value) == message
    with pytest.raises(ValueError, match=r"^'allow' must"):
        allowed_modules(allow)


def test_allow_is_the_apps_config_key() -> None:
    celery_app = Celery("checks", broker=DEAD)
    runner = CeleryRunner(celery_app, allow=["myapp", "myapp.tasks"])
    assert celery_app.conf[ALLOW_KEY] == ["myapp", "myapp.tasks"]
    assert CeleryRunner(celery_app).allow == ("myapp", "myapp.tasks")  # read back
    assert runner.allow == ("myapp", "myapp.tasks")
    with pytest.raises(ValueError, match="differs") as info:
        CeleryRunner(celery_app, allow=["other"])
    assert str(info.value) == (
        "'allow' ['other'] differs from the Celery config 'wsgi_after_allow'"
        " ['myapp', 'myapp.tasks']: set one of them."
    )


def test_only_chains_are_published(runner: CeleryRunner) -> None:
    with pytest.raises(TypeError, match="publishes request chains only, got 'function'"):
        runner.submit(module_level)  # type: ignore[arg-type]


def test_bad_options_are_refused() -> None:
    with pytest.raises(TypeError, match=r"needs a 'celery\.Celery' app, got 'str'"):
        CeleryRunner("redis://")
    with pytest.raises(ValueError, match="'retry_window' must be at least 0, got -1"):
        CeleryRunner(app, retry_window=-1)
    with pytest.raises(TypeError, match="'dead_letter' must be a callable taking the payload"):
        CeleryRunner(app, dead_letter="log")  # type: ignore[arg-type]


def test_remote_error_keeps_type_and_message() -> None:
    error = RemoteError("KeyError", "'order'")
    assert (error.type_name, error.message, str(error)) == (
        "KeyError",
        "'order'",
        "KeyError: 'order'",
    )


def test_what_is_sent_is_what_after_was_given() -> None:
    letters: list[dict[str, t.Any]] = []
    runner = CeleryRunner(app, allow=[HERE], retry_window=0, dead_letter=letters.append)

    def wsgi(environ: t.Any, start_response: t.Any) -> list[bytes]:
        items = ["book"]
        after(module_level, items, note={"n": 1})
        after(as_task, 7)
        items.append("pen")
        start_response("201 Created", [])
        return [b""]

    try:
        serve(AfterMiddleware(wsgi, runner=runner), "/orders", "POST")
        assert runner.wait_idle(10)
    finally:
        runner.shutdown(1)
    assert letters == [
        {
            "version": 1,  # the message format's (wsgi_after.celery.message.VERSION)
            "method": "POST",
            "path": "/orders",
            "status": "201 Created",
            "completed": True,
            "error": None,
            "callbacks": [
                {"func": f"{HERE}:module_level", "args": [["book"]], "kwargs": {"note": {"n": 1}}},
                {"func": "task:checks.as_task", "args": [7], "kwargs": {}},
            ],
        }
    ]
    assert runner.stats().dead_lettered == 1


def test_arguments_stay_off_the_environ_and_out_of_djangos_error_reports() -> None:
    # The environ is Django's request.META: a 500 mails it to ADMINS (issue 21, item 4).
    reports: list[str] = []
    runner = CeleryRunner(app, allow=[HERE], retry_window=0, dead_letter=lambda payload: None)

    def wsgi(environ: t.Any, start_response: t.Any) -> list[bytes]:
        after(module_level, "ada@example.com", note="reset-token-3141")
        try:
            raise RuntimeError("the view failed")
        except RuntimeError as e:
            reporter = ExceptionReporter(WSGIRequest(environ), type(e), e, e.__traceback__)
            reports.append(reporter.get_traceback_text() + repr(environ))
        start_response("500 Internal Server Error", [])
        return [b""]

    try:
        serve(AfterMiddleware(wsgi, runner=runner), "/reset", "POST")
        assert runner.wait_idle(10)
    finally:
        runner.shutdown(1)
    [report] = reports
    assert "/reset" in report
    assert "reset-token-3141" not in report


def app_after(func: t.Any, *args: t.Any) -> t.Any:
    def wsgi(environ: t.Any, start_response: t.Any) -> list[bytes]:
        after(func, *args)
        start_response("200 OK", [])
        return [b""]

    return wsgi


def test_a_failing_dead_letter_hook_is_logged_without_the_payload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    def keep(payload: dict[str, t.Any]) -> None:
        raise RuntimeError(f"disk full while writing {payload}")

    runner = CeleryRunner(app, allow=[HERE], retry_window=0, dead_letter=keep)
    try:
        serve(AfterMiddleware(app_after(module_level, "s3cr3t"), runner=runner), "/x")
        assert runner.wait_idle(10)
    finally:
        runner.shutdown(1)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert messages[1] == (
        f"The dead_letter hook '{HERE}.{keep.__qualname__}' raised RuntimeError for the"
        " callbacks of 'GET /x'; their payload is lost."
    )
    assert not any("s3cr3t" in m for m in messages)


def test_messages_dropped_or_given_up_on_are_events_of_the_runner() -> None:
    seen: list[events.CallbackEvent] = []
    events.subscribe(seen.append)
    runner = CeleryRunner(app, allow=[HERE], retry_window=60, max_pending=1, callback_stats=True)
    try:
        wsgi = AfterMiddleware(app_after(module_level, 1), runner=runner)
        serve(wsgi, "/first")  # the publisher takes it, and retries it
        wait_for(lambda: runner.stats().retried, what="a retry")
        serve(wsgi, "/second")  # waits for the publisher
        serve(wsgi, "/third")  # the queue is full
        runner.shutdown(5)  # both are tried once more, and given up on
    finally:
        events.unsubscribe(seen.append)
        runner.shutdown(1)
    losses = [(e.kind, e.name, e.method, e.path, e.runner) for e in seen if e.kind != "queued"]
    name = f"{HERE}.module_level"
    assert losses == [
        ("dropped", name, "GET", "/third", runner),
        ("lost", name, "GET", "/first", runner),
        ("lost", name, "GET", "/second", runner),
    ]
    stats = runner.stats()
    assert (stats.dropped, stats.dead_lettered) == (1, 2)
    assert stats.callbacks == {name: NameStats(dropped=1, lost=2)}
    plain = CeleryRunner(app)
    assert plain.stats().callbacks is None
    plain.shutdown(1)


def test_a_message_left_in_the_publisher_at_shutdown_is_one_lost_event_and_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    seen: list[events.CallbackEvent] = []
    holding, release = threading.Event(), threading.Event()

    def dead_letter(payload: object) -> None:  # the first one holds the publisher thread
        if not holding.is_set():
            holding.set()
            release.wait(TIMEOUT)

    events.subscribe(seen.append)
    runner = CeleryRunner(
        app, allow=[HERE], retry_window=0, dead_letter=dead_letter, callback_stats=True
    )
    try:
        wsgi = AfterMiddleware(app_after(module_level, 1), runner=runner)
        serve(wsgi, "/first")  # given up on at once; its dead letter holds the publisher
        assert holding.wait(TIMEOUT)
        serve(wsgi, "/second")  # still queued when the runner shuts down
        assert runner.shutdown(0) is False
    finally:
        release.set()
        events.unsubscribe(seen.append)
        runner.shutdown(1)
    name = f"{HERE}.module_level"
    second = [(e.kind, e.name, e.method, e.path, e.runner) for e in seen if e.path == "/second"]
    assert second == [
        ("queued", name, "GET", "/second", None),
        ("lost", name, "GET", "/second", runner),
    ]
    lines = [r.getMessage() for r in caplog.records if "'GET /second'" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "still queued when the Celery publisher shut down" in lines[0]
    stats = runner.stats()
    # Its statistics leave with the runner, which caplog's records hold until the test ends.
    events.unsubscribe(t.cast("events.Listener", runner.callback_stats))
    assert stats.callbacks is not None
    assert stats.callbacks[name].lost == 2  # /first given up on, /second left queued


# The worker side, run in this process: forged messages and the allow list.


def run_on_worker(payload: object, allow: list[str] | None = None) -> None:
    worker_app = Celery("worker", broker=DEAD)
    if allow is not None:
        worker_app.conf[ALLOW_KEY] = allow
    worker_app.tasks[TASK_NAME](payload)


def message(*callbacks: tuple[str, list[t.Any]], path: str = "/forged") -> dict[str, t.Any]:
    return {
        "method": "POST",
        "path": path,
        "status": "200 OK",
        "completed": True,
        "error": None,
        "callbacks": [{"func": f, "args": a, "kwargs": {}} for f, a in callbacks],
    }


RAN: list[object] = []


def remember(value: object) -> None:
    RAN.append(value)


def test_the_worker_refuses_what_its_allow_list_does_not_name(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    marker = tmp_path / "marker"
    RAN.clear()
    run_on_worker(
        message(
            ("os:system", [f"touch {marker}"]),
            ("builtins:exec", [f"open({str(marker)!r}, 'w').close()"]),
            ("tests.test_celery:os", []),  # a module attribute
            ("tests.test_celery:Service", []),
            ("tests.test_celery:Service.static", []),
            ("tests.test_celery:closure", []),  # allowed: returns a function, harmless
            ("tests.test_celery:remember", ["ran"]),
            ("task:checks.as_task", [1]),
            ("task:wsgi_after.run_chain", [{}]),
        ),
        allow=[HERE],
    )
    assert not marker.exists()
    assert RAN == ["ran"]
    refused = {
        r.getMessage().split("'")[1]: r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("Refused callback")
    }
    assert refused["os:system"] == (
        "Refused callback 'os:system' queued by 'POST /forged': module 'os' is not in this"
        f" worker's allow list (Celery config 'wsgi_after_allow': ['{HERE}']); it was not run."
    )
    assert refused[f"{HERE}:os"].endswith(": it is not a plain Python function; it was not run.")
    assert refused[f"{HERE}:Service.static"].endswith(
        "it does not name a module-level function as 'module:function'; it was not run."
    )
    assert set(refused) == {
        "os:system",
        "builtins:exec",
        f"{HERE}:os",
        f"{HERE}:Service",
        f"{HERE}:Service.static",
        "task:wsgi_after.run_chain",
    }


def test_the_worker_never_imports_a_dunder_module_and_survives_an_import_that_exits(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # With allow=['shop'], 'shop.__main__:x' matched the allow list: importing it ran the
    # package's command line, whose argparse SystemExit escaped (only Exception was
    # caught) and lost every callback of the message (issue 21, item 1).
    marker = package_with_a_command_line(tmp_path, "shop_21", monkeypatch)
    RAN.clear()
    run_on_worker(
        message(
            ("shop_21.__main__:x", []),
            ("shop_21.__init__:x", []),
            ("shop_21.cli:x", []),
            (f"{HERE}:remember", ["ran"]),
        ),
        allow=["shop_21", HERE],
    )
    assert RAN == ["ran"]
    assert not marker.exists()  # its __main__ never ran
    assert "shop_21.__init__" not in sys.modules
    for name in ("shop_21", "shop_21.cli"):
        sys.modules.pop(name, None)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == [
        f"Refused callback 'shop_21.{dunder}:x' queued by 'POST /forged': it does not name a"
        " module-level function as 'module:function'; it was not run."
        for dunder in ("__main__", "__init__")
    ]
    assert lines[2] == (
        "Callback 'shop_21.cli:x' queued by 'POST /forged' cannot be imported on this worker."
    )
    assert len(lines) == 3


def test_a_worker_without_allow_list_runs_tasks_only(caplog: pytest.LogCaptureFixture) -> None:
    RAN.clear()
    run_on_worker(message((f"{HERE}:remember", ["no"]), ("task:checks.as_task", [1])))
    assert RAN == []
    assert [r.getMessage() for r in caplog.records] == [
        f"Refused callback '{HERE}:remember' queued by 'POST /forged': module '{HERE}' is not"
        " in this worker's allow list (Celery config 'wsgi_after_allow': []); it was not run."
    ]


def test_a_module_outside_the_allow_list_is_never_imported() -> None:
    sys.modules.pop("tests.helpers_never_imported", None)
    run_on_worker(message(("tests.helpers_never_imported:f", [])), allow=["tests.test_celery"])
    assert "tests.helpers_never_imported" not in sys.modules


def test_forged_names_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    run_on_worker(message(("os:system\nERROR fake line", []), path="/a\r\nINFO fake"))
    [line] = [r.getMessage() for r in caplog.records]
    assert "\n" not in line
    assert "\r" not in line
    assert "'os:system\\nERROR fake line' queued by 'POST /a\\r\\nINFO fake'" in line


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param([], "the message is not a mapping", id="list"),
        pytest.param({**message(), "method": 1}, "'method' and 'path' must be strings", id="m"),
        pytest.param({**message(), "completed": "yes"}, "'completed' must be a boolean", id="c"),
        pytest.param(
            {**message(), "version": 2},
            "'version' must be 1 (this worker's message format)",
            id="version",
        ),
        pytest.param({**message(), "error": ["x"]}, "'error' must be null or two strings", id="e"),
        pytest.param({**message(), "callbacks": {}}, "'callbacks' must be a list", id="cbs"),
        pytest.param(
            {**message(), "callbacks": [{"func": 1}]},
            "each callback needs a string 'func' and a list 'args'",
            id="func",
        ),
    ],
)
def test_malformed_messages_are_refused(
    payload: object, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    run_on_worker(payload, allow=[HERE])
    assert [r.getMessage() for r in caplog.records] == [
        f"Refused a 'wsgi_after.run_chain' message: {reason}."
    ]


def test_every_app_gets_the_task_whatever_the_import_order() -> None:
    code = (
        "from celery import Celery\n"
        "before = Celery('before'); before.finalize()\n"
        "import wsgi_after.celery\n"
        "after = Celery('after')\n"
        f"assert {TASK_NAME!r} in before.tasks and {TASK_NAME!r} in after.tasks\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
