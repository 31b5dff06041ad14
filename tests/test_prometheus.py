"""Prometheus in one process: the metrics, their names and labels, the cap, the errors."""

from __future__ import annotations

import collections.abc
import threading
import typing as t

import pytest
from prometheus_client import CollectorRegistry, Counter

from tests.helpers import broken, ok, queuing, serve
from wsgi_after import AfterMiddleware, InlineRunner, ThreadRunner
from wsgi_after import prometheus as after_prometheus
from wsgi_after.gunicorn import child_exit

if t.TYPE_CHECKING:
    pass


@pytest.fixture
def registry() -> collections.abc.Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    after_prometheus.install(registry)
    yield registry
    after_prometheus.uninstall()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_outcomes_histograms_and_queue_depth(registry: CollectorRegistry) -> None:
    release = threading.Event()
    running = threading.Event()

    def blocker() -> None:
        running.set()
        assert release.wait(10)

    runner = ThreadRunner(max_workers=1, max_pending=1, on_full="drop", name="prom-depth")
    try:
        serve(AfterMiddleware(queuing(blocker), runner=runner))
        assert running.wait(5)
        app = AfterMiddleware(queuing(ok, broken), runner=runner)
        serve(app)  # waits in the queue
        serve(app)  # dropped
        assert sample(registry, "wsgi_after_queue_depth") == 1
        release.set()
        assert runner.wait_idle(5)
    finally:
        release.set()
        runner.shutdown(5)
    assert sample(registry, "wsgi_after_queue_depth") == 0
    total = "wsgi_after_callbacks_total"
    assert sample(registry, total, outcome="completed", callback="tests.helpers.ok") == 1
    assert sample(registry, total, outcome="failed", callback="tests.helpers.broken") == 1
    assert sample(registry, total, outcome="dropped", callback="tests.helpers.ok") == 1
    assert sample(registry, total, outcome="dropped", callback="tests.helpers.broken") == 1
    duration = "wsgi_after_callback_duration_seconds_count"
    assert sample(registry, duration, callback="tests.helpers.broken") == 1
    assert sample(registry, "wsgi_after_queue_delay_seconds_count") == 3


def test_hung_callbacks_are_counted(registry: CollectorRegistry) -> None:
    release = threading.Event()

    def stuck() -> None:
        assert release.wait(10)

    runner = ThreadRunner(max_workers=1, slow_callback=0.05, name="prom-hung")
    name = f"{__name__}.{stuck.__qualname__}"
    try:
        serve(AfterMiddleware(queuing(stuck), runner=runner))
        found = threading.Event()
        for _ in range(500):  # bounded: 5 s
            if sample(registry, "wsgi_after_callbacks_hung_total", callback=name) == 1:
                found.set()
                break
            found.wait(0.01)
        assert found.is_set()
    finally:
        release.set()
        runner.shutdown(5)


def test_callback_names_past_the_cap_are_other() -> None:
    registry = CollectorRegistry()
    after_prometheus.install(registry, max_callback_names=1)
    try:
        serve(AfterMiddleware(queuing(ok, broken, broken), runner=InlineRunner()))
        total = "wsgi_after_callbacks_total"
        ok_name = "tests.helpers.ok"
        assert sample(registry, total, outcome="completed", callback=ok_name) == 1
        assert sample(registry, total, outcome="failed", callback="other") == 2
    finally:
        after_prometheus.uninstall()


def test_install_again_moves_to_the_new_registry(registry: CollectorRegistry) -> None:
    other = CollectorRegistry()
    after_prometheus.install(other)
    serve(AfterMiddleware(queuing(ok), runner=InlineRunner()))
    labels = {"outcome": "completed", "callback": "tests.helpers.ok"}
    assert sample(other, "wsgi_after_callbacks_total", **labels) == 1
    assert sample(registry, "wsgi_after_callbacks_total", **labels) is None


def test_uninstall_unregisters() -> None:
    registry = CollectorRegistry()
    after_prometheus.install(registry)
    after_prometheus.uninstall()
    assert list(registry.collect()) == []


def test_a_name_taken_by_hand_is_a_clear_error() -> None:
    registry = CollectorRegistry()
    Counter("wsgi_after_callbacks", "mine", registry=registry)
    with pytest.raises(ValueError, match=r"Call 'wsgi_after\.prometheus\.install\(\)' once per"):
        after_prometheus.install(registry)
    assert [m.name for m in registry.collect()] == ["wsgi_after_callbacks"]


@pytest.mark.parametrize("interval", [0, -1, float("inf"), float("nan"), "1", True])
def test_bad_depth_interval_names_the_fix(interval: object) -> None:
    message = f"'depth_interval' must be a number of seconds above 0, got {interval!r}."
    with pytest.raises(ValueError, match=r"^'depth_interval' must be") as info:
        after_prometheus.install(CollectorRegistry(), depth_interval=interval)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_child_exit_does_nothing_outside_multiprocess_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    class Worker:
        pid = 12345

    child_exit(None, Worker())  # no error, no directory needed
