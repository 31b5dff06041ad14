"""``TasksRunner``: a request's ``after()`` callbacks, after the response, on django.tasks.

::

    TASKS = {"durable": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    WSGI_AFTER = {"RUNNER": "tasks", "TASKS_BACKEND": "durable", "ALLOW": ["shop.callbacks"]}

    # or, in wsgi.py: AfterMiddleware(application, runner=TasksRunner("durable"))

When the response is closed, the request's callbacks are enqueued, as one
message, as the task :data:`wsgi_after.django.tasks.worker.run_callbacks` on the
backend: with django-tasks-db that is one row, written before the server's
worker takes its next request, which its ``db_worker`` runs. The rules are
``CeleryRunner``'s: only module-level functions of the modules in
``WSGI_AFTER["ALLOW"]`` may be queued, their arguments must be JSON (both
checked when ``after()`` is called, with a :class:`TypeError` naming the fix,
and what is sent is the JSON copy made then), and the worker runs only what its
own ``ALLOW`` lists (see :mod:`~wsgi_after.django.tasks.worker`).
"""

from __future__ import annotations

import logging
import typing as t

from django.db import close_old_connections, connections

from ... import Chain, current_chain, events, remote
from ...losslog import LossLog
from ...naming import callback_name
from ..conf import options
from . import envelope

logger = logging.getLogger("wsgi_after")

#: The environ key under which a request's checked callbacks wait for the response to close.
SENT_KEY = "wsgi_after.django.tasks.sent"
WHO = "'TasksRunner'"
FIX = "WSGI_AFTER = {{..., 'ALLOW': [{module!r}]}}"
#: Loss logs kept per runner, one per class of error that enqueueing raised.
MAX_LOSS_LOGS = 16


class TasksRunner:
    """A runner that enqueues each request's callbacks on a ``django.tasks`` backend.

    :param backend: the alias in ``TASKS`` (default: ``WSGI_AFTER["TASKS_BACKEND"]``).
    :param queue_name: the backend's queue (default: the task's, ``"default"``).

    The allow list is ``WSGI_AFTER["ALLOW"]`` of the settings: the same list the
    worker reads in its own process.

    Error policy: nothing raises into the server. A chain that cannot be enqueued
    (the backend raised: database down, queue refused) is logged at ERROR by
    request and callback names, never with its arguments, and its callbacks are
    reported as ``"lost"`` events. It is enqueued in the thread that closes the
    response, once the response was sent: a crash of the process after that does
    not lose it.
    """

    def __init__(self, backend: str | None = None, *, queue_name: str | None = None) -> None:
        self.backend = backend if backend is not None else options().tasks_backend
        self.queue_name = queue_name
        self._lost: dict[str, LossLog] = {}  # by the class of what enqueueing raised
        self._refused = LossLog(
            "it is not a module-level function of WSGI_AFTER['ALLOW'] with JSON arguments."
        )

    def __repr__(self) -> str:
        return f"<TasksRunner backend={self.backend!r}>"

    def check_callback(
        self, func: t.Any, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
    ) -> None:
        """Called by :func:`wsgi_after.after`: refuse what the worker would not run.

        :raises TypeError: if ``func`` is not a module-level function of a module in
            ``WSGI_AFTER["ALLOW"]``, or its arguments are not JSON.
        """
        sent = self._sent(func, args, kwargs)
        chain = current_chain()
        if chain is not None and chain.environ is not None:
            chain.environ.setdefault(SENT_KEY, []).append((func, sent))

    def _sent(
        self, func: t.Any, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
    ) -> remote.CallbackRef:
        reference = remote.reference(func, options().allow, who=WHO, fix=FIX)
        sent_args, sent_kwargs = remote.json_arguments(callback_name(func), args, kwargs, who=WHO)
        return remote.CallbackRef(reference, sent_args, sent_kwargs)

    def submit(self, chain: t.Callable[[], object], /) -> None:
        """Enqueue the chain's callbacks as one task, now; log it if that fails."""
        message = self._message(chain)
        discard = getattr(chain, "discard", None)
        if discard is not None:
            discard()  # its callbacks now live in the message
        if not message["callbacks"]:
            return
        from .worker import run_callbacks  # imported once Django's task backends are set up

        try:
            task = run_callbacks.using(backend=self.backend, queue_name=self.queue_name)
            task.enqueue(envelope.pack(message))  # NUL and lone surrogates too (PostgreSQL)
        except Exception as e:
            logger.debug("Enqueueing on %r raised.", self.backend, exc_info=True)
            self._lose(message, self._enqueue_failed(e))
        finally:
            if not any(c.in_atomic_block for c in connections.all(initialized_only=True)):
                close_old_connections()  # as at the end of a request (not inside a test's)

    def _enqueue_failed(self, error: Exception) -> LossLog:
        """The loss log naming what enqueueing raised: its class at ERROR, its message
        (a database's may quote the arguments) at DEBUG only."""
        name = type(error).__name__
        if name not in self._lost and len(self._lost) >= MAX_LOSS_LOGS:
            name = "an exception"  # one more, for every other class
        found = self._lost.get(name)
        if found is None:
            found = self._lost[name] = LossLog(
                f"enqueueing it on the django.tasks backend {self.backend!r} raised {name}"
                " (its message, which may quote the arguments, is logged at DEBUG)."
            )
        return found

    def _message(self, chain: object) -> dict[str, t.Any]:
        """The message for ``chain``'s callbacks: the copies ``after()`` checked, or checked now."""
        entries = [e for e in getattr(chain, "callbacks", ()) if e is not None]
        if isinstance(chain, Chain):
            checked = iter((chain.environ or {}).get(SENT_KEY) or ())
            base = remote.make_message(chain, [])
        else:  # a late after_commit() callback: no request of its own
            checked = iter(())
            describe = getattr(chain, "describe", lambda: "?")
            base = remote.Message("-", describe(), None, True, None, []).payload()
        item = next(checked, None)
        refused = []
        for func, args, kwargs, _ in entries:
            if item is not None and item[0] is func:
                sent = item[1]
                item = next(checked, None)
            else:  # queued under another runner's rules (or none): check now
                try:
                    sent = self._sent(func, args, kwargs)
                except TypeError:
                    refused.append(callback_name(func))
                    continue
            base["callbacks"].append(sent.payload())
        if refused:
            self._lose({**base, "callbacks": [{"func": name} for name in refused]}, self._refused)
        return base

    def _lose(self, message: dict[str, t.Any], log: LossLog) -> None:
        names = [remote.bounded(c["func"]).replace(":", ".", 1) for c in message["callbacks"]]
        log.record(names, remote.describe(message))
        if events.listeners:
            events.emit_each("lost", names, message["method"], message["path"], self)
