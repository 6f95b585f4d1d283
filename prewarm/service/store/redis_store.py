"""The shared store: state in Redis (one server, Sentinel or Cluster), written by Lua scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Container, Sequence
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aioredis_cluster
import redis.asyncio.sentinel as aioredis_sentinel
import redis.exceptions

from prewarm.core import ledger, policy
from prewarm.service import redis_connection, redis_scripts, sentinel_master
from prewarm.service.store import errors
from prewarm.service.store.cluster_scripts import ScriptCall, raise_any_failure, run_script_calls
from prewarm.service.store.codec import decode_decision, encode_decision, encode_decisions
from prewarm.service.store.group_commit import GroupCommit
from prewarm.service.store.leases import LeaseLost
from prewarm.service.store.listeners import StoreListeners
from prewarm.service.store.protocol import (
    ARRIVAL_HISTORY,
    DEDUP_TTL,
    IngestResult,
    Intent,
    StateUnavailable,
    arrival_minute,
)
from prewarm.service.store.redis_keys import DECISIONS_CHANNEL, key, ms, slot
from prewarm.service.store.redis_leases import RedisLeases
from prewarm.service.store.redis_pubsub import Subscription

log = logging.getLogger(__name__)

_INTERACTIVE = ledger.Priority.INTERACTIVE
_TYPE_CODES = {
    ledger.SessionEventType.OPENED: "o",
    ledger.SessionEventType.HEARTBEAT: "h",
    ledger.SessionEventType.CLOSED: "c",
}

RedisClient = aioredis.Redis | aioredis_cluster.RedisCluster


class RedisStore(StoreListeners):
    """State in Redis: one server, a Sentinel-managed master, or a Cluster (see redis_connection).

    Handlers fail fast: short socket timeouts turn an unreachable or read-only server into
    StateUnavailable. With `wait_replicas`, a batch is acknowledged only once that many replicas
    have it (WAIT), so a failover cannot lose it; replication is otherwise asynchronous.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        deployment: redis_connection.RedisDeployment | None = None,
        sentinel: aioredis_sentinel.Sentinel | None = None,
        watch: sentinel_master.SentinelWatch | None = None,
        sessions_per_target: int = 10_000,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        super().__init__()
        self._client = client
        self._deployment = deployment
        self._sentinel = sentinel
        self._watch = watch
        self._cluster = isinstance(client, aioredis_cluster.RedisCluster)
        if self._cluster and wait_replicas:
            raise ValueError("waiting for replicas is not supported on Redis Cluster")
        self._cap = sessions_per_target
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = max(1, round(wait_timeout * 1000))
        self._ingest = client.register_script(redis_scripts.INGEST)
        self._save = client.register_script(redis_scripts.SAVE_DECISION)
        self._inputs = client.register_script(redis_scripts.DECISION_INPUTS)
        self._slot_inputs = client.register_script(redis_scripts.SLOT_DECISION_INPUTS)
        self._save_many = client.register_script(redis_scripts.SAVE_DECISIONS)
        self._group = GroupCommit(self._write_group)
        self._leases = RedisLeases(client, calling=self._calling)
        self._origin = secrets.token_hex(8)  # tags the decisions this store publishes (its echo is skipped)
        self._subscription = Subscription(
            client,
            origin=self._origin,
            deployment=deployment,
            prepare_cluster=self._initialize_cluster,
            change_listeners=self._change_listeners,
            decision_listeners=self._decision_listeners,
            resync=self._resync,
        )
        self._failing = False  # a call failed since the last one that worked: listeners resync on recovery
        self._cluster_ready = False
        self._cluster_initializing = asyncio.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 1.0,
        sessions_per_target: int = 10_000,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> RedisStore:
        """A store on the Redis a URL names (see redis_connection); ConfigError for a bad URL."""
        deployment = redis_connection.parse_redis_url(url)
        connected = redis_connection.connect(deployment, timeout=timeout)
        return cls(
            connected.client,
            deployment=deployment,
            sentinel=connected.sentinel,
            watch=connected.watch,
            sessions_per_target=sessions_per_target,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
        )

    @property
    def topology(self) -> redis_connection.Topology:
        """One server, Sentinel or Cluster."""
        if self._cluster:
            return redis_connection.Topology.CLUSTER
        return redis_connection.Topology.SENTINEL if self._sentinel is not None else redis_connection.Topology.SERVER

    @property
    def leases(self) -> RedisLeases:
        """Replicas share this store: each target is decided by the holder of its lease."""
        return self._leases

    # --- calls, failures and recovery ---

    @contextlib.asynccontextmanager
    async def _calling(self) -> AsyncIterator[None]:
        """Map failures to StateUnavailable (or let a refusal through); after a failure, the first
        call that works again resyncs the listeners."""
        try:
            if self._watch is not None:
                self._watch.start()  # follows the master's switches from the first call on
            await self._initialize_cluster()
            yield
        except StateUnavailable:
            self._failing = True
            raise
        except Exception as e:
            if errors.is_refusal(e):
                raise
            if not errors.is_unavailable(e):  # a client library failure: retrying may well work
                log.warning("redis client failed: %r", e, exc_info=True)
            self._failing = True
            raise StateUnavailable(f"redis: {errors.short(e)}") from e
        if self._failing:
            self._failing = False
            log.info("redis answers again: re-reading the state")
            self._resync()

    async def _initialize_cluster(self) -> None:
        """Learn the Cluster's slots once, before any concurrent call: concurrent first calls on a
        fresh redis-py Cluster client can race on its connections."""
        if not self._cluster or self._cluster_ready:
            return
        assert isinstance(self._client, aioredis_cluster.RedisCluster)
        async with self._cluster_initializing:
            if not self._cluster_ready:
                await self._client.initialize()
                self._cluster_ready = True

    def _resync(self) -> None:
        for listener in self._resync_listeners:
            try:
                listener()
            except Exception:
                log.exception("a resync listener failed")

    async def start(self) -> None:
        """Begin relaying pub/sub changes and decisions to the listeners added so far.

        Add listeners before starting: the subscription covers the channels they need. It
        reconnects on its own when the server goes away, and once the server confirms each
        (re)subscription the resync listeners run, so whatever was announced in a gap is re-read.
        On Sentinel, it also starts following the master's switches (see sentinel_master).
        """
        if self._watch is not None:
            self._watch.start()
        self._subscription.start()

    # --- ingest ---

    async def record_intents(self, intents: Sequence[Intent]) -> IngestResult:
        """Store a batch atomically; concurrent batches are group-committed in one script call.

        Batches that arrive while a call is in flight are written together by the next call (at
        most `MAX_GROUP_INTENTS` intents, whole batches only), so round trips stay few under load.
        On Redis Cluster a group is one call per hash slot; a batch naming several targets is then
        atomic per target only. Raises StateUnavailable or BatchRejected.
        """
        if not intents:
            return IngestResult(new=())
        return await self._group.submit(intents)

    async def _write_group(self, batches: Sequence[Sequence[Intent]]) -> list[tuple[bool, ...]]:
        """Write the batches (one script call, or one per Cluster slot); their new-or-duplicate flags."""
        intents = [intent for batch in batches for intent in batch]
        if not self._cluster:
            flags = await self._run_ingest(intents)
        else:
            assert isinstance(self._client, aioredis_cluster.RedisCluster)
            by_slot: dict[int, list[int]] = {}
            for position, intent in enumerate(intents):
                by_slot.setdefault(slot(intent.target), []).append(position)
            parts = [[intents[p] for p in positions] for positions in by_slot.values()]
            calls = [self._ingest_call(part) for part in parts]
            async with self._calling():  # every slot's call in one pipeline (see cluster_scripts)
                replies = await run_script_calls(self._client, self._ingest, [(keys, args) for keys, args, _ in calls])
                raise_any_failure(replies)  # a refusal makes the group split and find the batch at fault
            flags = [0] * len(intents)
            for positions, (_, _, index), reply in zip(by_slot.values(), calls, replies, strict=True):
                for position, flag in zip(positions, self._ingested(index, reply), strict=True):
                    flags[position] = flag
        results: list[tuple[bool, ...]] = []
        offset = 0
        for batch in batches:
            results.append(tuple(bool(flag) for flag in flags[offset : offset + len(batch)]))
            offset += len(batch)
        return results

    async def _run_ingest(self, intents: Sequence[Intent]) -> list[int]:
        keys, args, index = self._ingest_call(intents)
        async with self._calling():
            if self._wait_replicas:
                reply = await self._call_and_wait(self._ingest, keys, args)
            else:
                reply = await self._ingest(keys=keys, args=args)
        return self._ingested(index, reply)

    def _ingest_call(self, intents: Sequence[Intent]) -> tuple[list[str], list[str | int], dict[str, int]]:
        """The ingest script's keys and arguments for `intents`, and each target's position in them."""
        now = max(i.event.at for i in intents)
        index: dict[str, int] = {}
        for intent in intents:
            index.setdefault(intent.target, len(index) + 1)
        keys: list[str] = []
        for target in index:
            keys += [key(target, part) for part in redis_scripts.INGEST_KEYS]
        args: list[str | int] = [
            ms(now),
            self._cap,
            int(DEDUP_TTL.total_seconds()),
            int(ARRIVAL_HISTORY.total_seconds()),
            1 if self._wait_replicas else 0,
            len(index),
            *index,
        ]
        for intent in intents:
            keys.append(key(intent.target, "dedup:" + json.dumps([intent.source, intent.id], separators=(",", ":"))))
            event = intent.event
            batch = "" if event.priority is _INTERACTIVE else "b"
            args.append(
                f"{index[intent.target]}|{_TYPE_CODES[event.type]}{batch}|{ms(event.at + event.ttl)}|"
                f"{arrival_minute(event.at)}|{event.session}"
            )
        return keys, args, index

    def _ingested(self, index: dict[str, int], reply: Any) -> list[int]:
        """The new-or-duplicate flag of each intent, from the ingest script's reply; tells the
        dropped-sessions listeners what it dropped."""
        for target, count in zip(index, reply[0], strict=True):
            if int(count):
                self._dropped(target, int(count))
        return [int(flag) for flag in reply[1:]]

    def _dropped(self, target: str, count: int) -> None:
        for listener in self._dropped_listeners:
            try:
                listener(target, count)
            except Exception:
                log.exception("a dropped-sessions listener failed")

    async def _call_and_wait(self, script: Any, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run `script`, then WAIT on the same connection until `wait_replicas` replicas have it."""
        assert isinstance(self._client, aioredis.Redis)
        for attempt in (1, 2):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms)
                try:
                    reply, acknowledged = await pipe.execute()
                except redis.exceptions.NoScriptError:
                    if attempt == 2:
                        raise
                    script.sha = await self._client.script_load(script.script)
                    continue
            if int(acknowledged) < self._wait_replicas:
                raise StateUnavailable(
                    f"redis: {acknowledged} of {self._wait_replicas} replicas acknowledged the write "
                    f"within {self._wait_timeout_ms} ms"
                )
            return reply
        raise AssertionError("unreachable")

    # --- reads ---

    async def count_sessions(self, target: str, now: datetime) -> ledger.SessionCount:
        alive = f"({ms(now)}"
        async with self._calling(), self._client.pipeline(transaction=False) as pipe:
            for k in (key(target, "sessions"), key(target, "batch")):
                pipe.zcount(k, alive, "+inf")
                pipe.zrangebyscore(k, alive, "+inf", start=0, num=1, withscores=True)
            interactive, first, batch, first_batch = await pipe.execute()
        expiries = [entries[0][1] for entries in (first, first_batch) if entries]
        next_expiry = datetime.fromtimestamp(min(expiries) / 1000, UTC) if expiries else None
        return ledger.SessionCount(active=int(interactive) + int(batch), next_expiry=next_expiry, batch=int(batch))

    async def arrivals(self, target: str, since: datetime, until: datetime) -> dict[datetime, int]:
        async with self._calling():
            raw = await self._client.hgetall(key(target, "arrivals"))
        lo, hi = arrival_minute(since), arrival_minute(until)
        counts = {int(m): int(n) for m, n in raw.items()}
        return {datetime.fromtimestamp(m * 60, UTC): n for m, n in sorted(counts.items()) if lo <= m < hi}

    async def load_decision(self, target: str) -> policy.FloorDecision | None:
        """The stored decision; None when there is none or what is stored cannot be read (logged)."""
        async with self._calling():
            raw = await self._client.get(key(target, "decision"))
        return self._decoded(target, raw)

    # --- decisions ---

    async def save_decision(self, decision: policy.FloorDecision, *, fence: str = "") -> None:
        text = encode_decision(decision)
        keys = [key(decision.target, "decision"), key(decision.target, "leader")]
        async with self._calling():
            stored = await self._save(keys=keys, args=[fence, text, DECISIONS_CHANNEL, self._origin])
        if not int(stored):
            raise LeaseLost(f"{decision.target}: lease token {fence!r} is no longer the holder's")
        self._tell_own([decision])

    async def decision_inputs(
        self, targets: Sequence[str], now: datetime, *, cached: Container[str] = ()
    ) -> list[tuple[ledger.SessionCount, policy.FloorDecision | None]]:
        """Sessions and the stored decision of every target in one round trip: one script call on
        one server; on a Cluster a script call per hash slot, all in one pipeline."""
        if not targets:
            return []
        alive = ms(now)
        if isinstance(self._client, aioredis_cluster.RedisCluster):
            by_slot: dict[int, list[int]] = {}
            for position, target in enumerate(targets):
                by_slot.setdefault(slot(target), []).append(position)
            calls: list[ScriptCall] = [
                ([key(targets[p], part) for p in positions for part in ("sessions", "batch", "decision")], [alive])
                for positions in by_slot.values()
            ]
            async with self._calling():  # a script call per slot, all in one pipeline
                answered = await run_script_calls(self._client, self._slot_inputs, calls)
                raise_any_failure(answered)
            replies: list[Any] = [None] * (5 * len(targets))
            for positions, reply in zip(by_slot.values(), answered, strict=True):
                for offset, position in enumerate(positions):
                    replies[5 * position : 5 * position + 5] = reply[5 * offset : 5 * offset + 5]
        else:
            async with self._calling():
                replies = await self._inputs(keys=[], args=[alive, _lines(targets)])
        inputs = []
        for index, target in enumerate(targets):
            interactive, first, batch, first_batch, raw = replies[5 * index : 5 * index + 5]
            expiries = [float(at) for at in (first, first_batch) if at not in ("", b"")]
            next_expiry = datetime.fromtimestamp(min(expiries) / 1000, UTC) if expiries else None
            sessions = ledger.SessionCount(
                active=int(interactive) + int(batch), next_expiry=next_expiry, batch=int(batch)
            )
            inputs.append((sessions, None if target in cached else self._decoded(target, raw)))
        return inputs

    async def load_decisions(self, targets: Sequence[str]) -> list[policy.FloorDecision | None]:
        async with self._calling(), self._client.pipeline(transaction=False) as pipe:
            for target in targets:
                pipe.get(key(target, "decision"))
            replies = await pipe.execute()
        return [self._decoded(target, raw) for target, raw in zip(targets, replies, strict=True)]

    @staticmethod
    def _decoded(target: str, raw: bytes | str | None) -> policy.FloorDecision | None:
        if raw is None:
            return None
        try:
            return decode_decision(raw)
        except ValueError as e:
            log.warning("%s: ignoring the stored decision: %s", target, e)
            return None

    async def save_decisions(self, decisions: Sequence[tuple[policy.FloorDecision, str]]) -> list[bool]:
        """Every fenced save in one script call (a Cluster: one call per decision, in one pipeline)."""
        if not decisions:
            return []
        if isinstance(self._client, aioredis_cluster.RedisCluster):
            texts = encode_decisions(d for d, _ in decisions)
            calls: list[ScriptCall] = [
                ([key(d.target, "decision"), key(d.target, "leader")], [fence, text, DECISIONS_CHANNEL, self._origin])
                for (d, fence), text in zip(decisions, texts, strict=True)
            ]
            async with self._calling():
                stored = await run_script_calls(self._client, self._save, calls)
                raise_any_failure(stored)
        else:
            names = _lines([d.target for d, _ in decisions])
            fences = _lines([fence for _, fence in decisions])
            decided = _lines(encode_decisions(d for d, _ in decisions))
            async with self._calling():
                stored = await self._save_many(keys=[], args=[DECISIONS_CHANNEL, self._origin, names, fences, decided])
        saved = [bool(int(one)) for one in stored]
        self._tell_own([d for (d, _), ok in zip(decisions, saved, strict=True) if ok])
        return saved

    def _tell_own(self, saved: Sequence[policy.FloorDecision]) -> None:
        """Hand this store's own saved decisions to its listeners at once: the subscription skips
        their echo (its origin is ours) instead of decoding every decision it just encoded."""
        for decision in saved:
            for listener in self._decision_listeners:
                try:
                    listener(decision)
                except Exception:  # one listener must not fail the save that already happened
                    log.exception("a decision listener failed for %s", decision.target)

    # --- health ---

    async def ping(self) -> None:
        async with self._calling():
            await self._client.ping()

    async def check_writable(self) -> None:
        """Reachable and a master (ROLE; a Cluster reports `cluster_state:ok`)."""
        async with self._calling():
            if isinstance(self._client, aioredis_cluster.RedisCluster):
                info = await self._client.cluster_info()
                if info.get("cluster_state") != "ok":
                    raise StateUnavailable(f"redis cluster state is {info.get('cluster_state')!r}")
                return
            try:
                role = await self._client.role()
            except redis.exceptions.ResponseError as e:
                if errors.is_unavailable(e):
                    raise
                await self._client.ping()  # ROLE renamed or not allowed: reachability is all we can tell
                return
            name = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
            if name != "master":
                raise StateUnavailable(f"redis is a {name}: it refuses writes (READONLY)")

    # --- listeners and lifetime ---

    async def close(self) -> None:
        """Stop listening, answer every waiting batch (503) and close the clients; bounded."""
        tasks = [task for task in (self._subscription.cancel(), self._group.cancel()) if task is not None]
        if self._watch is not None:
            tasks += self._watch.cancel()
            self._watch = None  # a call after closing must not follow the Sentinels again
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)  # a client library may hold on to a cancellation
        self._group.fail_pending("the store is closing")
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(2.0):
                await self._client.aclose()
                if self._sentinel is not None:
                    await self._sentinel.aclose()


def _lines(values: Sequence[str]) -> str:
    """One script argument holding `values`, each followed by a newline (an empty one stays)."""
    return "\n".join(values) + "\n" if values else ""
