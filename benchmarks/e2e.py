"""End-to-end benchmarks: real servers over loopback, a bounded Python load generator.

P4 paced load below the callbacks' capacity, P5 saturation (closed loop), P7 a
CPU-bound side effect. Each variant is served by its own server process
(``e2e_app.py``; gunicorn gthread for Flask, uvicorn for Starlette) on 127.0.0.1
and a free port, and is reported against its own baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import threading
import time
import typing as t
import urllib.request

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # the repository: one free_port for tests and benchmarks

from tests.integration.servers import free_port, wait_for_port  # noqa: E402


@contextlib.contextmanager
def server(variant: str, effect: str = "io", **env: str) -> t.Iterator[int]:
    """Serve ``variant`` of ``e2e_app`` on a free port; always stop it."""
    port = free_port()
    if variant.startswith("starlette"):
        command = [sys.executable, "-m", "uvicorn", "e2e_app:app", "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning", "--workers", "1"]  # fmt: skip
    else:
        command = [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads",
                   "16", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                   "--backlog", "2048", "e2e_app:app"]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(HERE), "BENCH_VARIANT": variant,
                "BENCH_EFFECT": effect, **env}  # fmt: skip
    process = subprocess.Popen(
        command, env=full_env, start_new_session=True, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, process)
        get(port, "/")  # warm up: imports, first thread starts
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the drain is not what is measured
        process.wait(30)


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return bytes(response.read())


def stats(port: int) -> dict[str, t.Any]:
    return dict(json.loads(get(port, "/stats")))


async def _one(port: int) -> tuple[float, float]:
    """One request on a new connection: seconds until the whole response had arrived
    (its Content-Length read, as a client sees it complete) and until the server closed
    the connection (``Connection: close``)."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected response: {head[:80]!r}")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    complete = time.perf_counter() - started
    await reader.read()  # until the server closes the connection
    closed = time.perf_counter() - started
    writer.close()
    return complete, closed


async def _paced(port: int, rate: float, duration: float) -> list[tuple[float, float]]:
    """Open-loop arrivals every 1/rate s for ``duration`` s; each request's latencies."""
    tasks = []
    start = time.perf_counter()
    n = int(rate * duration)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(_one(port)))
    return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + 120))


async def _closed(port: int, concurrency: int, duration: float) -> list[float]:
    """``concurrency`` clients, each sending its next request when the last returns."""
    deadline = time.perf_counter() + duration
    latencies: list[float] = []

    async def client() -> None:
        while time.perf_counter() < deadline:
            latencies.append((await _one(port))[1])  # until the connection closed

    await asyncio.wait_for(
        asyncio.gather(*(client() for _ in range(concurrency))), timeout=duration + 120
    )
    return latencies


def paced(port: int, rate: float, duration: float) -> list[tuple[float, float]]:
    return asyncio.run(_paced(port, rate, duration))


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "n": float(len(ordered))}


def p4_paced(
    variants: list[str],
    rate: float,
    duration: float,
    reps: int,
    effect: str = "io",
    env: dict[str, str] | None = None,
) -> dict[str, t.Any]:
    """Per variant: the median over ``reps`` of p50/p90/p99 (ms) and the raw latencies."""
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    close_runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    raw: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(reps):
        for variant in variants:  # interleaved: drift hits every variant alike
            with server(variant, effect, **(env or {})) as port:
                latencies = paced(port, rate, duration)
            closed = [c for _, c in latencies]
            runs[variant].append(percentiles([complete for complete, _ in latencies]))
            close_runs[variant].append(percentiles(closed))
            raw[variant].extend(closed)

    def medians(all_runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
        return {
            v: {k: statistics.median(r[k] for r in rs) for k in ("p50", "p90", "p99", "n")}
            for v, rs in all_runs.items()
        }

    return {"medians": medians(runs), "close": medians(close_runs), "raw": raw}


class _Sampler(threading.Thread):
    """Reads the server's /stats every 0.25 s: the largest backlog and RSS seen."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.max_backlog = 0
        self.max_rss_kb = 0

    def run(self) -> None:
        while not self.stop.wait(0.25):
            with contextlib.suppress(OSError, ValueError):
                current = stats(self.port)
                self.max_backlog = max(self.max_backlog, int(current["backlog"]))
                self.max_rss_kb = max(self.max_rss_kb, int(current["rss_kb"]))


def p5_saturation(
    cases: list[tuple[str, dict[str, str]]], concurrency: int, duration: float
) -> dict[str, dict[str, t.Any]]:
    """Closed loop far above the callbacks' capacity: throughput, latency, backlog, counts."""
    results = {}
    for label, env in cases:
        variant = env.pop("variant")
        with server(variant, **env) as port:
            sampler = _Sampler(port)
            sampler.start()
            latencies = asyncio.run(_closed(port, concurrency, duration))
            sampler.stop.set()
            sampler.join(5)
            final = stats(port)
            result: dict[str, t.Any] = {
                "rps": len(latencies) / duration,
                **percentiles(latencies),
                "max_backlog": sampler.max_backlog,
                "rss_mb": sampler.max_rss_kb / 1024,
                "registered": final["registered"],
            }
            if variant == "after":
                # Wait (bounded) until every callback ran or was dropped, then count.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    final = stats(port)
                    if final["ran"] + final.get("dropped", 0) >= final["registered"]:
                        break
                    time.sleep(0.1)
                result.update(ran=final["ran"], dropped=final.get("dropped", 0))
            results[label] = result
    return results
