"""The intent listener over real HTTP (aiohttp test client), with the cloudevents SDK as the sender."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import RedisServer, wait_for

from prewarm.core import ledger, policy, targets
from prewarm.service import clock, decider, listener, target_registry
from prewarm.service.store import Intent, MemoryStore, RedisStore, Store, decode_decision, encode_decision

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
FORMAT = JSONFormat()
SPEC = targets.TargetSpec(
    ref=targets.TargetRef("ml", "chat"),
    kind=targets.TargetKind.KEDA,
    max=3,
    sessions_per_replica=2,
    session_ttl=timedelta(seconds=300),
    batch=targets.BatchAllowance(floor=1),
)
OPENED = "dev.prewarm.session.opened"
CLOSED = "dev.prewarm.session.closed"


def cloudevent(
    event_id: str, *, type: str = OPENED, target: str = "ml/chat", session: str = "s1", **data: Any
) -> CloudEvent:
    return CloudEvent(
        {"type": type, "source": "/web/chat", "id": event_id, "time": T0},
        {"target": target, "session": session, **data},
    )


def binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    message = ce_http.to_binary(event, FORMAT)
    return {**message.headers, "Content-Type": "application/json"}, message.body


def structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    message = ce_http.to_structured(event, FORMAT)
    return message.headers, message.body


def raw_event(**fields: Any) -> tuple[dict[str, str], bytes]:
    """A structured-mode event written by hand (json.dumps escapes lone surrogates as \\ud800, as a
    browser's JSON.stringify does), for what the SDK would refuse to build; data fields go in data."""
    attributes = {"specversion": "1.0", "type": OPENED, "source": "/web/chat", "id": "e1"}
    data: dict[str, Any] = {"target": "ml/chat", "session": "s1"}
    for key, value in fields.items():
        (attributes if key in ("specversion", "type", "source", "id", "time") else data)[key] = value
    return {"Content-Type": listener.STRUCTURED}, json.dumps({**attributes, "data": data}).encode()


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def batch(*events: CloudEvent) -> tuple[dict[str, str], bytes]:
    body = b"[" + b",".join(FORMAT.write(e) for e in events) + b"]"
    return {"Content-Type": listener.BATCH}, body


class Harness:
    """A listener with a decider on one store and one manual clock, served by aiohttp's test server."""

    def __init__(self, store: Store, settings: listener.ListenerSettings, now: list[float]) -> None:
        self.store = store
        self.clock = clock.ManualClock(T0)
        self.decider = decider.Decider(registry=target_registry.TargetRegistry([SPEC]), store=store, clock=self.clock)
        self.listener = listener.IntentListener(
            specs=self.decider.specs,
            store=store,
            clock=self.clock,
            settings=settings,
            targets_view=self.decider.describe,
            monotonic=lambda: now[0],
        )
        self.client: TestClient[web.Request, web.Application] | None = None

    async def post(self, message: tuple[dict[str, str], bytes], *, path: str = "/", **headers: str) -> Any:
        assert self.client is not None
        return await self.client.post(path, data=message[1], headers={**message[0], **headers})

    async def sessions(self) -> int:
        return (await self.store.count_sessions("ml/chat", T0)).active


async def start(harness: Harness) -> AsyncIterator[Harness]:
    harness.client = TestClient(TestServer(listener.build_app(harness.listener)))
    await harness.client.start_server()
    try:
        yield harness
    finally:
        await harness.client.close()


@pytest.fixture
def fake_time() -> list[float]:
    return [1000.0]


@pytest.fixture
async def memory(fake_time: list[float]) -> AsyncIterator[Harness]:
    settings = listener.ListenerSettings(
        tokens=("s3cret",), cors_origins=("https://chat.example",), rate_per_second=1, burst=5
    )
    async for harness in start(Harness(MemoryStore(), settings, fake_time)):
        yield harness


@pytest.fixture
async def redis_backed(redis_server: RedisServer, fake_time: list[float]) -> AsyncIterator[Harness]:
    store = RedisStore.from_url(redis_server.url, timeout=0.5)
    settings = listener.ListenerSettings(burst=10_000, rate_per_second=10_000, store_timeout=2.0)
    harness = Harness(store, settings, fake_time)
    await store.start()  # after the decider has added its change listener
    try:
        async for started in start(harness):
            yield started
    finally:
        await store.close()


AUTH = {"Authorization": "Bearer s3cret"}


@pytest.mark.parametrize("mode", [binary, structured], ids=["binary", "structured"])
@pytest.mark.parametrize("path", ["/", "/events"])
async def test_single_event_is_stored_then_acknowledged(memory: Harness, mode: Any, path: str) -> None:
    response = await memory.post(mode(cloudevent("e1")), path=path, **AUTH)
    assert response.status == 202
    assert await response.read() == b""
    assert await memory.sessions() == 1


async def test_batch_is_stored_whole(memory: Harness) -> None:
    response = await memory.post(batch(cloudevent("e1", session="a"), cloudevent("e2", session="b")), **AUTH)
    assert response.status == 202
    assert await memory.sessions() == 2


async def test_batch_with_one_bad_event_stores_nothing(memory: Harness) -> None:
    response = await memory.post(batch(cloudevent("e1", session="a"), cloudevent("e2", target="ml/unknown")), **AUTH)
    assert response.status == 422
    assert "unknown target 'ml/unknown'" in await response.text()
    assert await memory.sessions() == 0


async def test_duplicates_are_acknowledged_and_stored_once(memory: Harness) -> None:
    for _ in range(3):
        assert (await memory.post(structured(cloudevent("e1")), **AUTH)).status == 202
    # a different id with the same session is a new delivery, but the same session
    assert (await memory.post(structured(cloudevent("e2", type=CLOSED)), **AUTH)).status == 202
    assert (await memory.post(structured(cloudevent("e1")), **AUTH)).status == 202  # replayed opened: still closed
    assert memory.listener.counts["accepted"] == 2
    assert memory.listener.counts["duplicate"] == 3
    assert await memory.sessions() == 0


async def test_subject_names_the_target_and_ttl_is_capped(memory: Harness) -> None:
    event = CloudEvent(
        {"type": OPENED, "source": "/web", "id": "e1", "subject": "ml/chat", "time": T0},
        {"session": "s1", "ttl": 100_000},
    )
    assert (await memory.post(structured(event), **AUTH)).status == 202
    count = await memory.store.count_sessions("ml/chat", T0)
    assert count.next_expiry == T0 + SPEC.session_ttl


async def test_accepted_event_re_decides_the_target_at_once(memory: Harness) -> None:
    import asyncio

    task = asyncio.create_task(memory.decider.run())
    try:
        await wait_for(lambda: "ml/chat" in memory.decider.decisions)
        await memory.post(batch(*(cloudevent(f"e{i}", session=f"s{i}") for i in range(3))), **AUTH)
        await wait_for(lambda: memory.decider.decisions["ml/chat"].floor == 2)
        assert memory.client is not None
        view = await (await memory.client.get("/targets")).json()
        assert view["targets"][0] | {"reason": None, "decided_at": None} == {
            "target": "ml/chat",
            "kind": "keda",
            "floor": 2,
            "source": "intent",
            "reason": None,
            "decided_at": None,
            "next_change": "2026-05-01T12:05:00+00:00",
            "sessions": 3,
            "batch_sessions": 0,
            "min": 0,
            "max": 3,
            "forecast": None,  # forecast not enabled
        }
    finally:
        task.cancel()


@pytest.fixture(params=["memory", "redis_backed"])
def either_store(request: pytest.FixtureRequest) -> Harness:
    harness: Harness = request.getfixturevalue(request.param)
    return harness


async def test_priority_classes_are_counted_apart_and_batch_is_capped(either_store: Harness) -> None:
    import asyncio

    h = either_store
    headers = AUTH if isinstance(h.store, MemoryStore) else {}
    task = asyncio.create_task(h.decider.run())
    try:
        flood = [cloudevent(f"b{i}", session=f"job-{i}", priority="batch") for i in range(6)]
        assert (await h.post(batch(*flood), **headers)).status == 202
        count = await h.store.count_sessions("ml/chat", T0)
        assert (count.active, count.batch) == (6, 6)
        # batch sessions are not arrivals: the forecaster learns interactive demand only
        assert await h.store.arrivals("ml/chat", T0 - timedelta(minutes=1), T0 + timedelta(minutes=1)) == {}
        await wait_for(lambda: h.decider.decisions.get("ml/chat") is not None and h.decider.decisions["ml/chat"].floor)
        decision = h.decider.decisions["ml/chat"]
        assert (decision.floor, decision.source.value) == (1, "batch")  # six batch sessions, batch floor 1
        assert decision.reason == "batch 1 (6 batch sessions / 2 per replica, batch floor 1)"

        chats = [cloudevent(f"i{i}", session=f"chat-{i}", priority="interactive") for i in range(2)]
        chats.append(cloudevent("i2", session="chat-2"))  # no priority: interactive
        assert (await h.post(batch(*chats), **headers)).status == 202
        await wait_for(lambda: h.decider.decisions["ml/chat"].floor == 2)
        assert h.decider.decisions["ml/chat"].reason == "intent 2 (3 interactive sessions / 2 per replica)"
        assert await h.store.arrivals("ml/chat", T0 - timedelta(minutes=1), T0 + timedelta(minutes=1)) == {T0: 3}

        # a heartbeat without the class keeps a batch session batch; a closed without it ends it
        beat = cloudevent("h0", type="dev.prewarm.session.heartbeat", session="job-0")
        end = cloudevent("c1", type=CLOSED, session="job-1")
        assert (await h.post(batch(beat, end), **headers)).status == 202
        count = await h.store.count_sessions("ml/chat", T0)
        assert (count.active, count.batch) == (8, 5)
        assert h.client is not None
        view = (await (await h.client.get("/targets", headers=headers)).json())["targets"][0]
        assert (view["sessions"], view["batch_sessions"], view["floor"]) == (8, 5, 2)
    finally:
        task.cancel()


# --- every response code ---


@pytest.mark.parametrize(
    ("message", "headers", "status", "text"),
    [
        ((({"Content-Type": listener.STRUCTURED}), b"{not json"), AUTH, 400, "malformed CloudEvent"),
        (({"Content-Type": listener.STRUCTURED}, b'{"type": "x"}'), AUTH, 400, "malformed CloudEvent"),
        (({"Content-Type": listener.BATCH}, b"[]"), AUTH, 400, "non-empty JSON array"),
        (({"Content-Type": listener.BATCH}, b"[1]"), AUTH, 400, "batch[0] is not a JSON object"),
        (structured(cloudevent("e1", session="")), AUTH, 400, "data.session must be a string"),
        (structured(cloudevent("e1", ttl="long")), AUTH, 400, "data.ttl 'long' is not a number"),
        (
            structured(cloudevent("e1", priority="urgent")),
            AUTH,
            400,
            "event 'e1': data.priority 'urgent' is not one of ['interactive', 'batch']",
        ),
        (
            structured(cloudevent("e1", priority=1)),
            AUTH,
            400,
            "event 'e1': data.priority 1 is not one of ['interactive', 'batch']",
        ),
        (structured(cloudevent("e1", target="")), AUTH, 400, "data.target (or subject) is required"),
        (structured(cloudevent("e1")), {}, 401, "a bearer token is required"),
        (structured(cloudevent("e1")), {"Authorization": "Bearer wrong"}, 401, "wrong bearer token"),
        (structured(cloudevent("e1")), {"Authorization": "Basic czNjcmV0"}, 401, "unsupported Authorization"),
        (({"Content-Type": listener.STRUCTURED}, b"x" * (64 * 1024 + 1)), AUTH, 413, "body over 65536 bytes"),
        (({"Content-Type": "text/plain"}, b"hello"), AUTH, 415, "unsupported content type 'text/plain'"),
        (
            (
                {
                    "Content-Type": "text/xml",
                    "ce-id": "1",
                    "ce-source": "/s",
                    "ce-type": OPENED,
                    "ce-specversion": "1.0",
                },
                b"<x/>",
            ),
            AUTH,
            415,
            "binary-mode data must be application/json",
        ),
        (structured(cloudevent("e1", target="ml/other")), AUTH, 422, "unknown target 'ml/other'"),
        (structured(cloudevent("e1", type="dev.prewarm.session.paused")), AUTH, 422, "unknown event type"),
        # poison: what once failed inside the store's script (or its encoding) and hung the group
        (
            raw_event(time="1969-12-31T23:59:59Z"),
            AUTH,
            400,
            "time 1969-12-31T23:59:59+00:00 is more than 24 h before its receipt",
        ),
        (raw_event(time="2026-04-30T11:59:59Z"), AUTH, 400, "is more than 24 h before its receipt"),
        (raw_event(time="0001-01-01T00:00:00+01:00"), AUTH, 400, "time is out of range"),
        (raw_event(session="\ud800"), AUTH, 400, "data.session must be a string of 1-128 characters (valid Unicode)"),
        (raw_event(source="/\udfff"), AUTH, 400, "source and id must be valid Unicode"),
        (raw_event(id="e\ud800"), AUTH, 400, "source and id must be valid Unicode"),
        (raw_event(ttl=1e308), AUTH, 400, "data.ttl 1e+308 is not between 0.001 and 604800"),
        (raw_event(ttl=10**400), AUTH, 400, "is not between 0.001 and 604800"),
        (raw_event(ttl=1e-300), AUTH, 400, "data.ttl 1e-300 is not between 0.001 and 604800"),
        (raw_event(ttl=float("inf")), AUTH, 400, "data.ttl inf is not a number of seconds"),
        (raw_event(ttl=True), AUTH, 400, "data.ttl True is not a number of seconds"),
        (({"Content-Type": listener.STRUCTURED}, b"[" * 5000), AUTH, 400, "nested more than 32 levels"),
        (({"Content-Type": listener.BATCH}, b"[" * 5000 + b"]" * 5000), AUTH, 400, "nested more than 32 levels"),
        (raw_event(extra=nested(40)), AUTH, 400, "data nests more than 32 levels"),
        (
            ({"Content-Type": listener.BATCH}, b"[" + raw_event(extra=nested(60))[1] + b"]"),
            AUTH,
            400,
            "batch[0] nests more than 32 levels",
        ),
    ],
    ids=[
        "not-json",
        "missing-attributes",
        "empty-batch",
        "batch-not-object",
        "no-session",
        "bad-ttl",
        "bad-priority",
        "priority-not-a-string",
        "no-target",
        "no-token",
        "wrong-token",
        "basic-auth",
        "too-large",
        "unsupported-type",
        "binary-not-json",
        "unknown-target",
        "unknown-type",
        "time-before-1970",
        "time-older-than-dedup",
        "time-out-of-range",
        "session-lone-surrogate",
        "source-lone-surrogate",
        "id-lone-surrogate",
        "ttl-1e308",
        "ttl-huge-int",
        "ttl-tiny",
        "ttl-inf",
        "ttl-bool",
        "nested-5000",
        "nested-batch-5000",
        "nested-data",
        "nested-batch-item",
    ],
)
async def test_rejections(
    memory: Harness, message: tuple[dict[str, str], bytes], headers: dict[str, str], status: int, text: str
) -> None:
    response = await memory.post(message, **headers)
    assert response.status == status
    assert text in await response.text()
    assert await memory.sessions() == 0


@pytest.mark.parametrize("path", ["/events", "/beacon"])
async def test_deeply_nested_bodies_are_refused_on_every_endpoint(memory: Harness, path: str) -> None:
    content_type = "text/plain" if path == "/beacon" else listener.STRUCTURED
    for body in (b"[" * 5000, b'{"a":' * 5000, b'{"data": ' * 3000):
        response = await memory.post(({"Content-Type": content_type}, body), path=path, **AUTH)
        assert response.status == 400
        assert "nested more than 32 levels" in await response.text()


async def test_a_ttl_within_bounds_is_capped_by_the_target(memory: Harness) -> None:
    assert (await memory.post(raw_event(ttl=604800), **AUTH)).status == 202
    count = await memory.store.count_sessions("ml/chat", T0)
    assert count.next_expiry == T0 + SPEC.session_ttl


async def test_rate_limit_answers_429_with_retry_after(memory: Harness, fake_time: list[float]) -> None:
    for i in range(5):
        assert (await memory.post(structured(cloudevent(f"e{i}", session=f"s{i}")), **AUTH)).status == 202
    limited = await memory.post(structured(cloudevent("e5", session="s5")), **AUTH)
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "1"
    fake_time[0] += 1.0  # one token refills per second
    assert (await memory.post(structured(cloudevent("e5", session="s5")), **AUTH)).status == 202
    assert await memory.sessions() == 6


async def test_browser_origin_on_the_allowlist_needs_no_token(memory: Harness) -> None:
    origin = {"Origin": "https://chat.example"}
    response = await memory.post(structured(cloudevent("e1")), **origin)
    assert response.status == 202
    assert response.headers["Access-Control-Allow-Origin"] == "https://chat.example"
    assert memory.client is not None
    preflight = await memory.client.options("/events", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    other = await memory.client.options("/events", headers={"Origin": "https://evil.example"})
    assert other.status == 403
    denied = await memory.post(structured(cloudevent("e2")), Origin="https://evil.example")
    assert denied.status == 401
    assert "Access-Control-Allow-Origin" not in denied.headers


async def test_health_endpoints(memory: Harness) -> None:
    assert memory.client is not None
    assert (await memory.client.get("/healthz")).status == 200
    assert (await memory.client.get("/readyz")).status == 200


# --- Redis: durability, faults, dedup across the wire ---


async def test_redis_store_counts_sessions_and_arrivals(redis_backed: Harness) -> None:
    events = [cloudevent(f"e{i}", session=f"s{i}") for i in range(4)] + [cloudevent("c1", type=CLOSED, session="s0")]
    assert (await redis_backed.post(batch(*events))).status == 202
    assert (await redis_backed.post(batch(*events))).status == 202  # redelivery: all duplicates
    assert await redis_backed.sessions() == 3
    arrivals = await redis_backed.store.arrivals("ml/chat", T0 - timedelta(minutes=1), T0 + timedelta(minutes=1))
    assert arrivals == {T0: 4}
    # a closed that arrives before its opened wins
    assert (await redis_backed.post(structured(cloudevent("c9", type=CLOSED, session="late")))).status == 202
    assert (await redis_backed.post(structured(cloudevent("o9", session="late")))).status == 202
    assert await redis_backed.sessions() == 3


async def test_redis_outage_answers_503_and_loses_nothing_acknowledged(
    redis_backed: Harness, redis_server: RedisServer
) -> None:
    acknowledged: list[str] = []
    statuses: list[int] = []
    for i in range(60):
        if i == 20:
            redis_server.stop()
        if i == 40:
            redis_server.start()
        session = f"s{i}"
        response = await redis_backed.post(structured(cloudevent(f"e{i}", session=session)))
        statuses.append(response.status)
        if response.status == 202:
            acknowledged.append(session)
        else:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
    assert set(statuses[20:40]) == {503}  # never a 202 while the store is down
    assert statuses[:20] == [202] * 20
    assert 202 in statuses[40:]
    assert redis_backed.client is not None
    assert (await redis_backed.client.get("/readyz")).status == 200
    client = RedisStore.from_url(redis_server.url)
    try:
        stored = await client._client.zrange("prewarm:{ml/chat}:sessions", 0, -1)
    finally:
        await client.close()
    assert {m.decode() for m in stored} == set(acknowledged)


async def test_poison_events_get_4xx_while_50_concurrent_valid_events_are_stored(redis_backed: Harness) -> None:
    """The reproducer: a time before 1970 or a lone surrogate once failed the store's script (or
    its encoding) for the whole group commit, and every request in the group hung."""
    valid = [structured(cloudevent(f"v{i}", session=f"s{i}")) for i in range(50)]
    poison = [
        raw_event(id="p1", time="1969-12-31T23:59:59Z"),
        raw_event(id="p2", session="\ud800"),
        raw_event(id="p3", ttl=1e308),
        ({"Content-Type": listener.STRUCTURED}, b"[" * 5000),
        (
            {"Content-Type": listener.BATCH},
            b"[" + raw_event(id="p5", session="ok")[1] + b"," + raw_event(id="p6", source="\udc00")[1] + b"]",
        ),
    ]
    messages = valid[:25] + poison + valid[25:]

    async def status(message: tuple[dict[str, str], bytes]) -> int:
        async with asyncio.timeout(5):
            return int((await redis_backed.post(message)).status)

    statuses = await asyncio.gather(*(status(m) for m in messages))
    assert statuses[25:30] == [400] * 5
    assert statuses[:25] + statuses[30:] == [202] * 50
    assert await redis_backed.sessions() == 50


async def test_a_frozen_store_is_answered_503_within_the_bound(
    redis_backed: Harness, redis_server: RedisServer
) -> None:
    assert redis_backed.client is not None
    redis_server.freeze()  # the server accepts nothing and answers nothing
    try:
        async with asyncio.timeout(3):  # the listener's bound is 2 s (store_timeout)
            sent = await redis_backed.post(structured(cloudevent("e1")))
        async with asyncio.timeout(3):
            ready = await redis_backed.client.get("/readyz")
        assert (sent.status, sent.headers["Retry-After"]) == (503, "1")
        assert ready.status == 503
    finally:
        redis_server.thaw()
    async with asyncio.timeout(5):
        assert (await redis_backed.post(structured(cloudevent("e1")))).status == 202


async def test_a_server_demoted_to_replica_is_not_ready_and_answers_503(
    redis_backed: Harness, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Pointed at a master that a failover demoted: READONLY is a 503 and /readyz says so, never a
    hang and never 200."""
    assert redis_backed.client is not None
    new_master = RedisServer(tmp_path / "new-master")
    new_master.start()
    try:
        assert redis_server.command(f"REPLICAOF 127.0.0.1 {new_master.port}".encode()).startswith(b"+OK")
        async with asyncio.timeout(5):
            sent = await redis_backed.post(structured(cloudevent("e1")))
            ready = await redis_backed.client.get("/readyz")
        assert sent.status == 503
        assert ready.status == 503
        assert "refuses writes (READONLY)" in await ready.text()
        assert redis_server.command(b"REPLICAOF NO ONE").startswith(b"+OK")
        async with asyncio.timeout(5):
            assert (await redis_backed.post(structured(cloudevent("e1")))).status == 202
            assert (await redis_backed.client.get("/readyz")).status == 200
    finally:
        new_master.stop()


async def test_readyz_reports_an_unreachable_store(redis_backed: Harness, redis_server: RedisServer) -> None:
    redis_server.stop()
    assert redis_backed.client is not None
    assert (await redis_backed.client.get("/readyz")).status == 503
    assert (await redis_backed.client.get("/healthz")).status == 200
    redis_server.start()


async def test_redis_batch_flood_never_evicts_interactive_sessions(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, sessions_per_target=3)
    dropped: list[tuple[str, int]] = []
    store.add_dropped_listener(lambda target, count: dropped.append((target, count)))
    try:

        def intent(i: int, session: str, priority: ledger.Priority) -> Intent:
            event = ledger.SessionEvent(ledger.SessionEventType.OPENED, session, T0, timedelta(seconds=300), priority)
            return Intent("ml/chat", "/test", f"e{i}", event)

        chats = [intent(i, f"chat-{i}", ledger.Priority.INTERACTIVE) for i in range(2)]
        jobs = [intent(10 + i, f"job-{i}", ledger.Priority.BATCH) for i in range(20)]
        assert (await store.record_intents([*chats, *jobs])).accepted == 22
        count = await store.count_sessions("ml/chat", T0)
        assert (count.active, count.batch) == (5, 3)  # each class capped on its own
        assert dropped == [("ml/chat", 17)]  # one write, one report per target
    finally:
        await store.close()


def test_a_decision_stored_before_batch_accounting_still_decodes() -> None:
    decision = policy.decide_floor(SPEC, policy.Signals(sessions=2), T0, None)
    raw = json.loads(encode_decision(decision))
    del raw["batch_replicas"], raw["batch_used"]
    assert decode_decision(json.dumps(raw)) == decision
    flooded = policy.decide_floor(SPEC, policy.Signals(batch_sessions=9), T0, None)
    assert decode_decision(encode_decision(flooded)).batch_replicas == 1


# --- fuzzing: never a 500, never an unhandled exception ---

header_names = st.sampled_from(
    [
        "Content-Type",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-specversion",
        "ce-time",
        "ce-subject",
        "Authorization",
        "Origin",
    ]
)
header_values = st.one_of(
    st.sampled_from([listener.STRUCTURED, listener.BATCH, "application/json", OPENED, "1.0", "Bearer s3cret", "0.3"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda v: json.dumps(v).encode(),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "type",
                            "source",
                            "id",
                            "specversion",
                            "data",
                            "time",
                            "subject",
                            "target",
                            "session",
                            "ttl",
                            "priority",
                        ]
                    ),
                    children,
                    max_size=6,
                )
            ),
            max_leaves=12,
        ),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.dictionaries(header_names, header_values, max_size=7), body=bodies)
async def test_fuzzed_requests_never_fail_the_server(
    memory: Harness, caplog: pytest.LogCaptureFixture, headers: dict[str, str], body: bytes
) -> None:
    with caplog.at_level(logging.ERROR):
        assert memory.client is not None
        response = await memory.client.post("/events", data=body, headers=headers)
        assert response.status in {202, 400, 401, 413, 415, 422, 429}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# Near-valid events whose every field may be poison: lone surrogates and control characters,
# times before 1970 or at the ends of the calendar, ttls from 1e-300 to 10**400, deep data.
any_text = st.text(st.characters(categories=["Cs", "Cc", "Lu", "Ll", "Nd", "Po", "So", "Zs"]), max_size=140)
fuzz_times = st.one_of(
    st.sampled_from(
        [
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-05-01T11:59:59.999Z",
            "2026-04-30T12:00:01Z",
            "2026-05-01T12:00:00",
            "yesterday",
            "",
        ]
    ),
    st.datetimes(timezones=st.sampled_from([UTC, None])).map(lambda d: d.isoformat()),
)
fuzz_ttls = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, 1e-300, 0.001, 604800, 604801, True, "60", None, [60]]),
)
deep = st.integers(min_value=0, max_value=3000).map(nested)


def mostly(valid: Any, poison: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` three times in four, else something from `poison`: most requests reach the store."""
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), poison)


fuzz_data = st.fixed_dictionaries(
    {
        "target": mostly("ml/chat", st.sampled_from(["ml/other", "", "ml/chat\x00"])),
        "session": st.one_of(st.uuids().map(str), st.uuids().map(str), any_text, st.just("\ud800")),
    },
    optional={
        "ttl": fuzz_ttls,
        "pod": any_text,
        "phase": st.sampled_from(["scheduled", "started", "ready", "x"]),
        "extra": st.one_of(deep, st.recursive(st.integers(), lambda c: st.lists(c, max_size=3), max_leaves=10)),
    },
)
fuzz_events = st.fixed_dictionaries(
    {
        "specversion": mostly("1.0", st.sampled_from(["0.3", "2", ""])),
        "type": mostly(
            OPENED, st.sampled_from([CLOSED, "dev.prewarm.session.heartbeat", listener.POD_PHASE_TYPE, "x"])
        ),
        "source": mostly("/web", any_text),
        "id": st.one_of(st.uuids().map(str), st.uuids().map(str), any_text),
        "data": mostly({"target": "ml/chat", "session": "s1"}, fuzz_data),
    },
    optional={"time": fuzz_times, "subject": st.sampled_from(["ml/chat", "x/y"])},
)


def encode_json(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()  # ensure_ascii: lone surrogates travel as \\ud800 escapes
    except (ValueError, RecursionError):
        return b"[" * 4000


@st.composite
def fuzz_requests(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes]:
    """(path, headers, body) in binary, structured, batch or beacon mode, in several encodings."""
    mode = draw(st.sampled_from(["structured", "batch", "binary", "beacon", "beacon-batch"]))
    events = draw(st.lists(fuzz_events, min_size=1, max_size=4))
    charset = draw(st.sampled_from(["", "", "; charset=utf-8", "; charset=latin-1", "; charset=utf-16"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8", "utf-16", "latin-1"]))
    headers: dict[str, str] = {}
    if mode == "binary":
        event = events[0]
        for key in ("specversion", "type", "source", "id", "time", "subject"):
            if key in event:
                escaped = str(event[key]).encode("ascii", "backslashreplace").decode()
                headers[f"ce-{key}"] = "".join(c for c in escaped if " " <= c <= "~")[:200]  # what HTTP carries
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/json", ""])) + charset
        text = encode_json(event.get("data")).decode()
    else:
        payload = events if mode in ("batch", "beacon-batch") else events[0]
        text = encode_json(payload).decode()
        kinds = {"structured": listener.STRUCTURED, "batch": listener.BATCH}
        headers["Content-Type"] = kinds.get(mode, "text/plain") + charset
    body = text.encode(encoding, "surrogatepass" if encoding != "latin-1" else "backslashreplace")
    if draw(st.integers(min_value=0, max_value=9)) == 0:  # now and then, a body cut short
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    path = "/beacon" if mode.startswith("beacon") else draw(st.sampled_from(["/", "/events"]))
    return path, headers, body


async def fuzz_once(harness: Harness, request: tuple[str, dict[str, str], bytes], **auth: str) -> int:
    assert harness.client is not None
    path, headers, body = request
    async with asyncio.timeout(5):  # no hang
        response = await harness.client.post(path, data=body, headers={**headers, **auth})
        await response.read()
    return int(response.status)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=fuzz_requests())
async def test_fuzzed_events_never_fail_the_memory_store(
    memory: Harness, fake_time: list[float], caplog: pytest.LogCaptureFixture, request: Any
) -> None:
    fake_time[0] += 10.0  # refill the token bucket: these events should reach the store
    with caplog.at_level(logging.ERROR):
        assert await fuzz_once(memory, request, **AUTH) in {202, 400, 413, 415, 422}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=fuzz_requests())
async def test_fuzzed_events_never_fail_the_redis_store(
    redis_backed: Harness, caplog: pytest.LogCaptureFixture, request: Any
) -> None:
    with caplog.at_level(logging.ERROR):
        assert await fuzz_once(redis_backed, request) in {202, 400, 413, 415, 422}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- the browser SDK and beacons ---


async def test_browser_sdk_is_served_with_caching_headers(memory: Harness) -> None:
    assert memory.client is not None
    response = await memory.client.get("/sdk/prewarm.js")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    body = await response.read()
    assert b"export function open" in body
    etag = response.headers["ETag"]
    again = await memory.client.get("/sdk/prewarm.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""


async def test_beacons_are_text_plain_structured_events(memory: Harness) -> None:
    headers, body = structured(cloudevent("e1"))
    beacon = ({"Content-Type": "text/plain;charset=UTF-8"}, body)
    assert (await memory.post(beacon, path="/beacon", Origin="https://chat.example")).status == 202
    assert await memory.sessions() == 1
    closing = ({"Content-Type": "text/plain;charset=UTF-8"}, structured(cloudevent("e2", type=CLOSED))[1])
    assert (await memory.post(closing, path="/beacon", Origin="https://chat.example")).status == 202
    assert await memory.sessions() == 0
    # the text/plain exception is for /beacon alone, and /beacon takes nothing else
    assert (await memory.post(beacon, path="/events", **AUTH)).status == 415
    assert (await memory.post((headers, body), path="/beacon", **AUTH)).status == 415
