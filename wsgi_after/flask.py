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
each callback inside a fresh request context for the *same* request: the same
``request`` and ``session``, a shallow copy of ``g`` as the request left it, and
``current_app`` and ``url_for`` working. The context is popped after each
callback, so ``teardown_request`` and ``teardown_appcontext`` handlers run for it.

What cannot work, because the response is gone: setting cookies or headers,
``after_this_request`` (raises), and reading uploaded files (already closed).
``request.form`` and ``request.get_json()`` hold what was parsed during the
request; a body never read during the request reads as empty.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import typing as t
import weakref

from flask import Flask, g
from flask.ctx import RequestContext
from flask.globals import request_ctx

from .middleware import AfterMiddleware
from .runner import InlineRunner, Runner, ThreadRunner

if t.TYPE_CHECKING:
    from flask.ctx import _AppCtxGlobals


class _ResponseGone(list[t.Any]):
    """Stands in for a callback context's ``after_this_request`` list."""

    def append(self, item: t.Any) -> t.NoReturn:
        raise RuntimeError(
            "'after_this_request' was called in a callback run by 'wsgi_after', after the"
            " response was sent. Change the response in the view, not in the callback."
        )


class _CallbackRequestContext(RequestContext):
    """A request context for a request that was already routed."""

    def match_request(self) -> None:
        pass  # request.url_rule and view_args are the request's own


class After:
    """Runs :func:`wsgi_after.after` callbacks in Flask apps, with the request's context.

    Works with one app (``After(app)``) or with application factories (one
    ``After()`` and ``init_app(app)`` for each app; each app gets its own runner
    unless ``runner`` is given). Options given here are the defaults for the
    ``AFTER_*`` config keys read by :meth:`init_app`.

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
        app.wsgi_app = AfterMiddleware(app.wsgi_app, runner=runner)  # type: ignore[method-assign]
        app.before_request_funcs.setdefault(None, []).insert(0, self._capture_request)
        app.extensions["wsgi_after"] = self
        self._runners[app] = runner

    def get_runner(self, app: Flask) -> Runner:
        """The runner that ``app``'s callbacks run on."""
        return self._runners[app]

    @staticmethod
    def _capture_request() -> None:
        """First ``before_request`` handler: let the chain push this request for callbacks."""
        ctx: RequestContext = request_ctx._get_current_object()  # type: ignore[attr-defined]
        chain = ctx.request.environ.get("wsgi_after.chain")
        if chain is not None and chain.scope is None:
            chain.scope = functools.partial(_callback_context, ctx, g._get_current_object())


@contextlib.contextmanager
def _callback_context(
    request_context: RequestContext, request_g: _AppCtxGlobals
) -> t.Iterator[None]:
    """Push a new app and request context for the request of ``request_context``."""
    app = request_context.app
    request = request_context.request
    if "form" not in request.__dict__ and "_cached_data" not in request.__dict__:
        # The body was never read; the server has moved on, so reading it now could
        # block on the socket. Read it as empty instead.
        request.stream = io.BytesIO()
    app_context = app.app_context()
    app_context.push()
    try:
        vars(g._get_current_object()).update(vars(request_g))
        # A copy of the request's own context: the same request, session and bound URL
        # adapter, without building and matching them again (cheaper on a thread that
        # shares the GIL with the server's).
        context = copy.copy(request_context)
        context.__class__ = _CallbackRequestContext
        context._cv_tokens = []
        context._after_request_functions = _ResponseGone()
        context.push()
        try:
            yield
        finally:
            context.pop()
    finally:
        app_context.pop()
