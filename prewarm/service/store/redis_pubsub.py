"""The store's pub/sub subscription: relays changes and decisions, and resyncs after every gap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aioredis_cluster
import redis.exceptions

from prewarm.service import clock, redis_connection
from prewarm.service.store import errors
from prewarm.service.store.codec import decode_decision
from prewarm.service.store.protocol import ChangeListener, DecisionListener
from prewarm.service.store.redis_keys import CHANGES_CHANNEL, DECISIONS_CHANNEL

log = logging.getLogger(__name__)

_BACKOFF_CAP = 0.5  # seconds between resubscription attempts, at most

RedisClient = aioredis.Redis | aioredis_cluster.RedisCluster


class Subscription:
    """Relays `CHANGES_CHANNEL` and `DECISIONS_CHANNEL` messages to the listeners (the lists are
    the store's, read when the subscription starts) and calls `resync` once each (re)subscription
    is confirmed, so whatever was announced in a gap is re-read. Decisions published with our
    `origin` were saved through our store, which told the listeners then: their echo is skipped."""

    def __init__(
        self,
        client: RedisClient,
        *,
        origin: str,
        deployment: redis_connection.RedisDeployment | None,
        prepare_cluster: Callable[[], Awaitable[None]],
        change_listeners: list[ChangeListener],
        decision_listeners: list[DecisionListener],
        resync: Callable[[], None],
    ) -> None:
        self._client = client
        self._own = b'{"origin":"' + origin.encode() + b'",'  # decisions saved through our store: told already
        self._deployment = deployment
        self._prepare_cluster = prepare_cluster
        self._change_listeners = change_listeners
        self._decision_listeners = decision_listeners
        self._resync = resync
        self._listening: asyncio.Task[None] | None = None
        self._subscriber_node = 0  # Cluster: which node the next subscription tries

    def start(self) -> None:
        """Subscribe in the background; it reconnects on its own when the server goes away."""
        if self._listening is None:
            self._listening = asyncio.create_task(self._listen(), name="redis-pubsub")

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop listening; the task to wait for, if one was running."""
        task, self._listening = self._listening, None
        if task is None or task.done():
            return None
        task.cancel()
        return task

    async def _listen(self) -> None:
        channels = [CHANGES_CHANNEL] if self._change_listeners else []
        channels += [DECISIONS_CHANNEL] if self._decision_listeners else []  # only if heard: one message per decision
        if not channels:
            return
        backoff = 0.05
        while True:
            try:
                async with self._subscription(channels) as pubsub:
                    backoff = 0.05
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        clock.refuse_if_cancelling()  # redis-py may turn a cancellation into "no message"
                        if message is None:
                            continue
                        if message["type"] == "subscribe":
                            # The server confirms each (re)subscription, also the ones the client
                            # makes on its own after a reconnect: what was published before it may
                            # have been missed, so listeners re-read (the first channel's is enough).
                            if message["data"] == 1:
                                self._resync()
                        elif message["type"] == "message":
                            self._relay(message)
            except Exception as e:
                if not errors.is_unavailable(e):
                    log.exception("redis pub/sub failed; resubscribing in %.2fs", backoff)
                else:
                    log.warning("redis pub/sub lost (%s); resubscribing in %.2fs", errors.short(e), backoff)
            clock.refuse_if_cancelling()  # a client library may have swallowed our cancellation
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_CAP)

    @contextlib.asynccontextmanager
    async def _subscription(self, channels: Sequence[str]) -> AsyncIterator[aioredis.client.PubSub]:
        """A subscription to `channels`: on the server or Sentinel master, or on one Cluster node
        (classic pub/sub messages reach every node), trying the next node on each attempt."""
        node_client: aioredis.Redis | None = None
        if isinstance(self._client, aioredis_cluster.RedisCluster):
            await self._prepare_cluster()
            nodes = sorted((n.host, int(n.port)) for n in self._client.get_nodes())
            if not nodes:
                raise redis.exceptions.RedisClusterException("no Cluster node is known")
            host, port = nodes[self._subscriber_node % len(nodes)]
            self._subscriber_node += 1
            assert self._deployment is not None
            node_client = redis_connection.build_node_client(self._deployment, host, port, timeout=None)
            pubsub = node_client.pubsub()
        else:
            pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(*channels)
            yield pubsub
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            if node_client is not None:
                with contextlib.suppress(Exception):
                    await node_client.aclose()

    def _relay_decision(self, line: bytes) -> None:
        try:
            decision = decode_decision(line)
        except ValueError as e:
            log.warning("ignored a malformed decision on %s: %s", DECISIONS_CHANNEL, e)
            return
        try:
            for decision_listener in self._decision_listeners:
                decision_listener(decision)
        except Exception:  # one bad listener must not lose the rest of the batch
            log.exception("could not relay the decision of %s", decision.target)

    def _relay(self, message: dict[str, Any]) -> None:
        try:
            channel = message["channel"].decode()
            data = message["data"]
            if channel == CHANGES_CHANNEL:
                for target in data.decode().split("\n"):
                    for change_listener in self._change_listeners:
                        change_listener(target)
            elif channel == DECISIONS_CHANNEL:
                if data.startswith(self._own):  # one store's batch: every line is ours
                    return
                for line in data.split(b"\n"):
                    self._relay_decision(line)
        except Exception:  # one bad message or listener must not end the subscription
            log.exception("could not relay a message on %s", message.get("channel"))
