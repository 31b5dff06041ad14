"""Per-callback statistics: counts and timings by callback name, queue-delay percentiles.

A listener on the callback events (:mod:`wsgi_after.events`): nothing is
recorded, and the core pays nothing, until it is installed::

    from wsgi_after.callback_stats import CallbackStats

    stats = CallbackStats().install()
    ...
    snapshot = stats.snapshot()
    snapshot.by_name["myapp.emails.send_welcome"].failed
    snapshot.queue_delay.p99          # seconds, over the last 1024 callbacks

To see one runner's callbacks in its ``stats()``, give the runner the option
instead (the statistics then count only what that runner ran, dropped or lost)::

    runner = ThreadRunner(callback_stats=True)
    ...
    stats = runner.stats()
    stats.callbacks["myapp.emails.send_welcome"].completed
    stats.queue_delay.p99

Cardinality is bounded: the first ``max_names`` distinct callback names get
their own entry, every later name is counted under ``"other"`` (callback names
come from code, so the cap is only reached by callbacks made on the fly, such
as ``functools.partial`` or lambdas of generated modules). Percentiles are
computed over a sliding window of the most recent callbacks, so memory stays
constant however long the process runs.

Nothing is measured for callbacks while no statistics (and no other listener)
are installed: the request's and the worker's paths test one empty list.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import typing as t
import weakref

from . import events

#: The name that callbacks past the cap are counted under.
OTHER = "other"


class BoundedNames:
    """Maps callback names to themselves, the first ``cap`` distinct ones, and every
    later one to ``"other"``: a label set that cannot grow without limit.

    :raises ValueError: if ``cap`` is not an int of at least 1.
    """

    def __init__(self, cap: int = 100) -> None:
        if type(cap) is not int or cap < 1:
            raise ValueError(f"'max_names' must be an int of at least 1, got {cap!r}.")
        self.cap = cap
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> str:
        """``name`` itself while it is (or can still become) one of the known names."""
        if name in self._known:
            return name
        with self._lock:
            if len(self._known) < self.cap:
                self._known.add(name)
                return name
        return OTHER


@dataclasses.dataclass(frozen=True)
class Percentiles:
    """Percentiles of a duration in seconds, over the most recent ``count`` samples."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float


@dataclasses.dataclass(frozen=True)
class NameStats:
    """What happened to the callbacks of one name."""

    completed: int = 0
    failed: int = 0
    dropped: int = 0
    lost: int = 0
    slow: int = 0
    #: Total seconds run (completed and failed).
    run_time: float = 0.0
    #: The longest run, in seconds.
    max_run_time: float = 0.0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A copy of the statistics at one moment."""

    by_name: dict[str, NameStats]
    queue_delay: Percentiles
    run_time: Percentiles


def percentiles(samples: t.Iterable[float]) -> Percentiles:
    """The nearest-rank percentiles of ``samples`` (all zero when there are none)."""
    ordered = sorted(samples)
    n = len(ordered)
    if not n:
        return Percentiles(0, 0.0, 0.0, 0.0, 0.0)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * n) - 1)]

    return Percentiles(n, rank(0.5), rank(0.9), rank(0.99), ordered[-1])


_OUTCOME = {**events.OUTCOMES, "slow": "slow"}


class _Counts:
    """One name's running counters (written under the stats' lock)."""

    __slots__ = ("completed", "dropped", "failed", "lost", "max_run_time", "run_time", "slow")

    def __init__(self) -> None:
        self.completed = self.failed = self.dropped = self.lost = self.slow = 0
        self.run_time = self.max_run_time = 0.0

    def freeze(self) -> NameStats:
        return NameStats(
            self.completed,
            self.failed,
            self.dropped,
            self.lost,
            self.slow,
            self.run_time,
            self.max_run_time,
        )


class CallbackStats:
    """Counts and timings of callbacks by name, fed by the callback events.

    ``lost`` counts both callbacks lost at shutdown and those of requests whose
    response the server never closed; the latter never reached a runner, so only
    the whole process's statistics count them, not one runner's. ``slow`` counts
    the callbacks that a :class:`~wsgi_after.ThreadRunner` with ``slow_callback``
    reported (they are counted again when they end). The statistics are of the
    whole process, all runners together, unless installed for one runner
    (``install(runner)``, what a runner's ``callback_stats`` option does).

    :param max_names: distinct callback names kept; later names count as
        ``"other"``. 100 is far more than most apps have, and bounds memory.
    :param window: how many recent queue delays and run times the percentiles
        are computed over. 1024 samples make p99 meaningful (10 samples above it)
        in about 16 KiB.
    :raises ValueError: if an option is out of range.
    """

    def __init__(self, *, max_names: int = 100, window: int = 1024) -> None:
        if type(window) is not int or window < 1:
            raise ValueError(f"'window' must be an int of at least 1, got {window!r}.")
        self.window = window
        self.names = BoundedNames(max_names)
        #: The runner whose callbacks are counted (a weak reference), or None: all.
        self.runner: weakref.ref[t.Any] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded (a runner's statistics in a forked child)."""
        self.names = BoundedNames(self.names.cap)
        self._lock = threading.Lock()
        self._by_name: dict[str, _Counts] = {}
        self._delays: collections.deque[float] = collections.deque(maxlen=self.window)
        self._runs: collections.deque[float] = collections.deque(maxlen=self.window)

    def install(self, runner: object | None = None) -> CallbackStats:
        """Start recording (subscribe to the callback events); returns ``self``.

        :param runner: count only the callbacks this runner ran, dropped or lost
            (its events' ``runner``); held weakly, and recording stops when it
            is freed. None counts every callback of the process.
        """
        if runner is None:
            self.runner = None
        else:
            self.runner = weakref.ref(runner, lambda _: self.uninstall())
        events.subscribe(self)
        return self

    def uninstall(self) -> None:
        """Stop recording; what was recorded stays readable."""
        events.unsubscribe(self)

    def __call__(self, event: events.CallbackEvent) -> None:
        """The events listener."""
        outcome = _OUTCOME.get(event.kind)
        if outcome is None:
            return
        if self.runner is not None and (event.runner is None or event.runner is not self.runner()):
            return
        name = self.names(event.name)
        with self._lock:
            counts = self._by_name.get(name)
            if counts is None:
                counts = self._by_name[name] = _Counts()
            setattr(counts, outcome, getattr(counts, outcome) + 1)
            if outcome == "slow":
                return
            if event.run_time is not None:
                counts.run_time += event.run_time
                counts.max_run_time = max(counts.max_run_time, event.run_time)
                self._runs.append(event.run_time)
            if event.queue_delay is not None:
                self._delays.append(event.queue_delay)

    def snapshot(self) -> Snapshot:
        """A consistent copy of everything recorded so far."""
        with self._lock:
            by_name = {name: counts.freeze() for name, counts in self._by_name.items()}
            delays = list(self._delays)
            runs = list(self._runs)
        return Snapshot(by_name, percentiles(delays), percentiles(runs))


def for_runner(option: object, runner: object) -> CallbackStats | None:
    """The statistics a runner's ``callback_stats`` option asks for, installed for it.

    :param option: False (none), True (a :class:`CallbackStats` with the
        defaults) or a :class:`CallbackStats` (its options; it then counts only
        ``runner``'s callbacks).
    :raises TypeError: for anything else.
    """
    if option is False:
        return None
    if option is True:
        option = CallbackStats()
    if not isinstance(option, CallbackStats):
        raise TypeError(
            f"'callback_stats' must be True, False or a 'CallbackStats', got"
            f" {type(option).__name__!r}."
        )
    return option.install(runner)
