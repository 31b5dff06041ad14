"""Run every benchmark and write ``benchmarks/RESULTS.md`` and ``benchmarks/latency.png``.

``python benchmarks/run.py`` (about 20 minutes on 2 cores) or ``--quick`` (a short
pass of everything, which CI runs so that nothing rots; it asserts nothing about
speed). Every figure is measured beside its baseline in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
import typing as t

import bench_core
import bench_memory
import e2e
import floor
import instructions

from tests.integration.servers import free_port, wait_for_port  # e2e put the repo on sys.path

HERE = pathlib.Path(__file__).parent
IO_VARIANTS = ["none", "after", "after-plain", "inline", "call_on_close", "executor", "naive"]
LABELS = {
    "none": "(a) no side effect",
    "after": "(b) after()",
    "after-plain": "(b') after(), AfterMiddleware without the Flask extension",
    "inline": "(c) inline in the view",
    "call_on_close": "(d) response.call_on_close",
    "executor": "(e) Flask-Executor submit",
    "naive": "(f) naive close() -> ThreadPoolExecutor.submit",
    "starlette-none": "(g0) Starlette, no side effect",
    "starlette": "(g) Starlette BackgroundTasks",
    "celery": "after() on CeleryRunner",
}


def machine() -> str:
    cpuinfo = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line),
        platform.processor(),
    )
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in (
            "wsgi-after",
            "flask",
            "werkzeug",
            "gunicorn",
            "starlette",
            "uvicorn",
            "flask-executor",
            "celery",
        )
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python"
        f" {platform.python_version()}; {versions}"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


@contextlib.contextmanager
def celery_cluster() -> t.Iterator[str]:
    """A private redis-server and a Celery worker for the CeleryRunner figures."""
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    broker = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "PYTHONPATH": str(HERE), "BENCH_VARIANT": "celery",
           "BENCH_EFFECT": "cpu", "BENCH_BROKER": broker}  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "e2e_app.celery_app", "worker", "-c", "2",
         "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, redis)
        wait_for_worker(broker, worker)  # nothing is measured before it answers
        yield broker
    finally:
        # The worker first, while its broker is up: a worker whose broker is gone retries
        # the connection in its warm shutdown, and outlived the wait (seen in CI).
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        redis.terminate()
        redis.wait(30)


def wait_for_worker(broker: str, worker: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Ping the Celery worker over ``broker`` until it answers; fail at once if it died."""
    from celery import Celery

    app = Celery("bench-ping", broker=broker)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the Celery worker exited with {worker.returncode}")
            if app.control.ping(timeout=0.5):  # waits up to 0.5 s for a reply
                return
        raise TimeoutError(f"the Celery worker did not answer a ping within {timeout} s")
    finally:
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="everything, briefly")
    args = parser.parse_args(argv)
    quick = args.quick
    out: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    emit("# wsgi_after benchmark results")
    emit()
    emit(f"{datetime.date.today()}, {'--quick (not figures to quote)' if quick else 'full run'}.")
    emit(f"Machine: {machine()}.")
    emit()
    emit("Reproduce with `python benchmarks/run.py`. Each figure is beside its baseline,")
    emit("measured in the same run.")

    if not quick:  # CI runs 'instructions.py --check' on its own
        for line in instructions_section(instructions.measure(list(instructions.STACKS))):
            emit(line)
        floor.register()
        emit()
        for line in floor.section(instructions.measure(floor.COMPARED)):
            emit(line)
    for line in micro_section(bench_core.measure(quick)):
        emit(line)

    p6 = bench_memory.p6_memory(20_000 if quick else 1_000_000)
    emit()
    emit(f"P6 memory: {p6['requests']:,.0f} requests with one callback each: RSS"
         f" {p6['rss_before_mb']:.1f} -> {p6['rss_after_mb']:.1f} MB (growth"
         f" {p6['growth_mb']:.2f} MB, goal < 5 MB: {verdict(p6['growth_mb'] < 5)}); environs"
         f" still alive after their callbacks ran, before any gc pass: {p6['alive']:.0f} of"
         f" {p6['sampled']:.0f} sampled ({verdict(p6['alive'] == 0)}).")  # fmt: skip

    rate, duration = (50.0, 2.0) if quick else (100.0, 30.0)
    p4_reps = 1 if quick else 3
    p4 = e2e.p4_paced(IO_VARIANTS, rate, duration, p4_reps)
    p4g = e2e.p4_paced(["starlette-none", "starlette"], rate, duration, p4_reps)
    emit()
    emit("## End to end")
    emit()
    emit("gunicorn gthread (1 worker, 16 threads) serving Flask; Starlette on uvicorn for (g)."
         " Side effect: 50 ms of sleep; pools of 8 threads (~160 side effects/s).")  # fmt: skip
    emit()
    emit(f"### P4 paced load: {rate:.0f} req/s for {duration:.0f} s, median of {p4_reps}"
         f" run(s); ratios to the variant's own baseline")  # fmt: skip
    emit()
    emit("Latency is measured until the server closed the connection (`Connection: close`), as"
         " in the set-up the goal was set on: it also counts what the server does after sending,"
         " such as calling `close()`, which holds a keep-alive connection's next request. The"
         " last column is the time until the client had the whole response (its"
         " Content-Length read).")  # fmt: skip
    emit()
    emit("| variant | p50 ms | p90 ms | p99 ms | p50 / p90 / p99 vs baseline |"
         " to the last byte, vs baseline |")  # fmt: skip
    emit("|---|---|---|---|---|---|")
    table = {**p4["close"], **p4g["close"]}
    complete = {**p4["medians"], **p4g["medians"]}
    for variant, m in table.items():
        base_name = "starlette-none" if variant.startswith("starlette") else "none"
        base, lbase, last = table[base_name], complete[base_name], complete[variant]
        ratios = " / ".join(f"{m[k] / base[k]:.2f}x" for k in ("p50", "p90", "p99"))
        lratios = " / ".join(f"{last[k] / lbase[k]:.2f}x" for k in ("p50", "p90", "p99"))
        emit(f"| {LABELS[variant]} | {m['p50']:.1f} | {m['p90']:.1f} | {m['p99']:.1f} | {ratios}"
             f" | {lratios} |")  # fmt: skip
    ok = all(table["after"][k] / table["none"][k] <= 1.10 for k in ("p50", "p90", "p99"))
    ok_last = all(complete["after"][k] / complete["none"][k] <= 1.10 for k in ("p50", "p90", "p99"))
    emit()
    emit(f"Goal: p50, p90, p99 of (b) <= 1.10x of (a), until the connection closed: {verdict(ok)};"
         f" to the last byte: {verdict(ok_last)}. p99 rests on"
         f" {int(table['none']['n'] * 0.01)} samples per run.")  # fmt: skip

    sat_duration, concurrency = (2.0, 16) if quick else (5.0, 64)
    cases = [
        ("(f) naive ThreadPoolExecutor", {"variant": "naive"}),
        ("(e) Flask-Executor", {"variant": "executor"}),
        ("(b) after(), on_full=block", {"variant": "after", "BENCH_ON_FULL": "block"}),
        ("(b) after(), on_full=run", {"variant": "after", "BENCH_ON_FULL": "run"}),
        ("(b) after(), on_full=drop", {"variant": "after", "BENCH_ON_FULL": "drop"}),
    ]
    p5 = e2e.p5_saturation(cases, concurrency, sat_duration)
    emit()
    emit(f"### P5 saturation: closed loop, {concurrency} clients for {sat_duration:.0f} s"
         " (max_pending=1000)")  # fmt: skip
    emit()
    emit(
        "| variant | req/s | p50 ms | p99 ms | max backlog | RSS MB | registered | ran | dropped |"
    )
    emit("|---|---|---|---|---|---|---|---|---|")
    for label, r in p5.items():
        emit(f"| {label} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max_backlog']}"
             f" | {r['rss_mb']:.0f} | {r['registered']} | {r.get('ran', '')} |"
             f" {r.get('dropped', '')} |")  # fmt: skip
    exact = all(
        r["ran"] + r["dropped"] == r["registered"] and r["max_backlog"] <= 1000
        for label, r in p5.items()
        if "after()" in label
    )
    emit()
    emit(f"Goal: backlog never above max_pending and ran + dropped = registered: {verdict(exact)}."
         " Dropped callbacks are logged by name (first ones each 10 s, then counts).")  # fmt: skip

    for line in p7_section(rate / 2, duration):
        emit(line)

    suffix = "-quick" if quick else ""  # a quick pass never overwrites the real figures
    plot(p4["raw"] | p4g["raw"], HERE / f"latency{suffix}.png")  # until the connection closed
    emit()
    emit(f"![P4 latency distributions](latency{suffix}.png)")
    (HERE / f"RESULTS{suffix}.md").write_text("\n".join(out) + "\n")
    return 0


def instructions_section(counts: dict[str, float]) -> list[str]:
    """The table of instructions per request (see ``instructions.py``)."""
    budgets = json.loads(instructions.BUDGETS.read_text())
    return [
        "",
        "## Instructions per request",
        "",
        "Counted by `valgrind --tool=callgrind` (`python benchmarks/instructions.py`): the"
        " same for the same code whatever else the machine does. In-process WSGI calls (a"
        " copy of one environ, iterate, close), callbacks no-ops with their hand-off and"
        " their run on the worker thread included; the difference of two runs divided by"
        ' the requests between them. "+N" is the cost over Flask hello world; CI fails when'
        " a count exceeds its limit by more than 5 %.",
        "",
        instructions.BEGIN,  # 'instructions.py --write' replaces what is between the two
        *instructions.table(counts, budgets),
        instructions.END,
    ]


def micro_section(core: dict[str, bench_core.Timing]) -> list[str]:
    """The pyperf micro timings (see ``bench_core.py``)."""

    def us(name: str) -> str:
        timing = core[name]
        return f"{timing.median * 1e6:.2f} us (+- {timing.stdev * 1e6:.2f})"

    overhead = (core[bench_core.MIDDLEWARE].median - core[bench_core.BARE].median) * 1e6
    closing = (core[bench_core.CLOSING].median - core[bench_core.BARE].median) * 1e6
    close, submit = core[bench_core.CLOSE].median, core[bench_core.SUBMIT].median
    drained = 1 / core[bench_core.RUNNER_DRAIN].median
    pool_drained = 1 / core[bench_core.POOL_DRAIN].median
    return [
        "",
        "## Micro timings",
        "",
        "pyperf (`python benchmarks/bench_core.py`): calibrated loops, values from several"
        " worker processes; the median, and the standard deviation after +-.",
        "",
        "| measurement | time | beside |",
        "|---|---|---|",
        f"| per request, bare app | {us(bench_core.BARE)} | |",
        f"| per request, werkzeug ClosingIterator | {us(bench_core.CLOSING)} |"
        f" {closing:.2f} us over the bare app |",
        f"| per request, AfterMiddleware, no callback | {us(bench_core.MIDDLEWARE)} |"
        f" {overhead:.2f} us over the bare app ({overhead / closing:.2f}x ClosingIterator's) |",
        f"| close() with one callback | {us(bench_core.CLOSE)} | ThreadPoolExecutor.submit"
        f" {us(bench_core.SUBMIT)}: {submit / close:.1f}x the time |",
        f"| SimpleQueue.put | {us(bench_core.PUT)} | |",
        f"| trivial callbacks drained, 4 workers | {us(bench_core.RUNNER_DRAIN)} each:"
        f" {drained:,.0f}/s | ThreadPoolExecutor {pool_drained:,.0f}/s:"
        f" {drained / pool_drained:.1f}x |",
    ]


def p7_section(rate: float, duration: float) -> list[str]:
    """P7: a CPU-bound side effect in-process and on CeleryRunner (until the connection closed)."""
    with celery_cluster() as broker:
        p7 = e2e.p4_paced(["none", "after", "naive", "celery"], rate, duration, 1,
                          effect="cpu", env={"BENCH_BROKER": broker})  # fmt: skip
    rows = p7["close"]
    lines = [
        "",
        f"### P7 CPU-bound side effect (5 ms of pure Python), {rate:.0f} req/s",
        "",
        "| variant | p50 ms | p90 ms | p99 ms | p90 vs baseline |",
        "|---|---|---|---|---|",
    ]
    for variant, m in rows.items():
        lines.append(f"| {LABELS[variant]} | {m['p50']:.1f} | {m['p90']:.1f} | {m['p99']:.1f} |"
                     f" {m['p90'] / rows['none']['p90']:.2f}x |")  # fmt: skip
    return lines


def plot(raw: dict[str, list[float]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for variant, latencies in raw.items():
        ordered = sorted(x * 1000 for x in latencies)
        ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=LABELS[variant])
    ax.set_xscale("log")
    ax.set_xlabel("client latency, ms (log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("P4: paced load, side effect of 50 ms I/O (until the connection closed)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
