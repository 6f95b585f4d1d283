"""The work queue's contract (client-go's workqueue with Knative's two lanes), on an injected clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from support import wait_for

from prewarm.service import clock, work_queue

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def queue() -> tuple[work_queue.WorkQueue, clock.ManualClock]:
    manual = clock.ManualClock(T0)
    return work_queue.WorkQueue(clock=manual), manual


async def test_a_key_is_queued_once_however_often_it_is_added() -> None:
    q, _ = queue()
    for key in ("a", "b", "a", "a", "b"):
        q.add(key)
    assert len(q) == 2
    assert [await q.get(), await q.get()] == ["a", "b"]
    assert len(q) == 0


async def test_a_key_added_while_worked_is_worked_again_after_not_beside() -> None:
    q, _ = queue()
    q.add("a")
    key = await q.get()
    q.add("a")  # a newer floor while a worker holds it
    assert len(q) == 0  # not handed to a second worker meanwhile
    waiting = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    q.done(key)
    assert await asyncio.wait_for(waiting, 1) == "a"


async def test_the_fast_lane_goes_before_the_slow_lane_and_promotes() -> None:
    q, _ = queue()
    for index in range(5):
        q.add(f"relist-{index}", slow=True)
    q.add("user-changed")
    q.add("relist-3")  # changed by a user while waiting in the slow lane: moves up
    order = [await q.get() for _ in range(6)]
    assert order == ["user-changed", "relist-3", "relist-0", "relist-1", "relist-2", "relist-4"]


async def test_rate_limited_keys_come_back_after_their_backoff() -> None:
    q, manual = queue()
    timers = asyncio.create_task(q.run_timers())
    try:
        delay = q.add_rate_limited("a")
        assert 0 < delay <= 0.05 and q.failures("a") == 1 and len(q) == 1
        getting = asyncio.create_task(q.get())
        await wait_for(lambda: bool(manual.deadlines))
        assert not getting.done()
        manual.advance(timedelta(seconds=delay))
        assert await asyncio.wait_for(getting, 1) == "a"
        q.forget("a")
        assert q.failures("a") == 0
    finally:
        timers.cancel()


async def test_shutdown_releases_waiting_workers() -> None:
    q, _ = queue()
    waiting = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.shut_down()
    with pytest.raises(work_queue.ShutDown):
        await asyncio.wait_for(waiting, 1)
    q.add("late")
    assert len(q) == 0


async def test_a_delayed_key_is_due_when_the_clock_is_set_to_its_delay_whatever_its_rounding() -> None:
    # delays with sub-microsecond parts round either way; a clock moved by exactly the delay must
    # release the key (the timer's wait is rounded to the clock's microseconds)
    for tenths in range(10):
        q, manual = queue()
        timers = asyncio.create_task(q.run_timers())
        try:
            delay = 0.031234 + tenths * 1e-7 + 0.45e-6
            q.add_after("a", delay)
            getting = asyncio.create_task(q.get())
            await wait_for(lambda: bool(manual.deadlines))  # noqa: B023 - polled within this iteration
            manual.advance(timedelta(seconds=delay))
            assert await asyncio.wait_for(getting, 1) == "a", delay
        finally:
            timers.cancel()
