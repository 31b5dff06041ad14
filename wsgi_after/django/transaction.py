"""``after_commit()``: queue a callback when the current transaction commits.

::

    from django.db import transaction
    from wsgi_after.django import after_commit

    with transaction.atomic():
        order = Order.objects.create(...)
        after_commit(send_receipt, order.pk)  # runs after the response, if this commits

Django's ``transaction.on_commit`` runs its function in the request's thread as
soon as the outermost atomic block commits: before the response is sent. This
registers an ``on_commit`` hook (so savepoints behave exactly like Django's: a
rolled-back savepoint drops the callbacks registered inside it) whose only job is
to ``after()`` the callback; it then runs after the response like any ``after()``
callback. A callback whose transaction rolls back is never queued, which is
logged at DEBUG. Outside a transaction (autocommit) it is queued at once.
"""

from __future__ import annotations

import contextvars
import logging
import typing as t
import weakref

from django.db import DEFAULT_DB_ALIAS, transaction

from .. import OutsideRequestError, after, current_chain
from .._context import refuse_generators
from .._execute import Received
from .._request import Callback
from ..naming import callback_name
from .database import callback_scope
from .inline import take_errors
from .runner import SettingsRunner

logger = logging.getLogger("wsgi_after")


def after_commit(
    func: t.Callable[..., object], /, *args: t.Any, using: str | None = None, **kwargs: t.Any
) -> None:
    """Run ``func(*args, **kwargs)`` after the response, if the transaction on ``using`` commits.

    :param func: a callable (a coroutine function works, as with ``after()``).
    :param using: the database alias (``None``: the default database).
    :raises TypeError: if ``func`` is not callable, is a generator or async generator
        function (as ``after()`` refuses), or the runner cannot take it
        (``after()``'s checks, made here: at commit the row is already committed).
    :raises OutsideRequestError: if no request handled by the middleware is current.
    :raises RuntimeError: if the request's callbacks, queued and waiting for a
        commit, already number ``max_callbacks``.
    :raises django.db.transaction.TransactionManagementError: under manual
        transaction management (``set_autocommit(False)``), like ``on_commit``.
    """
    if not callable(func):
        raise TypeError(f"'after_commit()' needs a callable, got {type(func).__name__!r}.")
    refuse_generators(func, "after_commit")
    chain = current_chain()
    if chain is None:
        raise OutsideRequestError(
            "'after_commit()' was called outside a request. In a view, put"
            " 'wsgi_after.django.AfterMiddleware' first in MIDDLEWARE; outside a request (a"
            " management command, the shell, a worker), use 'transaction.on_commit(func)'."
        )
    # What after() checks, checked now: at commit a refusal would come after the row
    # was committed, and would skip the transaction's other on_commit hooks.
    check = getattr(chain.runner, "check_callback", None)
    if check is not None:  # a runner that sends callbacks elsewhere (CeleryRunner)
        check(func, args, kwargs)
    pending: list[int] = [0] if chain.environ is None else chain.environ.setdefault(_PENDING, [0])
    if len(chain.callbacks) + pending[0] >= chain.max_callbacks:
        raise RuntimeError(
            f"'after_commit()' was called more than {chain.max_callbacks} times for"
            f" '{chain.describe()}' (callbacks queued or waiting for a commit). Queue fewer"
            " callbacks (one that loops over the items), or raise"
            " 'AfterMiddleware(max_callbacks=...)'."
        )
    hook = _OnCommit(
        func, args, kwargs, using or DEFAULT_DB_ALIAS, pending, chain.method_and_path()
    )
    transaction.on_commit(hook, using=using)


# The environ key of a request's count of after_commit() callbacks waiting for a commit.
_PENDING = "wsgi_after.django.after_commit.pending"


class _OnCommit:
    """The ``on_commit`` hook: queues the callback in the context of the ``after_commit()`` call."""

    __slots__ = (
        "__weakref__",
        "alias",
        "args",
        "context",
        "func",
        "kwargs",
        "pending",
        "request",
        "state",
    )

    def __init__(
        self,
        func: t.Any,
        args: tuple[t.Any, ...],
        kwargs: dict[str, t.Any],
        alias: str,
        pending: list[int],
        request: tuple[str, str],
    ) -> None:
        self.func = func
        self.request = request  # method and path, for the log lines of a late run
        self.args = args
        self.kwargs = kwargs
        self.alias = alias
        self.context = contextvars.copy_context()
        self.state = [False]  # committed; shared with the finalizer
        pending[0] += 1
        self.pending = pending
        # Django drops the hooks of a rolled-back transaction or savepoint: when it
        # frees this one uncalled, say so (reference counting does it at once).
        finalizer = weakref.finalize(
            self, _rolled_back, self.state, pending, callback_name(func), alias
        )
        finalizer.atexit = False

    def __call__(self) -> None:
        self.state[0] = True
        self.pending[0] -= 1
        try:
            self.context.run(after, self.func, *self.args, **self.kwargs)
        except OutsideRequestError:
            # Committed after the request's response was closed: TestCase's
            # captureOnCommitCallbacks(execute=True), or a transaction that outlived
            # the view. Run it like a chain of its own (its outcome unknown: None).
            method, path = self.request
            late = Received({"REQUEST_METHOD": method, "PATH_INFO": path}, scope=callback_scope())
            late.callbacks.append(Callback(self.func, self.args, self.kwargs, self.context.copy()))
            # In a test's transaction (captureOnCommitCallbacks(execute=True) in a
            # TestCase) the settings' runner runs it here and now, on the test's
            # connection, unless capture_after_callbacks() records it.
            SettingsRunner().submit(late)
            errors = take_errors()  # it ran inline (tests): fail like a chain would
            if errors:
                raise errors[0] from None
        except (TypeError, RuntimeError) as e:  # checked at the call already: a race
            # Never raised into Django: it would skip the transaction's other hooks.
            logger.error(
                "Callback '%s' queued with 'after_commit()' was not run: %s",
                callback_name(self.func),
                e,
            )


def _rolled_back(state: list[bool], pending: list[int], name: str, alias: str) -> None:
    if not state[0]:
        pending[0] -= 1
        logger.debug(
            "Callback '%s' queued with 'after_commit()' was not run: the transaction on"
            " database '%s' rolled back.",
            name,
            alias,
        )
