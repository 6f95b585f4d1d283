"""Python SDK: emit intent events to a kube-prewarm listener without slowing the application.

    client = IntentClient("http://prewarm.prewarm:8080", token="...")
    with client.session("llm/chat-8b"):      # opened now, heartbeats while inside, closed at exit
        ...
    with client.session("llm/chat-8b", priority="batch"):  # a batch job: raises floors only up to
        ...                                                 # the target's batch allowance
    client.close()

    async with AsyncIntentClient(url) as client:
        async with client.session("llm/chat-8b"):
            ...

Calls only put events on a bounded in-memory queue (they never wait on the network); a sender
task posts them, several at a time as a CloudEvents batch. 429 and 5xx answers and connection
errors are retried with backoff (429 honours Retry-After); other 4xx answers drop the batch. When
the queue is full, new events are dropped and counted in `dropped` instead of growing memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import random
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

BATCH = "application/cloudevents-batch+json"
TYPE_PREFIX = "dev.prewarm.session."
PHASE_TYPE = "dev.prewarm.pod.phase"
POD_PHASES = ("container_started", "cache_restored", "weights_loaded", "runtime_ready", "first_token")
PRIORITIES = ("interactive", "batch")
Sleep = Callable[[float], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class SenderSettings:
    """How the sender behaves; the defaults suit a web backend."""

    queue_size: int = 1000
    batch_size: int = 100
    heartbeat_seconds: float = 60.0
    request_timeout: float = 2.0
    max_attempts: int = 6
    backoff_seconds: float = 0.2  # doubled per attempt, with jitter, capped at 10 s
    source: str = "prewarm-sdk/python"


@dataclasses.dataclass(slots=True)
class SenderStats:
    """What happened to the events handed to the client."""

    queued: int = 0
    sent: int = 0
    dropped: int = 0  # the queue was full
    rejected: int = 0  # the listener answered 4xx other than 429
    failed: int = 0  # retries exhausted
    attempts: int = 0


class _Sender:
    """The asyncio core shared by both clients. Runs on one event loop."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        settings: SenderSettings,
        sleep: Sleep,
        rng: random.Random,
    ) -> None:
        self._url = url.rstrip("/") + "/events"
        self._headers = {"Content-Type": BATCH}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._settings = settings
        self._sleep = sleep
        self._rng = rng
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sessions: dict[str, tuple[str, str | None]] = {}  # session id -> (target, priority)
        self._ids = itertools.count(1)
        self._run_id = secrets.token_hex(8)
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = SenderStats()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._send_forever()), asyncio.create_task(self._beat_forever())]

    def offer(
        self, kind: str, target: str, session: str, ttl: float | None = None, priority: str | None = None
    ) -> None:
        """Queue one session event, or drop and count it when the queue is full. Never blocks.

        Heartbeats and `closed` carry the priority the session was opened with.
        """
        if priority is None and session in self._sessions:
            priority = self._sessions[session][1]
        data: dict[str, Any] = {"target": target, "session": session}
        if ttl is not None:
            data["ttl"] = ttl
        if priority is not None:
            data["priority"] = priority
        if self._enqueue(TYPE_PREFIX + kind, data):
            if kind == "opened":
                self._sessions[session] = (target, priority)
            elif kind == "closed":
                self._sessions.pop(session, None)

    def offer_phase(self, target: str, pod: str, phase: str) -> None:
        """Queue a dev.prewarm.pod.phase event (a model server reporting its start)."""
        self._enqueue(PHASE_TYPE, {"target": target, "pod": pod, "phase": phase})

    def _enqueue(self, event_type: str, data: dict[str, Any]) -> bool:
        if len(self._queue) >= self._settings.queue_size:
            self.stats.dropped += 1
            return False
        self._queue.append(
            {
                "specversion": "1.0",
                "type": event_type,
                "source": self._settings.source,
                "id": f"{self._run_id}-{next(self._ids)}",
                "time": datetime.now(UTC).isoformat(),
                "datacontenttype": "application/json",
                "data": data,
            }
        )
        self.stats.queued += 1
        self._idle.clear()
        self._ready.set()
        return True

    async def flush(self) -> None:
        """Return once every queued event was sent, rejected or given up on."""
        await self._idle.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat_forever(self) -> None:
        while True:
            await self._sleep(self._settings.heartbeat_seconds)
            for session, (target, _) in list(self._sessions.items()):
                self.offer("heartbeat", target, session)

    async def _send_forever(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._settings.request_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                if not self._queue:
                    self._idle.set()
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                count = min(len(self._queue), self._settings.batch_size)
                batch = [self._queue.popleft() for _ in range(count)]
                await self._deliver(http, batch)

    async def _deliver(self, http: aiohttp.ClientSession, batch: list[dict[str, Any]]) -> None:
        body = json.dumps(batch, separators=(",", ":")).encode()
        for attempt in range(1, self._settings.max_attempts + 1):
            self.stats.attempts += 1
            retry_after: float | None = None
            try:
                async with http.post(self._url, data=body, headers=self._headers) as response:
                    status = response.status
                    await response.read()
                    if status == 429:
                        retry_after = _seconds(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as e:
                status, reason = 0, f"{type(e).__name__}: {e}"
            else:
                reason = f"HTTP {status}"
            if status == 202:
                self.stats.sent += len(batch)
                return
            if 400 <= status < 500 and status != 429:
                log.warning("prewarm listener rejected %d events (%s); dropped", len(batch), reason)
                self.stats.rejected += len(batch)
                return
            if attempt == self._settings.max_attempts:
                break
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            log.info(
                "prewarm listener: %s, attempt %d of %d, retrying in %.2fs",
                reason,
                attempt,
                self._settings.max_attempts,
                delay,
            )
            await self._sleep(delay)
        log.warning(
            "prewarm listener unreachable after %d attempts; %d events dropped", self._settings.max_attempts, len(batch)
        )
        self.stats.failed += len(batch)

    def _backoff(self, attempt: int) -> float:
        base = min(10.0, self._settings.backoff_seconds * 2.0 ** (attempt - 1))
        return base * (0.5 + self._rng.random() / 2)


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None


def check_phase(phase: str) -> str:
    """`phase` if it is a known pod-start phase; raises ValueError otherwise (in the caller's thread)."""
    if phase not in POD_PHASES:
        raise ValueError(f"phase {phase!r} is not one of {POD_PHASES}")
    return phase


def check_priority(priority: str | None) -> str | None:
    """`priority` if it is None or a known class; raises ValueError otherwise (in the caller's thread)."""
    if priority is not None and priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r} is not one of {PRIORITIES}")
    return priority


def new_session_id() -> str:
    """A random session id (128 bits)."""
    return secrets.token_hex(16)


class AsyncIntentClient:
    """Intent events from asyncio code; use as `async with AsyncIntentClient(url) as client`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        settings: SenderSettings | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._args = (url, token, settings or SenderSettings(), sleep, rng or random.Random())
        self._sender: _Sender | None = None

    async def __aenter__(self) -> AsyncIntentClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start the sender task on the running loop."""
        url, token, settings, sleep, rng = self._args
        self._sender = _Sender(url, token=token, settings=settings, sleep=sleep, rng=rng)
        self._sender.start()

    @property
    def stats(self) -> SenderStats:
        return self._require().stats

    def _require(self) -> _Sender:
        if self._sender is None:
            raise RuntimeError("AsyncIntentClient is not started (use `async with` or start())")
        return self._sender

    def open(
        self, target: str, *, session: str | None = None, ttl: float | None = None, priority: str | None = None
    ) -> str:
        """Queue `opened` and start heartbeats; return the session id. `priority`: "interactive"
        (what the listener assumes when it is left out) or "batch"."""
        session = session or new_session_id()
        self._require().offer("opened", target, session, ttl, check_priority(priority))
        return session

    def heartbeat(self, target: str, session: str) -> None:
        """Queue one heartbeat now (they are also sent automatically)."""
        self._require().offer("heartbeat", target, session)

    def close_session(self, target: str, session: str) -> None:
        """Queue `closed` and stop heartbeats."""
        self._require().offer("closed", target, session)

    def phase(self, target: str, pod: str, phase: str) -> None:
        """Report that `pod` of `target` reached `phase` of its start (weights_loaded,
        runtime_ready, first_token, ...), for cold-start timelines."""
        self._require().offer_phase(target, pod, check_phase(phase))

    @contextlib.asynccontextmanager
    async def session(
        self, target: str, *, ttl: float | None = None, priority: str | None = None
    ) -> AsyncIterator[str]:
        """Open a session for the block's duration."""
        session = self.open(target, ttl=ttl, priority=priority)
        try:
            yield session
        finally:
            self.close_session(target, session)

    async def flush(self) -> None:
        """Wait until the queue is empty (sent, rejected or given up)."""
        await self._require().flush()

    async def aclose(self, *, flush: bool = True) -> None:
        """Send what is queued (unless `flush` is False), then stop."""
        if self._sender is None:
            return
        if flush:
            await self._sender.flush()
        await self._sender.stop()


class IntentClient:
    """Intent events from synchronous code. The sender runs on a private event-loop thread, so
    calls return at once; `close()` flushes and stops it."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        settings: SenderSettings | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = AsyncIntentClient(url, token=token, settings=settings, sleep=sleep, rng=rng)
        self._thread = threading.Thread(target=self._loop.run_forever, name="prewarm-sdk", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()

    async def _start(self) -> None:
        self._client.start()

    def __enter__(self) -> IntentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> SenderStats:
        return self._client.stats

    def open(
        self, target: str, *, session: str | None = None, ttl: float | None = None, priority: str | None = None
    ) -> str:
        """Queue `opened` (non-blocking) and start heartbeats; return the session id (see AsyncIntentClient.open)."""
        session = session or new_session_id()
        opened = functools.partial(
            self._client.open, target, session=session, ttl=ttl, priority=check_priority(priority)
        )
        self._loop.call_soon_threadsafe(opened)
        return session

    def heartbeat(self, target: str, session: str) -> None:
        self._loop.call_soon_threadsafe(self._client.heartbeat, target, session)

    def close_session(self, target: str, session: str) -> None:
        self._loop.call_soon_threadsafe(self._client.close_session, target, session)

    def phase(self, target: str, pod: str, phase: str) -> None:
        """Report a phase of this pod's start (see AsyncIntentClient.phase)."""
        self._loop.call_soon_threadsafe(self._client.phase, target, pod, check_phase(phase))

    @contextlib.contextmanager
    def session(self, target: str, *, ttl: float | None = None, priority: str | None = None) -> Iterator[str]:
        """Open a session for the block's duration."""
        session = self.open(target, ttl=ttl, priority=priority)
        try:
            yield session
        finally:
            self.close_session(target, session)

    def flush(self, timeout: float | None = None) -> None:
        """Block until the queue is empty (sent, rejected or given up)."""
        asyncio.run_coroutine_threadsafe(self._client.flush(), self._loop).result(timeout)

    def close(self, *, flush: bool = True, timeout: float | None = 10.0) -> None:
        """Send what is queued (unless `flush` is False), stop the sender and its thread."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._client.aclose(flush=flush), self._loop)
        try:
            future.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._loop.close()
