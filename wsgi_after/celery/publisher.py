"""The publishing side: :class:`CeleryRunner` turns each request's chain into a message.

The arguments are encoded with the app's serializer when ``after()`` is called,
and what is sent is what they were then. A background thread publishes, never the
request: while the broker is down each message is retried with backoff for
``retry_window`` seconds. A message that cannot be published (queue full, broker
unreachable, encoding error, shutdown) is lost: logged by request and callback
names only, never with its arguments, through the same aggregation as the thread
runner's drops, and its payload goes to the ``dead_letter`` hook if one is set;
listeners of :mod:`wsgi_after.events` see each of its callbacks as ``"dropped"``
(the queue was full) or ``"lost"`` (given up on), with this runner as ``runner``.
The W3C trace context travels in the message headers when OpenTelemetry is
installed (:func:`wsgi_after.otel.trace_headers`). What a message carries is
fixed by :mod:`wsgi_after.celery._payload`; a forked child's broker connections
are its own (:mod:`wsgi_after.celery._connections`)::

    runner = CeleryRunner(celery_app, allow=["shop"], dead_letter=store_payload)
    runner.submit(chain)  # at the response's close: queued for the publisher thread
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import typing as t

import celery
import celery.exceptions
import kombu.exceptions

from .. import events, lifecycle
from .._chain import Chain
from ..callback_stats import CallbackStats, NameStats, for_runner
from ..losslog import LossLog
from ..naming import callback_name
from ..runner import ThreadRunner
from ._connections import forget_inherited
from ._payload import build_payload, check_payload, trace_headers
from .message import TASK_NAME, describe, event_name, safe_text
from .policy import configure_allow

logger = logging.getLogger("wsgi_after")

# What a dead or unreachable broker raises when publishing.
_BROKER_ERRORS = (kombu.exceptions.OperationalError, ConnectionError, OSError)


@dataclasses.dataclass(frozen=True)
class CeleryRunnerStats:
    """A snapshot of a :class:`CeleryRunner`; counts are of messages (one per request)."""

    #: Messages the broker accepted.
    published: int
    #: Publish attempts that failed on the broker and were tried again.
    retried: int
    #: Messages given up on after a publish attempt: broker unreachable for
    #: ``retry_window`` seconds, or the message could not be encoded.
    dead_lettered: int
    #: Messages never tried: the publisher's queue was full, or it shut down first.
    dropped: int
    #: Messages waiting for the publisher.
    queued: int
    #: With ``callback_stats``: by callback name, the callbacks dropped or lost here
    #: (those published are counted on the workers that run them).
    callbacks: dict[str, NameStats] | None = None


#: The type of ``CeleryRunner(dead_letter=...)``: called with the payload of a message that
#: could not be published, to store it somewhere safe.
DeadLetter = t.Callable[[dict[str, t.Any]], object]


class CeleryRunner:
    """A runner that publishes each request's chain to Celery instead of running it.

    :param celery_app: the Celery app whose broker and serializer to use.
    :param queue: the Celery queue to publish to (the app's default when None).
    :param allow: names of the modules whose module-level functions may be sent
        (their submodules too). Celery tasks are always allowed. When given, it
        is stored as the app's ``wsgi_after_allow`` config key, which is what a
        worker reads; when None, that key is used (no key: Celery tasks only).
    :param dead_letter: called with the payload of each message that could not
        be published (a JSON-able dict; ``celery_app.send_task("wsgi_after.run_chain",
        args=[payload])`` replays it). None keeps payloads nowhere, and the log
        lines say so.
    :param retry_window: seconds after queueing during which a message is retried
        while the broker cannot be reached.
    :param max_pending: messages that may wait for the publisher; past that,
        further ones are dropped rather than delaying responses.
    :param drain_timeout: seconds to keep publishing at interpreter exit.
    :param callback_stats: True (or a
        :class:`~wsgi_after.callback_stats.CallbackStats`) adds the callbacks this
        runner dropped or gave up on, by name, to :meth:`stats`.

    Error policy: nothing raises into the server. Every message not published is
    logged at ERROR by request and callback names (the first ones of every 10 s
    one line each, then counts by name), counted in :meth:`stats` and handed to
    ``dead_letter``; its arguments never reach the log.
    """

    def __init__(
        self,
        celery_app: celery.Celery,
        queue: str | None = None,
        *,
        allow: t.Iterable[str] | None = None,
        dead_letter: DeadLetter | None = None,
        retry_window: float = 30.0,
        max_pending: int = 10_000,
        drain_timeout: float = 25.0,
        callback_stats: bool | CallbackStats = False,
    ) -> None:
        if not isinstance(celery_app, celery.Celery):
            raise TypeError(
                f"'CeleryRunner' needs a 'celery.Celery' app, got {type(celery_app).__name__!r}."
            )
        if retry_window < 0:
            raise ValueError(f"'retry_window' must be at least 0, got {retry_window!r}.")
        if dead_letter is not None and not callable(dead_letter):
            raise TypeError(
                "'dead_letter' must be a callable taking the payload, got"
                f" {type(dead_letter).__name__!r}."
            )
        self.celery_app = celery_app
        self.queue = queue
        self.allow = configure_allow(celery_app, allow)
        self.dead_letter = dead_letter
        self.retry_window = float(retry_window)
        self.max_pending = max_pending
        self.drain_timeout = float(drain_timeout)
        self.serializer: str = celery_app.conf.task_serializer
        self._closing = threading.Event()
        # One publishing thread keeps messages in order; it is a ThreadRunner, so fork
        # safety and the drain come with it. The bound is ours (see submit), so that
        # drops are logged saying where their payload went.
        self._publisher = ThreadRunner(
            max_workers=1,
            max_pending=max_pending + 1,
            on_full="drop",
            drain_timeout=drain_timeout,
            name="wsgi-after-celery",
        )
        lifecycle.unregister(self._publisher)  # drained by this runner, registered below
        where = (
            f"payload given to the dead_letter hook '{callback_name(dead_letter)}'"
            if dead_letter is not None
            else "payload kept nowhere (pass 'dead_letter' to 'CeleryRunner' to keep it)"
        )
        self._full_log = LossLog(
            f"the Celery publisher's queue is full (max_pending={max_pending}); {where}."
        )
        self._shutdown_log = LossLog(
            f"it was still queued when the Celery publisher shut down; {where}."
        )
        self._unreachable_log = LossLog(
            f"the broker could not be reached within retry_window={self.retry_window:g} s; {where}."
        )
        self._encode_log = LossLog(
            f"its message could not be encoded with the {self.serializer!r} serializer"
            f" at publish; {where}."
        )
        self._error_log = LossLog(f"publishing it raised an unexpected error; {where}.")
        self._reset()
        self.callback_stats = for_runner(callback_stats, self)
        lifecycle.register(self)

    def _reset(self) -> None:
        """The per-process state: at init, and in the child after ``fork()``."""
        for log in self._logs():
            log.reset()
        self._lock = threading.Lock()
        self._queued = self._published = self._retried = self._dead_lettered = 0
        self._dropped = 0
        self._broker_down = False  # the last attempt failed on the broker

    def __repr__(self) -> str:
        return f"<CeleryRunner {self.celery_app.main!r} queue={self.queue!r}>"

    def check_callback(
        self, func: t.Any, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
    ) -> None:
        """Called by :func:`wsgi_after.after`: refuse what a worker would not run.

        The arguments are encoded and decoded with the app's serializer now, and
        that copy is what gets published: mutating an argument after ``after()``
        does not change what is sent.

        :raises TypeError: if ``func`` is neither a Celery task nor a module-level
            function of a module in ``allow``, or its arguments do not serialize.
        """
        check_payload(func, args, kwargs, self.allow, self.serializer)

    def submit(self, fn: t.Callable[[], object], /) -> None:
        """Queue the chain's message for the publisher thread; never blocks."""
        if not isinstance(fn, Chain):
            raise TypeError(
                f"'CeleryRunner' publishes request chains only, got {type(fn).__name__!r}."
            )
        payload = build_payload(fn, self.allow, self.serializer)
        headers = trace_headers(fn)
        fn.discard()  # its callbacks now live in the payload
        with self._lock:
            full = self._queued >= self.max_pending
            if full:
                self._dropped += 1
            else:
                self._queued += 1
        if full:
            self._lose(payload, self._full_log, "dropped")
            return
        self._publisher.submit(_Publish(self, payload, headers, time.monotonic()))

    def stats(self) -> CeleryRunnerStats:
        """Counters since this process started using the runner."""
        with self._lock:
            stats = CeleryRunnerStats(
                published=self._published,
                retried=self._retried,
                dead_lettered=self._dead_lettered,
                dropped=self._dropped,
                queued=self._queued,
            )
        if self.callback_stats is None:
            return stats
        by_name = self.callback_stats.snapshot().by_name
        return dataclasses.replace(stats, callbacks=by_name)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued message was published (or given up on)."""
        return self._publisher.wait_idle(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Publish what is queued, trying each message once more; log the rest.

        Waits at most ``timeout`` seconds (``drain_timeout`` when None). To stop
        every runner of the process against one deadline, use
        :func:`wsgi_after.shutdown_runners`.
        """
        limit = lifecycle.check_timeout(self.drain_timeout if timeout is None else timeout)
        self.begin_shutdown()
        return self.finish_shutdown(lifecycle.deadline_after(limit))

    # The lifecycle seam (wsgi_after.lifecycle): at exit and from server hooks.

    def start(self) -> None:
        """Start the publisher thread now."""
        self._publisher.start()

    def begin_shutdown(self) -> None:
        """Stop backing off: each message left is tried once more; never blocks."""
        self._closing.set()
        self._publisher.begin_shutdown()

    def finish_shutdown(self, deadline: float | None) -> bool:
        """Wait for the publisher until ``deadline``; log what was not published."""
        done = self._publisher.finish_shutdown(deadline)
        for log in self._logs():
            log.close()
        return done

    def exiting(self) -> None:
        """The interpreter is exiting: tell the publisher."""
        self._closing.set()
        self._publisher.exiting()

    def reset_after_fork(self) -> None:
        """In a child after ``fork()``: fresh counters, lock and publisher state, and
        broker connections of its own (Celery resets its pools only in its own children)."""
        forget_inherited(self.celery_app)
        self._reset()
        self._publisher.reset_after_fork()
        if self.callback_stats is not None:
            self.callback_stats.reset()

    def _logs(self) -> tuple[LossLog, ...]:
        return (
            self._full_log,
            self._shutdown_log,
            self._unreachable_log,
            self._encode_log,
            self._error_log,
        )

    def _publish(self, item: _Publish) -> bool:
        with self._lock:
            self._queued -= 1
        deadline = item.queued_at + self.retry_window
        delay = 0.1
        while True:
            if self._broker_down and self._closing.is_set():
                # Shutting down with the broker unreachable: no attempt (each may wait
                # the app's broker_connection_timeout), so the drain ends at once.
                return self._lose_attempted(item.payload, self._unreachable_log)
            try:
                self.celery_app.send_task(
                    TASK_NAME,
                    args=[item.payload],
                    queue=self.queue,
                    retry=False,
                    headers=item.headers or None,
                )
            except _BROKER_ERRORS:
                self._broker_down = True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing.is_set():
                    return self._lose_attempted(item.payload, self._unreachable_log)
                with self._lock:
                    self._retried += 1
                self._closing.wait(min(delay, remaining))
                delay = min(delay * 2, 5.0)
            except kombu.exceptions.EncodeError:
                return self._lose_attempted(item.payload, self._encode_log)
            except Exception:
                # Its text may quote the payload: the traceback goes to DEBUG only.
                logger.debug("Publishing to Celery raised.", exc_info=True)
                return self._lose_attempted(item.payload, self._error_log)
            else:
                self._broker_down = False
                with self._lock:
                    self._published += 1
                return True

    def _lose_attempted(self, payload: dict[str, t.Any], log: LossLog) -> bool:
        """Lose a message a publish attempt failed on (counted as dead-lettered)."""
        with self._lock:
            self._dead_lettered += 1
        self._lose(payload, log, "lost")
        return False

    def _lose(
        self, payload: dict[str, t.Any], log: LossLog, kind: events.Kind | None = None
    ) -> None:
        """Log a message not published, by names only, emit its callbacks' ``kind``
        events (None: the publisher did), and hand it to ``dead_letter``."""
        request = describe(payload)
        log.record([safe_text(c["func"]) for c in payload["callbacks"]], request)
        if kind is not None and events.listeners:
            names = [event_name(c["func"]) for c in payload["callbacks"]]
            events.emit_each(kind, names, payload["method"], payload["path"], self)
        if self.dead_letter is None:
            return
        try:
            self.dead_letter(payload)
        except Exception as e:
            logger.error(
                "The dead_letter hook '%s' raised %s for the callbacks of '%s'; their"
                " payload is lost.",
                callback_name(self.dead_letter),
                type(e).__name__,
                request,
            )
            logger.debug("The dead_letter hook raised.", exc_info=True)


class _Publish:
    """One message for the publisher thread; describes itself for the logs."""

    __slots__ = ("headers", "payload", "queued_at", "runner")

    def __init__(
        self,
        runner: CeleryRunner,
        payload: dict[str, t.Any],
        headers: dict[str, str],
        queued_at: float,
    ) -> None:
        self.runner = runner
        self.payload = payload
        self.headers = headers
        self.queued_at = queued_at

    def __call__(self) -> bool:
        return self.runner._publish(self)

    def describe(self) -> str:
        return describe(self.payload)

    def callback_names(self) -> list[str]:
        return [safe_text(callback["func"]) for callback in self.payload["callbacks"]]

    def discard(self) -> None:
        """Nothing to release: the payload is plain data."""

    def lose(self, kind: events.Kind) -> None:
        """The publisher lost it (shut down before its turn): logged once, as this
        runner's ``kind`` events, and handed to ``dead_letter``."""
        runner = self.runner
        with runner._lock:
            runner._queued -= 1
            runner._dropped += 1
        runner._lose(self.payload, runner._shutdown_log, kind)
