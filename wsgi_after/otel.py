"""OpenTelemetry: a span for every callback, and metrics of callbacks and queues.

``pip install 'wsgi-after[otel]'``, then once at start-up, after the
OpenTelemetry SDK is configured::

    from wsgi_after import otel

    otel.instrument()

Spans. Each callback runs in a span named ``after <module.qualname>``, of kind
INTERNAL, a **child of the span that was current when** :func:`~wsgi_after.after`
**was called** (usually the request's server span), so it sits in the request's
trace. The request span has ended by the time the callback runs (its duration
does not include the after-work): trace viewers show the callback after it, and
``wsgi_after.queue_delay`` says how long it waited. The span is current while
the callback runs, so spans the callback makes (HTTP clients, databases) are its
children. Attributes:

* ``wsgi_after.callback``: the callback's ``module.qualname``;
* ``http.request.method`` and ``url.path``: the request's;
* ``http.route``: the request's route when known: Flask's ``url_rule``, what
  the ``route`` function given to :func:`instrument` returns, or what the app
  put in ``environ["wsgi_after.route"]`` (Django:
  ``request.META["wsgi_after.route"] = request.resolver_match.route``); it is
  read when ``after()`` is called, while the request is still being handled;
* ``wsgi_after.queue_delay``: seconds from the response's close to the start.

A callback that raises gets the exception recorded on its span and status ERROR.
With :class:`~wsgi_after.celery.CeleryRunner`, the trace context travels in the
message, so a Celery worker that calls :func:`instrument` makes the same spans.

Metrics, through the OpenTelemetry metrics API (callback names are capped at
``max_callback_names``; later names are reported as ``"other"``):

* ``wsgi_after.callbacks`` (counter): callbacks by ``outcome`` (``completed``,
  ``failed``, ``dropped``, ``lost``: lost at shutdown or never closed by the
  server) and ``wsgi_after.callback``;
* ``wsgi_after.callbacks.hung`` (counter): callbacks that ran longer than a
  runner's ``slow_callback``, by ``wsgi_after.callback``;
* ``wsgi_after.queue.depth`` (observable gauge): tasks (one per request) waiting
  in each registered runner that has ``stats()``, by ``wsgi_after.runner``
  (runners sharing a name are summed);
* ``wsgi_after.queue.delay`` and ``wsgi_after.callback.duration`` (histograms,
  seconds), by ``wsgi_after.callback``.

Nothing here runs in the request's hot path: this module only subscribes a
listener to :mod:`wsgi_after.events`, and the core builds no event while no
listener is subscribed.
"""

from __future__ import annotations

import contextlib
import contextvars
import typing as t

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import current_chain, events, lifecycle
from .callback_stats import BoundedNames

__all__ = [
    "ROUTE_KEY",
    "TRACE_HEADERS",
    "default_route",
    "instrument",
    "remote_trace",
    "trace_headers",
    "uninstrument",
]

#: The WSGI environ key holding the request's route (set by the app, or by this module).
ROUTE_KEY = "wsgi_after.route"

Route = t.Callable[[t.Mapping[str, t.Any]], "str | None"]

# -- Propagation: the W3C trace context across processes (the Celery runner) ----------

#: The message headers that carry the W3C trace context.
TRACE_HEADERS = ("traceparent", "tracestate")
_propagator = TraceContextTextMapPropagator()


def trace_headers(context: contextvars.Context) -> dict[str, str]:
    """The W3C trace context current in ``context`` (a callback's snapshot), as headers."""
    carrier: dict[str, str] = {}
    context.run(_propagator.inject, carrier)
    return {key: value for key, value in carrier.items() if key in TRACE_HEADERS}


@contextlib.contextmanager
def remote_trace(headers: t.Mapping[str, object]) -> t.Iterator[None]:
    """Make the trace context of received ``headers`` current while the block runs
    (values that are not strings are ignored; no header: nothing changes)."""
    carrier = {key: value for key, value in headers.items() if isinstance(value, str)}
    token = otel_context.attach(_propagator.extract(carrier)) if carrier else None
    try:
        yield
    finally:
        if token is not None:
            otel_context.detach(token)


def default_route(environ: t.Mapping[str, t.Any]) -> str | None:
    """The route of a Flask (or any Werkzeug) request: its ``url_rule``; else None."""
    request = environ.get("werkzeug.request")
    rule = getattr(request, "url_rule", None)
    text = getattr(rule, "rule", None)
    return text if isinstance(text, str) else None


#: The span of the callback running in this context, and the token that made it current.
_ACTIVE: contextvars.ContextVar[tuple[trace.Span, object] | None] = contextvars.ContextVar(
    "wsgi_after_otel_span", default=None
)


class _Instrumentation:
    """The listener :func:`instrument` subscribes, and the instruments it feeds."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        route: Route,
        max_callback_names: int,
    ) -> None:
        self.tracer = trace.get_tracer("wsgi_after", tracer_provider=tracer_provider)
        meter = metrics.get_meter("wsgi_after", meter_provider=meter_provider)
        self.route = route
        self.names = BoundedNames(max_callback_names)
        self.enabled = True
        self.callbacks = meter.create_counter(
            "wsgi_after.callbacks", unit="{callback}", description="Callbacks by outcome."
        )
        self.hung = meter.create_counter(
            "wsgi_after.callbacks.hung",
            unit="{callback}",
            description="Callbacks seen running longer than the runner's slow_callback.",
        )
        self.delay = meter.create_histogram(
            "wsgi_after.queue.delay",
            unit="s",
            description="Time from the response's close to the callback's start.",
        )
        self.duration = meter.create_histogram(
            "wsgi_after.callback.duration", unit="s", description="Time the callback ran."
        )
        meter.create_observable_gauge(
            "wsgi_after.queue.depth",
            callbacks=[self.observe_depth],
            unit="{request}",
            description="Requests whose callbacks wait in a runner's queue.",
        )

    def observe_depth(self, options: metrics.CallbackOptions) -> list[metrics.Observation]:
        if not self.enabled:
            return []
        # Summed by name: runners may share one (every default runner is 'wsgi-after'),
        # and two points with the same attributes would keep only the last.
        by_name: dict[str, int] = {}
        for runner in lifecycle.runners():
            stats = getattr(runner, "stats", None)
            if stats is None:
                continue
            queued = getattr(stats(), "queued", None)
            if isinstance(queued, int):
                name = str(getattr(runner, "name", type(runner).__name__))
                by_name[name] = by_name.get(name, 0) + queued
        return [metrics.Observation(n, {"wsgi_after.runner": name}) for name, n in by_name.items()]

    def __call__(self, event: events.CallbackEvent) -> None:
        kind = event.kind
        if kind == "started":
            self.start_span(event)
            return
        if kind == "queued":
            self.note_route()
            return
        name = self.names(event.name)
        if kind == "slow":
            self.hung.add(1, {"wsgi_after.callback": name})
            return
        outcome = events.OUTCOMES.get(kind)
        if outcome is None:
            return
        labels = {"wsgi_after.callback": name}
        self.callbacks.add(1, {"outcome": outcome, **labels})
        if event.queue_delay is not None:
            self.delay.record(event.queue_delay, labels)
        if event.run_time is not None:
            self.duration.record(event.run_time, {"outcome": outcome, **labels})
        if kind in ("finished", "failed"):
            self.end_span(event)

    def note_route(self) -> None:
        """In the request (a "queued" event): keep its route in its environ, where the
        callback's span finds it (Flask's request is gone by then)."""
        chain = current_chain()
        environ = chain.environ if chain is not None else None
        if environ is not None and ROUTE_KEY not in environ:
            environ[ROUTE_KEY] = self.route(environ)

    def start_span(self, event: events.CallbackEvent) -> None:
        """Called inside the callback's context: the current span is the one that was
        current at ``after()``, which becomes the parent."""
        attributes: dict[str, str | float] = {
            "wsgi_after.callback": event.name,
            "http.request.method": event.method,
            "url.path": event.path,
        }
        chain = current_chain()
        route = chain.environ.get(ROUTE_KEY) if chain is not None and chain.environ else None
        if isinstance(route, str) and route:
            attributes["http.route"] = route
        if event.queue_delay is not None:
            attributes["wsgi_after.queue_delay"] = event.queue_delay
        span = self.tracer.start_span(
            f"after {event.name}", kind=SpanKind.INTERNAL, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        _ACTIVE.set((span, token))

    def end_span(self, event: events.CallbackEvent) -> None:
        active = _ACTIVE.get()
        if active is None:  # instrumented while the callback ran
            return
        _ACTIVE.set(None)
        span, token = active
        if event.error is not None:
            span.record_exception(event.error, escaped=True)
            span.set_status(Status(StatusCode.ERROR, type(event.error).__name__))
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()


_installed: _Instrumentation | None = None


def instrument(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    route: Route = default_route,
    max_callback_names: int = 100,
) -> None:
    """Make a span for every callback and report the metrics (see the module's docstring).

    Calling it again replaces the previous instrumentation (with the new providers).

    :param tracer_provider: where the spans go; the global one by default.
    :param meter_provider: where the metrics go; the global one by default.
    :param route: returns the route (``"/users/<id>"``) of a request from its WSGI
        environ, or None to leave ``http.route`` out; called in the request, at its
        first ``after()``, unless the environ has ``"wsgi_after.route"`` already.
        The default knows Flask's (any Werkzeug request's ``url_rule``).
    :param max_callback_names: distinct callback names in metric attributes;
        later names are reported as ``"other"``. 100 bounds the time series.
    :raises TypeError: if ``route`` is not callable.
    :raises ValueError: if ``max_callback_names`` is not an int of at least 1.
    """
    global _installed
    if not callable(route):
        raise TypeError(
            f"'route' must be a function taking a WSGI environ, got {type(route).__name__!r}."
        )
    fresh = _Instrumentation(tracer_provider, meter_provider, route, max_callback_names)
    uninstrument()
    _installed = fresh
    events.subscribe(fresh)


def uninstrument() -> None:
    """Stop making spans and reporting metrics. Spans of callbacks running now are
    left unended; instruments already created stay, reporting nothing new."""
    global _installed
    if _installed is not None:
        events.unsubscribe(_installed)
        _installed.enabled = False
        _installed = None
