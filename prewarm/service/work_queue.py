"""A work queue of target names between the decider and an actuator (client-go's `workqueue`,
with Knative's two lanes).

- A key is queued once however often it is added, and held by one worker at a time: a key added
  while it is worked is queued again when the worker is done, so the newest state is worked after.
- Two lanes: `add(key)` goes to the fast lane, `add(key, slow=True)` (a relist, a resync) to the
  slow one, and workers take from the fast lane first, so a change a user just caused never waits
  behind a resync of every target. A key in the slow lane that is added fast moves up.
- `add_rate_limited(key)` requeues a failed key after its backoff; `forget(key)` resets it.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import math
from datetime import timedelta

from prewarm.service import backoff, clock


class ShutDown(Exception):
    """The queue was shut down: the worker that waited on it stops."""


class WorkQueue:
    """Keys waiting for a worker; `run_timers()` must run for delayed and rate-limited adds."""

    def __init__(self, *, clock: clock.Clock, limiter: backoff.RateLimiter | None = None) -> None:
        self._clock = clock
        self._limiter = limiter or backoff.RateLimiter()
        self._fast: collections.deque[str] = collections.deque()
        self._slow: collections.deque[str] = collections.deque()
        self._lane: dict[str, bool] = {}  # queued key -> in the slow lane (a lane's deque may hold stale copies)
        self._processing: set[str] = set()
        self._again: dict[str, bool] = {}  # added while being worked -> slow lane
        self._delayed: list[tuple[float, int, str]] = []  # (due, sequence, key), a heap
        self._due: dict[str, float] = {}  # key -> its earliest pending due time
        self._sequence = 0
        self._ready = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._shut = False

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def __len__(self) -> int:
        """Keys waiting: queued in either lane, or waiting out a delay."""
        return len(self._lane) + len(self._due.keys() - self._lane.keys())

    def add(self, key: str, *, slow: bool = False) -> None:
        """Queue `key` (once), in the slow lane for a resync; no-op after shutdown."""
        if self._shut:
            return
        if key in self._processing:
            self._again[key] = self._again.get(key, True) and slow
            return
        queued_slow = self._lane.get(key)
        if queued_slow is None:
            self._lane[key] = slow
            (self._slow if slow else self._fast).append(key)
            self._ready.set()
        elif queued_slow and not slow:  # promoted: the slow lane's copy is skipped when reached
            self._lane[key] = False
            self._fast.append(key)
            self._ready.set()

    def add_after(self, key: str, delay: float) -> None:
        """Queue `key` in the fast lane once `delay` seconds have passed."""
        if self._shut:
            return
        if delay <= 0:
            self.add(key)
            return
        due = self._now() + delay
        if self._due.get(key, float("inf")) <= due:
            return
        self._due[key] = due
        self._sequence += 1
        heapq.heappush(self._delayed, (due, self._sequence, key))
        self._timer_wake.set()

    def add_rate_limited(self, key: str) -> float:
        """Requeue `key` after its backoff (one more failure); returns the delay in seconds."""
        delay = self._limiter.when(key, self._now())
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """`key` succeeded: its backoff starts over."""
        self._limiter.forget(key)

    def failures(self, key: str) -> int:
        return self._limiter.failures(key)

    async def get(self) -> str:
        """The next key (fast lane first), now held by the caller until `done(key)`. Raises ShutDown."""
        while True:
            if self._shut:
                raise ShutDown
            key = self._pop(self._fast, slow=False) or self._pop(self._slow, slow=True)
            if key is not None:
                self._processing.add(key)
                return key
            self._ready.clear()
            await self._ready.wait()

    def _pop(self, lane: collections.deque[str], *, slow: bool) -> str | None:
        while lane:
            key = lane.popleft()
            if self._lane.get(key) is slow:
                del self._lane[key]
                return key
        return None

    def done(self, key: str) -> None:
        """The worker is finished with `key`; if it was added meanwhile, it is queued again."""
        self._processing.discard(key)
        slow = self._again.pop(key, None)
        if slow is not None:
            self.add(key, slow=slow)

    async def run_timers(self) -> None:
        """Move delayed keys into the fast lane as they come due; run until cancelled."""
        while not self._shut:
            self._timer_wake.clear()
            now = self._now()
            # clocks keep microseconds and the wait below is rounded down to one: a due time within
            # two of now is due (else the wait would return at once without the key becoming due,
            # forever; rounded up, a clock set exactly to the due time could miss it by one)
            while self._delayed and self._delayed[0][0] <= now + 2e-6:
                due, _, key = heapq.heappop(self._delayed)
                if self._due.get(key) == due:
                    del self._due[key]
                    self.add(key)
            deadline = None if not self._delayed else self._delayed[0][0]
            at = (
                None
                if deadline is None
                else self._clock.now() + timedelta(microseconds=math.floor(max(0.0, deadline - now) * 1e6))
            )
            await self._clock.wait_until(at, self._timer_wake)

    def shut_down(self) -> None:
        """Refuse new keys and release every waiting worker with ShutDown."""
        self._shut = True
        self._ready.set()
        self._timer_wake.set()
