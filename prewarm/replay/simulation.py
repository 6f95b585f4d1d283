"""Discrete-event simulation of one target's replicas under a reactive autoscaler plus a floor.

The reactive part behaves like Knative's KPA with its defaults: a request that finds no free
ready replica queues and a new replica starts (unless one already starting has room for it); an
idle replica goes after the 60 s stable window, the last one after 60 s plus the 30 s
scale-to-zero grace period; replicas are never removed below the floor. A policy only supplies
the floor, as in production. Pure: times are floats (seconds), randomness comes from the caller.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

STABLE_WINDOW_SECONDS = 60.0
SCALE_TO_ZERO_GRACE_SECONDS = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class FloorSteps:
    """A piecewise-constant floor: `levels[i]` holds from `times[i]` until `times[i + 1]`; 0 before."""

    times: tuple[float, ...] = ()
    levels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.times) != len(self.levels):
            raise ValueError("FloorSteps needs one level per time")
        if any(b < a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise ValueError("FloorSteps times must be non-decreasing")
        if any(level < 0 for level in self.levels):
            raise ValueError("FloorSteps levels must be >= 0")

    @classmethod
    def from_changes(cls, changes: Sequence[tuple[float, int]]) -> FloorSteps:
        """Steps from (time, level) pairs sorted by time, dropping repeats of the current level."""
        times: list[float] = []
        levels: list[int] = []
        current = 0
        for at, level in changes:
            if times and at == times[-1]:
                levels[-1] = level
                current = level
                continue
            if level != current:
                times.append(at)
                levels.append(level)
                current = level
        return cls(tuple(times), tuple(levels))

    def level_at(self, at: float) -> int:
        i = bisect.bisect_right(self.times, at) - 1
        return self.levels[i] if i >= 0 else 0


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """The scored span [start, end) in seconds; only requests and replica time inside it count."""

    start: float
    end: float

    def overlap(self, a: float, b: float) -> float:
        return max(0.0, min(b, self.end) - max(a, self.start))


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one target (or a sum of targets) cost and suffered inside the scored window."""

    requests: int = 0
    cold_starts: int = 0
    waits: list[float] = dataclasses.field(default_factory=list)  # seconds, one per scored cold start
    warm_seconds: float = 0.0  # replica-seconds held (loading or ready)
    idle_seconds: float = 0.0  # replica-seconds ready with no request in flight
    # seconds each scored request waited for a replica (0 when warm), in arrival order, target after target
    request_waits: list[float] = dataclasses.field(default_factory=list)
    busy_seconds: float = 0.0  # replica-seconds with at least one request in flight

    def add(self, other: Outcome) -> None:
        self.requests += other.requests
        self.cold_starts += other.cold_starts
        self.waits.extend(other.waits)
        self.warm_seconds += other.warm_seconds
        self.idle_seconds += other.idle_seconds
        self.request_waits.extend(other.request_waits)
        self.busy_seconds += other.busy_seconds


class ColdStarts:
    """Cold-start durations for one target: a fixed value, or draws from measured samples.

    The i-th replica start of a target gets the i-th draw of a stream seeded by (seed, target), so
    every policy sees the same durations in the same order.
    """

    def __init__(self, samples: np.ndarray, seed: int, target_index: int) -> None:
        self._samples = np.asarray(samples, dtype=np.float64)
        self._rng = np.random.default_rng([seed, target_index])
        self._drawn: list[float] = []

    def nth(self, n: int) -> float:
        if self._samples.size == 1:
            return float(self._samples[0])
        while len(self._drawn) <= n:
            self._drawn.extend(self._rng.choice(self._samples, 256).tolist())
        return self._drawn[n]


class _Replica:
    __slots__ = ("busy_seconds", "busy_until", "ready_at", "slots", "started_at")

    def __init__(self, started_at: float, ready_at: float) -> None:
        self.started_at = started_at
        self.ready_at = ready_at
        self.slots: list[float] = []  # when each claimed slot is free again
        self.busy_until = ready_at  # end of the last request it serves (or ready_at)
        self.busy_seconds = 0.0  # time inside the scored window with a request in flight

    def idle_since(self) -> float:
        return max(self.ready_at, self.busy_until)


def simulate(
    arrivals: np.ndarray,
    exec_seconds: np.ndarray,
    floor: FloorSteps,
    cold_starts: ColdStarts,
    *,
    concurrency: int,
    window: Window,
) -> Outcome:
    """Run one target's requests through the reactive autoscaler with `floor` underneath."""
    outcome = Outcome()
    replicas: list[_Replica] = []
    starts = 0
    current_floor = 0
    floor_times, floor_levels = floor.times, floor.levels
    fi = 0
    arrival_list = arrivals.tolist()
    exec_list = exec_seconds.tolist()
    n = len(arrival_list)
    i = 0
    inf = math.inf

    def start_replica(at: float) -> _Replica:
        nonlocal starts
        replica = _Replica(at, at + cold_starts.nth(starts))
        starts += 1
        replicas.append(replica)
        return replica

    def retire(replica: _Replica, at: float) -> None:
        replicas.remove(replica)
        outcome.warm_seconds += window.overlap(replica.started_at, at)
        outcome.busy_seconds += replica.busy_seconds
        outcome.idle_seconds += max(0.0, window.overlap(replica.ready_at, at) - replica.busy_seconds)

    def next_retirement(now: float) -> tuple[float, _Replica | None]:
        count = len(replicas)
        if count <= current_floor or count == 0:
            return inf, None
        victim = min(replicas, key=_Replica.idle_since)
        wait = STABLE_WINDOW_SECONDS + (SCALE_TO_ZERO_GRACE_SECONDS if count == 1 else 0.0)
        return max(now, victim.idle_since() + wait), victim

    now = window.start if n == 0 else min(arrival_list[0], floor_times[0] if floor_times else inf)
    while True:
        t_arrival = arrival_list[i] if i < n else inf
        t_floor = floor_times[fi] if fi < len(floor_times) else inf
        t_retire, victim = next_retirement(now)
        t_next = min(t_arrival, t_floor, t_retire)
        if t_next >= window.end or t_next == inf:
            break
        now = t_next
        if victim is not None and t_retire < t_arrival and t_retire < t_floor:
            retire(victim, now)
            continue
        if t_floor <= t_arrival:
            current_floor = floor_levels[fi]
            fi += 1
            for _ in range(current_floor - len(replicas)):
                start_replica(now)
            continue
        run = exec_list[i]
        i += 1
        served_at = _serve(replicas, now, run, concurrency, start_replica, window)
        if now >= window.start:
            outcome.requests += 1
            outcome.request_waits.append(served_at - now)
            if served_at > now:
                outcome.cold_starts += 1
                outcome.waits.append(served_at - now)
    for replica in list(replicas):
        retire(replica, window.end)
    return outcome


def _serve(
    replicas: list[_Replica],
    now: float,
    run: float,
    concurrency: int,
    start_replica: Callable[[float], _Replica],
    window: Window,
) -> float:
    """Place one request; returns when it starts running (== now when a ready replica had room)."""
    best: _Replica | None = None
    for replica in replicas:
        free = replica.ready_at <= now and _free_at(replica, concurrency) <= now
        if free and (best is None or replica.idle_since() > best.idle_since()):
            best = replica  # pack onto the most recently busy replica so the others can go
    begin = now
    if best is None:
        # It queues. The autoscaler starts a replica for it unless a starting one has room; the
        # request runs on whichever slot frees first, that one or a busy ready replica's.
        spare = [r for r in replicas if r.ready_at > now and len(r.slots) < concurrency]
        best = min(spare, key=lambda r: r.ready_at) if spare else start_replica(now)
        begin = best.ready_at
        for replica in replicas:
            free_at = _free_at(replica, concurrency)
            if replica.ready_at <= now and free_at < begin:
                best, begin = replica, free_at
    finish = begin + run
    best.busy_seconds += window.overlap(max(begin, best.busy_until), finish)
    if len(best.slots) < concurrency:
        best.slots.append(finish)
    else:
        best.slots[best.slots.index(min(best.slots))] = finish
    best.busy_until = max(best.busy_until, finish)
    return begin


def _free_at(replica: _Replica, concurrency: int) -> float:
    if len(replica.slots) < concurrency:
        return replica.ready_at
    return max(replica.ready_at, min(replica.slots))


def simulate_oracle(
    arrivals: np.ndarray, exec_seconds: np.ndarray, cold_starts: ColdStarts, *, concurrency: int, window: Window
) -> Outcome:
    """The lower bound: knows every arrival, so no request waits, at the least replica time.

    Outside the autoscaler: a replica is loaded exactly in time for the request that needs it and
    kept between requests only while the gap is shorter than loading it again.
    """
    outcome = Outcome()
    free: list[list[float]] = []  # per replica: slot free times
    starts = 0
    for at, run in zip(arrivals.tolist(), exec_seconds.tolist(), strict=True):
        if at >= window.end:
            break
        scored = at >= window.start
        outcome.requests += scored
        if scored:
            outcome.request_waits.append(0.0)
        chosen: list[float] | None = None
        for slots in free:
            has_room = len(slots) < concurrency or min(slots) <= at
            if has_room and (chosen is None or max(chosen) < max(slots)):
                chosen = slots
        load = cold_starts.nth(starts)
        if chosen is not None:
            gap = at - max(chosen)
            if gap > load and len(chosen) >= 1 and max(chosen) <= at:
                starts += 1  # cheaper to unload and load again just in time
                outcome.warm_seconds += window.overlap(at - load, at)
            elif gap > 0:
                outcome.warm_seconds += window.overlap(max(chosen), at)
                outcome.idle_seconds += window.overlap(max(chosen), at)
        else:
            starts += 1
            chosen = []
            free.append(chosen)
            outcome.warm_seconds += window.overlap(at - load, at)
        busy_from = max(at, max(chosen)) if chosen else at
        outcome.warm_seconds += window.overlap(busy_from, at + run)
        outcome.busy_seconds += window.overlap(busy_from, at + run)
        if len(chosen) < concurrency:
            chosen.append(at + run)
        else:
            chosen[chosen.index(min(chosen))] = at + run
    return outcome
