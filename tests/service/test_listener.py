"""The intent listener over real HTTP (aiohttp test client), with the cloudevents SDK as the sender."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
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

from prewarm.core import targets
from prewarm.service import clock, decider, listener, state

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
FORMAT = JSONFormat()
SPEC = targets.TargetSpec(
    ref=targets.TargetRef("ml", "chat"),
    kind=targets.TargetKind.KEDA,
    max=3,
    sessions_per_replica=2,
    session_ttl=timedelta(seconds=300),
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


def batch(*events: CloudEvent) -> tuple[dict[str, str], bytes]:
    body = b"[" + b",".join(FORMAT.write(e) for e in events) + b"]"
    return {"Content-Type": listener.BATCH}, body


class Harness:
    """A listener with a decider on one store and one manual clock, served by aiohttp's test server."""

    def __init__(self, store: state.Store, settings: listener.ListenerSettings, now: list[float]) -> None:
        self.store = store
        self.clock = clock.ManualClock(T0)
        self.decider = decider.Decider(target_specs=[SPEC], store=store, actuators=[], clock=self.clock)
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
    async for harness in start(Harness(state.MemoryStore(), settings, fake_time)):
        yield harness


@pytest.fixture
async def redis_backed(redis_server: RedisServer, fake_time: list[float]) -> AsyncIterator[Harness]:
    store = state.RedisStore.from_url(redis_server.url, timeout=0.5)
    harness = Harness(store, listener.ListenerSettings(burst=10_000, rate_per_second=10_000), fake_time)
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
            "min": 0,
            "max": 3,
            "forecast": None,  # forecast not enabled
        }
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
    ],
    ids=[
        "not-json",
        "missing-attributes",
        "empty-batch",
        "batch-not-object",
        "no-session",
        "bad-ttl",
        "no-target",
        "no-token",
        "wrong-token",
        "basic-auth",
        "too-large",
        "unsupported-type",
        "binary-not-json",
        "unknown-target",
        "unknown-type",
    ],
)
async def test_rejections(
    memory: Harness, message: tuple[dict[str, str], bytes], headers: dict[str, str], status: int, text: str
) -> None:
    response = await memory.post(message, **headers)
    assert response.status == status
    assert text in await response.text()
    assert await memory.sessions() == 0


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
    client = state.RedisStore.from_url(redis_server.url)
    try:
        stored = await client._client.zrange("prewarm:{ml/chat}:sessions", 0, -1)
    finally:
        await client.close()
    assert {m.decode() for m in stored} == set(acknowledged)


async def test_readyz_reports_an_unreachable_store(redis_backed: Harness, redis_server: RedisServer) -> None:
    redis_server.stop()
    assert redis_backed.client is not None
    assert (await redis_backed.client.get("/readyz")).status == 503
    assert (await redis_backed.client.get("/healthz")).status == 200
    redis_server.start()


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
                        ["type", "source", "id", "specversion", "data", "time", "subject", "target", "session", "ttl"]
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
