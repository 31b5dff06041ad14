"""The Sentry recipe: sentry-sdk's logging integration reports a failed callback,
and the recipe's listener tags that event with the callback and its request.

On sentry-sdk 2.x and 3.x (``nox -s sentry``): 3.0 enables the logging integration
only when named, with ``event_level``, so the recipe names it."""

from __future__ import annotations

import collections.abc
import contextvars
import logging
import typing as t

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.transport import Transport

from tests.helpers import serve
from wsgi_after import AfterMiddleware, ThreadRunner, after, events

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


class MemoryTransport(Transport):
    """Keeps the events instead of sending them."""

    def __init__(self, options: dict[str, t.Any] | None = None) -> None:
        super().__init__(options)
        self.events: list[dict[str, t.Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        event = envelope.get_event()
        if event is not None:
            self.events.append(dict(event))


# The recipe (as in README.md).
running: contextvars.ContextVar[events.CallbackEvent | None] = contextvars.ContextVar(
    "running_callback", default=None
)


def remember_failure(event: events.CallbackEvent) -> None:
    """ "started" is emitted inside the callback's context, where its failure is logged."""
    if event.kind == "started":
        running.set(event)


def tag_callback_failure(sentry_event: t.Any, hint: dict[str, t.Any]) -> t.Any:
    event = running.get()
    if event is not None:
        sentry_event.setdefault("tags", {}).update(
            {"wsgi_after.callback": event.name, "http.method": event.method, "url.path": event.path}
        )
    return sentry_event


# End of the recipe.


def broken(order: int) -> None:
    raise ValueError(f"order {order} could not be billed")


def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    after(broken, 42)
    start_response("200 OK", [])
    return [b"ordered"]


@pytest.fixture(params=["recipe", "logging-only"])
def sentry(
    request: pytest.FixtureRequest,
) -> collections.abc.Iterator[tuple[MemoryTransport, bool]]:
    transport = MemoryTransport()
    recipe = request.param == "recipe"
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=transport,
        before_send=tag_callback_failure if recipe else None,
        # the logging integration is what turns our ERROR into events (named: sentry-sdk 3)
        integrations=[LoggingIntegration(event_level=logging.ERROR)],
        auto_enabling_integrations=False,  # not those of the other frameworks the tests install
    )
    if recipe:
        events.subscribe(remember_failure)
    yield transport, recipe
    events.unsubscribe(remember_failure)
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def test_a_failed_callback_reaches_sentry_with_its_request(
    sentry: tuple[MemoryTransport, bool], runner: ThreadRunner
) -> None:
    transport, recipe = sentry
    serve(AfterMiddleware(app, runner=runner), "/orders", "POST")
    assert runner.wait_idle(5)
    sentry_sdk.flush(5)
    [event] = transport.events
    [exception] = event["exception"]["values"]
    assert exception["type"] == "ValueError"
    assert exception["value"] == "order 42 could not be billed"
    assert event["logger"] == "wsgi_after"
    assert event["level"] == "error"
    assert event["logentry"]["params"][:2] == ["tests.test_sentry.broken", "POST /orders"]
    tags = event.get("tags", {})
    if recipe:
        assert tags == {
            "wsgi_after.callback": "tests.test_sentry.broken",
            "http.method": "POST",
            "url.path": "/orders",
        }
    else:  # the logging integration alone: the exception, and the request in the message
        assert tags == {}
