"""Clocks for the processes: the system clock, and a manual one that tests and replays move by hand.

The decision loop asks a clock for `now` and waits on it until a deadline or a wake-up event, so
the same loop runs on wall time in production and on injected time in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol


class Clock(Protocol):
    """Tells the time and waits until a time (or until woken)."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...

    async def wait_until(self, deadline: datetime | None, wake: asyncio.Event) -> None:
        """Return when `deadline` has come (None: never) or `wake` is set, whichever is first.

        Raises CancelledError at once when the calling task is being cancelled.
        """
        ...


def refuse_if_cancelling() -> None:
    """Raise CancelledError when the current task was asked to stop: a library call that caught
    the cancellation must not let a long-running loop go on to sleep until its next deadline."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class SystemClock:
    """Wall-clock time; waits on the event loop's timer."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def wait_until(self, deadline: datetime | None, wake: asyncio.Event) -> None:
        refuse_if_cancelling()
        timeout = None if deadline is None else max(0.0, (deadline - self.now()).total_seconds())
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that lands as
        # the event is set, and a cancelled decider then slept on until its next deadline.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await wake.wait()


class ManualClock:
    """A clock that only moves when told to; waiters wake as soon as their deadline is passed."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock start must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._waiters: dict[asyncio.Future[Any], datetime] = {}

    def now(self) -> datetime:
        return self._now

    @property
    def deadlines(self) -> list[datetime]:
        """The deadlines waiters are parked on, earliest first (for tests that check who waits)."""
        return sorted(self._waiters.values())

    def advance(self, delta: timedelta) -> None:
        """Move time forward by `delta` and wake every waiter whose deadline has come."""
        self.set(self._now + delta)

    def set(self, instant: datetime) -> None:
        """Move time to `instant` (never backwards) and wake waiters whose deadline has come."""
        if instant < self._now:
            raise ValueError("ManualClock cannot go backwards")
        self._now = instant
        for waiter, deadline in list(self._waiters.items()):
            if deadline <= instant and not waiter.done():
                waiter.set_result(None)

    async def wait_until(self, deadline: datetime | None, wake: asyncio.Event) -> None:
        refuse_if_cancelling()
        if wake.is_set() or (deadline is not None and deadline <= self._now):
            return
        woken = asyncio.ensure_future(wake.wait())
        waiters: set[asyncio.Future[Any]] = {woken}
        if deadline is not None:
            due: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiters[due] = deadline
            waiters.add(due)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
                self._waiters.pop(waiter, None)
