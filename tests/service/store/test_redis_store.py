"""The Redis store on real servers: one redis-server, a Sentinel-managed master and replica, and a
3-master Redis Cluster. Faults are real: a frozen (SIGSTOP) replica, a kill -9 of the master."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from support import (
    RedisCluster,
    RedisServer,
    SentinelGroup,
    acknowledged_lost,
    post_session_opened,
    wait_for,
    wait_for_async,
)

from prewarm.core import ledger, policy, targets
from prewarm.service import clock, composition, redis_connection
from prewarm.service.store import (
    BatchRejected,
    IngestResult,
    Intent,
    LeaseLost,
    RedisStore,
    StateUnavailable,
    build_store,
    redis_keys,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def intent(event_id: str, *, target: str = "ml/chat", session: str | None = None, at: datetime = T0) -> Intent:
    event = ledger.SessionEvent(ledger.SessionEventType.OPENED, session or event_id, at, timedelta(seconds=300))
    return Intent(target=target, source="/test", id=event_id, event=event)


# --- URLs ---


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", redis_connection.RedisDeployment(redis_connection.Topology.SERVER, "")),
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/prewarm/2",
            redis_connection.RedisDeployment(
                redis_connection.Topology.SENTINEL,
                "",
                nodes=(("10.0.0.1", 26379), ("10.0.0.2", 26380)),
                service="prewarm",
                db=2,
            ),
        ),
        (
            "redis+sentinel://:s%40cret@sentinel/prewarm",
            redis_connection.RedisDeployment(
                redis_connection.Topology.SENTINEL,
                "",
                nodes=(("sentinel", 26379),),
                service="prewarm",
                password="s@cret",
            ),
        ),
        (
            "redis+cluster://app:pw@[::1]:7000,node-b",
            redis_connection.RedisDeployment(
                redis_connection.Topology.CLUSTER,
                "",
                nodes=(("::1", 7000), ("node-b", 6379)),
                username="app",
                password="pw",
            ),
        ),
    ],
    ids=["server", "sentinel", "sentinel-password-default-port", "cluster"],
)
def test_store_urls_name_their_topology(url: str, expected: redis_connection.RedisDeployment) -> None:
    assert redis_connection.parse_redis_url(url) == dataclasses.replace(expected, url=url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "sentinel://h:26379/prewarm",
            "'sentinel://h:26379/prewarm' use redis+sentinel://host:port[,host:port]/service",
        ),
        ("redis://h:6379/0?sentinel=prewarm", "use redis+sentinel://host:port[,host:port]/service[/db] for Sentinel"),
        ("redis://h:6379/0?colour=blue", "has an unknown query argument 'colour'"),
        ("redis+sentinel://h:26379", "needs the Sentinel service name as its path: /service[/db]"),
        ("redis+sentinel://h:26379/prewarm/zero", "database 'zero' is not a number"),
        ("redis+sentinel://h:99999/prewarm", "has a bad port in 'h:99999'"),
        ("redis+sentinel://:secret@h:26379,/prewarm", "'h:26379,/prewarm' names an empty host"),
        ("redis+cluster://h:7000/3", "a Redis Cluster has database 0 only: give no path"),
        ("redis+cluster://h:7000?x=1", "takes no query arguments"),
        ("mongodb://h", "is not memory, redis://host:port/db"),
    ],
    ids=[
        "sentinel-scheme",
        "sentinel-query",
        "unknown-query",
        "no-service",
        "bad-db",
        "bad-port",
        "empty-host-no-password-shown",
        "cluster-db",
        "cluster-query",
        "other-scheme",
    ],
)
def test_bad_store_urls_are_one_clear_error(url: str, message: str) -> None:
    with pytest.raises(targets.ConfigError) as caught:
        build_store(url)
    assert str(caught.value).startswith("invalid configuration in --store (1 problem):\n  - --store: ")
    assert message in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory", "--redis-wait-replicas: 1 needs a Redis store with replicas"),
        ("redis+cluster://h:7000", "--redis-wait-replicas: 1 is not supported on Redis Cluster"),
    ],
    ids=["memory", "cluster"],
)
def test_waiting_for_replicas_needs_a_store_that_has_them(url: str, message: str) -> None:
    with pytest.raises(targets.ConfigError, match=message):
        build_store(url, wait_replicas=1)


# --- the group commit answers every batch ---


async def test_a_batch_the_store_refuses_fails_alone_and_writes_nothing(redis_server: RedisServer) -> None:
    """Batches that slipped past the edge (built here by hand) fail on their own; the 50 valid
    batches group-committed with them are stored, and no request waits without bound."""
    store = RedisStore.from_url(redis_server.url, timeout=0.5)
    try:
        valid = [[intent(f"v{i}")] for i in range(50)]
        before_1970 = [intent("old", at=datetime(1969, 12, 31, tzinfo=UTC))]  # a negative time: the script refuses
        surrogate = [intent("bad", session="\ud800")]  # cannot be encoded as UTF-8
        mixed = [intent("m1"), intent("m2", at=datetime(1969, 12, 31, tzinfo=UTC))]  # all or nothing
        batches = [*valid[:25], before_1970, surrogate, mixed, *valid[25:]]
        async with asyncio.timeout(5):
            results = await asyncio.gather(*(store.record_intents(b) for b in batches), return_exceptions=True)
        refused = [r for r in results if isinstance(r, BaseException)]
        assert [type(r) for r in refused] == [BatchRejected] * 3
        assert "the store refused the batch: " in str(refused[0])
        assert [r for r in results if isinstance(r, IngestResult)] == [IngestResult(new=(True,))] * 50
        assert (await store.count_sessions("ml/chat", T0)).active == 50
        # nothing of the mixed batch was written: its valid event is new when sent again
        assert await store.record_intents([intent("m1")]) == IngestResult(new=(True,))
    finally:
        await store.close()


async def test_closing_the_store_answers_every_waiting_batch(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, timeout=0.5)
    redis_server.freeze()  # the first group's call hangs; the rest queue behind it
    try:
        waiting = [asyncio.create_task(store.record_intents([intent(f"e{i}")])) for i in range(5)]
        await wait_for(lambda: store._group._committing is not None)
        await store.close()
        async with asyncio.timeout(5):
            results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, StateUnavailable) for r in results)
    finally:
        redis_server.thaw()


# --- Sentinel ---


@dataclasses.dataclass
class Outcome:
    statuses: dict[str, int]  # event id -> status (0: no answer within 5 s)
    lost: list[str]  # acknowledged (202) and not stored after the failover


async def failover_under_load(group: SentinelGroup, tmp_path: Path, *, wait_replicas: int) -> Outcome:
    """10 events/s through `prewarm serve` on the Sentinel URL while both replicas are frozen for
    a second, the master is killed (-9) and a replica, thawed, is promoted. Which acknowledged
    events survive?"""
    config = tmp_path / "targets.yaml"
    config.write_text("targets: [{name: ml/chat, kind: keda, max: 4}]\n")
    options = composition.ServeOptions(
        config=config,
        store=group.url,
        http_host="127.0.0.1",
        http_port=0,
        store_wait_replicas=wait_replicas,
        store_wait_timeout=0.25,
        listener=dataclasses.replace(composition.ServeOptions(config=None).listener, store_timeout=5.0),
    )
    statuses: dict[str, int] = {}

    async def send(http: aiohttp.ClientSession, port: int, event_id: str) -> None:
        statuses[event_id] = 0
        statuses[event_id] = await post_session_opened(
            http, port, target="ml/chat", event_id=event_id, source="/failover", within=5
        )

    async with (
        composition.run_service(options, clock=clock.SystemClock(), out=io.StringIO()) as service,
        aiohttp.ClientSession() as http,
    ):
        sent: list[asyncio.Task[None]] = []
        phase = "steady"
        cut_at = 0.0
        new_master: RedisServer | None = None
        promoted_at = 0
        for i in range(300):  # 10 events/s, until the new master has acknowledged 10 events (or 30 s)
            sent.append(asyncio.create_task(send(http, service.http_port, f"e{i:03d}")))
            if phase == "steady" and sum(s == 202 for s in statuses.values()) >= 5:  # acknowledged before
                # a partition between the master and its replicas: frozen, and cut off
                for replica in group.replicas:
                    replica.freeze()
                assert group.master.command(b"CLIENT KILL TYPE replica").startswith(b":2")
                phase = "cut off"  # without WAIT, the master still acknowledges
                cut_at = time.monotonic()
            elif phase == "cut off" and time.monotonic() - cut_at > 1.0:
                group.master.kill()
                for replica in group.replicas:
                    replica.thaw()
                phase = "failing over"
            elif phase == "failing over" and group.master_port() in {r.port for r in group.replicas}:
                new_master = next(r for r in group.replicas if r.port == group.master_port())
                promoted_at = i
                phase = "promoted"
            elif phase == "promoted" and sum(statuses[f"e{j:03d}"] == 202 for j in range(promoted_at, i)) >= 10:
                break
            await asyncio.sleep(0.1)  # the load's pace, not a wait for behaviour
        async with asyncio.timeout(10):
            await asyncio.gather(*sent)
    assert new_master is not None, "the Sentinels did not promote a replica"
    lost = await acknowledged_lost(statuses, port=new_master.port, password=group.password, target="ml/chat")
    return Outcome(statuses=statuses, lost=lost)


async def test_a_sentinel_failover_loses_no_acknowledged_event_when_replicas_must_acknowledge(
    redis_sentinel: SentinelGroup, tmp_path: Path, record_property: Any
) -> None:
    outcome = await failover_under_load(redis_sentinel, tmp_path, wait_replicas=1)
    record_property("acknowledged_lost_with_wait", len(outcome.lost))
    assert set(outcome.statuses.values()) <= {202, 503}  # every event answered, none hung
    assert 503 in outcome.statuses.values()  # while the replica was frozen and during the failover
    assert outcome.lost == []
    assert sum(s == 202 for s in outcome.statuses.values()) >= 15


async def test_without_waiting_for_replicas_a_failover_loses_what_the_replica_missed(
    redis_sentinel: SentinelGroup, tmp_path: Path, record_property: Any
) -> None:
    """The trade-off, measured: replication is asynchronous, so what the master acknowledged while
    its replica lagged is gone once the replica is promoted."""
    outcome = await failover_under_load(redis_sentinel, tmp_path, wait_replicas=0)
    record_property("acknowledged_lost_without_wait", len(outcome.lost))
    print(f"acknowledged events lost without --redis-wait-replicas: {len(outcome.lost)}")
    assert set(outcome.statuses.values()) <= {202, 503}
    assert 5 <= len(outcome.lost) <= 15  # the ~1 s the replica was frozen, at 10 events/s


async def test_the_sentinel_store_follows_a_failover(redis_sentinel: SentinelGroup) -> None:
    store = build_store(redis_sentinel.url)
    assert isinstance(store, RedisStore)
    assert store.topology is redis_connection.Topology.SENTINEL
    resyncs: list[int] = []
    store.add_resync_listener(lambda: resyncs.append(1))
    try:
        assert await store.record_intents([intent("before")]) == IngestResult(new=(True,))
        await store.check_writable()
        await wait_for(lambda: all(r.command(b"DBSIZE") != b":0\r\n" for r in redis_sentinel.replicas))
        redis_sentinel.master.kill()
        with pytest.raises(StateUnavailable):  # the Sentinels still name the dead master: not ready
            async with asyncio.timeout(5):
                await store.check_writable()

        async def written() -> bool:
            try:
                return await store.record_intents([intent("after")]) == IngestResult(new=(True,))
            except StateUnavailable:
                return False

        await wait_for_async(written, within=15)
        # the store may follow the promoted replica before the first Sentinel announces it
        await wait_for(lambda: redis_sentinel.master_port() in {r.port for r in redis_sentinel.replicas})
        assert (await store.count_sessions("ml/chat", T0)).active == 2
        assert resyncs  # the store came back from a failure: its listeners re-read
    finally:
        await store.close()


# --- Cluster ---


CLUSTER_TARGETS = [f"ml/model-{i}" for i in range(12)]  # spread over the three masters' slots


async def test_the_cluster_store_group_commits_per_slot(redis_cluster: RedisCluster) -> None:
    store = build_store(redis_cluster.url)
    assert isinstance(store, RedisStore)
    assert store.topology is redis_connection.Topology.CLUSTER
    changed: list[str] = []
    store.add_change_listener(changed.append)
    try:
        await store.start()
        await store.check_writable()
        slots = {redis_keys.slot(t) for t in CLUSTER_TARGETS}
        assert len(slots) == len(CLUSTER_TARGETS)
        # concurrent batches, one naming every target: group-committed as one call per slot
        batches = [[intent(f"{t}-a", target=t) for t in CLUSTER_TARGETS]]
        batches += [[intent(f"{t}-{i}", target=t)] for i in range(3) for t in CLUSTER_TARGETS]
        async with asyncio.timeout(5):
            results = await asyncio.gather(*(store.record_intents(b) for b in batches))
        assert [r.accepted for r in results] == [len(CLUSTER_TARGETS)] + [1] * (3 * len(CLUSTER_TARGETS))
        assert (await store.record_intents(batches[0])).duplicates == len(CLUSTER_TARGETS)
        for target in CLUSTER_TARGETS:
            assert (await store.count_sessions(target, T0)).active == 4
            assert await store.arrivals(target, T0, T0 + timedelta(minutes=1)) == {T0: 4}
        await wait_for(lambda: set(changed) == set(CLUSTER_TARGETS))  # pub/sub reaches every node's subscribers
        # a decision, fenced by its target's lease, in its target's slot
        leases = await store.leases.claim_leases(CLUSTER_TARGETS, holder="replica-a", held={}, ttl=5)
        assert [lease.token for lease in leases] == ["1|replica-a"] * len(CLUSTER_TARGETS)
        spec = targets.TargetSpec(ref=targets.TargetRef("ml", "model-3"), kind=targets.TargetKind.KEDA, max=9)
        decision = policy.decide_floor(spec, policy.Signals(sessions=4), T0, None)
        await store.save_decision(decision, fence="1|replica-a")
        with pytest.raises(LeaseLost):
            await store.save_decision(decision, fence="0|replica-b")
        assert await store.load_decision("ml/model-3") == decision
        await check_batched_decisions(store, CLUSTER_TARGETS, fence="1|replica-a")  # pipelined across slots
    finally:
        await store.close()


async def test_a_cluster_store_takes_thousands_of_targets_across_slots(redis_cluster: RedisCluster) -> None:
    # a call per hash slot: more calls than the client's connections per node (100), in one
    # pipeline; scripts a node forgot (SCRIPT FLUSH, as after a restart or a promotion) are loaded
    # again and only the calls that did not run are sent again
    names = [f"ns{i % 50}/model-{i}" for i in range(3000)]
    assert len({redis_keys.slot(name) for name in names}) > 2000
    store = build_store(redis_cluster.url)
    assert isinstance(store, RedisStore)
    try:
        await store.start()
        async with asyncio.timeout(30):
            taken = await store.leases.claim_leases(names, holder="replica-a", held={}, ttl=30)
            assert {lease.token for lease in taken} == {"1|replica-a"}
            held = {lease.target: "1|replica-a" for lease in taken}
            for node in redis_cluster.nodes:
                node.command(b"SCRIPT FLUSH")
            assert await store.leases.renew_leases(held, ttl=30) == []
            again = await store.leases.claim_leases(names, holder="replica-a", held=held, ttl=30)
            assert {lease.token for lease in again} == {"1|replica-a"}  # no epoch moved twice
            for node in redis_cluster.nodes:
                node.command(b"SCRIPT FLUSH")
            made = [
                policy.decide_floor(
                    targets.TargetSpec(ref=targets.parse_ref(name), kind=targets.TargetKind.KEDA, max=9),
                    policy.Signals(sessions=index % 3),
                    T0,
                    None,
                )
                for index, name in enumerate(names)
            ]
            fences = ["1|replica-a"] * len(names)
            fences[7] = "0|replica-b"
            saved = await store.save_decisions(list(zip(made, fences, strict=True)))
            assert saved == [index != 7 for index in range(len(names))]
            stored = await store.load_decisions(names)
            assert stored == [None if index == 7 else made[index] for index in range(len(names))]
            await store.leases.release_leases(held)
            after = await store.leases.claim_leases(names[:5], holder="replica-b", held={}, ttl=30)
            assert [lease.token for lease in after] == ["2|replica-b"] * 5  # released, taken over
            # events naming every target at once: a call per slot, in one pipeline
            accepted = await store.record_intents([intent(f"e-{name}", target=name) for name in names])
            assert (accepted.accepted, accepted.duplicates) == (len(names), 0)
            inputs = await store.decision_inputs(names, T0)
            assert [sessions.active for sessions, _ in inputs] == [1] * len(names)
    finally:
        await store.close()


async def check_batched_decisions(store: RedisStore, names: list[str], *, fence: str) -> None:
    """Batched reads agree with the one-target reads; a batched save refuses a stale fence alone."""
    inputs = await store.decision_inputs(names, T0)
    for name, (sessions, stored) in zip(names, inputs, strict=True):
        assert sessions == await store.count_sessions(name, T0)
        assert stored == await store.load_decision(name)
    assert await store.load_decisions(names) == [stored for _, stored in inputs]
    made = []
    for index, name in enumerate(names):
        namespace, _, short = name.partition("/")
        spec = targets.TargetSpec(ref=targets.TargetRef(namespace, short), kind=targets.TargetKind.KEDA, max=9)
        made.append(policy.decide_floor(spec, policy.Signals(sessions=index + 1), T0, None))
    fences = [fence] * len(names)
    fences[-1] = "0|someone-else"
    assert await store.save_decisions(list(zip(made, fences, strict=True))) == [True] * (len(names) - 1) + [False]
    assert await store.load_decisions(names) == made[:-1] + [stored for _, stored in inputs][-1:]
    # a decision the caller holds is not decoded again; the sessions are read all the same
    partly = await store.decision_inputs(names, T0, cached={names[0]})
    assert [stored for _, stored in partly] == [None, *made[1:-1], inputs[-1][1]]
    assert [sessions for sessions, _ in partly] == [sessions for sessions, _ in inputs]
    assert await store.decision_inputs([], T0) == [] and await store.save_decisions([]) == []


async def test_decisions_are_read_and_written_a_batch_per_round_trip(redis_server: RedisServer) -> None:
    store = build_store(redis_server.url)
    assert isinstance(store, RedisStore)
    names = [f"ml/model-{i}" for i in range(5)]
    other = build_store(redis_server.url)  # another replica on the same Redis
    heard: list[policy.FloorDecision] = []
    heard_by_other: list[policy.FloorDecision] = []
    store.add_decision_listener(heard.append)
    other.add_decision_listener(heard_by_other.append)
    raw = aioredis.Redis.from_url(redis_server.url)
    published = raw.pubsub(ignore_subscribe_messages=True)
    try:
        await published.subscribe("prewarm:decisions")
        await store.start()
        await other.start()
        await store.record_intents([intent(f"e{i}", target=name) for i, name in enumerate(names[:3])])
        leases = await store.leases.claim_leases(names, holder="replica-a", held={}, ttl=5)
        assert {lease.token for lease in leases} == {"1|replica-a"}
        await check_batched_decisions(store, names, fence="1|replica-a")
        # each stored decision is published: the other replica decodes it; the saving store told its
        # own listeners when it saved and skips the echo (each decision heard once, none refused)
        assert [d.target for d in heard] == names[:-1]
        await wait_for(lambda: len(heard_by_other) == len(names) - 1)
        assert heard_by_other == heard
        # the batch went out as one message, a decision per line, each naming its origin
        messages: list[dict[str, Any]] = []

        async def one_published() -> bool:
            message = await published.get_message(timeout=0.1)  # None also for the subscribe confirmation
            messages.extend([message] if message is not None else [])
            return bool(messages)

        await wait_for_async(one_published)
        [message] = messages
        assert len(message["data"].split(b"\n")) == len(names) - 1
        assert all(line.startswith(b'{"origin":"') for line in message["data"].split(b"\n"))
        await store.save_decision(heard[0], fence="1|replica-a")  # one at a time: the same
        await wait_for(lambda: len(heard_by_other) == len(names))
        assert heard == heard_by_other
        sessions = [s.active for s, _ in await store.decision_inputs(names, T0)]
        assert sessions == [1, 1, 1, 0, 0]
    finally:
        await published.aclose()
        await raw.aclose()
        await store.close()
        await other.close()


async def test_prewarm_serve_decides_on_a_cluster(redis_cluster: RedisCluster, tmp_path: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(
        "targets:\n"
        + "".join(f"  - {{name: {t}, kind: keda, max: 9, sessionsPerReplica: 1}}\n" for t in CLUSTER_TARGETS)
    )
    options = composition.ServeOptions(config=config, store=redis_cluster.url, http_host="127.0.0.1", http_port=0)
    events = [
        {
            "specversion": "1.0",
            "type": "dev.prewarm.session.opened",
            "source": "/cluster",
            "id": f"{t}-{i}",
            "data": {"target": t, "session": f"s{i}"},
        }
        for t in CLUSTER_TARGETS
        for i in range(2)
    ]
    async with (
        composition.run_service(options, clock=clock.SystemClock(), out=io.StringIO()) as service,
        aiohttp.ClientSession() as http,
    ):
        url = f"http://127.0.0.1:{service.http_port}"
        async with http.post(
            f"{url}/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"}
        ) as response:
            assert (response.status, await response.text()) == (202, "")
        await wait_for(
            lambda: all((d := service.decider.decisions.get(t)) is not None and d.floor == 2 for t in CLUSTER_TARGETS),
            within=10,
        )
        async with http.get(f"{url}/readyz") as response:
            assert response.status == 200
