"""The Flask extension's contract, as an app sees it through Flask and WSGI.

What a user relies on and ``tests/test_flask.py`` leaves open: options and config
keys reaching the runner, a middleware already in ``app.wsgi_app``, a server
that reuses its environ, the request rebuilt for a plain generator body, errors
at the call site, and ``shutdown()`` over the runners of several apps. Each test
goes through a Flask app, its ``wsgi_app`` or a runner given to the extension,
never through the extension's private parts.
"""

from __future__ import annotations

import gc
import threading
import time
import typing as t
import weakref

import flask
import pytest
import werkzeug.test
from flask import Flask, g, request

from wsgi_after import AfterMiddleware, InlineRunner, Outcome, ThreadRunner, after, outcome
from wsgi_after.flask import After

from .helpers import TIMEOUT, serve

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def make_app(**config: t.Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test", AFTER_INLINE=True, **config)
    return app


class LaterRunner:
    """A runner (the ``Runner`` protocol) that keeps each request's callbacks until
    ``run()``: a worker that gets to them after the server moved on. It records
    each ``shutdown(timeout)`` and answers ``drained``."""

    def __init__(self, drained: bool = True) -> None:
        self.tasks: list[t.Callable[[], object]] = []
        self.shutdowns: list[float | None] = []
        self.drained = drained

    def submit(self, fn: t.Callable[[], object], /) -> None:
        self.tasks.append(fn)

    def run(self) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task()

    def wait_idle(self, timeout: float | None = None) -> bool:
        return not self.tasks

    def shutdown(self, timeout: float | None = None) -> bool:
        self.shutdowns.append(timeout)
        return self.drained


class DrainingRunner(LaterRunner):
    """A runner that also stops in two steps, as ``ThreadRunner`` and
    ``CeleryRunner`` do (``wsgi_after.lifecycle.Drainable``)."""

    drain_timeout = 7.0

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float | None]] = []

    def begin_shutdown(self) -> None:
        self.calls.append(("begin", None))

    def finish_shutdown(self, deadline: float | None) -> bool:
        self.calls.append(("finish", deadline))
        return True


# Options and config keys


def test_constructor_options_are_the_config_defaults_of_every_app() -> None:
    ext = After(max_workers=3, max_pending=7, on_full="run", drain_timeout=4.5)
    app = Flask(__name__)
    ext.init_app(app)
    assert {k: v for k, v in app.config.items() if k.startswith("AFTER_")} == {
        "AFTER_MAX_WORKERS": 3,
        "AFTER_MAX_PENDING": 7,
        "AFTER_ON_FULL": "run",
        "AFTER_DRAIN_TIMEOUT": 4.5,
        "AFTER_INLINE": False,
    }
    runner = ext.get_runner(app)
    assert isinstance(runner, ThreadRunner)
    assert (runner.max_workers, runner.max_pending, runner.on_full, runner.drain_timeout) == (
        3,
        7,
        "run",
        4.5,
    )
    # An app's own config wins over the extension's defaults.
    other = Flask(__name__)
    other.config.update(AFTER_MAX_WORKERS=5, AFTER_DRAIN_TIMEOUT=2)
    ext.init_app(other)
    other_runner = ext.get_runner(other)
    assert isinstance(other_runner, ThreadRunner)
    assert (other_runner.max_workers, other_runner.max_pending, other_runner.drain_timeout) == (
        5,
        7,
        2.0,
    )


def test_inline_option_and_config_key() -> None:
    ext = After(inline=True)
    inline_app, threaded_app = Flask(__name__), Flask(__name__)
    threaded_app.config["AFTER_INLINE"] = False
    ext.init_app(inline_app)
    ext.init_app(threaded_app)
    assert inline_app.config["AFTER_INLINE"] is True
    assert isinstance(ext.get_runner(inline_app), InlineRunner)
    assert isinstance(ext.get_runner(threaded_app), ThreadRunner)


def test_a_given_runner_is_used_whatever_the_config_says() -> None:
    runner = LaterRunner()
    app = Flask(__name__)
    app.config.update(AFTER_INLINE=True, AFTER_MAX_WORKERS=1)
    ext = After(app, runner=runner)
    assert ext.get_runner(app) is runner
    ran: list[str] = []

    @app.get("/")
    def view() -> str:
        after(ran.append, request.path)
        return ""

    app.test_client().get("/", buffered=True)
    assert ran == []  # on the given runner, not inline
    runner.run()
    assert ran == ["/"]


def test_get_runner_of_an_app_without_the_extension_raises_runtime_error() -> None:
    ext = After()
    ext.init_app(Flask(__name__))
    with pytest.raises(RuntimeError, match=r"Call 'init_app\(app\)' on it first\.$"):
        ext.get_runner(Flask(__name__))


# How the app is wrapped


def test_a_middleware_already_in_wsgi_app_is_kept() -> None:
    app = make_app()
    seen: list[tuple[str, str]] = []

    class Tagging:
        def __init__(self, wsgi_app: WSGIApplication) -> None:
            self.wsgi_app = wsgi_app

        def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
            environ["tagged"] = "yes"
            return self.wsgi_app(environ, start_response)

    app.wsgi_app = Tagging(app.wsgi_app)  # type: ignore[method-assign]
    After(app)

    @app.get("/tagged")
    def view() -> str:
        g.user = "ada"
        after(lambda: seen.append((request.environ["tagged"], g.user)))
        return str(request.environ["tagged"])

    response = app.test_client().get("/tagged", buffered=True)
    assert response.data == b"yes"
    assert seen == [("yes", "ada")]


def test_a_wsgi_app_kept_after_its_app_was_freed_raises_a_clear_error() -> None:
    app = Flask(__name__)
    After(app, inline=True)
    wsgi_app = app.wsgi_app
    ref = weakref.ref(app)
    del app
    gc.collect()
    assert ref() is None
    with pytest.raises(RuntimeError) as info:
        serve(wsgi_app)
    assert str(info.value) == (
        "The Flask app of this 'wsgi_app' was freed. Keep a reference to the app"
        " while it serves requests."
    )


# Errors of the view


def test_view_errors_are_recorded_only_for_apps_with_the_extension() -> None:
    with_extension = make_app()
    After(with_extension)
    plain = make_app()
    plain.wsgi_app = AfterMiddleware(plain.wsgi_app, runner=InlineRunner())  # type: ignore[method-assign]
    seen: list[Outcome | None] = []
    error = ValueError("view failed")

    for app in (with_extension, plain):

        @app.get("/")
        def view() -> str:
            after(lambda: seen.append(outcome()))
            raise error

    assert with_extension.test_client().get("/", buffered=True).status_code == 500
    assert plain.test_client().get("/", buffered=True).status_code == 500
    # Plain AfterMiddleware sees the 500 response, not the exception Flask handled.
    assert seen == [Outcome(500, True, error), Outcome(500, True, None)]


def test_flask_error_handling_outside_a_wsgi_call_still_gives_the_500() -> None:
    # Unit tests of error handling call Flask inside test_request_context(): no WSGI
    # call, so no request of the middleware, and Flask's 500 must come out as usual.
    app = make_app()
    After(app)
    handled: list[str] = []

    @app.errorhandler(500)
    def server_error(e: Exception) -> tuple[str, int]:
        handled.append(type(e).__name__)
        return "sorry", 500

    error = ValueError("view failed")
    with app.test_request_context("/") as ctx:
        # Flask 3.2 passes the (merged) context to its error handling methods.
        merged = hasattr(flask.ctx.AppContext, "has_request")
        handle: t.Any = app.handle_exception
        response = handle(ctx, error) if merged else handle(error)
    assert (response.status_code, response.get_data(), handled) == (
        500,
        b"sorry",
        ["InternalServerError"],
    )


def test_a_failing_callback_is_logged_with_the_request_and_the_next_one_runs(
    log: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    After(app)
    ran: list[str] = []

    def audit() -> None:
        raise ValueError("audit failed")

    @app.post("/orders")
    def view() -> str:
        after(audit)
        after(lambda: ran.append(request.path))
        return ""

    app.test_client().post("/orders", buffered=True)
    assert ran == ["/orders"]
    [record] = [r for r in log.records if r.levelname == "ERROR"]
    assert record.getMessage() == (
        "Callback 'tests.test_flask_contract.test_a_failing_callback_is_logged_with_the_"
        "request_and_the_next_one_runs.<locals>.audit' queued by 'POST /orders' raised ValueError."
    )
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "audit failed"


# A server that reuses its environ (uWSGI) once the response is closed


def test_callbacks_read_the_request_after_the_server_cleared_its_environ() -> None:
    runner = LaterRunner()
    app = make_app()
    After(app, runner=runner)
    seen: list[tuple[str, str, str, str]] = []

    def audit() -> None:
        seen.append(
            (
                request.path,
                request.args["q"],
                request.headers["X-User"],
                request.environ["PATH_INFO"],
            )
        )

    @app.get("/orders")
    def view() -> str:
        after(audit)
        after(audit)  # the second callback reads the same request
        return ""

    environ = werkzeug.test.EnvironBuilder("/orders?q=1", headers=[("X-User", "ada")]).get_environ()
    assert serve(app, environ=environ).status == "200 OK"
    environ.clear()  # the server reuses the dict for its next request
    runner.run()
    assert seen == [("/orders", "1", "ada", "/orders")] * 2


def test_plain_generator_callbacks_read_the_request_after_the_environ_was_cleared() -> None:
    runner = LaterRunner()
    app = make_app()
    After(app, runner=runner)
    seen: list[tuple[str, str, str]] = []

    @app.get("/stream")
    def stream() -> flask.Response:
        def body() -> t.Iterator[str]:
            yield "a"
            after(lambda: seen.append((request.path, request.args["q"], request.headers["X-User"])))

        return flask.Response(body())

    environ = werkzeug.test.EnvironBuilder("/stream?q=2", headers=[("X-User", "ada")]).get_environ()
    assert serve(app, environ=environ).body == b"a"
    environ.clear()
    runner.run()
    assert seen == [("/stream", "2", "ada")]


# The request rebuilt for a callback queued outside Flask's context


def test_rebuilt_request_has_an_empty_body_even_from_a_terminated_stream() -> None:
    # With 'wsgi.input_terminated' (chunked uploads) Werkzeug reads the server's
    # stream to its end: a callback must never read the server's input.
    app = make_app()
    After(app)
    seen: list[tuple[bytes, str | None]] = []

    @app.post("/upload")
    def upload() -> flask.Response:
        def body() -> t.Iterator[str]:
            yield "a"
            after(lambda: seen.append((request.get_data(), request.headers.get("Content-Length"))))

        return flask.Response(body())

    response = app.test_client().post(
        "/upload",
        data=b"never read",
        environ_overrides={"wsgi.input_terminated": True},
        buffered=True,
    )
    assert response.data == b"a"
    assert seen == [(b"", "0")]  # its headers say so too


def test_rebuilt_request_context_is_torn_down_once_per_callback(
    log: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    After(app)
    events: list[str] = []

    @app.teardown_request
    def teardown_request(exc: BaseException | None) -> None:
        events.append(f"teardown_request {request.path}")

    @app.teardown_appcontext
    def teardown_app(exc: BaseException | None) -> None:
        events.append("teardown_appcontext")

    @app.get("/stream")
    def stream() -> flask.Response:
        def body() -> t.Iterator[str]:
            yield "a"
            after(events.append, "first")
            after(events.append, "second")

        return flask.Response(body())

    app.test_client().get("/stream", buffered=True)
    assert events == [
        "teardown_request /stream",  # the request's own
        "teardown_appcontext",
        "first",
        "teardown_request /stream",
        "teardown_appcontext",
        "second",
        "teardown_request /stream",
        "teardown_appcontext",
    ]
    assert [r.getMessage() for r in log.records if r.levelname == "ERROR"] == []


def test_callbacks_get_their_own_g_inside_an_app_context_of_the_test() -> None:
    # Tests often hold 'with app.app_context():' around the client; a callback run
    # inline there gets a g of its own, and what it sets stays there.
    app = make_app()
    After(app)
    seen: list[tuple[str, bool, bool]] = []

    def record(kind: str) -> None:
        seen.append((kind, "marker" in g, request.path == "/stream"))
        g.leaked = True

    @app.get("/stream")
    def stream() -> flask.Response:
        def body() -> t.Iterator[str]:
            yield "a"
            after(record, "generator")

        return flask.Response(body())

    with app.app_context():
        g.marker = True
        client = app.test_client()
        client.get("/stream", buffered=True)
        assert "leaked" not in g
        assert seen == [("generator", False, True)]


# shutdown()


def test_shutdown_of_one_app_leaves_the_other_apps_runners_running() -> None:
    ext = After()
    first, second = Flask("first"), Flask("second")
    ext.init_app(first)
    ext.init_app(second)
    threads: dict[str, threading.Thread] = {}
    done = {"first": threading.Event(), "second": threading.Event()}

    def record(name: str) -> None:
        threads[name] = threading.current_thread()
        done[name].set()

    for app in (first, second):

        @app.get("/")
        def view() -> str:
            after(record, flask.current_app.name)
            return ""

    try:
        assert ext.shutdown(first, timeout=TIMEOUT) is True
        # A stopped runner runs what comes later in the thread that closes the response.
        first.test_client().get("/", buffered=True)
        assert done["first"].is_set()
        assert threads["first"] is threading.current_thread()
        second.test_client().get("/", buffered=True)
        assert done["second"].wait(TIMEOUT)
        assert threads["second"] is not threading.current_thread()
    finally:
        assert ext.shutdown(timeout=TIMEOUT) is True


def test_shutdown_gives_a_runner_the_time_left_and_passes_on_its_answer() -> None:
    runner = LaterRunner(drained=False)
    app, other = Flask(__name__), Flask(__name__)
    ext = After(runner=runner)
    ext.init_app(app)
    ext.init_app(other)
    assert ext.shutdown(timeout=30) is False  # the runner could not drain
    assert ext.shutdown(app, timeout=0) is False
    [whole, none_left] = runner.shutdowns  # shared by both apps: stopped once a call
    assert whole is not None
    assert 20 < whole <= 30
    assert none_left == 0.0


class TimedRunner(LaterRunner):
    """A runner with a ``drain_timeout``, as ``ThreadRunner`` has."""

    drain_timeout = 30.0


@pytest.mark.parametrize(
    ("runner_class", "least", "most"),
    [
        pytest.param(TimedRunner, 20.0, 30.0, id="its drain_timeout"),
        pytest.param(LaterRunner, 0.0, 0.0, id="none: no wait"),
    ],
)
def test_shutdown_without_timeout_waits_for_the_runners_drain_timeout(
    runner_class: type[LaterRunner], least: float, most: float
) -> None:
    runner = runner_class()  # one per run: a parameter's object outlives the test
    app = Flask(__name__)
    ext = After(app, runner=runner)
    assert ext.shutdown() is True
    [timeout] = runner.shutdowns
    assert timeout is not None
    assert least <= timeout <= most


def test_shutdown_of_an_extension_without_apps_is_true() -> None:
    assert After().shutdown() is True


def test_shutdown_stops_a_two_step_runner_then_drains_it_by_one_deadline() -> None:
    runner = DrainingRunner()
    app = Flask(__name__)
    ext = After(app, runner=runner)
    assert ext.shutdown() is True
    [(begin, _), (finish, deadline)] = runner.calls
    assert (begin, finish) == ("begin", "finish")
    assert deadline is not None
    assert 0 < deadline - time.monotonic() <= 7  # its drain_timeout (7 s) from the call
    assert runner.shutdowns == []


@pytest.mark.parametrize("how", ["argument", "drain_timeout"])
def test_shutdown_with_an_infinite_timeout_waits_without_limit(how: str) -> None:
    app = Flask(__name__)
    if how == "argument":
        ext = After(app, drain_timeout=5)
        timeout: float | None = float("inf")
    else:
        ext = After(app, drain_timeout=float("inf"))
        timeout = None
    ran = threading.Event()

    @app.get("/")
    def index() -> str:
        after(ran.set)
        return "ok"

    app.test_client().get("/", buffered=True)
    assert ext.shutdown(timeout=timeout) is True
    assert ran.is_set()


@pytest.mark.parametrize("bad", [float("nan"), -1.0])
def test_shutdown_refuses_a_nan_or_negative_timeout_before_stopping_anything(bad: float) -> None:
    app = Flask(__name__)
    ext = After(app)
    with pytest.raises(ValueError, match="'timeout' must be a number of seconds"):
        ext.shutdown(timeout=bad)
    runner = ext.get_runner(app)
    assert isinstance(runner, ThreadRunner)
    ran = threading.Event()
    runner.submit(ran.set)  # still running: not stopped by the refused call
    assert ran.wait(TIMEOUT)
    assert ext.shutdown(timeout=TIMEOUT) is True


@pytest.mark.parametrize("body", ["view", "plain generator"])
def test_teardown_handlers_of_a_failing_callback_get_its_exception(
    body: str, log: pytest.LogCaptureFixture
) -> None:
    # As for a request: teardown_request and teardown_appcontext see the error that
    # ended the callback's context (a database session rolls back instead of committing).
    app = make_app()
    After(app)
    torn_down: list[tuple[str, str, BaseException | None]] = []
    failure = ValueError("the callback failed")

    @app.teardown_request
    def teardown_request(exc: BaseException | None) -> None:
        torn_down.append(("request", request.path, exc))

    @app.teardown_appcontext
    def teardown_app(exc: BaseException | None) -> None:
        torn_down.append(("app", request.path if flask.has_request_context() else "-", exc))

    def fail() -> None:
        raise failure

    @app.get("/view")
    def view() -> str:
        after(fail)
        return "ok"

    @app.get("/stream")
    def stream() -> flask.Response:
        def chunks() -> t.Iterator[str]:
            yield "a"
            after(fail)

        return flask.Response(chunks())

    path = "/view" if body == "view" else "/stream"
    app.test_client().get(path, buffered=True)
    own = [entry for entry in torn_down if entry[2] is failure]
    assert [kind for kind, _, _ in own] == ["request", "app"], torn_down
    assert own[0][1] == path
    assert [r.exc_info[1] for r in log.records if r.exc_info] == [failure]
