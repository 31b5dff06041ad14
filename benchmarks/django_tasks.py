"""The client's latency of a Django view that enqueues a 100 ms task, on a real gunicorn.

``python benchmarks/django_tasks.py [--requests N]``: the test project
(``tests/django_project``, PostgreSQL on 127.0.0.1:5432, database ``test``) served by
gunicorn (1 gthread worker, 4 threads), its view ``/task/nap?arg=0.1`` enqueuing a
task that sleeps 100 ms, once with ``wsgi_after.django.tasks.AfterResponseBackend``
and once with Django's own ``ImmediateBackend`` (the task runs in the request).
Sequential requests, each on a new connection; prints the median and p95 of each.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.client import fetch  # noqa: E402
from tests.integration.servers import free_port, python, running  # noqa: E402

BACKENDS = {"AfterResponseBackend": "after", "ImmediateBackend (Django's)": "immediate"}


def measure(default: str, requests: int) -> list[float]:
    """Client latencies in ms of ``requests`` sequential requests with the ``default`` backend."""
    port = free_port()
    command = python(
        "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-w", "1",
        "-b", f"127.0.0.1:{port}", "tests.django_project.wsgi:application",
    )  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.django_project.settings",
        "WSGI_AFTER_TASKS_DEFAULT": default,
    }
    latencies = []
    with running(command, port, env=env):
        fetch(port, "/task/nap?arg=0", "warm-up")
        for i in range(requests):
            start = time.perf_counter()
            reply = fetch(port, "/task/nap?arg=0.1", f"r{i}")
            latencies.append((time.perf_counter() - start) * 1000)
            assert reply.status == 200, reply
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    requests = parser.parse_args().requests
    for label, default in BACKENDS.items():
        ms = sorted(measure(default, requests))
        p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
        median = statistics.median(ms)
        print(f"{label}: median {median:.1f} ms, p95 {p95:.1f} ms ({requests} requests)")


if __name__ == "__main__":
    main()
