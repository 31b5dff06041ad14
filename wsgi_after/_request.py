"""A request's callbacks as data: the :class:`Callback` record, the states, the view.

Every module that holds or runs a request's callbacks shares these: the
middleware's :class:`~wsgi_after._chain.Chain` (the request served here), the
Celery worker's and Django's late ``after_commit`` :class:`Received` requests
(callbacks whose response was served by another process, or already closed),
and :func:`~wsgi_after._execute.run_callbacks`, the one function that runs them.

:class:`RequestView` is what integrations may read of the current request
(:func:`wsgi_after.current_chain` returns one): :attr:`~RequestView.scope`, the
``environ`` snapshot, :meth:`~RequestView.outcome` and
:meth:`~RequestView.callback_names`. The other fields are the core's own.
"""

from __future__ import annotations

import contextvars
import typing as t
from types import CoroutineType

from .naming import callback_name, describe_request, method_and_path

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


class Callback(t.NamedTuple):
    """One queued callback: ``func(*args, **kwargs)`` run inside ``context``."""

    #: A callable, or a coroutine object (then ``args`` and ``kwargs`` are empty).
    func: t.Any
    args: tuple[t.Any, ...]
    kwargs: dict[str, t.Any]
    #: The :mod:`contextvars` snapshot taken when the callback was queued.
    context: contextvars.Context


#: How a :class:`Callback` is stored in a request's list on the hot path: a plain tuple
#: in the record's field order. A NamedTuple instance there costs 5.2k instructions per
#: request (``benchmarks/instructions.py middleware-one``: 50.7k against 45.5k, its
#: allocation, deallocation and the garbage collector's passes over the queued ones);
#: modules that take the callbacks read them named, through :meth:`RequestView.queued`.
Entry = tuple[t.Any, tuple[t.Any, ...], dict[str, t.Any], contextvars.Context]


class Outcome(t.NamedTuple):
    """How the request that queued a callback ended, as :func:`outcome` reports it."""

    #: The status code the client got: from ``start_response``, or the 500 the server
    #: sends itself for an error raised before any of the body was sent; else None
    #: (uWSGI closes the connection instead).
    status: int | None
    #: False when the body was not fully sent (client disconnect, error while iterating).
    completed: bool
    #: The exception the app or its response iterable raised, else None.
    error: BaseException | None


#: A factory of the context manager entered around each callback.
Scope = t.Callable[[], t.ContextManager[object]]

# States. A request accepts callbacks while OPEN (the request runs) and while
# RUNNING (a callback queues another, in the running thread); the others refuse.
OPEN, CLOSING, QUEUED, RUNNING, DONE = range(5)

# RequestView.notes bits.
TEARDOWN = 1  # the running callback returned; its scope is being torn down
WARNED_CAP = 2  # the per-request cap was logged inside a callback
WARNED_TEARDOWN = 4  # after() from a scope's teardown was logged
APPENDED = 8  # after() took the hand-over lock for this request

#: How many callbacks one request may queue, nested ones included, by default.
#: A callback that queues itself again would otherwise grow without bound.
MAX_CALLBACKS = 1000


class RequestView:
    """The current request, as integrations see it (:func:`wsgi_after.current_chain`).

    Public, and documented: :attr:`scope` (integrations set it), :attr:`environ`
    (a snapshot once the response closed), :meth:`outcome`,
    :meth:`callback_names`, :meth:`describe` and :meth:`method_and_path`. Every
    other field is the core's and may change.
    """

    # The fields are the concrete classes' slots (a base with slots of its own
    # could not be mixed with ClosingResponse's); the type checker sees a class
    # with a __dict__, so that it lets the methods below set them.
    if not t.TYPE_CHECKING:
        __slots__ = ()

    #: Integrations' seam: a factory of the context manager entered around each
    #: callback (the Flask extension pushes the request context with it).
    scope: Scope | None
    #: The request's environ; a snapshot of it once the server closed the
    #: response (servers may clear and reuse theirs); None once done.
    environ: WSGIEnvironment | None
    #: The callbacks in registration order (:data:`Entry`, a :class:`Callback`'s
    #: fields); an entry becomes None once it has run, so that its arguments are freed.
    callbacks: list[Entry | None]
    #: The status line the client got.
    status: str | None
    #: The exception the app or its response iterable raised.
    error: BaseException | None
    # The core's: state, notes bits, the running callback's index and thread,
    # where after() asks whether it takes a callback (runner.check_callback), its
    # cap, and time.monotonic() at close (for the events' queue delay).
    state: int
    notes: int
    started: int
    thread: int
    runner: t.Any
    max_callbacks: int
    closed_at: float
    #: The class the request's first after() switches an OPEN request to.
    pending: t.ClassVar[type[RequestView]]

    def sent_all(self) -> bool:
        """Whether the body was fully sent."""
        raise NotImplementedError

    def outcome(self) -> Outcome:
        """The request's :class:`Outcome` as recorded so far."""
        status = self.status
        code = int(status[:3]) if status and status[:3].isdecimal() else None
        return Outcome(code, self.sent_all(), self.error)

    def method_and_path(self) -> tuple[str, str]:
        """The request's method and full path (``SCRIPT_NAME + PATH_INFO``), unescaped."""
        return method_and_path(self.environ or {})

    def describe(self) -> str:
        """``METHOD /path`` of the request, escaped for log lines."""
        if self.environ is None:
            return "a finished request"
        return describe_request(self.environ)

    def callback_names(self) -> list[str]:
        """The names of the callbacks not yet run or running, for drop and shutdown logs."""
        return [callback_name(c[0]) for c in self.callbacks[self.started :] if c is not None]

    def queued(self) -> list[Callback]:
        """The callbacks not yet run or running, as named records (in order)."""
        return [Callback._make(c) for c in self.callbacks[self.started :] if c is not None]

    def discard(self) -> None:
        """Forget the callbacks without running them (after they were logged as lost)."""
        for entry in self.callbacks:
            if entry is not None and type(entry[0]) is CoroutineType:
                entry[0].close()  # no "never awaited" warning for a coroutine we dropped
        self.release()

    def release(self) -> None:
        """Drop everything the request holds (DONE): its callbacks, environ, scope."""
        self.state = DONE
        self.callbacks = []
        self.environ = self.scope = None
        self.error = None
