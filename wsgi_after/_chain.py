"""The chain: one request's callbacks, handed to its runner when the response closes.

:class:`~wsgi_after.AfterMiddleware` makes a :class:`Chain` for every request;
:func:`~wsgi_after.after` appends to it (:mod:`wsgi_after._context`). The chain is
also the response wrapper (:class:`~wsgi_after._response.ClosingResponse`), so
when the server closes the response :meth:`Chain.on_close` hands it to the
runner with one ``submit``; the runner later calls it, which runs the callbacks
(:func:`~wsgi_after._execute.run_callbacks`)::

    chain = start_request(environ, runner, start_response)  # current, and in environ
    result = chain.wrap(app(environ, chain.start_response))
    ...  # the server iterates result, then calls result.close(): on_close()

A chain moves through five states: OPEN while the request runs (``after()``
appends), CLOSING while the server closes the response, QUEUED once handed to
the runner, RUNNING while its callbacks run (a callback may append more, from
its own thread), DONE.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import gc
import logging
import time
import typing as t

from . import _context, events, lifecycle
from ._execute import run_callbacks
from ._request import (
    APPENDED,
    CLOSING,
    DONE,
    MAX_CALLBACKS,
    OPEN,
    QUEUED,
    RequestView,
)
from ._response import ClosingResponse, ListMixin, SizedMixin
from .losslog import LossLog

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .runner import Submits

logger = logging.getLogger("wsgi_after")

_forced_runner: Submits | None = None

# Bound by assignment, not by 'from ... import': CPython 3.11 compiles a method call on
# a name an import bound (CURRENT.reset(), handover.acquire()) as an attribute load that
# makes a bound-method object per call (measured: +0.5k instructions per request).
CURRENT = _context.CURRENT
handover = _context.handover

# Looked up once, not per request.
_new = object.__new__
_MISSING = contextvars.Token.MISSING  # a token's old_value when the variable had none
_Executor = concurrent.futures.Executor
_Future = concurrent.futures.Future

_never_closed = LossLog(
    "the server never called close() on the response (PEP 3333), so it cannot be known"
    " that the response was sent; the callbacks are not run. Use a server or gateway"
    " that closes responses, or close the iterable in the middleware that consumes it."
)


class Chain(ClosingResponse, RequestView):
    """One request: its callbacks, their :mod:`contextvars` snapshots and its outcome.

    The chain is also the request's response wrapper (one object per request on
    the hot path): when the server closes the response, :meth:`on_close` hands
    the chain to its runner. Calling the chain then runs every callback
    (:func:`~wsgi_after._execute.run_callbacks`, whose docstring gives the error
    policy). A chain freed while still open (the server never called
    ``close()``) logs its callbacks by name at ERROR and does not run them.

    Integrations read it only through :class:`~wsgi_after._request.RequestView`.
    """

    __slots__ = (
        "_start_response",
        "callbacks",
        "closed_at",
        "environ",
        "max_callbacks",
        "notes",
        "runner",
        "scope",
        "started",
        "state",
        "status",
        "thread",
        "token",
    )

    #: The subclass with ``__del__`` (and :class:`PendingChain`) that the request's
    #: first :func:`after` switches to; every subclass names its own.
    pending: t.ClassVar[type[RequestView]]

    # The fields (start_request() sets them: a function, not __init__, because a
    # class's call to its __init__ costs every request more).
    _start_response: StartResponse | None
    #: Where :meth:`on_close` submits the chain.
    runner: Submits
    #: The ``CURRENT`` token to reset when the response closes.
    token: contextvars.Token[RequestView | None] | None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Callable[[bytes], object]:
        """The ``start_response`` the app gets: passes through, then records the status.

        The status is recorded only once the server accepted it: a call with
        ``exc_info`` after the headers were sent raises in the server, and the
        client still got the first status.
        """
        if exc_info is None:  # called as the app called us: with two arguments or three
            write = self._start_response(status, headers)  # type: ignore[misc]
        else:
            write = self._start_response(status, headers, exc_info)  # type: ignore[misc]
        self.status = status
        return write

    def on_error_before_body(self) -> None:
        """The server answers this request with its own 500 (PEP 3333 leaves it the
        error raised before the headers were sent): that is the status the client got.
        uWSGI sends none: it closes the connection (so the status is None)."""
        environ = self.environ
        if environ is not None and "uwsgi.version" in environ:
            self.status = None
        else:
            self.status = "500 Internal Server Error"

    def returned(self) -> bool:
        """Whether the app already returned this request's response, or the request
        finished: a request that starts later in the same context is not nested in it."""
        return hasattr(self, "_inner")  # set by wrap(), and at close

    __call__ = run_callbacks

    def on_close(self) -> None:
        """The server closed the response: hand the callbacks to the runner, once."""
        if self.state != OPEN:
            return
        self.state = CLOSING  # from here on, after() refuses
        if self.notes & APPENDED and handover.locked():
            # An after() may be appending right now, in another thread: wait for it,
            # so that its callback is either seen below or was refused. (Not held:
            # every after() either returned, seen below, or will see CLOSING.)
            handover.acquire()
            handover.release()
        token = self.token
        if token is not None:
            self.token = None  # (measured: keeping it costs more per request than this write)
            try:  # noqa: SIM105 (a try costs nothing here; contextlib.suppress does)
                CURRENT.reset(token)
            except ValueError:
                pass  # closed from another thread: that context keeps a finished chain
        callbacks = self.callbacks
        if not callbacks:  # most requests: drop the references at once
            self.state = DONE
            self.environ = self._start_response = self._iterator = None  # (a list partly sent)
            self._inner = ()
            self.file_response = self.error = None
            return
        self.state = QUEUED
        environ = self.environ
        if environ is not None:
            # Servers may clear and reuse the environ dict once close() returns
            # (uWSGI's default): callbacks see a snapshot of their own request.
            self.environ = dict(environ)
        self._start_response = None
        # The server is done with the body: let it go now, so that what it holds (big
        # buffers, a file) is freed before the callbacks run, not after them (a list's
        # iterator first tells whether it was sent in full). release() then drops the
        # rest (environ, error: environ["wsgi_after.chain"] and an error's traceback
        # refer to this chain, cycles that reference counting alone could not free).
        if self.reads_iterator:
            self.completed = self.sent_all()
            self._iterator = None
        self._inner = ()
        self.file_response = None
        if events.listeners:
            self.closed_at = time.monotonic()
        runner = _forced_runner or self.runner
        watch = None
        if issubclass(type(runner), _Executor):  # (isinstance() also asks __class__)
            # Named now: an executor's thread may run the chain before submit() returns.
            watch = _FutureWatch(self.callback_names(), self.describe())
        try:
            result = runner.submit(self)
        except BaseException as e:
            if self.state != QUEUED:  # it ran here and passed on an interrupt, logged
                raise
            logger.error(
                "Callbacks %s queued by '%s' were not run: %r refused them.",
                self.callback_names(),
                self.describe(),
                runner,
                exc_info=True,
            )
            self.discard()
            if not isinstance(e, Exception):
                raise
            return
        if result is not None and isinstance(result, _Future):  # an executor's, or duck-typed
            result.add_done_callback(watch or _FutureWatch(self.callback_names(), self.describe()))


def start_request(
    environ: WSGIEnvironment,
    runner: Submits,
    start_response: StartResponse,
    max_callbacks: int = MAX_CALLBACKS,
) -> Chain:
    """Make the chain of a request that starts now, and make it current: the
    :data:`~wsgi_after._context.CURRENT` request of this context and
    ``environ["wsgi_after.chain"]``, until its response closes (:meth:`Chain.on_close`
    resets it), so that ``after()`` also works while the server iterates the body.
    """
    chain = _new(Chain)
    # Only what a request that queues nothing reads, and the public fields: every
    # write here is paid by every request. ``_inner`` is set by wrap(), ``thread``
    # when the chain runs.
    chain._once = [None]
    chain.completed = False
    chain.callbacks = []
    chain.environ = environ
    chain.runner = runner
    chain._start_response = start_response
    chain.max_callbacks = max_callbacks
    chain.status = chain.scope = chain.error = chain.file_response = None
    chain.started = chain.notes = 0
    chain.state = OPEN
    chain.closed_at = 0.0
    environ["wsgi_after.chain"] = chain
    chain.token = token = CURRENT.set(chain)
    previous = token.old_value
    if previous is not _MISSING and previous is not None and previous.returned():
        # A request of this context whose response was never closed (or was closed
        # from another thread): this one is not nested in it. Its token must not
        # keep it alive, nor make it current again when this one closes.
        CURRENT.set(None)
        chain.token = CURRENT.set(chain)
    return chain


class _FutureWatch:
    """Logs what a :class:`concurrent.futures.Future` reports for a chain."""

    __slots__ = ("names", "request")

    def __init__(self, names: list[str], request: str) -> None:
        self.names = names
        self.request = request

    def __call__(self, future: concurrent.futures.Future[object]) -> None:
        if future.cancelled():
            logger.error(
                "Callbacks %s queued by '%s' were not run: the executor cancelled them.",
                self.names,
                self.request,
            )
            return
        error = future.exception()
        if error is not None and not isinstance(error, (KeyboardInterrupt, SystemExit)):
            logger.error(
                "Callbacks %s queued by '%s': the executor reported an error.",
                self.names,
                self.request,
                exc_info=error,
            )


@contextlib.contextmanager
def override_runner(runner: Submits) -> t.Iterator[Submits]:
    """Send every chain that closes while the block runs to ``runner``.

    Process-wide, for tests (the pytest plugin's ``after_inline`` fixture runs
    every request's callbacks inline with it)::

        with override_runner(InlineRunner()):
            client.get("/signup")
    """
    global _forced_runner
    previous, _forced_runner = _forced_runner, runner
    try:
        yield runner
    finally:
        _forced_runner = previous


# --- The response variants: every class switch of the hot path, in one block -------
#
# A chain changes its class instead of testing flags on the hot path; each switch
# is one attribute write, made in the request's thread. Measured with
# benchmarks/instructions.py and floor.py (CPython 3.11, instructions/request):
#
# * sized (``SizedMixin``): ``__len__`` only when the app's iterable has one, as
#   PEP 3333 wants for waitress's Content-Length; a switch costs 0.5k (floor 4),
#   where an ``if`` in a generic ``__len__`` would make every request pay;
# * listed (``ListMixin``): a list body (the commonest) handed to the server as
#   the list's own C iterator, no generator frame per chunk; what the body sent
#   is read from the iterator only when asked (``sent_all``);
# * pending (``PendingChain``): only a request that queued a callback pays for a
#   ``__del__`` (the never-closed check); a ``__del__`` on every chain costs
#   every request a finaliser call.
#
# after() (pending) and wrap() (sized, listed) each read the class and set it
# with nothing run in between, so they do not undo each other.


class SizedChain(SizedMixin, Chain):
    """A :class:`Chain` whose app's iterable has ``__len__``."""

    __slots__ = ()


class ListChain(ListMixin, Chain):
    """A :class:`Chain` whose app's iterable is a list."""

    __slots__ = ()


class PendingChain(Chain):
    """A :class:`Chain` that queued a callback while its request ran.

    :func:`after` switches a chain to it (or to :class:`SizedPendingChain`) at
    the request's first callback, so that only such chains pay for a
    ``__del__`` when freed: freed while still open (the server never called
    ``close()``), it logs its callbacks by name at ERROR and does not run them.
    """

    __slots__ = ()

    # Not mutated: mutmut's stats trampoline run from a garbage-collection pass re-enters
    # its own recording and crashes the run; tests/test_chain.py covers this method.
    def __del__(self) -> None:  # pragma: no mutate block
        if self.state == OPEN and self.callbacks:
            names = self.callback_names()
            _never_closed.record(names, self.describe())
            if events.listeners:
                events.emit_each("never_closed", names, *self.method_and_path())
            self.discard()


_open_at_exit = LossLog(
    "its request was still running when the process exited (the server stopped waiting for it)."
)


def _name_open_requests() -> None:
    """At exit, after the drain: log by name the callbacks of requests still open.

    Found by a walk of the garbage collector's objects, once, at exit: tracking open
    requests would cost every request that queues a callback.
    """
    found = False
    for chain in gc.get_objects():
        # type(), not isinstance(): that reads __class__, which a lazy object (Django's
        # LazyObject) computes, and may raise.
        if not (issubclass(type(chain), PendingChain) and chain.state == OPEN):
            continue
        with handover:  # the request's thread may be in after() right now
            if chain.state != OPEN:
                continue
            chain.state = CLOSING  # its after() and close() now refuse, or do nothing
        names = chain.callback_names()
        if names:
            found = True
            _open_at_exit.record(names, chain.describe())
            if events.listeners:
                events.emit_each("lost", names, *chain.method_and_path())
        chain.discard()
    if found:
        _open_at_exit.close()


lifecycle.report_at_exit(_name_open_requests)


class SizedPendingChain(SizedMixin, PendingChain):
    """A :class:`PendingChain` whose app's iterable has ``__len__``."""

    __slots__ = ()


class ListPendingChain(ListMixin, PendingChain):
    """A :class:`PendingChain` whose app's iterable is a list."""

    __slots__ = ()


# What wrap() (sized, listed) and the first after() (pending) switch each class to.
Chain.sized, Chain.listed, Chain.pending = SizedChain, ListChain, PendingChain
SizedChain.pending = SizedPendingChain
ListChain.pending = ListPendingChain
# A chain that already has callbacks when the app returns a list keeps the generator
# of the sized class: it tells whether the body was sent in full for free, where the
# list iterator's own record of it costs more to read (ListMixin.sent_all).
PendingChain.sized = PendingChain.listed = SizedPendingChain
SizedPendingChain.pending = SizedPendingChain
ListPendingChain.pending = ListPendingChain
