"""Per-callback statistics: counts by name with a cap, timings, percentiles."""

from __future__ import annotations

import collections.abc
import contextvars
import gc
import threading
import typing as t

import pytest

from tests.helpers import TIMEOUT, broken, ok, queuing, serve
from wsgi_after import AfterMiddleware, InlineRunner, ThreadRunner, events
from wsgi_after.callback_stats import (
    OTHER,
    BoundedNames,
    CallbackStats,
    NameStats,
    Percentiles,
    percentiles,
)

if t.TYPE_CHECKING:
    pass


@pytest.fixture
def stats() -> collections.abc.Iterator[CallbackStats]:
    stats = CallbackStats(max_names=3, window=100).install()
    yield stats
    stats.uninstall()


def test_counts_and_timings_by_name(stats: CallbackStats) -> None:
    serve(AfterMiddleware(queuing(ok, broken, ok), runner=InlineRunner()))
    snapshot = stats.snapshot()
    good = snapshot.by_name["tests.helpers.ok"]
    bad = snapshot.by_name["tests.helpers.broken"]
    assert (good.completed, good.failed, bad.completed, bad.failed) == (2, 0, 0, 1)
    assert 0 <= good.max_run_time <= good.run_time
    assert snapshot.queue_delay.count == snapshot.run_time.count == 3
    assert snapshot.queue_delay.max < 5


def test_drops_losses_and_slow_callbacks(stats: CallbackStats) -> None:
    release = threading.Event()
    running = threading.Event()
    slow_seen = threading.Event()

    def blocker() -> None:
        running.set()
        assert release.wait(10)

    def on_slow(event: events.CallbackEvent) -> None:
        if event.kind == "slow":
            slow_seen.set()

    events.subscribe(on_slow)
    runner = ThreadRunner(
        max_workers=1, max_pending=1, on_full="drop", slow_callback=0.05, name="stats-test"
    )
    try:
        serve(AfterMiddleware(queuing(blocker), runner=runner))
        assert running.wait(5)
        serve(AfterMiddleware(queuing(ok), runner=runner))  # waits in the queue
        serve(AfterMiddleware(queuing(ok), runner=runner))  # dropped
        assert slow_seen.wait(5)
        runner.begin_shutdown()
        release.set()
        runner.finish_shutdown(None)
    finally:
        release.set()
        events.unsubscribe(on_slow)
        runner.shutdown(5)
    by_name = stats.snapshot().by_name
    assert by_name[f"{__name__}.{blocker.__qualname__}"].slow == 1
    assert by_name[f"{__name__}.{blocker.__qualname__}"].completed == 1
    assert by_name["tests.helpers.ok"].dropped == 1
    assert by_name["tests.helpers.ok"].completed == 1


def test_lost_counts_shutdown_losses_and_responses_never_closed() -> None:
    stats = CallbackStats()
    stats(events.CallbackEvent("lost", "f", "GET", "/"))
    stats(events.CallbackEvent("never_closed", "f", "GET", "/"))
    stats(events.CallbackEvent("queued", "f", "GET", "/"))
    assert stats.snapshot().by_name == {"f": NameStats(lost=2)}


def test_names_past_the_cap_are_counted_as_other(stats: CallbackStats) -> None:
    def one() -> None:
        pass

    def two() -> None:
        pass

    serve(AfterMiddleware(queuing(ok, broken, one, two, two), runner=InlineRunner()))
    by_name = stats.snapshot().by_name
    assert set(by_name) == {
        "tests.helpers.ok",
        "tests.helpers.broken",
        f"{__name__}.{one.__qualname__}",
        OTHER,
    }
    assert by_name[OTHER] == NameStats(
        completed=2,
        run_time=by_name[OTHER].run_time,
        max_run_time=by_name[OTHER].max_run_time,
    )


def test_percentiles_are_nearest_rank_over_the_window() -> None:
    assert percentiles([]) == Percentiles(0, 0.0, 0.0, 0.0, 0.0)
    assert percentiles(float(i) for i in range(1, 101)) == Percentiles(100, 50.0, 90.0, 99.0, 100.0)
    stats = CallbackStats(window=2)
    for delay in (9.0, 1.0, 2.0):
        stats(events.CallbackEvent("finished", "f", "GET", "/", delay, 0.0))
    assert stats.snapshot().queue_delay == Percentiles(2, 1.0, 2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"max_names": 0}, "'max_names' must be an int of at least 1, got 0.", id="cap"
        ),
        pytest.param({"window": 0}, "'window' must be an int of at least 1, got 0.", id="window"),
    ],
)
def test_bad_options_name_the_fix(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match="must be an int") as info:
        CallbackStats(**options)
    assert str(info.value) == message


def test_bounded_names_keeps_the_first_ones() -> None:
    names = BoundedNames(2)
    assert [names(n) for n in ("a", "b", "c", "a")] == ["a", "b", OTHER, "a"]


def forget(*runners: ThreadRunner | InlineRunner) -> None:
    """Unsubscribe the runners' statistics now: a runner's leave with it, but pytest's log
    capture holds a failed callback's frames (and so its runner) until the test's end."""
    for runner in runners:
        if runner.callback_stats is not None:
            events.unsubscribe(runner.callback_stats)


def test_a_runner_with_callback_stats_counts_its_own_callbacks_in_stats() -> None:
    counted = ThreadRunner(max_workers=2, callback_stats=True, name="counted")
    other = ThreadRunner(max_workers=2, name="other")
    try:
        serve(AfterMiddleware(queuing(ok, broken, ok), runner=counted))
        serve(AfterMiddleware(queuing(ok), runner=other))
        assert counted.wait_idle(TIMEOUT)
        assert other.wait_idle(TIMEOUT)
        stats = counted.stats()
    finally:
        counted.shutdown(TIMEOUT)
        other.shutdown(TIMEOUT)
        forget(counted, other)
    assert stats.callbacks is not None
    assert set(stats.callbacks) == {"tests.helpers.ok", "tests.helpers.broken"}
    good = stats.callbacks["tests.helpers.ok"]
    assert (good.completed, good.failed) == (2, 0)
    assert stats.callbacks["tests.helpers.broken"].failed == 1
    assert stats.queue_delay is not None
    assert stats.run_time is not None
    assert stats.queue_delay.count == stats.run_time.count == 3
    assert 0 <= stats.queue_delay.p50 <= stats.queue_delay.p99 <= stats.queue_delay.max
    assert (stats.completed, stats.failed) == (1, 1)  # tasks: one request, a callback failed
    plain = other.stats()
    assert (plain.callbacks, plain.queue_delay, plain.run_time) == (None, None, None)


def test_a_runners_drops_losses_and_callbacks_run_in_the_caller_are_its_own() -> None:
    release = threading.Event()
    running = threading.Event()

    def blocker() -> None:
        running.set()
        assert release.wait(TIMEOUT)

    dropping = ThreadRunner(max_workers=1, max_pending=1, on_full="drop", callback_stats=True)
    running_here = ThreadRunner(
        max_workers=1, max_pending=1, on_full="run", callback_stats=CallbackStats(max_names=1)
    )
    try:
        serve(AfterMiddleware(queuing(blocker), runner=dropping))
        assert running.wait(TIMEOUT)
        serve(AfterMiddleware(queuing(ok), runner=dropping))  # waits in the queue
        serve(AfterMiddleware(queuing(ok), runner=dropping))  # dropped
        assert dropping.shutdown(0.05) is False  # the queued one is lost
        running.clear()
        serve(AfterMiddleware(queuing(blocker), runner=running_here))
        assert running.wait(TIMEOUT)
        serve(AfterMiddleware(queuing(ok), runner=running_here))  # waits in the queue
        serve(AfterMiddleware(queuing(ok, broken), runner=running_here))  # runs here
        here = t.cast("dict[str, NameStats]", running_here.stats().callbacks)
        assert set(here) == {"tests.helpers.ok", OTHER}  # max_names=1
        assert (here["tests.helpers.ok"].completed, here[OTHER].failed) == (1, 1)
    finally:
        release.set()
        dropping.shutdown(TIMEOUT)
        running_here.shutdown(TIMEOUT)
        forget(dropping, running_here)
    dropped = t.cast("dict[str, NameStats]", dropping.stats().callbacks)
    assert (dropped["tests.helpers.ok"].dropped, dropped["tests.helpers.ok"].lost) == (1, 1)


def test_an_inline_runner_has_stats_too() -> None:
    runner = InlineRunner(callback_stats=True)
    serve(AfterMiddleware(queuing(ok, broken), runner=runner))
    serve(AfterMiddleware(queuing(ok), runner=runner))
    stats = runner.stats()
    forget(runner)
    assert (stats.queued, stats.running, stats.completed, stats.failed, stats.dropped) == (
        0,
        0,
        2,
        1,
        0,
    )
    assert stats.callbacks is not None
    assert stats.callbacks["tests.helpers.ok"].completed == 2
    assert stats.callbacks["tests.helpers.broken"].failed == 1
    assert InlineRunner().stats().callbacks is None


def test_callback_stats_are_opt_in_and_leave_the_runner_with_it() -> None:
    import gc

    before = list(events.listeners)
    ThreadRunner().shutdown(TIMEOUT)
    InlineRunner()
    assert events.listeners == before  # off: nothing listens, nothing is measured
    runner = InlineRunner(callback_stats=True)
    stats = runner.callback_stats
    assert stats is not None
    assert stats in events.listeners
    del runner
    gc.collect()
    assert stats not in events.listeners


def test_a_forked_childs_runner_starts_its_callback_stats_afresh() -> None:
    runner = ThreadRunner(callback_stats=True)
    try:
        serve(AfterMiddleware(queuing(ok), runner=runner))
        assert runner.wait_idle(TIMEOUT)
        assert t.cast("dict[str, NameStats]", runner.stats().callbacks)["tests.helpers.ok"]
        runner.shutdown(TIMEOUT)
        runner.reset_after_fork()  # what the child does (wsgi_after.lifecycle)
        assert runner.stats().callbacks == {}
    finally:
        runner.shutdown(TIMEOUT)


@pytest.mark.parametrize("make", [ThreadRunner, InlineRunner], ids=["thread", "inline"])
def test_a_bad_callback_stats_option_names_the_fix(make: t.Callable[..., object]) -> None:
    with pytest.raises(TypeError) as info:
        make(callback_stats="yes")
    assert str(info.value) == (
        "'callback_stats' must be True, False or a 'CallbackStats', got 'str'."
    )


def test_a_never_closed_response_counts_in_the_process_stats_not_a_runners(
    stats: CallbackStats,
) -> None:
    # Its callbacks never reached a runner: only the whole process's statistics see them.
    runner = ThreadRunner(max_workers=1, callback_stats=True)
    try:
        middleware = AfterMiddleware(queuing(ok), runner=runner)

        contextvars.copy_context().run(serve, middleware, close=False)  # then dropped
        gc.collect()  # the environ refers to its chain: freed by the collector
        assert stats.snapshot().by_name["tests.helpers.ok"].lost == 1
        assert runner.stats().callbacks == {}
    finally:
        runner.shutdown(TIMEOUT)
