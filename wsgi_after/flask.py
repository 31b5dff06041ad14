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

import io
import types
import typing as t
import weakref

import flask
import flask.ctx
from flask import Flask, got_request_exception, request_tearing_down
from flask.globals import app_ctx
from werkzeug.datastructures import EnvironHeaders

from . import current_chain, lifecycle
from .middleware import AfterMiddleware
from .runner import DEFAULT_POOL, InlineRunner, OnFull, Runner, ThreadRunner

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: Flask 3.2 merged the request context into the app context: ``AppContext(app,
#: request=..., session=...)`` holds the request; earlier versions keep it in a
#: separate ``RequestContext``.
_MERGED_CONTEXTS = hasattr(flask.ctx.AppContext, "has_request")

#: Flask's own ``do_teardown_request``: an app class that overrides it always gets it
#: called for a callback's context, even with no ``teardown_request`` function.
_FLASK_TEARDOWN_REQUEST = Flask.do_teardown_request

#: Flask's proxies, typed loosely: ``_get_current_object()``, werkzeug's public way
#: to the object a proxy stands for, is in Flask's types from 3.2 on only.
_request: t.Any = flask.request
_session: t.Any = flask.session
_app_ctx: t.Any = app_ctx


class _RoutedContext(flask.ctx.AppContext):
    """Flask 3.2's context for a request that was already routed."""

    def match_request(self) -> None:
        """Keep the request's own ``url_rule`` and ``view_args`` (no second routing)."""


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
        max_workers: int | None = DEFAULT_POOL.max_workers,
        max_pending: int = DEFAULT_POOL.max_pending,
        on_full: OnFull = DEFAULT_POOL.on_full,
        drain_timeout: float = DEFAULT_POOL.drain_timeout,
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
            inline = app.config["AFTER_INLINE"]
            if not isinstance(inline, bool):  # "false" from the environment is true
                raise ValueError(
                    f"'AFTER_INLINE' must be True or False, got {inline!r}. Convert a"
                    " setting read from the environment to a bool first."
                )
            if inline:
                runner = InlineRunner()
            else:
                runner = ThreadRunner(
                    max_workers=app.config["AFTER_MAX_WORKERS"],
                    max_pending=app.config["AFTER_MAX_PENDING"],
                    on_full=app.config["AFTER_ON_FULL"],
                    drain_timeout=app.config["AFTER_DRAIN_TIMEOUT"],
                    name=f"wsgi-after-{app.name}",
                )
        inner = _wsgi_app(app, app.wsgi_app)
        app.wsgi_app = AfterMiddleware(inner, runner=runner)  # type: ignore[method-assign]
        got_request_exception.connect(_record_error, app)
        app.extensions["wsgi_after"] = self
        self._runners[app] = runner

    def get_runner(self, app: Flask) -> Runner:
        """The runner that ``app``'s callbacks run on.

        :raises RuntimeError: if ``init_app(app)`` was not called on this extension.
        """
        runner = self._runners.get(app)
        if runner is None:
            raise RuntimeError(
                f"The Flask app {app.name!r} is not registered on this 'After' extension."
                " Call 'init_app(app)' on it first."
            )
        return runner

    def shutdown(self, app: Flask | None = None, *, timeout: float | None = None) -> bool:
        """Drain and stop the runner of ``app``, or of every app of this extension.

        One deadline for all of them (:func:`wsgi_after.shutdown_runners` does the
        same for every runner of the process): ``timeout`` seconds in all, each
        runner's own ``drain_timeout`` when None. What could not run is logged
        by name, as at exit. A runner shared between apps is stopped once.

        :returns: True if every queued callback ran.
        :raises RuntimeError: if ``app`` is given and ``init_app(app)`` was not called.
        :raises ValueError: if ``timeout`` is NaN or negative (``inf``: no limit).
        """
        runners = [self.get_runner(app)] if app is not None else list(self._runners.values())
        return lifecycle.drain(runners, timeout)


def _wsgi_app(app: Flask, wsgi_app: t.Any) -> t.Callable[..., t.Any]:
    """``app.wsgi_app`` as the middleware calls it, holding the app weakly.

    ``AfterMiddleware(app.wsgi_app)`` stored on the app would make a cycle (app
    -> middleware -> bound method -> app), so a deleted app would wait for the
    garbage collector. This calls the app's own ``wsgi_app`` function through a
    weak reference instead (another middleware already in ``app.wsgi_app`` is
    kept as it is). It also gives each request's chain the callback context
    (:class:`_CallbackContext`), a per-app constant: nothing is built per request.
    A plain function, not an object with ``__call__``: the middleware's call to it
    is Python calling Python, the cheapest call there is.
    """
    app_ref = weakref.ref(app)
    scope = _CallbackContext.for_app(app_ref)
    if not (isinstance(wsgi_app, types.MethodType) and wsgi_app.__self__ is app):
        inner = wsgi_app

        def wrapped_wsgi_app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
            chain = environ.get("wsgi_after.chain")
            if chain is not None and chain.scope is None:
                chain.scope = scope
            return inner(environ, start_response)

        return wrapped_wsgi_app
    func = wsgi_app.__func__  # the function: the closure holds no reference to the app

    def own_wsgi_app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        # The middleware always sets the key before calling: a subscript, not a
        # method call (a missing key costs nothing until it is missing).
        try:
            chain = environ["wsgi_after.chain"]
        except KeyError:
            pass
        else:
            if chain is not None and chain.scope is None:
                chain.scope = scope
        app = app_ref()
        if app is None:
            raise RuntimeError(
                "The Flask app of this 'wsgi_app' was freed. Keep a reference to the app"
                " while it serves requests."
            )
        return func(app, environ, start_response)

    return own_wsgi_app


def _record_error(sender: Flask, exception: BaseException, **extra: object) -> None:
    """``got_request_exception``: the view's error, that Flask turned into a 500."""
    chain = flask.request.environ.get("wsgi_after.chain")
    if chain is not None and chain.error is None:
        chain.error = exception


class _CallbackContext:
    """The context a callback runs in: a new Flask context for the request.

    Entered inside the callback's :mod:`contextvars` snapshot, taken by
    ``after()`` during the request, where Flask's proxies still point at the
    request's context: from them it takes the app, the request and ``g``. Flask
    2.3 to 3.1 keep the request's own request context current in the snapshot,
    so ``request``, ``session`` and ``url_for`` already work there: only an app
    context is pushed over it, for a shallow copy of ``g``, as ``with
    app.app_context():`` inside a view does. Leaving runs ``teardown_request``
    (:meth:`~flask.Flask.do_teardown_request`, as the request context's pop
    would; skipped when the app has no ``teardown_request`` function, nothing
    listens to ``request_tearing_down`` and the method is Flask's own, where it
    would do nothing), then pops the app context, which runs
    ``teardown_appcontext``.
    Nothing of the request is built again: no werkzeug request, no URL adapter,
    no routing, no session. Flask 3.2, whose one context holds both, gets a new
    context with the same request and session (its URL adapter built again, its
    routing not), whose pop runs both teardowns.

    A callback queued where no Flask request is current (a plain generator
    body, an outer WSGI middleware) gets ``app.request_context()`` for the
    request's environ: the request rebuilt, its body empty, the session as the
    client sent it.

    Each app gets its own subclass (:meth:`for_app`), holding the app weakly:
    the class itself is the zero-argument factory ``chain.scope`` wants, and
    making one costs no Python call.
    """

    __slots__ = ("_exit",)

    #: The app of the requests (for a request rebuilt without a Flask context).
    _app: t.ClassVar[weakref.ref[Flask]]

    #: What to undo on leaving: the context pushed, the app whose
    #: ``teardown_request`` handlers run (Flask < 3.2), and an app context pushed
    #: under a rebuilt request's.
    _exit: tuple[t.Any, Flask | None, t.Any]

    @classmethod
    def for_app(cls, app: weakref.ref[Flask]) -> type[_CallbackContext]:
        """The callback context class of one app."""
        return type(cls.__name__, (cls,), {"__slots__": (), "_app": app})

    def __enter__(self) -> None:
        try:
            request = _request._get_current_object()
        except RuntimeError:  # no Flask request here: build one
            self._enter_rebuilt()
            return
        current = _app_ctx._get_current_object()
        app = current.app
        # A callback's own app context holds the request's g (set below): a callback
        # queued by that callback starts from it, not from the callback's copy. It
        # travels with the context in the queued callback's contextvars snapshot (a
        # context variable set per callback would cost more).
        request_g = getattr(current, "wsgi_after_request_g", None)
        if request_g is None:
            request_g = current.g
        chain = current_chain()
        snapshot = chain.environ if chain is not None else None
        if request.environ is not snapshot:  # the request's first callback
            if snapshot is not None:
                # Servers may clear and reuse their environ dict once the response
                # closed (uWSGI): from now on the request reads the chain's snapshot,
                # and so do its headers (a live view of an environ), also where the
                # view passed them on to a callback.
                request.environ = snapshot
                headers = request.headers
                if type(headers) is EnvironHeaders:
                    headers.environ = snapshot
                else:
                    request.headers = EnvironHeaders(snapshot)
            # The server has moved on: never read its input stream now. A body parsed
            # during the request is cached on the request; one never read reads as empty.
            request.stream = io.BytesIO()
        if _MERGED_CONTEXTS:
            session = _session._get_current_object()
            context: t.Any = _RoutedContext(app, request=request, session=session)  # type: ignore[call-arg]
            teardown = None  # its pop runs teardown_request
        else:
            context = app.app_context()  # a new g, and teardown_appcontext on pop
            teardown = app
        context.wsgi_after_request_g = request_g
        context.push()
        vars(context.g).update(vars(request_g))
        self._exit = (context, teardown, None)

    def _enter_rebuilt(self) -> None:
        app = self._app()
        chain = current_chain()
        environ = chain.environ if chain is not None else None
        context: t.Any = None
        outer = None
        if app is None:
            pass
        elif environ is None:
            context = app.app_context()
            context.push()
        else:
            environ = dict(environ)
            environ["wsgi.input"] = io.BytesIO()
            environ["CONTENT_LENGTH"] = "0"
            if not _MERGED_CONTEXTS:
                outer = app.app_context()  # a new g, whatever app context is current
                outer.push()
            context = app.request_context(environ)
            context.push()
        self._exit = (context, None, outer)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        context, teardown, outer = self._exit
        if context is None:
            return
        try:
            # Flask < 3.2: this context's teardown_request, as the request context's pop
            # would run it. Called only when something would run or listen (an empty
            # call reads request.blueprints and sends a signal: a sixth of a callback).
            if teardown is not None and (
                teardown.teardown_request_funcs
                or request_tearing_down.receivers
                or type(teardown).do_teardown_request is not _FLASK_TEARDOWN_REQUEST
            ):
                teardown.do_teardown_request(exc)
        finally:
            try:
                context.pop(exc)
            finally:
                if outer is not None:
                    outer.pop(exc)
