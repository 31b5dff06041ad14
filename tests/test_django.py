"""The Django integration through Django's test client and handler, in this process.

The project is ``tests/django_project`` (PostgreSQL on 127.0.0.1:5432); pytest-django
creates its test database. Tests that need committed data across threads use
``transactional_db``; ``TestCase`` tests show what users' tests get.
"""

from __future__ import annotations

import collections.abc
import logging
import re
import threading
import typing as t
import wsgiref.util

import pytest
from celery import Celery
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection, transaction
from django.http import FileResponse
from django.test import Client, TestCase, override_settings

import tests.django_project.configured  # noqa: F401  (before the models)
from tests.django_project import views
from tests.django_project.shop.models import Note
from tests.helpers import call, make_environ, serve, wait_for
from wsgi_after import AfterMiddleware, InlineRunner, Outcome, OutsideRequestError, after
from wsgi_after.celery import CeleryRunner
from wsgi_after.django import (
    CapturedCallback,
    after_commit,
    capture_after_callbacks,
    get_runner,
)
from wsgi_after.django.conf import options
from wsgi_after.django.runner import thread_runner

if t.TYPE_CHECKING:
    from pytest_django import Settings as SettingsWrapper

pytestmark = pytest.mark.timeout(30)

OK = Outcome(200, True, None)
INLINE = {"INLINE": True}
EXPLODED = (
    "Callback 'tests.django_project.views.explode' queued by 'GET /fail' raised RuntimeError."
)


@pytest.fixture(autouse=True)
def recorded() -> collections.abc.Iterator[list[t.Any]]:
    """What the project's callbacks remembered in this test; the thread pool drained after."""
    views.recorded.clear()
    views.gate.clear()
    yield views.recorded
    views.gate.set()
    assert thread_runner(options()).wait_idle(10)
    views.recorded.clear()


def items(recorded: list[t.Any]) -> list[t.Any]:
    return [item for item, _ in recorded]


def wait_idle() -> None:
    assert thread_runner(options()).wait_idle(10)


# -- after() through the test client -------------------------------------------------


def test_callback_runs_on_the_thread_pool_after_the_response(
    client: Client, recorded: list[t.Any]
) -> None:
    response = client.get("/record/a?wait=1")
    assert response.status_code == 201
    assert recorded == []  # the callback waits for the gate: the response came first
    views.gate.set()
    wait_idle()
    assert recorded == [("a", Outcome(201, True, None))]


def test_inline_setting_runs_callbacks_when_the_response_closes(
    client: Client, settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    client.get("/record/b")
    assert recorded == [("b", Outcome(201, True, None))]
    assert isinstance(get_runner(), InlineRunner)


def test_inline_callback_error_fails_the_request_after_the_rest_ran(
    client: Client, settings: SettingsWrapper, recorded: list[t.Any], log: pytest.LogCaptureFixture
) -> None:
    settings.WSGI_AFTER = INLINE
    with pytest.raises(RuntimeError, match=r"^the callback failed$"):
        client.get("/fail")
    assert items(recorded) == ["after the failure"]
    assert EXPLODED in log.messages


def test_threaded_callback_error_is_logged_not_raised(
    client: Client, recorded: list[t.Any], log: pytest.LogCaptureFixture
) -> None:
    assert client.get("/fail").status_code == 200
    wait_idle()
    assert items(recorded) == ["after the failure"]
    assert EXPLODED in log.messages


def test_a_view_error_is_the_outcome_error(
    settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    response = Client(raise_request_exception=False).get("/boom")
    assert response.status_code == 500
    [(item, (status, completed, error))] = recorded
    assert (item, status, completed) == ("boom", 500, True)
    assert isinstance(error, ValueError)
    assert str(error) == "the view failed"


def test_streaming_response_runs_callbacks_once_consumed_and_closed(
    client: Client, settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    response = client.get("/stream")
    assert recorded == []
    assert b"".join(response.streaming_content) == b"chunk 0\nchunk 1\nchunk 2\n"  # type: ignore[attr-defined]
    assert recorded == [("stream", OK)]


def test_file_response_through_the_test_client(
    client: Client, settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    response = client.get("/file")
    assert isinstance(response, FileResponse)
    assert b"".join(response.streaming_content).startswith(b'"""Views')
    assert recorded == [("file", OK)]


def test_file_response_keeps_the_servers_file_wrapper(
    settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    environ = make_environ("/file", extra={"wsgi.file_wrapper": wsgiref.util.FileWrapper})
    result = call(WSGIHandler(), environ)
    assert type(result) is wsgiref.util.FileWrapper  # the server's sendfile path is kept
    assert b"".join(result).startswith(b'"""Views')
    assert recorded == []
    result.close()
    assert recorded == [("file", OK)]


def test_wsgi_py_wrapped_too_runs_each_callback_once(recorded: list[t.Any]) -> None:
    app = AfterMiddleware(WSGIHandler(), runner=InlineRunner())
    response = serve(app, "/record/c")
    assert response.status.startswith("201")
    assert recorded == [("c", Outcome(201, True, None))]


def test_after_outside_a_request_names_the_fix() -> None:
    with pytest.raises(OutsideRequestError) as raised:
        after_commit(print)
    assert str(raised.value) == (
        "'after_commit()' was called outside a request. In a view, put"
        " 'wsgi_after.django.AfterMiddleware' first in MIDDLEWARE; outside a request (a"
        " management command, the shell, a worker), use 'transaction.on_commit(func)'."
    )
    with pytest.raises(TypeError, match=r"^'after_commit\(\)' needs a callable, got 'int'\.$"):
        after_commit(1)  # type: ignore[arg-type]


# -- capture_after_callbacks -----------------------------------------------------------


def test_capture_records_without_running(client: Client, recorded: list[t.Any]) -> None:
    with capture_after_callbacks() as callbacks:
        client.get("/record/d")
        client.get("/fail")
    assert callbacks == [
        CapturedCallback(views.remember, ("d",), {"wait": False}),
        CapturedCallback(views.explode, (), {}),
        CapturedCallback(views.remember, ("after the failure",), {}),
    ]
    wait_idle()
    assert recorded == []


def test_capture_execute_runs_inline_and_raises(client: Client, recorded: list[t.Any]) -> None:
    with capture_after_callbacks(execute=True) as callbacks:
        client.get("/record/e")
        assert recorded == [("e", Outcome(201, True, None))]
        with pytest.raises(RuntimeError, match=r"^the callback failed$"):
            client.get("/fail")
    assert [c.func for c in callbacks] == [views.remember, views.explode, views.remember]


# -- database hygiene on the thread pool ---------------------------------------------


def other_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_worker_threads_close_their_connections(client: Client) -> None:
    baseline = other_connections()
    for i in range(20):
        client.get(f"/note/hygiene-{i}")
    wait_idle()
    assert Note.objects.filter(text__startswith="hygiene-").count() == 20
    threads = set(Note.objects.values_list("thread", flat=True))
    assert len(threads) > 1  # several worker threads wrote
    # CONN_MAX_AGE=0: closed after each callback (PostgreSQL ends a closed backend a
    # moment later, so poll pg_stat_activity under a deadline).
    wait_for(lambda: other_connections() == baseline, what="the workers' connections to close")


@pytest.mark.django_db(transaction=True)
def test_async_callbacks_connections_are_closed_and_survive_a_terminated_backend(
    client: Client, recorded: list[t.Any]
) -> None:
    # The async ORM runs its queries on asgiref's thread for thread-sensitive code, not
    # on the worker thread whose connections close_old_connections() closes (issue 21, 3).
    Note.objects.create(text="async-row")
    assert client.get("/async-count/async-row").status_code == 200
    wait_idle()
    [(count, pid)] = recorded
    assert count == 1
    with connection.cursor() as cursor:
        cursor.execute("select pg_terminate_backend(%s)", [pid])
    for _ in range(2):  # every later async callback gets a working connection
        assert client.get("/async-count/async-row").status_code == 200
        wait_idle()
    assert [count for count, _ in recorded] == [1, 1, 1]
    pids = {pid for _, pid in recorded}

    def closed() -> bool:  # CONN_MAX_AGE=0: closed after each callback
        with connection.cursor() as cursor:
            cursor.execute(
                "select count(*) from pg_stat_activity where pid = any(%s)", [list(pids)]
            )
            return int(cursor.fetchone()[0]) == 0

    wait_for(closed, what="the async callbacks' connections to close")


# -- after_commit with real commits ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_after_commit_runs_after_the_response_once_committed(
    client: Client, recorded: list[t.Any]
) -> None:
    assert client.get("/commit/f?wait=1").status_code == 200
    assert recorded == []
    views.gate.set()
    wait_idle()
    assert recorded == [(("f", True), OK)]  # the worker thread sees the committed row


@pytest.mark.django_db(transaction=True)
def test_after_commit_in_a_rolled_back_block_never_runs(
    client: Client, recorded: list[t.Any], log: pytest.LogCaptureFixture
) -> None:
    client.get("/commit/g?rollback=1")
    wait_idle()
    assert recorded == []
    assert not Note.objects.filter(text="g-row").exists()
    assert (
        "Callback 'tests.django_project.views.remember_committed' queued with"
        " 'after_commit()' was not run: the transaction on database 'default' rolled back."
    ) in log.messages
    assert [r.levelname for r in log.records if "rolled back" in r.message] == ["DEBUG"]


@pytest.mark.django_db(transaction=True)
def test_after_commit_drops_only_a_rolled_back_savepoints_callbacks(
    client: Client, settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    client.get("/nested")
    assert items(recorded) == ["outer", "after the savepoint"]


@pytest.mark.django_db(transaction=True)
def test_after_commit_outside_a_transaction_is_after(
    client: Client, settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    client.get("/commit/h?autocommit=1")
    assert recorded == [(("h", True), OK)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["json", "cap", "generator"])
def test_after_commit_refuses_at_the_call_what_after_would_refuse_at_commit(
    kind: str, recorded: list[t.Any]
) -> None:
    # Checked only at commit, the row was committed, the client got a 500, and Django
    # skipped the transaction's other on_commit hooks (issue 21, item 6).
    letters: list[object] = []
    runner: t.Any = InlineRunner()
    if kind == "json":
        runner = CeleryRunner(
            Celery("django-checks", broker="redis://127.0.0.1:1/0"),
            allow=["tests.django_project.views"],
            retry_window=0,
            dead_letter=letters.append,
        )
    app = AfterMiddleware(WSGIHandler(), runner=runner, max_callbacks=2)
    try:
        response = serve(app, f"/commit-checked/{kind}")
    finally:
        if isinstance(runner, CeleryRunner):
            runner.shutdown(1)
    assert response.status.startswith("200")
    expected: list[object] = ["RuntimeError", 0, 1] if kind == "cap" else ["TypeError"]
    assert sorted(items(recorded), key=str) == sorted([*expected, "other hook"], key=str)
    assert Note.objects.filter(text=f"checked-{kind}").count() == 1


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_after_commit_follows_the_transaction_of_its_database(
    client: Client, settings: SettingsWrapper, recorded: list[t.Any]
) -> None:
    settings.WSGI_AFTER = INLINE
    client.get("/other-db")
    assert items(recorded) == ["other, inside default's rollback", "other"]


# -- users' TestCase -------------------------------------------------------------------


@override_settings(WSGI_AFTER=INLINE)
class InlineTestCaseTests(TestCase):
    """``TestCase`` with INLINE: callbacks run in the test's thread and transaction."""

    def test_callbacks_see_the_tests_uncommitted_data(self) -> None:
        self.client.get("/view-row")
        assert items(views.recorded) == [1]

    def test_after_commit_runs_when_on_commit_callbacks_are_executed(self) -> None:
        with self.captureOnCommitCallbacks(execute=True) as hooks:
            self.client.get("/commit/i")
            assert views.recorded == []  # TestCase's transaction never commits
        assert len(hooks) == 1
        assert items(views.recorded) == [("i", True)]

    def test_an_async_callback_committed_after_the_response_is_awaited(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            self.client.get("/commit-async/k")
            assert views.recorded == []
        assert items(views.recorded) == ["k"]

    def test_a_failing_callback_fails_the_request(self) -> None:
        with pytest.raises(RuntimeError, match=r"^the callback failed$"):
            self.client.get("/fail")

    def test_capture_in_a_test_case(self) -> None:
        with capture_after_callbacks() as callbacks:
            self.client.get("/record/j")
        assert callbacks == [CapturedCallback(views.remember, ("j",), {"wait": False})]


class ProjectSettingsTestCaseTests(TestCase):
    """``TestCase`` with the project's own settings (no INLINE), as a newcomer's ``tests.py``.

    On the thread pool the callbacks would commit through connections of their own,
    outside the test's transaction (the rows would outlive its rollback and show up in
    the next test), and could not see its rows: in a test's transaction they run inline.
    """

    def test_after_callbacks_run_inside_the_tests_transaction(self) -> None:
        self.client.get("/note/in-test-case")
        here = threading.current_thread().name
        assert list(Note.objects.values_list("text", "thread")) == [("in-test-case", here)]

    def test_after_commit_under_capture_on_commit_callbacks_runs_inline(self) -> None:
        with self.captureOnCommitCallbacks(execute=True) as hooks:
            self.client.get("/commit/k")
        assert len(hooks) == 1
        assert items(views.recorded) == [("k", True)]

    def test_a_failing_callback_fails_the_request(self) -> None:
        with pytest.raises(RuntimeError, match=r"^the callback failed$"):
            self.client.get("/fail")


# -- the pytest plugin's after_inline with pytest-django ---------------------------------


@pytest.mark.django_db
def test_after_inline_runs_after_commit_under_capture_on_commit_callbacks(
    client: Client,
    after_inline: None,
    django_capture_on_commit_callbacks: t.Any,
    recorded: list[t.Any],
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as hooks:
        client.get("/commit/m")
        assert recorded == []  # the test's transaction never commits
    assert len(hooks) == 1
    assert items(recorded) == [("m", True)]  # at once, in this thread: nothing on the pool


@pytest.mark.django_db(transaction=True)
def test_after_inline_runs_a_commit_after_the_response_inline(
    client: Client, after_inline: None, recorded: list[t.Any]
) -> None:
    with transaction.atomic():  # the view's transaction commits after its response closed
        client.get("/commit/n")
        assert recorded == []
    assert items(recorded) == [("n", True)]  # at once: nothing on the pool


class ThreadPoolTestCaseTests(TestCase):
    """``TestCase`` with the default settings (the thread pool)."""

    def test_capture_on_commit_execute_runs_after_commit_callbacks_in_the_tests_thread(
        self,
    ) -> None:
        # The commit comes after the response closed: the callbacks went to the thread
        # pool (another connection: no TestCase rows), had not run when the block ended,
        # and an async one never ran (issue 21, item 5).
        with self.captureOnCommitCallbacks(execute=True) as hooks:
            self.client.get("/commit/k")
            self.client.get("/commit-async/l")
            assert views.recorded == []  # TestCase's transaction never commits
        assert len(hooks) == 2
        assert items(views.recorded) == [("k", True), "l"]


# -- settings and system checks --------------------------------------------------------


def wsgi_after_messages() -> list[tuple[str, str]]:
    return [(m.id or "", m.msg) for m in checks.run_checks() if (m.id or "").startswith("wsgi_af")]


def test_checks_pass_for_the_project() -> None:
    assert wsgi_after_messages() == []


def test_deploy_check_warns_of_inline_only_under_deploy(settings: SettingsWrapper) -> None:
    settings.WSGI_AFTER = {**getattr(settings, "WSGI_AFTER", {}), "INLINE": True}
    deploy = checks.run_checks(include_deployment_checks=True)
    assert [(m.id, m.msg) for m in deploy if (m.id or "").startswith("wsgi_af")] == [
        (
            "wsgi_after.W001",
            "WSGI_AFTER['INLINE'] is True: every request's callbacks run in the request,"
            " before its response is sent.",
        )
    ]
    assert wsgi_after_messages() == []  # a test or development run is not warned


def test_check_catches_a_misplaced_middleware(settings: SettingsWrapper) -> None:
    settings.MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "wsgi_after.django.AfterMiddleware",
    ]
    assert wsgi_after_messages() == [
        (
            "wsgi_after.E003",
            "'wsgi_after.django.AfterMiddleware' is entry 3 of MIDDLEWARE, below"
            " 'django.middleware.security.SecurityMiddleware' and"
            " 'django.middleware.common.CommonMiddleware': middleware above it runs outside"
            " the request's callbacks, and one that replaces the response would keep them"
            " from ever running.",
        )
    ]
    with pytest.raises(SystemCheckError, match=r"wsgi_after\.E003"):
        call_command("check")


def test_check_catches_a_missing_middleware(settings: SettingsWrapper) -> None:
    settings.MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
    assert wsgi_after_messages() == [
        (
            "wsgi_after.E002",
            "'wsgi_after.django.AfterMiddleware' is not in MIDDLEWARE, so 'after()' raises"
            " 'OutsideRequestError' in views.",
        )
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param([], "'WSGI_AFTER' must be a dict, got 'list'.", id="not-a-dict"),
        pytest.param(
            {"WORKERS": 2},
            "'WSGI_AFTER' has an unknown key 'WORKERS'; the keys are 'MAX_WORKERS',"
            " 'MAX_PENDING', 'ON_FULL', 'DRAIN_TIMEOUT', 'INLINE', 'RUNNER', 'TASKS_BACKEND',"
            " 'ALLOW'.",
            id="unknown-key",
        ),
        pytest.param(
            {"MAX_WORKERS": 0},
            "WSGI_AFTER['MAX_WORKERS'] must be None or an int of at least 1, got 0.",
            id="max-workers",
        ),
        pytest.param(
            {"MAX_PENDING": "10"},
            "WSGI_AFTER['MAX_PENDING'] must be an int of at least 1, got '10'.",
            id="max-pending",
        ),
        pytest.param(
            {"ON_FULL": "wait"},
            "WSGI_AFTER['ON_FULL'] must be one of 'block', 'run' or 'drop', got 'wait'.",
            id="on-full",
        ),
        pytest.param(
            {"DRAIN_TIMEOUT": -1},
            "WSGI_AFTER['DRAIN_TIMEOUT'] must be a number of seconds of at least 0 (inf: no limit),"
            " got -1.",
            id="drain-timeout",
        ),
        pytest.param(  # nan < 0 is False: it passed, then every request's runner refused it
            {"DRAIN_TIMEOUT": float("nan")},
            "WSGI_AFTER['DRAIN_TIMEOUT'] must be a number of seconds of at least 0 (inf: no limit),"
            " got nan.",
            id="drain-timeout-nan",
        ),
        pytest.param(
            {"INLINE": "yes"},
            "WSGI_AFTER['INLINE'] must be True or False, got 'yes'.",
            id="inline",
        ),
        pytest.param(
            {"RUNNER": "celery"},
            "WSGI_AFTER['RUNNER'] must be 'threads' or 'tasks', got 'celery'.",
            id="runner",
        ),
        pytest.param(
            {"TASKS_BACKEND": ""},
            "WSGI_AFTER['TASKS_BACKEND'] must be an alias of the TASKS setting, got ''.",
            id="tasks-backend",
        ),
        pytest.param(
            {"ALLOW": "shop"},
            "WSGI_AFTER['ALLOW'] must be a list of module names, got 'str': write ['myapp.tasks'].",
            id="allow-not-a-list",
        ),
        pytest.param(
            {"ALLOW": ["os"]},
            "WSGI_AFTER['ALLOW'] must not list 'os': a writer of the queue could call its"
            " functions. List only your own modules.",
            id="allow-stdlib",
        ),
    ],
)
def test_check_and_first_request_report_a_bad_setting(
    value: object, message: str, settings: SettingsWrapper, client: Client
) -> None:
    settings.WSGI_AFTER = value
    assert wsgi_after_messages() == [("wsgi_after.E001", message)]
    with pytest.raises(ImproperlyConfigured, match=f"^{re.escape(message)}$"):
        options()


def test_defaults_are_the_cores(settings: SettingsWrapper) -> None:
    settings.WSGI_AFTER = {}
    runner = get_runner()
    assert (runner.max_pending, runner.on_full, runner.drain_timeout) == (1000, "block", 25.0)  # type: ignore[union-attr]
    settings.WSGI_AFTER = {"MAX_WORKERS": 3, "ON_FULL": "drop"}
    runner = get_runner()
    assert (runner.max_workers, runner.on_full) == (3, "drop")  # type: ignore[union-attr]


def test_log_capture_level(log: pytest.LogCaptureFixture) -> None:
    assert logging.getLogger("wsgi_after").isEnabledFor(logging.DEBUG)


def test_after_outside_a_request_names_the_django_fix_and_what_to_do_in_a_command() -> None:
    # A management command, the shell or a worker: no request (issue 25, item 5).
    with pytest.raises(OutsideRequestError) as info:
        after(print)
    assert "Django: 'wsgi_after.django.AfterMiddleware' first in MIDDLEWARE" in str(info.value)
    assert "(a management command, the shell, a worker), call the function itself" in str(
        info.value
    )
