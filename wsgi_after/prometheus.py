"""Prometheus metrics of the callbacks, for apps that expose ``/metrics`` with prometheus_client.

``pip install 'wsgi-after[prometheus]'``, then once at start-up::

    from wsgi_after import prometheus

    prometheus.install()                 # on prometheus_client's default registry
    prometheus.install(registry=mine)    # or on another one

The metrics:

* ``wsgi_after_callbacks_total{outcome, callback}``: callbacks by outcome,
  ``completed``, ``failed``, ``dropped`` (the runner's queue was full) or
  ``lost`` (not run at shutdown, or the server never closed the response);
* ``wsgi_after_callbacks_hung_total{callback}``: callbacks that ran longer than
  a runner's ``slow_callback``;
* ``wsgi_after_queue_depth``: requests whose callbacks wait in the queues of the
  process's runners (of those that have ``stats()``);
* ``wsgi_after_queue_delay_seconds``: histogram of the time from the
  response's close to a callback's start;
* ``wsgi_after_callback_duration_seconds{callback}``: histogram of the
  callbacks' run times.

``callback`` is the callback's ``module.qualname``; past ``max_callback_names``
distinct names, later ones are reported as ``"other"``, so the number of time
series stays bounded.

Several processes (gunicorn workers): in prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set to an empty directory before the server
starts) the counters and histograms are summed over every worker, dead ones
included, and the queue depth is the sum over the live workers, each worker
sampling its own every ``depth_interval`` seconds on a daemon thread (started
in each worker, also after a fork). Add the gunicorn hook that forgets a dead
worker's gauge, and expose the directory's metrics::

    # gunicorn.conf.py
    from wsgi_after.gunicorn import child_exit, post_fork, worker_exit

    # the /metrics view
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    body = generate_latest(registry)

This module only subscribes a listener to :mod:`wsgi_after.events`: nothing
runs in the request's hot path.
"""

from __future__ import annotations

import logging
import os
import threading
import typing as t

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import events, lifecycle
from .callback_stats import BoundedNames

logger = logging.getLogger("wsgi_after")

__all__ = ["install", "multiprocess_mode", "queue_depth", "uninstall"]


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes its values to ``PROMETHEUS_MULTIPROC_DIR``."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def queue_depth() -> int:
    """Requests waiting in the queues of this process's runners that have ``stats()``."""
    depth = 0
    for runner in lifecycle.runners():
        stats = getattr(runner, "stats", None)
        queued = getattr(stats(), "queued", 0) if stats is not None else 0
        depth += queued if isinstance(queued, int) else 0
    return depth


class _Metrics:
    """The listener :func:`install` subscribes, and its metrics."""

    def __init__(
        self,
        registry: CollectorRegistry,
        max_callback_names: int,
        buckets: t.Sequence[float],
        depth_interval: float,
    ) -> None:
        self.registry = registry
        self.depth_interval = depth_interval
        self.stopped = threading.Event()
        self.names = BoundedNames(max_callback_names)
        self.live_gauge = multiprocess_mode()
        self.metrics: list[t.Any] = []
        self.callbacks = self.add(
            Counter(
                "wsgi_after_callbacks",
                "Callbacks by outcome: completed, failed, dropped, lost.",
                ["outcome", "callback"],
                registry=None,
            )
        )
        self.hung = self.add(
            Counter(
                "wsgi_after_callbacks_hung",
                "Callbacks seen running longer than the runner's slow_callback.",
                ["callback"],
                registry=None,
            )
        )
        self.delay = self.add(
            Histogram(
                "wsgi_after_queue_delay_seconds",
                "Time from the response's close to the callback's start.",
                buckets=buckets,
                registry=None,
            )
        )
        self.duration = self.add(
            Histogram(
                "wsgi_after_callback_duration_seconds",
                "Time the callback ran.",
                ["callback"],
                buckets=buckets,
                registry=None,
            )
        )
        self.depth = self.add(
            Gauge(
                "wsgi_after_queue_depth",
                "Requests whose callbacks wait in the runners' queues.",
                registry=None,
                multiprocess_mode="livesum",
            )
        )
        if not self.live_gauge:  # one process: read at each scrape
            self.depth.set_function(queue_depth)

    def start_sampler(self) -> None:
        """Multiprocess mode: sample this process's queue depth into its gauge file."""
        if not self.live_gauge:
            return
        self.stopped = threading.Event()
        threading.Thread(
            target=_sample,
            args=(self.depth, self.stopped, self.depth_interval),
            name="wsgi-after-prometheus",
            daemon=True,
        ).start()

    def stop_sampler(self) -> None:
        self.stopped.set()

    def add(self, metric: t.Any) -> t.Any:
        self.metrics.append(metric)
        return metric

    def register(self) -> None:
        done = []
        try:
            for metric in self.metrics:
                self.registry.register(metric)
                done.append(metric)
        except ValueError as e:
            for metric in done:
                self.registry.unregister(metric)
            raise ValueError(
                f"The registry already has a wsgi_after metric ({e}). Call"
                " 'wsgi_after.prometheus.install()' once per registry."
            ) from None

    def unregister(self) -> None:
        for metric in self.metrics:
            self.registry.unregister(metric)

    def __call__(self, event: events.CallbackEvent) -> None:
        kind = event.kind
        if kind == "slow":
            self.hung.labels(self.names(event.name)).inc()
        outcome = events.OUTCOMES.get(kind)
        if outcome is not None:
            name = self.names(event.name)
            self.callbacks.labels(outcome, name).inc()
            if event.queue_delay is not None:
                self.delay.observe(event.queue_delay)
            if event.run_time is not None:
                self.duration.labels(name).observe(event.run_time)


def _sample(gauge: Gauge, stopped: threading.Event, interval: float) -> None:
    logged = False
    while True:
        try:
            gauge.set(queue_depth())
        except Exception:
            if not logged:  # once: it would fail the same way every interval
                logged = True
                logger.exception("Could not sample the queue depth for Prometheus.")
        if stopped.wait(interval):
            return


_installed: _Metrics | None = None


def install(
    registry: CollectorRegistry | None = None,
    *,
    max_callback_names: int = 100,
    buckets: t.Sequence[float] = Histogram.DEFAULT_BUCKETS,
    depth_interval: float = 1.0,
) -> None:
    """Register the metrics (see the module's docstring) and start counting.

    Calling it again moves the metrics to the new registry (the counts start
    again from zero, except in multiprocess mode, where they live in files).

    :param registry: where to register; prometheus_client's default registry
        when None.
    :param max_callback_names: distinct ``callback`` label values; later names
        are reported as ``"other"``. 100 bounds the time series.
    :param buckets: the histograms' bucket bounds, in seconds.
    :param depth_interval: in multiprocess mode, seconds between two samples of
        the queue depth (one process cannot read another's queue at scrape time).
    :raises ValueError: if the registry already has metrics of these names
        (registered by hand), or an option is out of range.
    """
    global _installed
    if (
        isinstance(depth_interval, bool)
        or not isinstance(depth_interval, (int, float))
        or not 0 < depth_interval < float("inf")
    ):
        raise ValueError(
            f"'depth_interval' must be a number of seconds above 0, got {depth_interval!r}."
        )
    metrics = _Metrics(
        prometheus_client.REGISTRY if registry is None else registry,
        max_callback_names,
        buckets,
        float(depth_interval),
    )
    uninstall()
    metrics.register()
    _installed = metrics
    events.subscribe(metrics)
    metrics.start_sampler()


def uninstall() -> None:
    """Stop counting and unregister the metrics."""
    global _installed
    if _installed is not None:
        events.unsubscribe(_installed)
        _installed.stop_sampler()
        _installed.unregister()
        _installed = None


def _restart_sampler_in_child() -> None:
    if _installed is not None:  # the parent's sampler thread does not exist here
        _installed.start_sampler()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_restart_sampler_in_child)
