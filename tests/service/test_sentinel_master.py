"""A planned Sentinel failover (`SENTINEL FAILOVER`, the old master stays up) under load through
`prewarm serve`: the service follows the switch within a second, so at most a second of events
is lost (0 when replicas must acknowledge) and at most a second is answered 503. Real
redis-server and redis-sentinel processes on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import SentinelGroup, acknowledged_lost, free_port, post_session_opened, wait_for, wait_for_async

from prewarm.core import ledger
from prewarm.service import clock, composition, redis_connection, sentinel_master
from prewarm.service.store import IngestResult, Intent, RedisStore, StateUnavailable, redis_keys

RATE = 10  # events per second
DURATION = 15  # seconds of load
FAILOVER_AT = 2.0  # seconds into the load


def intent(event_id: str) -> Intent:
    event = ledger.SessionEvent(ledger.SessionEventType.OPENED, event_id, datetime.now(UTC), timedelta(seconds=300))
    return Intent(target="ml/chat", source="/test", id=event_id, event=event)


@dataclasses.dataclass
class Outcome:
    statuses: dict[str, int]  # event id -> status (0: no answer within the bound)
    lost: list[str]  # acknowledged (202) and not on the new master

    @property
    def lost_seconds(self) -> float:
        return len(self.lost) / RATE

    @property
    def unavailable_seconds(self) -> float:
        return sum(s == 503 for s in self.statuses.values()) / RATE


async def planned_failover_under_load(
    group: SentinelGroup, tmp_path: Path, *, wait_replicas: int, running: list[int], gap: Callable[[], None]
) -> Outcome:
    """RATE events/s for DURATION s through `prewarm serve` on the Sentinel URL; `gap` runs once the
    service follows every running Sentinel; at FAILOVER_AT the first running Sentinel is asked
    for a planned failover. Which events were answered how, and which acknowledged ones survive?"""
    config = tmp_path / "targets.yaml"
    config.write_text("targets: [{name: ml/chat, kind: keda, max: 4}]\n")
    options = composition.ServeOptions(
        config=config, store=group.url, http_host="127.0.0.1", http_port=0, store_wait_replicas=wait_replicas
    )
    bound = options.listener.store_timeout + 1.0
    statuses: dict[str, int] = {}

    async def send(http: aiohttp.ClientSession, port: int, event_id: str) -> None:
        statuses[event_id] = 0
        statuses[event_id] = await post_session_opened(
            http, port, target="ml/chat", event_id=event_id, source="/planned-failover", within=bound
        )

    old_master = group.master_port()
    async with (
        composition.run_service(options, clock=clock.SystemClock(), out=io.StringIO()) as service,
        aiohttp.ClientSession() as http,
    ):
        await wait_for(lambda: all(group.switch_subscribers(i) >= 1 for i in running), within=10)
        gap()
        await wait_for(lambda: all(group.switch_subscribers(i) >= 1 for i in running), within=10)
        sent: list[asyncio.Task[None]] = []
        start = time.monotonic()
        failed_over = False
        for i in range(RATE * DURATION):
            sent.append(asyncio.create_task(send(http, service.http_port, f"e{i:03d}")))
            if not failed_over and time.monotonic() - start >= FAILOVER_AT:
                group.failover(running[0])
                failed_over = True
            await asyncio.sleep(max(0.0, start + (i + 1) / RATE - time.monotonic()))  # the load's pace
        async with asyncio.timeout(bound + 1):
            await asyncio.gather(*sent)
    new_master = group.master_port()
    assert new_master is not None and new_master != old_master, "the Sentinels did not switch the master"
    lost = await acknowledged_lost(statuses, port=new_master, password=group.password, target="ml/chat")
    return Outcome(statuses=statuses, lost=lost)


def _restart_every_sentinel(group: SentinelGroup) -> None:
    for index in range(len(group.sentinel_ports)):
        group.stop_sentinel(index)
    for index in range(len(group.sentinel_ports)):
        group.start_sentinel(index)
    group.wait_sentinels()


SCENARIOS = {
    "three-sentinels": ([0, 1, 2], lambda group: None),
    "after-a-sentinel-restart": ([0, 1, 2], _restart_every_sentinel),
    "two-sentinels-one-down": ([0, 1], lambda group: None),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["default", "wait-replicas-1"])
async def test_a_planned_failover_costs_at_most_a_second(
    redis_sentinel: SentinelGroup, tmp_path: Path, scenario: str, wait_replicas: int, record_property: Any
) -> None:
    running, gap = SCENARIOS[scenario]
    for index in set(range(len(redis_sentinel.sentinel_ports))) - set(running):
        redis_sentinel.stop_sentinel(index)
    outcome = await planned_failover_under_load(
        redis_sentinel, tmp_path, wait_replicas=wait_replicas, running=running, gap=lambda: gap(redis_sentinel)
    )
    record_property("lost_seconds", outcome.lost_seconds)
    record_property("unavailable_seconds", outcome.unavailable_seconds)
    print(
        f"{scenario}, wait_replicas={wait_replicas}: {len(outcome.lost)} acknowledged events lost "
        f"({outcome.lost_seconds:.1f} s), {outcome.unavailable_seconds:.1f} s answered 503: {outcome.lost}"
    )
    assert set(outcome.statuses.values()) <= {202, 503}  # every event answered within its bound
    assert sum(s == 202 for s in outcome.statuses.values()) >= RATE * DURATION - RATE  # at most 1 s not taken
    if wait_replicas:
        assert outcome.lost == []
    else:
        assert outcome.lost_seconds <= 1.0
    assert outcome.unavailable_seconds <= 1.0


@pytest.mark.parametrize("gap", [False, True], ids=["announced", "during-a-gap"])
async def test_a_switch_the_leader_does_not_announce_is_followed_before_the_old_master_steps_down(
    redis_sentinel: SentinelGroup, gap: bool
) -> None:
    """The store knows only Sentinels 1 and 2; Sentinel 0 leads the failover. Either they announce
    the switch (+switch-master) while the store listens, or they are down during the failover and
    the store, resubscribing once they are back, asks them. Either way writes go to the new master
    while the old one still says it is a master (it steps down about 10 s later)."""
    old_master = redis_sentinel.master_port()
    store = RedisStore.from_url(redis_sentinel.url_of([1, 2]))
    try:
        await store.start()
        assert await store.record_intents([intent("before")]) == IngestResult(new=(True,))
        await wait_for(lambda: all(redis_sentinel.switch_subscribers(i) >= 1 for i in (1, 2)), within=10)
        if gap:
            redis_sentinel.stop_sentinel(1)
            redis_sentinel.stop_sentinel(2)
        redis_sentinel.failover(0)
        failed_over = time.monotonic()
        await wait_for(lambda: redis_sentinel.master_port() not in (None, old_master), within=10)
        new_master = redis_sentinel.master_port()
        if gap:
            redis_sentinel.start_sentinel(1)
            redis_sentinel.start_sentinel(2)
        replica = next(r for r in redis_sentinel.servers if r.port == new_master)
        written = 0

        async def on_the_new_master() -> bool:
            nonlocal written
            written += 1
            try:
                await store.record_intents([intent(f"after-{written}")])
            except StateUnavailable:
                return False
            return b"after-" in replica.command(b"ZRANGE prewarm:{ml/chat}:sessions 0 -1")

        await wait_for_async(on_the_new_master, within=8)
        print(f"followed {time.monotonic() - failed_over:.2f} s after the failover")
        old = next(r for r in redis_sentinel.servers if r.port == old_master)
        assert old.command(b"ROLE").split(b"\r\n")[2] == b"master"  # not yet told to step down
    finally:
        await store.close()


async def test_a_connection_to_a_node_that_is_no_longer_a_master_is_refused(redis_sentinel: SentinelGroup) -> None:
    """Told (wrongly) that a replica is the master, the store's first connection asks ROLE, refuses
    the replica, asks the Sentinels again and writes to the real master."""
    store = RedisStore.from_url(redis_sentinel.url)
    try:
        pool = store._client.connection_pool
        assert isinstance(pool, sentinel_master.FollowedMasterPool)
        replica = redis_sentinel.replicas[0]
        await pool.adopt(("127.0.0.1", replica.port), epoch=99)
        assert await store.record_intents([intent("routed")]) == IngestResult(new=(True,))
        assert pool.master_address == ("127.0.0.1", redis_sentinel.master.port)
        assert b"routed" in redis_sentinel.master.command(b"ZRANGE prewarm:{ml/chat}:sessions 0 -1")
    finally:
        await store.close()


async def test_a_promotion_is_watched_for_its_bound_even_when_the_replica_never_answers() -> None:
    """A replica announced as being promoted that accepts connections and never answers (a hung
    node, an aborted failover): the watch gives up after its promotion wait, not after the
    client's retries of one ROLE, and follows nothing."""
    silent: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connected = redis_connection.connect(
        redis_connection.parse_redis_url("redis+sentinel://127.0.0.1:1/prewarm"), timeout=1.0
    )
    pool = connected.client.connection_pool
    assert isinstance(pool, sentinel_master.FollowedMasterPool)
    watch = sentinel_master.SentinelWatch([], service="prewarm", pool=pool, promotion_wait=0.3)
    try:
        watch._watch_promotion(f"slave 127.0.0.1:{port} 127.0.0.1 {port} @ prewarm 127.0.0.1 1".split(" "))
        (promotion,) = watch._promotions.values()
        started = time.monotonic()
        await wait_for(promotion.done, within=3.0)  # one ROLE tried 11 times took 11 s or more
        assert promotion.exception() is None
        assert time.monotonic() - started < 3.0
        assert silent, "the watch never asked the replica"
        assert pool.followed is None and pool.switches == 0
    finally:
        await asyncio.gather(*watch.cancel(), return_exceptions=True)
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()
        await connected.client.aclose()


async def test_a_sentinel_that_stays_down_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    """One Sentinel of the URL down (a supported deployment): the watch keeps trying it, and says
    so once at warning level, not twice a second for as long as it is down."""
    down = free_port()
    connected = redis_connection.connect(
        redis_connection.parse_redis_url(f"redis+sentinel://127.0.0.1:{down}/prewarm"), timeout=1.0
    )
    assert connected.watch is not None and connected.sentinel is not None
    about_it = f"Sentinel 127.0.0.1:{down}:"
    with caplog.at_level(logging.DEBUG, logger=sentinel_master.__name__):
        connected.watch.start()
        try:
            await wait_for(lambda: sum(about_it in r.getMessage() for r in caplog.records) >= 4, within=10)
        finally:
            await asyncio.gather(*connected.watch.cancel(), return_exceptions=True)
            await connected.client.aclose()
            await connected.sentinel.aclose()
    warnings = [r for r in caplog.records if about_it in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_the_subscription_moves_to_the_new_master_and_the_listeners_re_read(
    redis_sentinel: SentinelGroup,
) -> None:
    """A planned failover: the store's pub/sub subscription leaves the old master with its other
    connections, while the old master still says it is a master, so the changes the new master
    announces are heard at once; the listeners re-read what they follow (the switch is a gap)."""
    old_master = redis_sentinel.master_port()
    store = RedisStore.from_url(redis_sentinel.url)
    changed: list[str] = []
    resyncs: list[int] = []
    store.add_change_listener(changed.append)
    store.add_resync_listener(lambda: resyncs.append(1))

    def subscribers(server: Any) -> int:
        return int(server.command(b"PUBSUB NUMSUB " + redis_keys.CHANGES_CHANNEL.encode()).split(b"\r\n")[-2][1:])

    try:
        await store.start()
        old = next(r for r in redis_sentinel.servers if r.port == old_master)
        await wait_for(lambda: subscribers(old) == 1 and bool(resyncs), within=10)
        await wait_for(lambda: all(redis_sentinel.switch_subscribers(i) >= 1 for i in range(3)), within=10)
        resynced = len(resyncs)
        redis_sentinel.failover(0)
        await wait_for(lambda: redis_sentinel.master_port() not in (None, old_master), within=10)
        new = next(r for r in redis_sentinel.servers if r.port == redis_sentinel.master_port())
        await wait_for(lambda: subscribers(new) == 1 and subscribers(old) == 0, within=3)
        assert len(resyncs) > resynced
        changed.clear()
        assert await store.record_intents([intent("after")]) == IngestResult(new=(True,))
        await wait_for(lambda: changed == ["ml/chat"], within=3)
        assert b"after" in new.command(b"ZRANGE prewarm:{ml/chat}:sessions 0 -1")
        assert old.command(b"ROLE").split(b"\r\n")[2] == b"master"  # not yet told to step down
    finally:
        await store.close()
