"""The Flask extension: callbacks run with the request's context pushed.

::

    from flask import Flask, g, request
    from wsgi_after import after
    from wsgi_after.flask import After

    app = Flask(__name__)
    After(app)

    @app.post("/orders")
    def create_order():
        g.user = "ada"
        after(audit)  # audit() can read request, session and g
        return "created", 201

Flask pops the request context before the server sends and closes the response,
so a callback would otherwise see no request at all. The extension instead runs
each callback inside a fresh context for the *same* request: the same
``request`` and ``session`` objects, a shallow copy of ``g`` as the request left
it, and ``current_app`` and ``url_for`` working. The context is popped after each
callback, so ``teardown_request`` and ``teardown_appcontext`` run once for it.

Nothing is captured while the request runs: :func:`~wsgi_after.after` already
keeps a copy of the :mod:`contextvars` context, in which Flask's context of the
request is still the current one. The callback's context is built from it, on
Flask's public API only, when the callback runs (so a request that queues
nothing pays nothing for it).

What cannot work, because the response is gone: setting cookies or headers
(``after_this_request`` in a callback has no effect), and reading uploaded files
(already closed). ``request.form`` and ``request.get_json()`` hold what was
parsed during the request; a body never read during the request reads as empty.
"""

from __future__ import annotations

import contextvars
import io
import time
import types
import typing as t
import weakref

import flask
import flask.ctx
from flask import Flask, got_request_exception
from werkzeug.datastructures import EnvironHeaders

from . import current_chain
from .middleware import AfterMiddleware
from .runner import InlineRunner, Runner, ThreadRunner

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: Flask 3.2 merged the request context into the app context (``AppContext(app,
#: request=..., session=...)``); earlier versions push an app context, then a
#: ``RequestContext(app, environ, request=..., session=...)``.
_MERGED_CONTEXTS = hasattr(flask.ctx.AppContext, "has_request")
_ContextBase: t.Any = flask.ctx.AppContext if _MERGED_CONTEXTS else flask.ctx.RequestContext


class _RoutedContext(_ContextBase):  # type: ignore[misc]
    """Flask's request context for a request that was already routed."""

    def match_request(self) -> None:
        """Keep the request's own ``url_rule`` and ``view_args`` (no second routing)."""


#: What the request left for its callbacks: its app, request, session and ``g``.
#: Set while a callback runs, so that ``after()`` inside a callback (whose
#: snapshot holds the callback's context) still starts from the request's own.
_request_state: contextvars.ContextVar[tuple[Flask, t.Any, t.Any, t.Any] | None] = (
    contextvars.ContextVar("wsgi_after.flask.request_state", default=None)
)


class After:
    """Runs :func:`wsgi_after.after` callbacks in Flask apps, with the request's context.

    Works with one app (``After(app)``) or with application factories (one
    ``After()`` and ``init_app(app)`` for each app; each app gets its own runner
    unless ``runner`` is given). Options given here are the defaults for the
    ``AFTER_*`` config keys read by :meth:`init_app`.

    The extension holds its apps weakly, and the app holds its wrapped
    ``wsgi_app`` without a reference cycle, so a deleted app is freed at once
    (reference counting, no garbage-collector pass).

    Error policy: a view that raises becomes Flask's 500 response, and the
    callbacks see the view's exception as ``outcome().error`` (recorded from
    Flask's ``got_request_exception`` signal).

    :param app: the app to set up at once.
    :param runner: the runner every app shares, instead of one built per app.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        runner: Runner | None = None,
        max_workers: int | None = None,
        max_pending: int = 1000,
        on_full: t.Literal["block", "run", "drop"] = "block",
        drain_timeout: float = 25.0,
        inline: bool = False,
    ) -> None:
        self.runner = runner
        self._defaults = {
            "AFTER_MAX_WORKERS": max_workers,
            "AFTER_MAX_PENDING": max_pending,
            "AFTER_ON_FULL": on_full,
            "AFTER_DRAIN_TIMEOUT": drain_timeout,
            "AFTER_INLINE": inline,
        }
        self._runners: weakref.WeakKeyDictionary[Flask, Runner] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` in :class:`~wsgi_after.AfterMiddleware` and register.

        Reads these config keys, setting each to its default when missing:

        - ``AFTER_MAX_WORKERS``: worker threads (None: ``min(32, cpu_count + 4)``).
        - ``AFTER_MAX_PENDING``: requests' chains that may wait (1000).
        - ``AFTER_ON_FULL``: ``"block"``, ``"run"`` or ``"drop"`` when they are full.
        - ``AFTER_DRAIN_TIMEOUT``: seconds to drain at exit (25.0).
        - ``AFTER_INLINE``: True runs the callbacks synchronously in ``close()``
          (:class:`~wsgi_after.InlineRunner`), for debugging.

        The keys are ignored when the extension was given a ``runner``.

        :raises RuntimeError: if the app already has the extension.
        :raises ValueError: if a config value is out of range.
        """
        if "wsgi_after" in app.extensions:
            raise RuntimeError(
                "A 'wsgi_after' extension is already registered on this app."
                " Call 'init_app' once per app."
            )
        for key, value in self._defaults.items():
            app.config.setdefault(key, value)
        runner = self.runner
        if runner is None:
            if app.config["AFTER_INLINE"]:
                runner = InlineRunner()
            else:
                runner = ThreadRunner(
                    max_workers=app.config["AFTER_MAX_WORKERS"],
                    max_pending=app.config["AFTER_MAX_PENDING"],
                    on_full=app.config["AFTER_ON_FULL"],
                    drain_timeout=app.config["AFTER_DRAIN_TIMEOUT"],
                    name=f"wsgi-after-{app.name}",
                )
        inner = _FlaskApp(app, app.wsgi_app)
        app.wsgi_app = AfterMiddleware(inner, runner=runner)  # type: ignore[method-assign]
        got_request_exception.connect(_record_error, app)
        app.extensions["wsgi_after"] = self
        self._runners[app] = runner

    def get_runner(self, app: Flask) -> Runner:
        """The runner that ``app``'s callbacks run on.

        :raises KeyError: if ``init_app(app)`` was not called on this extension.
        """
        return self._runners[app]

    def shutdown(self, app: Flask | None = None, *, timeout: float | None = None) -> bool:
        """Drain and stop the runner of ``app``, or of every app of this extension.

        One deadline for all of them: ``timeout`` seconds in all (each runner's
        own ``drain_timeout`` when None). What could not run is logged by name,
        as at exit. A runner shared between apps is stopped once.

        :returns: True if every queued callback ran.
        """
        runners = [self._runners[app]] if app is not None else list(self._runners.values())
        stopping = list(dict.fromkeys(runners))  # a shared runner once
        if timeout is None:
            timeout = max((getattr(r, "drain_timeout", 0.0) for r in stopping), default=0.0)
        deadline = time.monotonic() + timeout
        for runner in stopping:  # all stop taking work first, then all drain
            begin = getattr(runner, "begin_shutdown", None)
            if begin is not None:
                begin()
        ok = True
        for runner in stopping:
            finish = getattr(runner, "finish_shutdown", None)
            if finish is not None:
                ok = finish(deadline) and ok
            else:
                ok = runner.shutdown(max(0.0, deadline - time.monotonic())) and ok
        return ok


class _FlaskApp:
    """``app.wsgi_app`` as the middleware calls it, holding the app weakly.

    ``AfterMiddleware(app.wsgi_app)`` stored on the app would make a cycle (app
    -> middleware -> bound method -> app), so a deleted app would wait for the
    garbage collector. This calls the app's own ``wsgi_app`` function through a
    weak reference instead (another middleware already in ``app.wsgi_app`` is
    kept as it is). It also gives each request's chain the callback context
    (:class:`_CallbackContext`), a per-app constant: nothing is built per request.
    """

    __slots__ = ("_app", "_func", "_inner", "_scope")

    def __init__(self, app: Flask, wsgi_app: t.Any) -> None:
        self._app = weakref.ref(app)
        own = isinstance(wsgi_app, types.MethodType) and wsgi_app.__self__ is app
        self._func: t.Any = wsgi_app.__func__ if own else None
        self._inner: t.Any = None if own else wsgi_app
        self._scope = _CallbackContext.factory(self._app)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        chain = environ.get("wsgi_after.chain")
        if chain is not None and chain.scope is None:
            chain.scope = self._scope
        if self._func is None:
            return self._inner(environ, start_response)
        app = self._app()
        if app is None:
            raise RuntimeError(
                "The Flask app of this 'wsgi_app' was freed. Keep a reference to the app"
                " while it serves requests."
            )
        return self._func(app, environ, start_response)


def _record_error(sender: Flask, exception: BaseException, **extra: object) -> None:
    """``got_request_exception``: the view's error, that Flask turned into a 500."""
    chain = flask.request.environ.get("wsgi_after.chain")
    if chain is not None and chain.error is None:
        chain.error = exception


def _unproxied(proxy: object) -> t.Any:
    """The object a Flask proxy (``request``, ``g``...) stands for now."""
    return proxy._get_current_object()  # type: ignore[attr-defined]


class _CallbackContext:
    """The context a callback runs in: a new Flask context for the request.

    Entered inside the callback's :mod:`contextvars` snapshot, taken by
    ``after()`` during the request, where Flask's proxies still point at the
    request's context: from them it takes the app, the request, the session
    and ``g``, then pushes a new context with the same request and session and a
    shallow copy of ``g``. Popping it runs the teardown handlers once.

    A callback queued where no Flask request is current (a plain generator
    body, an outer WSGI middleware) gets ``app.request_context()`` for the
    request's environ: the request rebuilt, its body empty, the session as the
    client sent it.
    """

    __slots__ = ("_app", "_contexts", "_token")

    def __init__(self, app: weakref.ref[Flask]) -> None:
        self._app = app
        self._contexts: list[t.Any] = []
        self._token: contextvars.Token[t.Any] | None = None

    @classmethod
    def factory(cls, app: weakref.ref[Flask]) -> t.Callable[[], _CallbackContext]:
        """A zero-argument factory, as ``chain.scope`` wants."""
        return lambda: cls(app)

    def __enter__(self) -> None:
        state = _request_state.get()
        if state is None and flask.has_request_context():
            state = (
                _unproxied(flask.current_app),
                _unproxied(flask.request),
                _unproxied(flask.session),
                _unproxied(flask.g),
            )
        if state is None:
            self._push_rebuilt()
            return
        app, request, session, request_g = state
        # The server has moved on: never read its input stream now. A body parsed
        # during the request is cached on the request; one never read reads as empty.
        request.stream = io.BytesIO()
        chain = current_chain()
        snapshot = chain.environ if chain is not None else None
        if snapshot is not None and request.environ is not snapshot:
            # Servers may clear and reuse their environ dict once the response closed
            # (uWSGI): from now on the request reads the chain's snapshot, headers too
            # (werkzeug's cached headers are a live view of the environ they were made on).
            request.environ = snapshot
            request.headers = EnvironHeaders(snapshot)
        if _MERGED_CONTEXTS:
            self._push(_RoutedContext(app, request=request, session=session))
        else:
            self._push(app.app_context())  # a new g, and teardown_appcontext on pop
            self._push(_RoutedContext(app, request.environ, request=request, session=session))
        vars(_unproxied(flask.g)).update(vars(request_g))
        self._token = _request_state.set(state)

    def _push_rebuilt(self) -> None:
        app = self._app()
        if app is None:
            return
        chain = current_chain()
        environ = chain.environ if chain is not None else None
        if environ is None:
            self._push(app.app_context())
            return
        environ = dict(environ)
        environ["wsgi.input"] = io.BytesIO()
        environ["CONTENT_LENGTH"] = "0"
        if not _MERGED_CONTEXTS:
            self._push(app.app_context())
        self._push(app.request_context(environ))

    def _push(self, context: t.Any) -> None:
        context.push()
        self._contexts.append(context)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if self._token is not None:
            _request_state.reset(self._token)
        while self._contexts:
            self._contexts.pop().pop(exc)
