"""Callback events: what listeners see, and that nothing is built while none listens."""

from __future__ import annotations

import collections.abc
import contextvars
import re
import threading
import time
import types
import typing as t

import pytest

import wsgi_after._watchdog
from tests.helpers import TIMEOUT, call, serve, wait_for
from wsgi_after import AfterMiddleware, InlineRunner, ThreadRunner, after, events

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

trace_id: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="-")


@pytest.fixture
def seen() -> collections.abc.Iterator[list[tuple[events.CallbackEvent, str]]]:
    got: list[tuple[events.CallbackEvent, str]] = []

    def listener(event: events.CallbackEvent) -> None:
        got.append((event, trace_id.get()))

    events.subscribe(listener)
    yield got
    events.unsubscribe(listener)


def ok() -> None:
    pass


def broken() -> None:
    raise ValueError("broken")


def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    trace_id.set("trace-1")
    after(ok)
    after(broken)
    start_response("200 OK", [])
    return [b""]


def test_a_callbacks_life_in_events(seen: list[tuple[events.CallbackEvent, str]]) -> None:
    serve(AfterMiddleware(app, runner=InlineRunner()), "/orders", "POST")
    kinds = [(e.kind, e.name.rsplit(".", 1)[-1]) for e, _ in seen]
    assert kinds == [
        ("queued", "ok"),
        ("queued", "broken"),
        ("started", "ok"),
        ("finished", "ok"),
        ("started", "broken"),
        ("failed", "broken"),
    ]
    assert all((e.method, e.path) == ("POST", "/orders") for e, _ in seen)
    # Started and after: inside the callback's context, so the request's trace is there.
    assert [ctx for e, ctx in seen if e.kind != "queued"] == ["trace-1"] * 4
    failed = seen[-1][0]
    assert type(failed.error) is ValueError
    assert str(failed.error) == "broken"
    assert [e.error for e, _ in seen[:-1]] == [None] * 5
    # Measured once the response closed and around each call; none before.
    assert [(e.queue_delay is None, e.run_time is None) for e, _ in seen] == [
        (True, True),
        (True, True),
        (False, True),
        (False, False),
        (False, True),
        (False, False),
    ]


def test_events_measure_the_queue_delay_and_the_run_time(
    seen: list[tuple[events.CallbackEvent, str]],
) -> None:
    # The delays are real ones the test makes; sleeping is the work being measured.
    busy, release = threading.Event(), threading.Event()
    runner = ThreadRunner(max_workers=1, drain_timeout=TIMEOUT)

    def hold() -> None:
        busy.set()
        release.wait(TIMEOUT)

    def slow() -> None:
        time.sleep(0.2)

    def view(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(slow)
        start_response("200 OK", [])
        return [b""]

    runner.submit(hold)
    assert busy.wait(TIMEOUT)
    closed = time.monotonic()
    serve(AfterMiddleware(view, runner=runner))  # queued behind hold()
    time.sleep(0.3)
    release.set()
    assert runner.wait_idle(TIMEOUT)
    total = time.monotonic() - closed
    started, finished = (e for e, _ in seen if e.kind in ("started", "finished"))
    assert started.queue_delay is not None
    assert 0.3 <= started.queue_delay <= total
    assert finished.queue_delay == started.queue_delay
    assert finished.run_time is not None
    assert 0.2 <= finished.run_time <= total - started.queue_delay
    runner.shutdown(TIMEOUT)


def test_dropped_and_lost_callbacks_are_events(
    seen: list[tuple[events.CallbackEvent, str]],
) -> None:
    busy, release = threading.Event(), threading.Event()
    runner = ThreadRunner(max_workers=1, max_pending=1, on_full="drop", drain_timeout=5)

    def hold() -> None:
        busy.set()
        release.wait(10)

    runner.submit(hold)
    assert busy.wait(TIMEOUT)

    def two(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(ok)
        start_response("200 OK", [])
        return [b""]

    middleware = AfterMiddleware(two, runner=runner)
    serve(middleware, "/queued")  # waits in the queue
    serve(middleware, "/dropped")  # the queue is full
    assert runner.shutdown(timeout=0.05) is False  # /queued is lost
    release.set()
    losses = [(e.kind, e.path) for e, _ in seen if e.kind in ("dropped", "lost")]
    assert losses == [("dropped", "/dropped"), ("lost", "/queued")]


def test_a_never_closed_response_is_an_event(
    seen: list[tuple[events.CallbackEvent, str]],
) -> None:
    import gc

    def never_close() -> None:
        iterable = call(AfterMiddleware(app, runner=InlineRunner()))
        b"".join(iterable)

    contextvars.copy_context().run(never_close)
    gc.collect()
    assert [e.kind for e, _ in seen if e.kind == "never_closed"] == ["never_closed"] * 2


def test_a_listener_that_raises_is_logged_and_harms_nothing(
    log: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def bad(event: events.CallbackEvent) -> None:
        raise RuntimeError("listener bug")

    events.subscribe(bad)
    try:
        serve(
            AfterMiddleware(
                lambda e, s: (after(ran.append, "x"), s("200 OK", []), [b""])[2],
                runner=InlineRunner(),
            )
        )
    finally:
        events.unsubscribe(bad)
    assert ran == ["x"]
    assert any("Event listener" in r.getMessage() for r in log.records)


class ListenerTimeout(BaseException):
    """What gevent.Timeout is: a BaseException, not an Exception."""


def test_a_listener_raising_a_base_exception_is_logged_and_skips_no_callback(
    log: pytest.LogCaptureFixture,
) -> None:
    # It escaped the listener loop: every callback of the request was skipped, with no
    # log line (issue 21, item 13).
    ran: list[str] = []

    def bad(event: events.CallbackEvent) -> None:
        if event.kind == "started":
            raise ListenerTimeout

    def view(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(ran.append, "first")
        after(ran.append, "second")
        start_response("200 OK", [])
        return [b""]

    events.subscribe(bad)
    try:
        serve(AfterMiddleware(view, runner=InlineRunner()), "/timeout")
    finally:
        events.unsubscribe(bad)
    assert ran == ["first", "second"]
    messages = [r.getMessage() for r in log.records if r.levelname == "ERROR"]
    assert len(messages) == 2
    assert all(m.startswith("Event listener") and "'started' event" in m for m in messages)


def test_subscribe_refuses_what_cannot_listen() -> None:
    with pytest.raises(TypeError, match="'subscribe\\(\\)' needs a callable"):
        events.subscribe(42)  # type: ignore[arg-type]


def test_a_slow_callback_is_logged_once_with_its_stack(log: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    runner = ThreadRunner(max_workers=1, slow_callback=0.1, drain_timeout=5, name="slowpool")

    def stuck() -> None:
        release.wait(10)

    def view(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(stuck)
        start_response("200 OK", [])
        return [b""]

    serve(AfterMiddleware(view, runner=runner), "/stuck")
    # The count goes up before the report is logged: wait for the log line.
    wait_for(lambda: [r for r in log.records if r.levelname == "WARNING"], what="the report")
    release.set()
    assert runner.wait_idle(TIMEOUT)
    warnings = [r.getMessage() for r in log.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "Callback 'tests.test_events.test_a_slow_callback_is_logged_once_with_its_stack"
        ".<locals>.stuck' queued by 'GET /stuck' has been running for"
    )
    assert "release.wait(10)" in warnings[0]  # the stack shows where it is stuck
    assert runner.stats().hung == 1
    runner.shutdown(TIMEOUT)


def test_each_slow_callback_is_an_event_and_one_watchdog_watches(
    seen: list[tuple[events.CallbackEvent, str]],
) -> None:
    # Two slow callbacks of one request, one after the other on the same worker:
    # each reported once, as a "slow" event with its name and request.
    runner = ThreadRunner(max_workers=2, slow_callback=0.1, drain_timeout=TIMEOUT, name="wd")
    gates = [threading.Event(), threading.Event()]

    def first() -> None:
        gates[0].wait(TIMEOUT)

    def second() -> None:
        gates[1].wait(TIMEOUT)

    def view(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(first)
        after(second)
        start_response("200 OK", [])
        return [b""]

    runner.start()
    watchdogs = [th for th in threading.enumerate() if th.name == "wd-watchdog"]
    assert [th.daemon for th in watchdogs] == [True]  # one, whatever the workers
    serve(AfterMiddleware(view, runner=runner), "/slow", "PUT")
    wait_for(lambda: [e for e, _ in seen if e.kind == "slow"], what="the first report")
    gates[0].set()
    slow = wait_for(lambda: [e for e, _ in seen if e.kind == "slow"][1:] and seen, what="2nd")
    slow = [e for e, _ in seen if e.kind == "slow"]
    gates[1].set()
    assert runner.wait_idle(TIMEOUT)
    assert [(e.name.rsplit(".", 1)[-1], e.method, e.path) for e in slow] == [
        ("first", "PUT", "/slow"),
        ("second", "PUT", "/slow"),
    ]
    assert all(e.run_time is not None and e.run_time >= 0.1 for e in slow)
    assert runner.stats().hung == 2
    runner.shutdown(TIMEOUT)


def test_the_watchdog_samples_every_quarter_of_slow_callback_at_most_every_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The report comes at most one sampling period late: slow_callback / 4, capped at 1 s.
    periods: list[float] = []

    def sleep(seconds: float) -> None:
        periods.append(seconds)
        time.sleep(0.001)

    clock = types.SimpleNamespace(sleep=sleep, monotonic=time.monotonic)
    monkeypatch.setattr(wsgi_after._watchdog, "time", clock)
    for slow, period in ((0.1, 0.025), (8.0, 1.0)):
        periods.clear()
        runner = ThreadRunner(max_workers=1, slow_callback=slow, drain_timeout=TIMEOUT)
        runner.start()
        wait_for(lambda: periods, what="the watchdog's first sample")
        runner.shutdown(TIMEOUT)
        assert periods[0] == period


def test_each_slow_task_in_a_row_on_one_worker_is_reported(log: pytest.LogCaptureFixture) -> None:
    # Two tasks (plain callables, no chain) back to back on one worker, each slow.
    runner = ThreadRunner(max_workers=1, slow_callback=0.1, drain_timeout=TIMEOUT, name="row")
    gates = [threading.Event(), threading.Event()]

    def first() -> None:
        gates[0].wait(TIMEOUT)

    def second() -> None:
        gates[1].wait(TIMEOUT)

    runner.submit(first)
    runner.submit(second)  # queued: the worker goes straight from one to the other
    wait_for(lambda: runner.stats().hung == 1, what="the first report")
    gates[0].set()
    wait_for(lambda: runner.stats().hung == 2, what="the second report")
    warnings = wait_for(
        lambda: [r for r in log.records if r.levelname == "WARNING"][1:] and log.records,
        what="the second report's log line",
    )
    warnings = [r for r in warnings if r.levelname == "WARNING"]
    gates[1].set()
    assert runner.wait_idle(TIMEOUT)
    assert [r.args[0].rsplit(".", 1)[-1] for r in warnings] == ["first", "second"]  # type: ignore[index,union-attr]
    for record in warnings:
        running_for = record.args[2]  # type: ignore[index]
        assert 0.1 <= running_for < TIMEOUT  # type: ignore[operator]
        assert record.args[3] == "row"  # type: ignore[index]
    runner.shutdown(TIMEOUT)


def test_a_slow_callback_is_seen_on_any_worker_while_others_idle(
    seen: list[tuple[events.CallbackEvent, str]],
) -> None:
    runner = ThreadRunner(max_workers=2, slow_callback=1.0, drain_timeout=TIMEOUT, name="two")
    runner.start()
    started = threading.Barrier(3, timeout=TIMEOUT)
    gates = {"two-0": threading.Event(), "two-1": threading.Event()}

    def hold() -> None:
        started.wait()
        gates[threading.current_thread().name].wait(TIMEOUT)

    runner.submit(hold)
    runner.submit(hold)
    started.wait()  # one on each worker
    gates["two-0"].set()  # the first worker idles; the second still runs
    # The count goes up before the report is logged and emitted: wait for the event.
    slow = wait_for(lambda: [e for e, _ in seen if e.kind == "slow"], what="the second's report")
    gates["two-1"].set()
    assert runner.wait_idle(TIMEOUT)
    assert all(e.run_time is not None and 1.0 <= e.run_time < TIMEOUT for e in slow)
    runner.shutdown(TIMEOUT)


def test_a_slow_callback_is_reported_once_however_long_it_runs(
    seen: list[tuple[events.CallbackEvent, str]],
    log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = CountingClock()
    monkeypatch.setattr(wsgi_after._watchdog, "time", clock)
    runner = ThreadRunner(max_workers=1, slow_callback=0.05, drain_timeout=TIMEOUT, name="once")
    release = threading.Event()

    def stuck() -> None:
        release.wait(TIMEOUT)

    def view(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(stuck)
        start_response("200 OK", [])
        return [b""]

    serve(AfterMiddleware(view, runner=runner), "/a b", "PATCH")
    wait_for(lambda: [e for e, _ in seen if e.kind == "slow"], what="the report")
    clock.after_samples(20)  # 20 more looks at the same running callback
    release.set()
    assert runner.wait_idle(TIMEOUT)
    assert runner.stats().hung == 1
    [event] = [e for e, _ in seen if e.kind == "slow"]
    assert (event.name.rsplit(".", 1)[-1], event.method, event.path) == ("stuck", "PATCH", "/a b")
    [warning] = [r.getMessage() for r in log.records if r.levelname == "WARNING"]
    assert re.match(
        r"Callback '\S+\.stuck' queued by 'PATCH /a b' has been running for \d+\.\d s on 'once'"
        r" \(slow_callback=0\.1 s\)\. Its thread's stack:\n.*release\.wait\(TIMEOUT\)",
        warning,
        re.DOTALL,
    ), warning
    runner.shutdown(TIMEOUT)


class NamelessTask:
    """A task (the runner's Task protocol) that names no callback."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def __call__(self) -> None:
        self.release.wait(TIMEOUT)

    def describe(self) -> str:
        return "GET /nameless"

    def callback_names(self) -> list[str]:
        return []

    def discard(self) -> None:
        pass


def test_a_slow_task_that_names_no_callback_is_reported_as_unknown(
    log: pytest.LogCaptureFixture,
) -> None:
    runner = ThreadRunner(max_workers=1, slow_callback=0.05, drain_timeout=TIMEOUT)
    release = threading.Event()
    runner.submit(NamelessTask(release))
    wait_for(lambda: [r for r in log.records if r.levelname == "WARNING"], what="the report")
    release.set()
    assert runner.wait_idle(TIMEOUT)
    [warning] = [r.getMessage() for r in log.records if r.levelname == "WARNING"]
    assert warning.startswith("Callback '?' queued by 'GET /nameless' has been running for")
    runner.shutdown(TIMEOUT)


def test_a_lost_requests_events_name_its_method_and_path(
    seen: list[tuple[events.CallbackEvent, str]],
) -> None:
    runner = ThreadRunner(max_workers=1, max_pending=1, on_full="drop", drain_timeout=5)
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(10)

    runner.submit(hold)
    assert busy.wait(TIMEOUT)

    def view(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(ok)
        start_response("200 OK", [])
        return [b""]

    middleware = AfterMiddleware(view, runner=runner)
    serve(middleware, "/a b/queued", "PATCH")
    serve(middleware, "/a b/dropped", "DELETE")
    assert runner.shutdown(timeout=0.05) is False
    release.set()
    losses = [(e.kind, e.method, e.path) for e, _ in seen if e.kind in ("dropped", "lost")]
    assert losses == [("dropped", "DELETE", "/a b/dropped"), ("lost", "PATCH", "/a b/queued")]


class CountingClock:
    """Stands in for ``time`` in the runner module: counts the watchdog's samples."""

    monotonic = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self.samples = 0

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
        self.samples += 1

    def after_samples(self, count: int) -> None:
        """Wait until the watchdog has slept ``count`` more times."""
        target = self.samples + count
        wait_for(lambda: self.samples >= target, what=f"{count} watchdog samples")


def test_the_same_task_slow_again_after_an_idle_pause_is_reported_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = CountingClock()
    monkeypatch.setattr(wsgi_after._watchdog, "time", clock)
    runner = ThreadRunner(max_workers=1, slow_callback=0.05, drain_timeout=TIMEOUT)
    gate = threading.Event()

    def task() -> None:  # one object, submitted twice: the same task id both times
        gate.wait(TIMEOUT)
        gate.clear()

    runner.submit(task)
    wait_for(lambda: runner.stats().hung == 1, what="the first report")
    gate.set()
    assert runner.wait_idle(TIMEOUT)
    clock.after_samples(2)  # the watchdog saw the worker idle
    runner.submit(task)
    wait_for(lambda: runner.stats().hung == 2, what="the second report")
    gate.set()
    assert runner.wait_idle(TIMEOUT)
    runner.shutdown(TIMEOUT)


def test_no_queue_delay_when_nobody_listened_at_close() -> None:
    # A listener subscribed between close and run cannot know the queue delay.
    tasks: list[t.Callable[[], object]] = []
    got: list[events.CallbackEvent] = []

    class Deferred:
        def submit(self, fn: t.Callable[[], object]) -> None:
            tasks.append(fn)

    def view(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        after(ok)
        start_response("200 OK", [])
        return [b""]

    serve(AfterMiddleware(view, runner=Deferred()))
    events.subscribe(got.append)
    try:
        tasks[0]()
    finally:
        events.unsubscribe(got.append)
    assert [(e.kind, e.queue_delay) for e in got] == [("started", None), ("finished", None)]


def test_an_idle_worker_is_never_reported_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = CountingClock()
    monkeypatch.setattr(wsgi_after._watchdog, "time", clock)
    runner = ThreadRunner(max_workers=1, slow_callback=0.02, drain_timeout=TIMEOUT)
    runner.submit(lambda: None)
    assert runner.wait_idle(TIMEOUT)
    clock.after_samples(10)  # more than slow_callback of watching the idle worker
    assert runner.stats().hung == 0
    assert runner.shutdown(TIMEOUT) is True  # nothing counted as still running


def test_events_name_the_runner_that_ran_dropped_or_lost_the_callback(
    seen: list[tuple[events.CallbackEvent, str]],
) -> None:
    busy, release = threading.Event(), threading.Event()
    runner = ThreadRunner(max_workers=1, max_pending=1, on_full="drop", drain_timeout=5)
    inline = InlineRunner()

    def hold() -> None:
        busy.set()
        release.wait(10)

    try:
        serve(AfterMiddleware(app, runner=inline), "/inline")
        serve(AfterMiddleware(queuing_hold := _queuing(hold), runner=runner), "/held")
        assert busy.wait(TIMEOUT)
        serve(AfterMiddleware(queuing_hold, runner=runner), "/queued")  # waits in the queue
        serve(AfterMiddleware(queuing_hold, runner=runner), "/dropped")  # the queue is full
        assert runner.shutdown(timeout=0.05) is False  # /queued is lost
    finally:
        release.set()
    wait_for(lambda: ("finished", "/held") in {(e.kind, e.path) for e, _ in seen}, what="/held")
    named = {(e.kind, e.path, e.runner) for e, _ in seen}
    assert {("queued", "/inline", None), ("queued", "/held", None)} <= named
    assert {("started", "/inline", inline), ("failed", "/inline", inline)} <= named
    assert {("started", "/held", runner), ("finished", "/held", runner)} <= named
    assert {("dropped", "/dropped", runner), ("lost", "/queued", runner)} <= named
    assert all(e.runner is not None for e, _ in seen if e.kind != "queued")


def _queuing(*callbacks: t.Callable[[], None]) -> t.Any:
    def queuing_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        for callback in callbacks:
            after(callback)
        start_response("200 OK", [])
        return [b""]

    return queuing_app


def test_a_task_run_in_the_submitting_thread_is_its_runners(
    seen: list[tuple[events.CallbackEvent, str]],
) -> None:
    busy, release = threading.Event(), threading.Event()
    runner = ThreadRunner(max_workers=1, max_pending=1, on_full="run", drain_timeout=5)

    def hold() -> None:
        busy.set()
        release.wait(10)

    try:
        serve(AfterMiddleware(_queuing(hold), runner=runner), "/held")
        assert busy.wait(TIMEOUT)
        serve(AfterMiddleware(_queuing(ok), runner=runner), "/queued")
        serve(AfterMiddleware(_queuing(ok), runner=runner), "/here")  # the queue is full
        here = [e for e, _ in seen if e.path == "/here" and e.kind != "queued"]
        assert [(e.kind, e.runner) for e in here] == [("started", runner), ("finished", runner)]
    finally:
        release.set()
        runner.shutdown(TIMEOUT)
    assert events.current_runner() is None  # the server's thread runs nobody's tasks after


def test_another_runners_callbacks_name_no_runner(
    seen: list[tuple[events.CallbackEvent, str]],
) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        serve(AfterMiddleware(_queuing(ok), runner=pool))
    assert [(e.kind, e.runner) for e, _ in seen] == [
        ("queued", None),
        ("started", None),
        ("finished", None),
    ]


def test_set_runner_holds_the_runner_weakly() -> None:
    import gc

    runner = InlineRunner()
    previous = events.set_runner(runner)
    try:
        assert events.current_runner() is runner
        del runner
        gc.collect()
        assert events.current_runner() is None
    finally:
        events.set_runner(previous)
