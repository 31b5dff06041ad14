"""CPU instructions per request, counted by ``valgrind --tool=callgrind``.

Timings on a shared machine swing by 2x between runs; an instruction count does
not: callgrind gives the same total for the same run whatever else the machine
does. Each stack below serves requests in-process the way a server does (a copy
of one environ per request, iterate the response, close it), in a fresh Python
process under callgrind, once with ``base`` requests and once with
``base + extra``; the difference of the two totals divided by ``extra`` is the
cost of one request, with start-up, imports and warm-up cancelled out. Every
thread of the process is counted, so a callback's hand-off *and* its run on the
worker thread are included. ``base`` and ``extra`` are smaller than the 1,000 and
10,000 of ``--full`` so that every stack runs in a few minutes on 2 cores.

The one-callback stacks are counted in two regimes:

* **batch**: one worker, and after every ``BATCH`` requests a marker task queued
  behind the batch's callbacks is waited for. The worker never sleeps, so the cost
  of waking it is spread over 100 callbacks (a saturated server). Callbacks are
  no-ops.
* **one request at a time** (``*-paced``): ``PACED_WORKERS`` workers, and each
  request's callback has run before the next request starts (the callback
  releases a lock the request loop acquires). The worker sleeps and is
  woken for every callback, as on a lightly loaded server -- most servers, most
  of the time. The lock costs every stack the same.

A Flask-relative count (``+N`` over Flask hello world) moves with the process's
memory layout by up to +-2k: it is the median of ``LAYOUTS`` processes.

Commands::

    python benchmarks/instructions.py                  # the table (a few minutes)
    python benchmarks/instructions.py --check          # CI: the budgeted stacks, +5 % fails
    python benchmarks/instructions.py --write          # also update RESULTS.md
    python benchmarks/instructions.py --annotate NAME  # where one stack's instructions go
    python benchmarks/instructions.py --full           # 1,000 and 11,000 requests for all

The budgets are in ``benchmarks/budgets.json``: ``limit`` is what CI enforces
(with 5 % of slack), ``target`` what the code is being brought down to.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import typing as t
import wsgiref.util

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from wsgi_after import Runner

HERE = pathlib.Path(__file__).parent
#: The script the counted processes run (``floor.py`` sets itself, to count its stacks).
SCRIPT = __file__
BUDGETS = HERE / "budgets.json"
RESULTS = HERE / "RESULTS.md"
SLACK = 0.05  # CI fails when a count exceeds its limit by more than this
BATCH = 100  # requests between two waits for the callbacks to have run
BUILD_PATH = re.compile(r"/tmp/python-build[^:]*?/Python-[\d.]+/")  # pyenv's build folder
BEGIN, END = "<!-- instructions:begin -->", "<!-- instructions:end -->"

# --- the stacks (built in the child process, under callgrind) -------------------------

Settle = t.Callable[[], None]


def noop() -> None:
    pass


def _start_response(status: str, headers: list[tuple[str, str]], *exc_info: t.Any) -> t.Any:
    return None


def bare_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def _nothing() -> None:
    pass


class _Closing:
    """The least a close()-wrapper can be: delegate iteration and close()."""

    __slots__ = ("inner",)

    def __init__(self, inner: t.Iterable[bytes]) -> None:
        self.inner = inner

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(self.inner)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


class _NaiveClosing(_Closing):
    """The obvious approach: submit the request's callbacks to a pool in close()."""

    __slots__ = ("callbacks", "pool")

    def __init__(
        self,
        inner: t.Iterable[bytes],
        callbacks: list[t.Callable[[], object]],
        pool: concurrent.futures.Executor,
    ) -> None:
        super().__init__(inner)
        self.callbacks, self.pool = callbacks, pool

    def close(self) -> None:
        super().close()
        for callback in self.callbacks:
            self.pool.submit(callback)


def _pool_settle(pool: concurrent.futures.ThreadPoolExecutor) -> Settle:
    """On a one-thread pool, a marker task's result comes after every earlier task ran."""
    return lambda: pool.submit(noop).result()


def _runner_settle(runner: Runner) -> Settle:
    """On a one-worker runner, a marker task runs after every earlier task ran."""

    def settle() -> None:
        done = threading.Event()
        runner.submit(done.set)
        done.wait()

    return settle


def minimal_wrapper() -> tuple[WSGIApplication, Settle]:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        return _Closing(bare_app(environ, start_response))

    return app, _nothing


def closing_iterator() -> tuple[WSGIApplication, Settle]:
    from werkzeug.wsgi import ClosingIterator

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        return ClosingIterator(bare_app(environ, start_response), [noop])

    return app, _nothing


class Paced(t.NamedTuple):
    """The one-request-at-a-time regime: each request's callback has run before the next
    request starts, as on a lightly loaded server, so the worker sleeps and is woken for
    every callback. The callback releases ``ran``; the request loop acquires it.

    ``ran`` is a plain lock used as a binary semaphore (a lock may be released by
    another thread): C code, ~1k instructions a round, where ``threading.Semaphore``
    is Python code costing every stack ~23k a round and hiding what the stacks cost."""

    callback: t.Callable[[], object]
    settle: Settle


def paced() -> Paced:
    ran = threading.Lock()
    ran.acquire()

    def settle() -> None:
        ran.acquire()

    return Paced(ran.release, settle)


def middleware(callback: bool, one_at_a_time: bool = False) -> tuple[WSGIApplication, Settle]:
    from wsgi_after import AfterMiddleware, ThreadRunner, after

    pace = paced() if one_at_a_time else None
    queued = pace.callback if pace else noop

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        if callback:
            after(queued)
        return bare_app(environ, start_response)

    runner = ThreadRunner(max_workers=PACED_WORKERS if pace else 1, max_pending=BATCH + 1)
    return AfterMiddleware(app, runner=runner), pace.settle if pace else _runner_settle(runner)


def naive_pool(one_at_a_time: bool = False) -> tuple[WSGIApplication, Settle]:
    pace = paced() if one_at_a_time else None
    queued = pace.callback if pace else noop
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=PACED_WORKERS if pace else 1)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        callbacks: list[t.Callable[[], object]] = []
        environ["naive.callbacks"] = callbacks
        callbacks.append(queued)  # what the view does
        return _NaiveClosing(bare_app(environ, start_response), callbacks, pool)

    return app, pace.settle if pace else _pool_settle(pool)


def flask_app(kind: str, one_at_a_time: bool = False) -> tuple[WSGIApplication, Settle]:
    """Flask's hello world, alone or with one way of running a callback after it."""
    from flask import Flask

    from wsgi_after import AfterMiddleware, ThreadRunner, after
    from wsgi_after.flask import After

    app = Flask("bench")
    pace = paced() if one_at_a_time else None
    queued = pace.callback if pace else noop
    workers = PACED_WORKERS if pace else 1
    settle: Settle = _nothing
    queue_one = kind in ("after-one", "middleware-one")
    if kind.startswith("after"):
        runner = ThreadRunner(max_workers=workers, max_pending=BATCH + 1)
        After(app, runner=runner)
        settle = _runner_settle(runner)
    elif kind == "middleware-one":
        runner = ThreadRunner(max_workers=workers, max_pending=BATCH + 1)
        app.wsgi_app = AfterMiddleware(app.wsgi_app, runner=runner)  # type: ignore[method-assign]
        settle = _runner_settle(runner)
    elif kind == "executor":
        from flask_executor import Executor

        app.config["EXECUTOR_MAX_WORKERS"] = workers
        executor = Executor(app)
        settle = _pool_settle(executor._self)

    @app.get("/")
    def hello() -> str:
        if queue_one:
            after(queued)
        elif kind == "executor":
            executor.submit(queued)
        return "Hello, World!"

    return app, pace.settle if pace else settle


class Stack(t.NamedTuple):
    label: str
    build: t.Callable[[], tuple[WSGIApplication, Settle]]
    base: int  # requests in the shorter run
    extra: int  # more requests in the longer one
    baseline: str | None = None  # the stack a "+N" is given against
    batch: int = BATCH  # requests between two settles: 1 is the one-at-a-time regime


FLASK = 100, 500  # Flask stacks cost ~50x more: fewer requests, same exact method
PLAIN = 1_000, 5_000
PACED_WORKERS = 4  # the one-at-a-time regime's pools: a server's default-sized pool
ONE = "one request at a time"
LAYOUTS = 3  # processes whose median is a Flask-relative count (see ``repeats``)

STACKS: dict[str, Stack] = {
    "bare": Stack("bare WSGI app", lambda: (bare_app, _nothing), *PLAIN),
    "wrapper": Stack("a minimal close()-wrapper middleware, no callback", minimal_wrapper, *PLAIN),
    "closing-iterator": Stack(
        "werkzeug ClosingIterator with one inline no-op", closing_iterator, *PLAIN
    ),
    "middleware-none": Stack(
        "AfterMiddleware, no callback", lambda: middleware(callback=False), *PLAIN
    ),
    "middleware-one": Stack(
        "AfterMiddleware, one callback (ThreadRunner)", lambda: middleware(callback=True), *PLAIN
    ),
    "naive-pool": Stack(
        "naive wrapper + ThreadPoolExecutor.submit, one callback", naive_pool, *PLAIN
    ),
    "flask": Stack("Flask hello world", lambda: flask_app("hello"), *FLASK),
    "flask-after-none": Stack(
        "Flask + `After(app)`, view queues no callback",
        lambda: flask_app("after-none"),
        *FLASK,
        "flask",
    ),
    "flask-after-one": Stack(
        "Flask + `After(app)`, one callback", lambda: flask_app("after-one"), *FLASK, "flask"
    ),
    "flask-middleware-one": Stack(
        "Flask + AfterMiddleware only (no Flask context), one callback",
        lambda: flask_app("middleware-one"),
        *FLASK,
        "flask",
    ),
    "flask-executor": Stack(
        "Flask + Flask-Executor, one `submit`", lambda: flask_app("executor"), *FLASK, "flask"
    ),
    # The same one-callback stacks, the worker woken for every callback (``Paced``).
    "middleware-one-paced": Stack(
        f"AfterMiddleware, one callback, {ONE}",
        lambda: middleware(callback=True, one_at_a_time=True),
        *PLAIN,
        batch=1,
    ),
    "naive-pool-paced": Stack(
        f"naive wrapper + ThreadPoolExecutor.submit, one callback, {ONE}",
        lambda: naive_pool(one_at_a_time=True),
        *PLAIN,
        batch=1,
    ),
    "flask-after-one-paced": Stack(
        f"Flask + `After(app)`, one callback, {ONE}",
        lambda: flask_app("after-one", one_at_a_time=True),
        *FLASK,
        "flask",
        batch=1,
    ),
    "flask-executor-paced": Stack(
        f"Flask + Flask-Executor, one `submit`, {ONE}",
        lambda: flask_app("executor", one_at_a_time=True),
        *FLASK,
        "flask",
        batch=1,
    ),
}


def workload(name: str, requests: int) -> None:
    """Serve ``requests`` requests through stack ``name`` (the process callgrind counts)."""
    # Threads take turns only where one waits (a batch's end), not every 5 ms of a clock
    # that valgrind slows down by a varying factor: the same run, the same count.
    sys.setswitchinterval(1e6)
    stack = STACKS[name]
    app, settle = stack.build()
    base: dict[str, t.Any] = {}
    wsgiref.util.setup_testing_defaults(base)
    base["wsgi.file_wrapper"] = wsgiref.util.FileWrapper  # every real server sets one
    done = 0
    while done < requests:
        for _ in range(min(stack.batch, requests - done)):
            result = app(base.copy(), _start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        done += min(stack.batch, requests - done)
        settle()


# --- counting (the parent process) ------------------------------------------------------


def valgrind() -> str:
    path = shutil.which("valgrind")
    if path is None:
        raise SystemExit(
            "valgrind is not installed: install it with 'apt-get install -y valgrind'."
        )
    return path


def count(name: str, requests: int, out: pathlib.Path, python: list[str] | None = None) -> int:
    """Instructions of one whole process serving ``requests`` through stack ``name``."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # same hashes, same dict layouts
    env.pop("PYTHONMALLOC", None)
    proc = subprocess.run(
        [valgrind(), "--tool=callgrind", "--separate-recs=1", f"--callgrind-out-file={out}",
         *(python or [sys.executable]), "-B", SCRIPT, "--workload", name, str(requests)],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{name} x {requests} failed under callgrind:\n{proc.stderr[-3000:]}")
    match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no total in {out}")
    return int(match.group(1))


def per_request(
    name: str,
    keep: pathlib.Path | None = None,
    full: bool = False,
    python: list[str] | None = None,
) -> float:
    stack = STACKS[name]
    base, extra = (1_000, 10_000) if full else (stack.base, stack.extra)
    # Both runs must load the same bytecode: write every module's .pyc first (the runs
    # themselves write none), so neither compiles what the other loads.
    subprocess.run(
        [*(python or [sys.executable]), SCRIPT, "--workload", name, "1"],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    folder = keep or pathlib.Path(tempfile.mkdtemp(prefix="callgrind-"))
    try:
        small = count(name, base, folder / f"{name}.small.out", python)
        large = count(name, base + extra, folder / f"{name}.large.out", python)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return (large - small) / extra


def repeats(name: str) -> int:
    """How many processes count stack ``name``: a Flask-relative count (and its baseline)
    moves with the process's memory layout by up to +-2k, so its median of ``LAYOUTS``
    processes is taken; the others count the same in every process."""
    stack = STACKS[name]
    relative = stack.baseline is not None or any(s.baseline == name for s in STACKS.values())
    return LAYOUTS if relative else 1


def measure(names: list[str], full: bool = False, jobs: int = 2) -> dict[str, float]:
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {
            name: [pool.submit(per_request, name, None, full) for _ in range(repeats(name))]
            for name in names
        }
        return {name: statistics.median(f.result() for f in fs) for name, fs in futures.items()}


def kilo(n: float) -> str:
    return f"{n / 1000:.1f}k"


def table(counts: dict[str, float], budgets: dict[str, t.Any]) -> list[str]:
    lines = [
        "| stack | instructions / request | CI limit | target |",
        "|---|---|---|---|",
    ]
    for name, n in counts.items():
        stack = STACKS[name]
        shown = kilo(n)
        if stack.baseline in counts:
            shown += f" (+{kilo(n - counts[stack.baseline])})"
        budget = budgets.get(name, {})
        lines.append(
            f"| {stack.label} | {shown} | {describe(budget.get('limit'), stack)} |"
            f" {describe(budget.get('target'), stack)} |"
        )
    return lines


def describe(limit: float | None, stack: Stack) -> str:
    if limit is None:
        return ""
    return f"{STACKS[stack.baseline].label} + {kilo(limit)}" if stack.baseline else kilo(limit)


def check(counts: dict[str, float], budgets: dict[str, t.Any]) -> list[str]:
    """The budgets exceeded by more than ``SLACK``, one line each."""
    failures = []
    for name, budget in budgets.items():
        if name.startswith("_") or name not in counts:
            continue
        stack = STACKS[name]
        measured = counts[name] - (counts[stack.baseline] if stack.baseline else 0)
        if measured > budget["limit"] * (1 + SLACK):
            what = f"{stack.label}: {kilo(measured)} instructions per request"
            if stack.baseline:
                what += f" over {STACKS[stack.baseline].label}"
            failures.append(f"{what}, over the limit {kilo(budget['limit'])} + {SLACK:.0%}")
    return failures


def write_results(lines: list[str]) -> None:
    text = RESULTS.read_text()
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def annotate(name: str, top: int, python: list[str] | None = None) -> list[str]:
    """Per-request inclusive instructions of the top functions of stack ``name``: the
    difference of callgrind_annotate's inclusive counts of the two runs.

    With ``python = [a Python >= 3.12, "-X", "perf"]`` every Python function runs
    through its own small trampoline, which Python names in ``/tmp/perf-PID.map``;
    callgrind sees the trampoline's address, so the Python functions are listed
    too (``py::name:file``). That interpreter counts more (no inlined Python calls),
    so read its figures as shares, not as the stack's count.
    """
    folder = pathlib.Path(tempfile.mkdtemp(prefix="callgrind-"))
    try:
        per_request(name, keep=folder, python=python)
        extra = STACKS[name].extra
        paths = [folder / f"{name}.{size}.out" for size in ("small", "large")]
        names = [perf_map(path) for path in paths]
        runs = {
            kind: [annotated(path, names[i], kind == "inclusive") for i, path in enumerate(paths)]
            for kind in ("inclusive", "self")
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = []
    for kind, (small, large) in runs.items():
        diff = {fn: (large[fn] - small.get(fn, 0)) / extra for fn in large}
        if kind == "inclusive":  # C functions' inclusive counts repeat along recursion
            diff = {fn: n for fn, n in diff.items() if fn.startswith("py::")}
            title = "Python functions, inclusive (each trampoline's calls)"
        else:
            title = "functions, self"
        if diff:
            ranked = sorted(diff.items(), key=lambda item: -item[1])[:top]
            lines += [f"== {name}: {title}, instructions per request", ""]
            lines += [f"{n:12,.0f}  {fn}" for fn, n in ranked] + [""]
    return lines


def annotated(path: pathlib.Path, names: dict[int, str], inclusive: bool) -> dict[str, int]:
    """Instructions by function of one run, from ``callgrind_annotate``."""
    out = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100",
         str(path)],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    counts: dict[str, int] = {}
    for line in out.splitlines():
        match = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$", line)
        if match and ":" in match.group(2):
            fn = BUILD_PATH.sub("", re.sub(r"\s*\[.*\]$", "", match.group(2)))
            address = re.fullmatch(r"\?\?\?:0x([0-9a-f]+)", fn)
            if address:
                fn = names.get(int(address.group(1), 16), fn)
            counts[fn] = counts.get(fn, 0) + int(match.group(1).replace(",", ""))
    return counts


def perf_map(path: pathlib.Path) -> dict[int, str]:
    """The Python functions' trampolines of the run in ``path`` (``-X perf``), by address;
    reads and removes ``/tmp/perf-PID.map``."""
    match = re.search(r"^pid: (\d+)", path.read_text(), re.MULTILINE)
    mapping = pathlib.Path(f"/tmp/perf-{match.group(1)}.map") if match else None
    if mapping is None or not mapping.exists():
        return {}
    names = {}
    for line in mapping.read_text().splitlines():
        start, _size, fn = line.split(" ", 2)
        names[int(start, 16)] = fn
    mapping.unlink()
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workload", nargs=2, metavar=("STACK", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help="exit 1 when over a budget")
    parser.add_argument("--write", action="store_true", help="write the table into RESULTS.md")
    parser.add_argument("--full", action="store_true", help="1,000 and 11,000 for every stack")
    parser.add_argument("--annotate", metavar="STACK", choices=STACKS, help="top functions")
    parser.add_argument("--top", type=int, default=40, help="functions --annotate shows")
    parser.add_argument(
        "--python",
        help="with --annotate: a Python >= 3.12 to run with -X perf, naming Python functions",
    )
    parser.add_argument("stacks", nargs="*", choices=[[], *STACKS], help="default: all")
    args = parser.parse_args(argv)
    if args.workload:
        workload(args.workload[0], int(args.workload[1]))
        sys.stdout.flush()
        # Not the interpreter's exit: it ends waiting worker threads by unwinding their
        # stacks, which crashes under -X perf (no unwind data for the trampolines).
        os._exit(0)
    if args.annotate:
        python = [args.python, "-X", "perf"] if args.python else None
        print("\n".join(annotate(args.annotate, args.top, python)))
        return 0
    budgets = json.loads(BUDGETS.read_text())
    names = args.stacks or list(STACKS)
    if args.check and not args.stacks:  # the budgeted stacks only: CI stays fast
        names = [name for name in STACKS if name in budgets]
    if args.check:  # a budget given against a baseline needs the baseline too
        baselines = {STACKS[name].baseline for name in names} - {None, *names}
        names += sorted(t.cast("set[str]", baselines))
    counts = measure(names, full=args.full)
    lines = table(counts, budgets)
    print("\n".join(lines))
    if args.write:
        write_results(lines)
    failures = check(counts, budgets) if args.check else []
    for failure in failures:
        print(f"OVER BUDGET: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
