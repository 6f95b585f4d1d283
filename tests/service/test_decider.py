"""The decision loop under store faults, on a real redis-server: informer semantics (re-read
everything after a gap) and retries with backoff on an injected clock."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Container, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from support import RedisServer, wait_for

from prewarm.core import ledger, policy, targets
from prewarm.service import clock, composition, decider, target_registry
from prewarm.service.store import Intent, MemoryStore, RedisStore, StateUnavailable

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SPEC = targets.TargetSpec(
    ref=targets.TargetRef("ml", "chat"), kind=targets.TargetKind.KEDA, max=1000, sessions_per_replica=1
)


def opened(event_id: str, at: datetime = T0) -> Intent:
    event = ledger.SessionEvent(ledger.SessionEventType.OPENED, event_id, at, timedelta(minutes=5))
    return Intent(target="ml/chat", source="/test", id=event_id, event=event)


def attempts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot decide ml/chat")]


async def test_a_decision_that_failed_is_retried_with_backoff_until_it_succeeds(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The reproducer: sessions were stored, the decision failed because the store went away, and
    nothing decided the target again until its next event. Here nothing announces anything (no
    pub/sub): only the retry can bring the floor to the stored sessions."""
    manual = clock.ManualClock(T0)
    store = RedisStore.from_url(redis_server.url, timeout=0.2)
    loop = decider.Decider(registry=target_registry.TargetRegistry([SPEC]), store=store, clock=manual)
    running = asyncio.create_task(loop.run())
    caplog.set_level(logging.WARNING, logger="prewarm.service.decider")
    try:
        await wait_for(lambda: "ml/chat" in loop.decisions)
        await store.record_intents([opened(f"s{i}") for i in range(3)])  # stored, not yet decided
        redis_server.stop()
        loop.mark_changed("ml/chat")
        await wait_for(lambda: len(attempts(caplog)) == 1)
        assert attempts(caplog)[0].startswith("cannot decide ml/chat (attempt 1, again in 0:00:00.100000)")
        manual.advance(timedelta(milliseconds=100))
        await wait_for(lambda: len(attempts(caplog)) == 2)
        assert "(attempt 2, again in 0:00:00.200000)" in attempts(caplog)[1]
        redis_server.start()  # the sessions are back (append-only file)
        manual.advance(timedelta(milliseconds=100))  # half way through the second backoff
        # parked until the third attempt, with nothing tried in between
        await wait_for(lambda: manual.deadlines == [T0 + timedelta(milliseconds=300)])
        assert len(attempts(caplog)) == 2 and loop.decisions["ml/chat"].floor == 0
        manual.advance(timedelta(milliseconds=100))
        await wait_for(lambda: loop.decisions["ml/chat"].floor == 3)
        stored = await store.load_decision("ml/chat")
        assert stored is not None and stored.floor == 3
    finally:
        running.cancel()
        await store.close()


async def test_every_target_is_re_decided_after_the_subscription_comes_back(redis_server: RedisServer) -> None:
    """Sessions stored with no announcement reaching the decider (as if published in a pub/sub
    gap) are decided once the subscription is back: a relist, on the injected clock."""
    manual = clock.ManualClock(T0)
    store = RedisStore.from_url(redis_server.url)
    loop = decider.Decider(registry=target_registry.TargetRegistry([SPEC]), store=store, clock=manual)
    await store.start()
    running = asyncio.create_task(loop.run())
    try:
        await wait_for(lambda: "ml/chat" in loop.decisions)
        raw = aioredis.Redis.from_url(redis_server.url)
        expires = int((T0 + timedelta(minutes=5)).timestamp() * 1000)
        await raw.zadd("prewarm:{ml/chat}:sessions", {"s1": expires, "s2": expires})  # no PUBLISH
        await raw.aclose()
        assert loop.decisions["ml/chat"].floor == 0
        assert redis_server.command(b"CLIENT KILL TYPE pubsub").startswith(b":1")
        await wait_for(lambda: loop.decisions["ml/chat"].floor == 2)
    finally:
        running.cancel()
        await store.close()


async def test_floors_converge_within_2_s_after_a_6_s_redis_outage(redis_server: RedisServer, tmp_path: Path) -> None:
    """The reproducer: Redis down 6 s, then 8 events right after it returns, while the decider's
    pub/sub subscription is still reconnecting: their announcements go to nobody. The relist
    after the subscription (and the store's recovery) re-decides every target."""
    names = [f"ml/model-{i}" for i in range(4)]
    config = tmp_path / "targets.yaml"
    config.write_text(
        "targets:\n" + "".join(f"  - {{name: {n}, kind: keda, max: 9, sessionsPerReplica: 1}}\n" for n in names)
    )
    options = composition.ServeOptions(config=config, store=redis_server.url, http_host="127.0.0.1", http_port=0)
    async with (
        composition.run_service(options, clock=clock.SystemClock(), out=io.StringIO()) as service,
        aiohttp.ClientSession() as http,
    ):
        await wait_for(lambda: all(name in service.decider.decisions for name in names), within=10)
        redis_server.stop()
        await asyncio.sleep(6)  # the outage itself
        redis_server.start()

        async def send(name: str, session: str) -> None:
            event = {
                "specversion": "1.0",
                "type": "dev.prewarm.session.opened",
                "source": "/outage",
                "id": f"{name}-{session}",
                "data": {"target": name, "session": session},
            }
            deadline = time.monotonic() + 5
            while True:  # a broker retries a 503; the first tries may find the pool reconnecting
                async with http.post(
                    f"http://127.0.0.1:{service.http_port}/events",
                    json=event,
                    headers={"Content-Type": "application/cloudevents+json"},
                ) as response:
                    if response.status == 202:
                        return
                    assert response.status == 503 and time.monotonic() < deadline
                await asyncio.sleep(0.05)

        await asyncio.gather(*(send(name, f"s{i}") for name in names for i in range(2)))
        acknowledged = time.monotonic()
        await wait_for(lambda: all(service.decider.decisions[name].floor == 2 for name in names), within=2.0)
        print(f"floors converged {time.monotonic() - acknowledged:.3f} s after the last 202")


class EventsWhileDeciding(MemoryStore):
    """The embedded store, where an event for the target arrives while a batch's inputs are read
    (as on a busy listener), as many times as `arrivals` says."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals = 0
        self._next = 0

    async def decision_inputs(
        self, targets: Sequence[str], now: datetime, *, cached: Container[str] = ()
    ) -> list[tuple[ledger.SessionCount, policy.FloorDecision | None]]:
        inputs = await super().decision_inputs(targets, now, cached=cached)
        if self.arrivals > 0 and "ml/chat" in targets:
            self.arrivals -= 1
            self._next += 1
            await self.record_intents([opened(f"busy-{self._next}", now)])  # announces the change
        return inputs


async def test_a_target_that_changes_while_it_is_decided_is_decided_again_after_the_hot_gap() -> None:
    """Events faster than decisions make one decision per HOT_GAP, not one per event; the change
    that came while deciding is not lost."""
    store = EventsWhileDeciding()
    saved: list[tuple[float, int]] = []
    loop = asyncio.get_running_loop()
    store.add_decision_listener(lambda d: saved.append((loop.time(), d.floor)) if d.target == "ml/chat" else None)
    other = targets.TargetSpec(ref=targets.TargetRef("ml", "other"), kind=targets.TargetKind.KEDA, max=5)
    deciding = decider.Decider(
        registry=target_registry.TargetRegistry([SPEC, other]), store=store, clock=clock.ManualClock(T0)
    )
    running = asyncio.create_task(deciding.run())
    try:
        await wait_for(lambda: "ml/chat" in deciding.decisions)
        store.arrivals = 1
        await store.record_intents([opened("s1")])  # decided at once; "busy-1" arrives meanwhile
        await wait_for(lambda: [floor for _, floor in saved][-2:] == [1, 2])
        first, again = saved[-2][0], saved[-1][0]
        assert again - first >= decider.HOT_GAP - 0.001  # not at once: after the gap (the loop's timer)
        await store.record_intents([opened("s2")])  # nothing arrives while this one is decided
        await wait_for(lambda: saved[-1][1] == 3)
        assert [floor for _, floor in saved] == [0, 1, 2, 3]  # each change decided once, none lost
    finally:
        running.cancel()


class ChangedWhileReading(MemoryStore):
    """The embedded store, where ml/chat is removed from `registry` while a batch's inputs are read
    (once `registry` is set): added back with `add_back` (a config reload), and the read failing
    with `fail` (a store outage at the same moment)."""

    def __init__(self, *, add_back: bool = False, fail: bool = False) -> None:
        super().__init__()
        self.registry: target_registry.TargetRegistry | None = None
        self.add_back, self.fail = add_back, fail

    async def decision_inputs(
        self, targets: Sequence[str], now: datetime, *, cached: Container[str] = ()
    ) -> list[tuple[ledger.SessionCount, policy.FloorDecision | None]]:
        inputs = await super().decision_inputs(targets, now, cached=cached)
        if self.registry is not None and "ml/chat" in targets:
            registry, self.registry = self.registry, None
            registry.remove("ml/chat")
            if self.add_back:
                registry.add(SPEC)
            if self.fail:
                raise StateUnavailable("redis: connection reset")
        return inputs


async def test_a_decision_forgotten_while_its_inputs_were_read_comes_from_the_store() -> None:
    """The batch read skips the stored decision of a target whose decision is held here; if the
    held one is gone when the read returns, the stored one is read after all, so the hold goes on."""
    store = ChangedWhileReading(add_back=True)
    registry = target_registry.TargetRegistry([SPEC])
    saved: list[int] = []
    store.add_decision_listener(lambda d: saved.append(d.floor))
    deciding = decider.Decider(registry=registry, store=store, clock=clock.ManualClock(T0))
    running = asyncio.create_task(deciding.run())
    try:
        await wait_for(lambda: "ml/chat" in deciding.decisions)
        await store.record_intents([opened(f"s{i}") for i in range(3)])
        await wait_for(lambda: saved[-1:] == [3])
        store.registry = registry  # the next read forgets the decision held here
        closed = [
            Intent(
                "ml/chat",
                "/test",
                f"c{i}",
                ledger.SessionEvent(ledger.SessionEventType.CLOSED, f"s{i}", T0, timedelta(minutes=5)),
            )
            for i in range(3)
        ]
        await store.record_intents(closed)
        await wait_for(lambda: store.registry is None and len(saved) >= 4)
        assert saved[2:] == [3] * len(saved[2:])  # every decision after the sessions closed holds 3
        assert deciding.decisions["ml/chat"].reason.startswith("holding 3")
    finally:
        running.cancel()


async def test_a_wake_re_decides_only_the_targets_whose_decision_said_they_change_by_then() -> None:
    """Decisions that name a next change (a session's expiry) are re-decided at it, the others not
    at all; a decision replaced since (the session closed early) is not re-decided at the old time."""
    manual = clock.ManualClock(T0)
    store = MemoryStore()
    specs = [
        targets.TargetSpec(
            ref=targets.TargetRef("ml", f"m{i}"),
            kind=targets.TargetKind.KEDA,
            max=5,
            sessions_per_replica=1,
            hold=timedelta(0),
        )
        for i in range(200)
    ]
    saves: dict[str, int] = {}
    store.add_decision_listener(lambda d: saves.__setitem__(d.target, saves.get(d.target, 0) + 1))
    deciding = decider.Decider(registry=target_registry.TargetRegistry(specs), store=store, clock=manual)
    running = asyncio.create_task(deciding.run())

    def session(kind: ledger.SessionEventType, target: str, at: datetime) -> Intent:
        event = ledger.SessionEvent(kind, f"s-{target}", at, timedelta(minutes=5))
        return Intent(target=target, source="/test", id=f"{kind.value}-{target}", event=event)

    try:
        await wait_for(lambda: len(deciding.decisions) == 200)
        await store.record_intents([session(ledger.SessionEventType.OPENED, f"ml/m{i}", T0) for i in range(3)])
        await wait_for(lambda: all(deciding.decisions[f"ml/m{i}"].floor == 1 for i in range(3)))
        assert deciding.decisions["ml/m0"].next_change == T0 + timedelta(minutes=5)
        manual.advance(timedelta(minutes=1))
        await store.record_intents([session(ledger.SessionEventType.CLOSED, "ml/m1", T0 + timedelta(minutes=1))])
        await wait_for(lambda: deciding.decisions["ml/m1"].floor == 0)
        before = dict(saves)
        manual.advance(timedelta(minutes=4))  # the two sessions still open expire
        await wait_for(lambda: deciding.decisions["ml/m0"].floor == 0 and deciding.decisions["ml/m2"].floor == 0)
        await asyncio.sleep(0)  # let a wrongly scheduled decision of another target run, if any
        changed = {target for target, count in saves.items() if count != before.get(target)}
        assert changed == {"ml/m0", "ml/m2"}
        assert manual.deadlines == []  # nothing else is due: the decider sleeps until told
    finally:
        running.cancel()


@pytest.mark.parametrize("fail", [False, True])
async def test_a_target_removed_while_it_is_decided_is_dropped_not_retried(fail: bool) -> None:
    """Removed while its inputs were read (with or without the read failing): the others are
    decided, it is not, and nothing is left to retry (a retry of a target no longer decided here
    would come due on every turn of the loop, which then never sleeps)."""
    manual = clock.ManualClock(T0)
    other = targets.TargetSpec(ref=targets.TargetRef("ml", "other"), kind=targets.TargetKind.KEDA, max=5)
    registry = target_registry.TargetRegistry([SPEC, other])
    store = ChangedWhileReading(fail=fail)
    store.registry = registry
    deciding = decider.Decider(registry=registry, store=store, clock=manual)
    running = asyncio.create_task(deciding.run())
    try:
        if not fail:
            await wait_for(lambda: "ml/other" in deciding.decisions)
        else:  # the batch failed: both are retried, the one that is left is decided
            await wait_for(lambda: manual.deadlines == [T0 + decider.RETRY_FIRST])
            manual.advance(decider.RETRY_FIRST)
            await wait_for(lambda: "ml/other" in deciding.decisions)
        assert "ml/chat" not in deciding.decisions
        manual.advance(decider.RETRY_CAP)  # any retry left would be due now
        await wait_for(lambda: manual.deadlines == [])  # parked until told: nothing is due
        deciding.mark_changed("ml/other")
        await wait_for(
            lambda: (
                deciding.decisions["ml/other"].decided_at
                == T0 + decider.RETRY_CAP + (decider.RETRY_FIRST if fail else timedelta(0))
            )
        )
    finally:
        running.cancel()
