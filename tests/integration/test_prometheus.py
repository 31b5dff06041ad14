"""Prometheus under a real gunicorn with two workers, in multiprocess mode, scraped over HTTP."""

from __future__ import annotations

import collections.abc
import concurrent.futures
import os
import pathlib
import signal
import time
import typing as t

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration import poll as polling
from tests.integration.client import fetch
from tests.integration.servers import free_port, python, running

CONFIG = str(pathlib.Path(__file__).parent / "gunicorn_prometheus.conf.py")
OK = "prometheus_app.ok"
BROKEN = "prometheus_app.broken"
QUEUE_DEPTH = "wsgi_after_queue_depth"


class Server(t.NamedTuple):
    port: int
    metrics_dir: pathlib.Path
    release: pathlib.Path


@pytest.fixture
def server(tmp_path: pathlib.Path) -> collections.abc.Iterator[Server]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    release = tmp_path / "release"
    port = free_port()
    command = python(
        "-m", "gunicorn", "-w", "2", "-c", CONFIG, "-b", f"127.0.0.1:{port}",
        "--graceful-timeout", "5", "prometheus_app:app",
    )  # fmt: skip
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "RELEASE_FILE": str(release)}
    try:
        with running(command, port, env=env, log=tmp_path / "gunicorn.log"):
            yield Server(port, metrics_dir, release)
    finally:
        release.touch()
        pathlib.Path(f"{release}.request").touch()  # a request held in its view


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    """The samples of one scrape; None when it failed with a 500.

    prometheus_client creates a worker's metrics file before sizing it, so a scrape
    that meets a file being created fails once (prometheus/client_python#1199): seen
    here as the workers count their first callbacks. :func:`poll` scrapes again.
    """
    reply = fetch(port, "/metrics", "scrape")
    if reply.status == 500:
        return None
    assert reply.status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def poll(
    port: int, check: t.Callable[[dict[t.Any, float]], bool], timeout: float = 20.0
) -> dict[t.Any, float]:
    """Scrape until ``check`` holds, or fail at the deadline with the last scrape."""
    deadline = time.monotonic() + timeout
    samples = scrape(port)
    while samples is None or not check(samples):
        assert time.monotonic() < deadline, samples
        time.sleep(0.05)
        samples = scrape(port)
    return samples


def test_counters_sum_over_workers_gauges_are_live_and_dead_workers_are_cleaned(
    server: Server,
) -> None:
    # Both workers serve (and count) requests: one is held in its view, so the
    # next request goes to the other (the kernel may hand every request to one).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(fetch, server.port, "/work-held", "work-held")
        assert polling.poll(pathlib.Path(f"{server.release}.held").exists, bool), "never held"
        other = fetch(server.port, "/work", "work-other")
        pathlib.Path(f"{server.release}.request").touch()
        replies = [held.result(timeout=30), other]
    assert [reply.status for reply in replies] == [200, 200]
    pids = {reply.headers["x-pid"] for reply in replies}
    assert len(pids) == 2
    sent = len(replies)

    def all_counted(samples: dict[t.Any, float]) -> bool:
        # Every metric of the last callback: a scrape may fall between two of them.
        return (
            value(samples, "wsgi_after_callbacks_total", outcome="completed", callback=OK) == sent
            and value(samples, "wsgi_after_callbacks_total", outcome="failed", callback=BROKEN)
            == sent
            and value(samples, "wsgi_after_callback_duration_seconds_count", callback=BROKEN)
            == sent
        )

    samples = poll(server.port, lambda s: all_counted(s) and value(s, QUEUE_DEPTH) == 0)
    assert value(samples, "wsgi_after_callback_duration_seconds_count", callback=OK) == sent
    assert value(samples, "wsgi_after_callback_duration_seconds_count", callback=BROKEN) == sent
    assert value(samples, "wsgi_after_queue_delay_seconds_count") == 2 * sent

    # Each worker runs one callback at a time: of four blocked requests, at least
    # two wait in a queue, and the gauge summed over the live workers shows them.
    for i in range(4):
        assert fetch(server.port, "/block", f"block-{i}").status == 200
    poll(server.port, lambda s: value(s, QUEUE_DEPTH) >= 2)
    server.release.touch()
    poll(server.port, lambda s: value(s, QUEUE_DEPTH) == 0)

    # A worker dies: the master's child_exit hook forgets its gauge, its counts stay.
    dead = min(pids)
    gauge_file = server.metrics_dir / f"gauge_livesum_{dead}.db"
    assert gauge_file.exists()
    os.kill(int(dead), signal.SIGTERM)
    deadline = time.monotonic() + 20
    while gauge_file.exists():
        assert time.monotonic() < deadline, "child_exit did not mark the worker dead"
        time.sleep(0.05)
    poll(server.port, lambda s: all_counted(s) and value(s, QUEUE_DEPTH) == 0)
