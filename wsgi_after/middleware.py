"""The WSGI middleware that runs callbacks after the response has been sent.

::

    from wsgi_after import AfterMiddleware, after

    def app(environ, start_response):
        after(print, "sent", environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello\\n"]

    app = AfterMiddleware(app)
"""

from __future__ import annotations

import sys
import typing as t

from . import lifecycle
from ._chain import start_request
from ._context import CURRENT
from ._request import MAX_CALLBACKS
from ._response import ClosingResponse, FileWrapperHook, closes_in_place
from .runner import OnFull, Submits, ThreadRunner

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


RunnerT = t.TypeVar("RunnerT", bound=Submits)


class AfterMiddleware(t.Generic[RunnerT]):
    """Runs the callbacks queued with :func:`~wsgi_after.after` once the server closes
    the response, on ``runner``.

    For each request it makes a chain of callbacks current, records the status
    given to ``start_response``, and wraps the response iterable so that its
    ``close()`` (PEP 3333) hands the chain to the runner: one ``submit`` per
    request that queued anything. The client and the server's worker never wait
    for the callbacks.

    Error policy: callbacks' errors are logged, never raised into the server
    (except a ``KeyboardInterrupt`` or ``SystemExit``, passed on after the
    request's other callbacks when they run in the server's own thread:
    :class:`~wsgi_after.InlineRunner`, ``on_full="run"``).
    If the app raises before returning a response, no server calls ``close()``,
    so the middleware hands the chain over itself and re-raises. A
    ``wsgi.file_wrapper`` response is returned unwrapped, keeping the server's
    sendfile path. An :class:`AfterMiddleware` inside another one passes
    requests through: the outer one owns them.

    :param app: the WSGI application to wrap.
    :param runner: anything with ``submit(fn)``: :class:`~wsgi_after.ThreadRunner`,
        :class:`~wsgi_after.InlineRunner`, a :class:`concurrent.futures.Executor`.
        When omitted, a :class:`~wsgi_after.ThreadRunner` is built from the other
        options (see it for their meaning and defaults).
    :param max_callbacks: how many callbacks one request may queue, nested ones
        included (1000): a callback that queues itself again stops there.
    :raises TypeError: if ``runner`` has no ``submit`` method, is a process pool
        (a request's chain cannot be pickled), or is given with pool options.
    :raises ValueError: if an option is out of range.
    """

    @t.overload
    def __init__(
        self: AfterMiddleware[ThreadRunner],
        app: WSGIApplication,
        *,
        runner: None = None,
        max_workers: int | None = None,
        max_pending: int | None = None,
        on_full: OnFull | None = None,
        drain_timeout: float | None = None,
        max_callbacks: int = MAX_CALLBACKS,
    ) -> None: ...
    @t.overload
    def __init__(
        self: AfterMiddleware[RunnerT],
        app: WSGIApplication,
        *,
        runner: RunnerT,
        max_callbacks: int = MAX_CALLBACKS,
    ) -> None: ...
    def __init__(
        self,
        app: WSGIApplication,
        *,
        runner: t.Any = None,
        max_workers: int | None = None,
        max_pending: int | None = None,
        on_full: OnFull | None = None,
        drain_timeout: float | None = None,
        max_callbacks: int = MAX_CALLBACKS,
    ) -> None:
        options: dict[str, t.Any] = {
            "max_workers": max_workers,
            "max_pending": max_pending,
            "on_full": on_full,
            "drain_timeout": drain_timeout,
        }
        given = {k: v for k, v in options.items() if v is not None}
        if runner is None:
            runner = ThreadRunner(**given)
        elif given:
            raise TypeError(
                f"'AfterMiddleware' got {', '.join(map(repr, given))} with 'runner'."
                " Pass the options to the runner itself, e.g. 'ThreadRunner(max_workers=8)'."
            )
        elif not callable(getattr(runner, "submit", None)):
            raise TypeError(
                f"'runner' must have a 'submit(fn)' method, like 'ThreadRunner' or a"
                f" 'concurrent.futures.Executor', got {type(runner).__name__!r}."
            )
        else:
            process = sys.modules.get("concurrent.futures.process")
            if process is not None and isinstance(runner, process.ProcessPoolExecutor):
                raise TypeError(
                    "'runner' cannot be a 'ProcessPoolExecutor': a request's callbacks and"
                    " their contexts cannot be sent to another process. Use 'ThreadRunner',"
                    " or 'wsgi_after.celery.CeleryRunner' to run them in other processes."
                )
        lifecycle.install_server_hooks()  # uWSGI's, mod_wsgi's: nothing for users to add
        if type(max_callbacks) is not int or max_callbacks < 1:
            raise ValueError(
                f"'max_callbacks' must be an int of at least 1, got {max_callbacks!r}."
            )
        self.app = app
        #: The runner the callbacks go to.
        self.runner: RunnerT = runner
        self.max_callbacks = max_callbacks
        # The server's file_wrapper, when it is a class whose objects' close() is
        # hooked in place; else one hook standing in for it (a server has one):
        # nothing to build per request.
        self._file_class: type[object] | None = None
        self._file_wrapper_hook: FileWrapperHook | None = None

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        if "wsgi_after.chain" in environ:
            return self.app(environ, start_response)
        chain = start_request(environ, self.runner, start_response, self.max_callbacks)
        file_wrapper = environ.get("wsgi.file_wrapper")
        hook = None
        if file_wrapper is not None and file_wrapper is not self._file_class:
            hook = self._file_wrapper_hook
            if hook is None or hook.server_wrapper is not file_wrapper:
                hook = self._hook_file_wrapper(file_wrapper)
            if hook is not None:
                environ["wsgi.file_wrapper"] = hook
        try:
            result = self.app(environ, chain.start_response)
        except BaseException as e:
            chain.error = e
            chain.on_error_before_body()
            chain.on_close()
            raise
        finally:
            if hook is not None:
                # gunicorn reads it again to pick its sendfile path.
                environ["wsgi.file_wrapper"] = file_wrapper
        return chain.wrap(result, self._file_class)

    def _hook_file_wrapper(self, file_wrapper: t.Any) -> FileWrapperHook | None:
        """What stands in for a server's ``file_wrapper`` not seen before: None when
        its objects' ``close()`` is hooked in place (the environ keeps it)."""
        if closes_in_place(file_wrapper):
            self._file_class = file_wrapper
            return None
        # The current request is a Chain, a ClosingResponse, while the app runs.
        current: t.Callable[[], ClosingResponse | None] = CURRENT.get  # type: ignore[assignment]
        hook = self._file_wrapper_hook = FileWrapperHook(file_wrapper, current)
        return hook
