"""The Flask extension: setup, request context in callbacks, and the test client."""

from __future__ import annotations

import gc
import logging
import re
import threading
import typing as t
import weakref

import flask
import pytest
from flask import Flask, g, request, session

from wsgi_after import InlineRunner, Outcome, ThreadRunner, after, outcome
from wsgi_after.flask import After


def make_app(**config: t.Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test", AFTER_INLINE=True, **config)
    return app


def test_init_app_wraps_registers_and_sets_config_defaults() -> None:
    app = Flask(__name__)
    ext = After(app)
    assert app.extensions["wsgi_after"] is ext
    assert type(app.wsgi_app).__name__ == "AfterMiddleware"
    assert {k: v for k, v in app.config.items() if k.startswith("AFTER_")} == {
        "AFTER_MAX_WORKERS": None,
        "AFTER_MAX_PENDING": 1000,
        "AFTER_ON_FULL": "block",
        "AFTER_DRAIN_TIMEOUT": 25.0,
        "AFTER_INLINE": False,
    }
    runner = ext.get_runner(app)
    assert isinstance(runner, ThreadRunner)
    assert runner.name == "wsgi-after-tests.test_flask"


def test_config_keys_configure_the_runner() -> None:
    app = Flask(__name__)
    app.config.update(AFTER_MAX_WORKERS=2, AFTER_MAX_PENDING=9, AFTER_ON_FULL="drop")
    runner = After(app).get_runner(app)
    assert isinstance(runner, ThreadRunner)
    assert (runner.max_workers, runner.max_pending, runner.on_full) == (2, 9, "drop")


def test_bad_config_value_names_the_allowed_ones() -> None:
    app = Flask(__name__)
    app.config["AFTER_ON_FULL"] = "later"
    with pytest.raises(ValueError, match="'on_full' must be one of 'block', 'run' or 'drop'"):
        After(app)


@pytest.mark.parametrize("value", ["false", 0, None])
def test_after_inline_must_be_a_bool(value: object) -> None:
    # "false" read from the environment was true: every callback ran in close().
    app = Flask(__name__)
    app.config["AFTER_INLINE"] = value
    with pytest.raises(ValueError, match=r"^'AFTER_INLINE' must be True or False") as info:
        After(app)
    assert str(info.value) == (
        f"'AFTER_INLINE' must be True or False, got {value!r}. Convert a setting read from"
        " the environment to a bool first."
    )


def test_second_init_app_is_refused() -> None:
    app = Flask(__name__)
    After(app)
    with pytest.raises(RuntimeError) as info:
        After(app)
    assert str(info.value) == (
        "A 'wsgi_after' extension is already registered on this app. Call 'init_app' once per app."
    )


def test_application_factory_gives_each_app_its_own_runner() -> None:
    ext = After()

    def create_app() -> Flask:
        app = Flask(__name__)
        ext.init_app(app)
        return app

    first, second = create_app(), create_app()
    assert first.extensions["wsgi_after"] is second.extensions["wsgi_after"] is ext
    assert ext.get_runner(first) is not ext.get_runner(second)


def test_shared_runner_and_inline_option() -> None:
    runner = InlineRunner()
    app = Flask(__name__)
    assert After(app, runner=runner).get_runner(app) is runner
    inline_app = Flask(__name__)
    assert isinstance(After(inline_app, inline=True).get_runner(inline_app), InlineRunner)


def test_callback_sees_request_session_g_app_and_url_for() -> None:
    app = make_app()
    After(app)
    seen: dict[str, t.Any] = {}

    def audit() -> None:
        seen.update(
            method=request.method,
            path=request.path,
            header=request.headers["X-User"],
            cookie=request.cookies["theme"],
            args=request.args["q"],
            form=request.form["name"],
            session=session["user"],
            g=g.user,
            app=flask.current_app.name,
            url=flask.url_for("orders", _external=False),
            outcome=outcome(),
        )

    @app.post("/orders")
    def orders() -> tuple[str, int]:
        g.user = "ada"
        session["user"] = "ada-session"
        assert request.form["name"] == "tea"  # parsed during the request
        after(audit)
        return "created", 201

    client = app.test_client()
    client.set_cookie("theme", "dark")
    response = client.post(
        "/orders?q=x", data={"name": "tea"}, headers={"X-User": "ada"}, buffered=True
    )
    assert response.status_code == 201
    assert seen == {
        "method": "POST",
        "path": "/orders",
        "header": "ada",
        "cookie": "dark",
        "args": "x",
        "form": "tea",
        "session": "ada-session",
        "g": "ada",
        "app": app.name,
        "url": "/orders",
        "outcome": Outcome(201, True, None),
    }


def test_json_parsed_during_the_request_is_there() -> None:
    app = make_app()
    After(app)
    seen: list[t.Any] = []

    @app.post("/")
    def view() -> str:
        request.get_json()
        after(lambda: seen.append(request.get_json()))
        return ""

    app.test_client().post("/", json={"a": 1}, buffered=True)
    assert seen == [{"a": 1}]


def test_unread_body_reads_as_empty_in_callbacks() -> None:
    app = make_app()
    After(app)
    seen: list[t.Any] = []

    @app.post("/")
    def view() -> str:
        after(lambda: seen.append((request.get_data(), dict(request.form))))
        return ""

    app.test_client().post("/", data=b"never read", buffered=True)
    assert seen == [(b"", {})]


def test_g_is_a_shallow_copy_for_each_callback() -> None:
    app = make_app()
    After(app)
    seen: list[tuple[str, list[str]]] = []

    def change() -> None:
        g.user = "changed"
        g.items.append("from callback")
        seen.append((g.user, list(g.items)))

    @app.get("/")
    def view() -> str:
        g.user = "ada"
        g.items = []
        after(change)
        after(change)
        return ""

    app.test_client().get("/", buffered=True)
    # Each callback starts from the request's g: attributes set by one do not reach the
    # next, while the objects in g are shared (a shallow copy).
    assert seen == [("changed", ["from callback"]), ("changed", ["from callback"] * 2)]


def test_teardown_handlers_run_after_each_callback() -> None:
    app = make_app()
    After(app)
    events: list[str] = []

    @app.teardown_request
    def teardown_request(exc: BaseException | None) -> None:
        events.append(f"teardown_request {type(exc).__name__ if exc else None}")

    @app.teardown_appcontext
    def teardown_app(exc: BaseException | None) -> None:
        events.append("teardown_appcontext")

    def fails() -> None:
        events.append("fails")
        raise ValueError("x")

    @app.get("/")
    def view() -> str:
        after(events.append, "callback")
        after(fails)
        return ""

    app.test_client().get("/", buffered=True)
    assert events == [
        "teardown_request None",  # the request's own
        "teardown_appcontext",
        "callback",
        "teardown_request None",
        "teardown_appcontext",
        "fails",
        "teardown_request ValueError",
        "teardown_appcontext",
    ]


def test_request_tearing_down_is_sent_for_each_callback_without_teardown_functions() -> None:
    # The callback's teardown_request step is skipped only where it would do nothing:
    # a receiver of request_tearing_down (connected after the app served) still gets it.
    app = make_app()
    After(app)
    sent: list[tuple[Flask, str]] = []

    def receiver(sender: Flask, exc: BaseException | None = None, **extra: object) -> None:
        sent.append((sender, type(exc).__name__ if exc else "None"))

    def fails() -> None:
        raise ValueError("x")

    @app.get("/")
    def view() -> str:
        after(lambda: None)
        after(fails)
        return ""

    app.test_client().get("/", buffered=True)
    assert sent == []
    flask.request_tearing_down.connect(receiver, app)
    try:
        app.test_client().get("/", buffered=True)
    finally:
        flask.request_tearing_down.disconnect(receiver, app)
    # The request's own, then each callback's with the callback's error.
    assert sent == [(app, "None"), (app, "None"), (app, "ValueError")]


def test_an_app_class_overriding_do_teardown_request_gets_it_for_each_callback() -> None:
    calls: list[str] = []

    if hasattr(flask.ctx.AppContext, "has_request"):  # Flask 3.2 passes the context first

        class AuditedFlask(Flask):
            def do_teardown_request(  # type: ignore[override,unused-ignore]
                self, ctx: flask.ctx.AppContext, exc: BaseException | None = None
            ) -> None:
                calls.append(request.path)
                super().do_teardown_request(ctx, exc)  # type: ignore[call-arg,arg-type,unused-ignore]

    else:

        class AuditedFlask(Flask):  # type: ignore[no-redef]
            def do_teardown_request(self, *args: t.Any) -> None:
                calls.append(request.path)
                super().do_teardown_request(*args)

    app = AuditedFlask(__name__)
    app.config.update(AFTER_INLINE=True)
    After(app)

    @app.get("/orders")
    def view() -> str:
        after(lambda: None)
        return ""

    app.test_client().get("/orders", buffered=True)
    assert calls == ["/orders", "/orders"]  # the request's own, then the callback's


def test_after_from_hooks_error_handlers_and_streams() -> None:
    app = make_app()
    After(app)
    ran: list[str] = []

    @app.before_request
    def before() -> None:
        after(ran.append, f"before_request {request.path}")

    @app.after_request
    def after_request(response: flask.Response) -> flask.Response:
        after(ran.append, "after_request")
        return response

    @app.errorhandler(404)
    def missing(error: Exception) -> tuple[str, int]:
        after(ran.append, "errorhandler")
        return "missing", 404

    @app.get("/stream")
    def stream() -> flask.Response:
        def body() -> t.Iterator[str]:
            yield "a"
            after(ran.append, f"stream {request.path}")
            yield "b"

        return flask.Response(flask.stream_with_context(body()))

    client = app.test_client()
    assert client.get("/stream", buffered=True).data == b"ab"
    assert ran == ["before_request /stream", "after_request", "stream /stream"]
    ran.clear()
    client.get("/nothing", buffered=True)
    assert ran == ["before_request /nothing", "errorhandler", "after_request"]


def test_after_this_request_in_a_callback_changes_nothing() -> None:
    # The response is gone; Flask's public API gives no way to refuse the call, so it
    # is documented as having no effect: the function is never called.
    app = make_app()
    After(app)
    ran: list[str] = []

    def set_cookie_late() -> None:
        @flask.after_this_request
        def add_cookie(response: flask.Response) -> flask.Response:
            ran.append("add_cookie")
            return response

        ran.append("callback")

    @app.get("/")
    def view() -> str:
        after(set_cookie_late)
        return ""

    response = app.test_client().get("/", buffered=True)
    assert ran == ["callback"]
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("how", ["with", "buffered", "close"])
def test_test_client_runs_callbacks_when_it_closes(how: str) -> None:
    app = make_app()
    After(app)
    ran: list[str] = []

    @app.get("/")
    def view() -> str:
        after(ran.append, "ran")
        return "ok"

    client = app.test_client()
    if how == "with":
        with client.get("/") as response:
            assert ran == []
        assert ran == ["ran"]
    elif how == "buffered":
        client.get("/", buffered=True)
        assert ran == ["ran"]
    else:
        response = client.get("/")
        assert ran == []  # the test client does not close on its own
        response.close()
        assert ran == ["ran"]


def test_threaded_runner_with_after_wait(after_wait: t.Callable[..., None]) -> None:
    app = Flask(__name__)
    After(app)
    done = threading.Event()

    @app.get("/")
    def view() -> str:
        after(done.set)
        return ""

    app.test_client().get("/", buffered=True)
    after_wait(timeout=5)
    assert done.is_set()


def test_nothing_runs_per_request_in_flask() -> None:
    # The request is captured by after()'s own contextvars snapshot: the extension adds
    # no before_request, after_request or teardown handler to every request.
    app = Flask(__name__)
    After(app)
    assert app.before_request_funcs == {}
    assert app.after_request_funcs == {}
    assert app.teardown_request_funcs == {}


def test_nested_after_starts_from_the_requests_g() -> None:
    app = make_app()
    After(app)
    seen: list[tuple[str, str]] = []

    def inner() -> None:
        seen.append(("inner", g.user))

    def outer() -> None:
        seen.append(("outer", g.user))
        g.user = "changed in outer"
        after(inner)

    @app.get("/")
    def view() -> str:
        g.user = "ada"
        after(outer)
        return ""

    app.test_client().get("/", buffered=True)
    assert seen == [("outer", "ada"), ("inner", "ada")]


def test_callback_context_is_new_each_time_and_not_the_requests() -> None:
    app = make_app()
    After(app)
    contexts: list[object] = []

    def record() -> None:
        contexts.append(flask.g._get_current_object())

    @app.get("/")
    def view() -> str:
        contexts.append(flask.g._get_current_object())
        after(record)
        after(record)
        return ""

    app.test_client().get("/", buffered=True)
    assert len(contexts) == 3
    assert len({id(c) for c in contexts}) == 3


def test_session_changes_of_the_view_are_seen() -> None:
    app = make_app()
    After(app)
    seen: list[t.Any] = []

    @app.get("/")
    def view() -> str:
        session["cart"] = ["tea"]
        after(lambda: seen.append((session["cart"], session.modified)))
        return ""

    app.test_client().get("/", buffered=True)
    assert seen == [(["tea"], True)]


def test_plain_generator_body_gets_the_request_rebuilt() -> None:
    # No stream_with_context: Flask's context is gone while the body is iterated, so
    # the callback gets a context rebuilt from the environ (body empty).
    app = make_app()
    After(app)
    seen: list[t.Any] = []

    def record() -> None:
        seen.append((flask.current_app.name, request.path, request.args["q"], request.get_data()))

    @app.post("/stream")
    def stream() -> flask.Response:
        def body() -> t.Iterator[str]:
            yield "a"
            after(record)

        return flask.Response(body())

    assert app.test_client().post("/stream?q=1", data=b"x", buffered=True).data == b"a"
    assert seen == [(app.name, "/stream", "1", b"")]


@pytest.mark.parametrize(
    "propagate", [pytest.param(False, id="500"), pytest.param(True, id="raised")]
)
def test_view_error_is_the_outcome_error(propagate: bool) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=propagate)
    After(app)
    seen: list[Outcome | None] = []
    error = ValueError("view failed")

    @app.get("/")
    def view() -> str:
        after(lambda: seen.append(outcome()))
        raise error

    client = app.test_client()
    if propagate:
        with pytest.raises(ValueError, match="view failed"):
            client.get("/")
        assert seen == [Outcome(500, False, error)]  # the server answers 500 itself
    else:
        assert client.get("/", buffered=True).status_code == 500
        assert seen == [Outcome(500, True, error)]


def test_error_handled_by_an_errorhandler_for_500_is_recorded() -> None:
    app = make_app()
    After(app)
    seen: list[Outcome | None] = []
    error = KeyError("k")

    @app.errorhandler(500)
    def server_error(e: Exception) -> tuple[str, int]:
        return "sorry", 500

    @app.get("/")
    def view() -> str:
        after(lambda: seen.append(outcome()))
        raise error

    assert app.test_client().get("/", buffered=True).data == b"sorry"
    assert seen == [Outcome(500, True, error)]


def test_http_errors_and_handled_errors_leave_no_error() -> None:
    app = make_app()
    After(app)
    seen: list[Outcome | None] = []

    @app.errorhandler(LookupError)
    def lookup(e: Exception) -> tuple[str, int]:
        return "handled", 409

    @app.get("/abort")
    def aborts() -> str:
        after(lambda: seen.append(outcome()))
        flask.abort(404)

    @app.get("/handled")
    def handled() -> str:
        after(lambda: seen.append(outcome()))
        raise LookupError("x")

    client = app.test_client()
    assert client.get("/abort", buffered=True).status_code == 404
    assert client.get("/handled", buffered=True).status_code == 409
    assert seen == [Outcome(404, True, None), Outcome(409, True, None)]


def test_a_deleted_app_is_freed_without_the_garbage_collector() -> None:
    ran = threading.Event()
    gc.disable()
    try:
        app = Flask(__name__)
        ext = After(app, inline=True)

        @app.get("/")
        def view() -> str:
            after(ran.set)
            return ""

        app.test_client().get("/", buffered=True)
        assert ran.is_set()
        ref = weakref.ref(app)
        del app, view
        assert ref() is None
        assert list(ext._runners) == []
    finally:
        gc.enable()


def test_a_threaded_apps_runner_is_shut_down_with_it() -> None:
    ext = After()
    first, second = Flask("first"), Flask("second")
    ext.init_app(first)
    ext.init_app(second)
    done = threading.Event()

    @first.get("/")
    def view() -> str:
        after(done.wait, 5)
        return ""

    first.test_client().get("/", buffered=True)
    done.set()
    assert ext.shutdown(first, timeout=5) is True
    runner = ext.get_runner(first)
    assert isinstance(runner, ThreadRunner)
    assert runner.stats().completed == 1
    assert ext.shutdown(timeout=5) is True  # every app's runner, once each


def test_get_runner_of_an_app_without_init_app_names_the_fix() -> None:
    app = Flask("elsewhere")
    ext = After()
    message = (
        "The Flask app 'elsewhere' is not registered on this 'After' extension."
        " Call 'init_app(app)' on it first."
    )
    with pytest.raises(RuntimeError, match="^" + re.escape(message) + "$"):
        ext.get_runner(app)
    with pytest.raises(RuntimeError, match="^" + re.escape(message) + "$"):
        ext.shutdown(app)


def test_shutdown_reports_what_could_not_run(log: pytest.LogCaptureFixture) -> None:
    app = Flask(__name__)
    ext = After(app, max_workers=1)
    release = threading.Event()
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    @app.get("/")
    def view() -> str:
        after(block)
        return ""

    client = app.test_client()
    client.get("/", buffered=True)
    assert started.wait(10)
    client.get("/", buffered=True)  # queued behind the blocked one
    try:
        assert ext.shutdown(timeout=0.1) is False
    finally:
        release.set()
    assert any("was not run" in r.getMessage() for r in log.records)


def test_after_in_teardown_request_runs_once_and_does_not_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="wsgi_after")
    app = Flask(__name__)
    After(app, runner=InlineRunner())
    runs: list[str] = []

    @app.teardown_request
    def audit_teardown(exc: BaseException | None) -> None:
        after(runs.append, "teardown")  # runs for the request, and for each callback's context

    @app.get("/")
    def view() -> str:
        after(runs.append, "view")
        return "ok"

    with app.test_client().get("/"):
        pass
    assert runs == ["view", "teardown"]  # the callbacks' own teardowns queue nothing
    ignored = [r for r in caplog.records if r.getMessage().startswith("Ignored 'after(")]
    assert len(ignored) == 1  # logged once per request, at DEBUG
    assert ignored[0].levelname == "DEBUG"


def _environ(path: str, user: str) -> dict[str, t.Any]:
    from werkzeug.test import EnvironBuilder

    return EnvironBuilder(path=path, headers=[("X-User", user)]).get_environ()


def test_callback_reads_its_request_after_the_server_reused_the_environ() -> None:
    # uWSGI clears and refills the same environ dict for its next request once the
    # response is closed: the callback, and the headers the view passed it, read the
    # snapshot of their own request.
    runner = ThreadRunner(max_workers=1, name="test-flask-reuse")
    app = Flask(__name__)
    After(app, runner=runner)
    gate, done = threading.Event(), threading.Event()
    seen: dict[str, t.Any] = {}

    def audit(headers: t.Any) -> None:
        seen.update(
            header=request.headers["X-User"],
            passed=headers["X-User"],
            path=request.path,
            environ=request.environ["PATH_INFO"],
        )
        done.set()

    @app.get("/orders")
    def orders() -> str:
        after(audit, request.headers)
        return "ok"

    try:
        runner.submit(lambda: gate.wait(10))  # the worker waits: the server goes first
        environ = _environ("/orders", "ada")
        response = app(environ, lambda status, headers, exc_info=None: lambda data: None)
        assert b"".join(response) == b"ok"
        response.close()  # type: ignore[attr-defined]
        environ.clear()
        environ.update(_environ("/next", "mallory"))
        gate.set()
        assert done.wait(10)
    finally:
        gate.set()
        runner.shutdown(5)
    assert seen == {"header": "ada", "passed": "ada", "path": "/orders", "environ": "/orders"}


def test_callback_context_builds_nothing_of_the_request_again() -> None:
    # Flask < 3.2: the request's own request context stays current for the callback,
    # so no URL adapter is bound and nothing is routed again; Flask 3.2's one
    # context binds its URL adapter again (its routing is kept).
    bound: list[str] = []

    class CountingFlask(Flask):
        def create_url_adapter(self, request: t.Any) -> t.Any:
            if request is not None:
                bound.append(request.path)
            return super().create_url_adapter(request)

    app = CountingFlask(__name__)
    app.config.update(AFTER_INLINE=True)
    After(app)
    seen: list[t.Any] = []

    def record() -> None:
        rule = request.url_rule
        assert rule is not None
        seen.append((rule.rule, request.view_args, flask.url_for("order", n=2)))

    @app.get("/orders/<int:n>")
    def order(n: int) -> str:
        after(record)
        return ""

    app.test_client().get("/orders/1", buffered=True)
    assert seen == [("/orders/<int:n>", {"n": 1}, "/orders/2")]
    merged = hasattr(flask.ctx.AppContext, "has_request")  # Flask 3.2
    assert bound == ["/orders/1"] * (2 if merged else 1)


def test_teardown_request_of_a_callback_sees_its_request_and_its_g() -> None:
    app = make_app()
    After(app)
    seen: list[tuple[str, str, str | None]] = []

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        seen.append((request.path, g.user, type(exc).__name__ if exc else None))

    def change() -> None:
        g.user = "callback"
        raise LookupError("x")

    @app.get("/orders")
    def orders() -> str:
        g.user = "ada"
        after(change)
        return ""

    app.test_client().get("/orders", buffered=True)
    assert seen == [("/orders", "ada", None), ("/orders", "callback", "LookupError")]


def test_callback_failure_is_logged_inside_its_request(log: pytest.LogCaptureFixture) -> None:
    # A log filter or handler that reads the request (a request id, the user) can.
    app = make_app()
    After(app)
    paths: list[str | None] = []

    class RequestPath(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            paths.append(request.path if flask.has_request_context() else None)
            return True

    def fails() -> None:
        raise ValueError("x")

    @app.get("/orders")
    def orders() -> str:
        after(fails)
        return ""

    logger = logging.getLogger("wsgi_after")
    path_filter = RequestPath()
    logger.addFilter(path_filter)
    try:
        app.test_client().get("/orders", buffered=True)
    finally:
        logger.removeFilter(path_filter)
    assert paths == ["/orders"]
    assert "Callback 'tests.test_flask.test_callback_failure" in log.records[-1].getMessage()
