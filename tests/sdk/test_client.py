"""The Python SDK against a live listener and real Redis; retries and drops with an injected sleep."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import RedisServer, wait_for

from prewarm import sdk
from prewarm.service import clock, composition, listener

CONFIG = "targets: [{name: ml/chat, kind: keda, max: 3, sessionsPerReplica: 1, hold: 0s}]\n"


class Ticks:
    """An injected sleep: retry delays are recorded and return at once (after `on_retry`);
    heartbeat waits return only when the test calls `beat()`."""

    def __init__(self, heartbeat_seconds: float) -> None:
        self.heartbeat_seconds = heartbeat_seconds
        self.delays: list[float] = []
        self.on_retry: list[object] = []
        self._beat = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        if seconds == self.heartbeat_seconds:
            await self._beat.wait()
            self._beat.clear()
            return
        self.delays.append(seconds)
        await asyncio.sleep(0)  # a real sleep always yields to the loop
        while self.on_retry:
            action = self.on_retry.pop(0)
            assert callable(action)
            action()

    def beat(self) -> None:
        self._beat.set()


@pytest.fixture
async def live(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[composition.RunningService]:
    config = tmp_path / "targets.yaml"
    config.write_text(CONFIG)
    options = composition.ServeOptions(
        config=config,
        store=redis_server.url,
        http_host="127.0.0.1",
        http_port=0,
        listener=listener.ListenerSettings(tokens=("t0ken",)),
    )
    async with composition.run_service(options, clock=clock.SystemClock(), out=io.StringIO()) as service:
        yield service


async def sessions(service: composition.RunningService) -> int:
    return int((await service.decider.describe())[0]["sessions"])


async def test_async_client_open_heartbeat_close_reach_the_state(live: composition.RunningService) -> None:
    ticks = Ticks(heartbeat_seconds=30)
    settings = sdk.SenderSettings(heartbeat_seconds=30)
    url = f"http://127.0.0.1:{live.http_port}"
    async with sdk.AsyncIntentClient(url, token="t0ken", settings=settings, sleep=ticks) as client:
        async with client.session("ml/chat"):
            await client.flush()
            assert await sessions(live) == 1
            await wait_for(lambda: live.decider.decisions["ml/chat"].floor == 1)
            ticks.beat()  # one heartbeat period passes
            await wait_for(lambda: client.stats.queued == 2)
            await client.flush()
            assert client.stats.sent == 2
        await client.flush()
    assert await sessions(live) == 0
    assert client.stats == sdk.SenderStats(queued=3, sent=3, attempts=client.stats.attempts)
    assert live.listener.counts["accepted"] == 3


async def test_batch_sessions_reach_the_state_as_batch(live: composition.RunningService) -> None:
    ticks = Ticks(heartbeat_seconds=30)
    settings = sdk.SenderSettings(heartbeat_seconds=30)
    url = f"http://127.0.0.1:{live.http_port}"
    async with sdk.AsyncIntentClient(url, token="t0ken", settings=settings, sleep=ticks) as client:
        async with client.session("ml/chat", priority="batch"), client.session("ml/chat", priority="batch"):
            ticks.beat()  # heartbeats carry the class the session was opened with
            await wait_for(lambda: client.stats.queued == 4)
            await client.flush()
            view = (await live.decider.describe())[0]
            assert (view["sessions"], view["batch_sessions"]) == (2, 2)
            # no batch allowance configured: two batch sessions raise no floor (two interactive ones: 2)
            decision = await live.decider.decide("ml/chat", datetime.now(UTC))
            assert (decision.floor, decision.reason) == (0, "min 0")
        await client.flush()
    assert (await live.decider.describe())[0]["batch_sessions"] == 0
    assert client.stats.sent == 6


def test_a_bad_priority_fails_in_the_callers_thread() -> None:
    with sdk.IntentClient("http://127.0.0.1:9") as client, pytest.raises(ValueError) as caught:
        client.open("ml/chat", priority="urgent")
    assert str(caught.value) == "priority 'urgent' is not one of ('interactive', 'batch')"
    assert client.stats.queued == 0


async def test_sync_client_is_a_context_manager(live: composition.RunningService) -> None:
    url = f"http://127.0.0.1:{live.http_port}"

    def use_client() -> sdk.SenderStats:
        with sdk.IntentClient(url, token="t0ken") as client, client.session("ml/chat"):
            client.flush(timeout=10)
            return client.stats

    stats = await asyncio.to_thread(use_client)
    assert stats.sent >= 1
    await wait_for(lambda: live.listener.counts["accepted"] == 2)  # opened, then closed at exit
    assert await sessions(live) == 0


async def test_503_is_retried_until_the_store_returns(
    live: composition.RunningService, redis_server: RedisServer
) -> None:
    ticks = Ticks(heartbeat_seconds=30)
    url = f"http://127.0.0.1:{live.http_port}"
    redis_server.stop()
    ticks.on_retry.append(redis_server.start)  # the store comes back during the first backoff
    settings = sdk.SenderSettings(heartbeat_seconds=30)
    async with sdk.AsyncIntentClient(url, token="t0ken", settings=settings, sleep=ticks) as client:
        client.open("ml/chat")
        await client.flush()
        assert client.stats.sent == 1
        assert client.stats.attempts == 2
    assert live.listener.counts["rejected.503"] == 1
    assert len(ticks.delays) == 1
    assert 0.1 <= ticks.delays[0] <= 0.2  # first backoff: 0.2 s with jitter in [0.5, 1)
    assert await sessions(live) == 1


@contextlib.asynccontextmanager
async def client_of(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> AsyncIterator[tuple[sdk.AsyncIntentClient, Ticks]]:
    """An AsyncIntentClient (heartbeats every 30 s of injected time) against a stub listener."""
    app = web.Application()
    app.router.add_post("/events", handler)
    async with TestServer(app) as server:
        ticks = Ticks(heartbeat_seconds=30)
        settings = sdk.SenderSettings(heartbeat_seconds=30)
        async with sdk.AsyncIntentClient(str(server.make_url("/")), settings=settings, sleep=ticks) as client:
            yield client, ticks


async def test_429_waits_for_retry_after() -> None:
    answers = [web.Response(status=429, headers={"Retry-After": "7"}), web.Response(status=202)]
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.read())
        return answers.pop(0)

    async with client_of(handler) as (client, ticks):
        client.open("ml/chat", session="s1")
        await client.flush()
    assert ticks.delays == [7.0]
    assert client.stats.sent == 1
    assert len(received) == 2 and received[0] == received[1]  # the same batch, retried as it was


async def test_4xx_is_dropped_without_retry() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=422, text="unknown target")

    async with client_of(handler) as (client, ticks):
        client.open("ml/nope")
        await client.flush()
    assert (client.stats.rejected, client.stats.attempts, ticks.delays) == (1, 1, [])


async def test_a_full_queue_drops_without_blocking() -> None:
    release = asyncio.Event()
    bodies: list[bytes] = []

    async def stuck(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        await release.wait()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/events", stuck)
    async with TestServer(app) as server:
        settings = sdk.SenderSettings(queue_size=2, heartbeat_seconds=30, request_timeout=30)
        ticks = Ticks(heartbeat_seconds=30)
        async with sdk.AsyncIntentClient(str(server.make_url("/")), settings=settings, sleep=ticks) as client:
            for i in range(100):  # synchronous calls: the sender cannot run in between
                client.open("ml/chat", session=f"s{i}")
            assert (client.stats.queued, client.stats.dropped) == (2, 98)
            await wait_for(lambda: len(bodies) == 1)  # the sender is now stuck on the server
            for i in range(100, 105):
                client.open("ml/chat", session=f"s{i}")
            assert (client.stats.queued, client.stats.dropped) == (4, 101)
            release.set()
            await client.flush()
    assert client.stats.sent == 4
