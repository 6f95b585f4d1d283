"""Durable state behind the decision loop: sessions, dedup keys, arrival counters and decisions.

`MemoryStore` is the embedded default (one process, lost on exit). `RedisStore` keeps the same
state in Redis (one server, Sentinel or Cluster), shared by every replica, announces changes on
pub/sub, and holds the per-target leases that make one replica the decider of each target. Both
write a batch of intents all or nothing, and both bound their memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.asyncio.cluster as aioredis_cluster
import redis.asyncio.sentinel as aioredis_sentinel
import redis.crc
import redis.exceptions

from prewarm.core import ledger, policy, targets
from prewarm.service import clock, redis_connection, redis_scripts

log = logging.getLogger(__name__)

ChangeListener = Callable[[str], None]
DecisionListener = Callable[[policy.FloorDecision], None]
ResyncListener = Callable[[], None]

_INTERACTIVE = ledger.Priority.INTERACTIVE
DEDUP_TTL = timedelta(hours=24)
ARRIVAL_HISTORY = timedelta(days=8)  # enough for "same minute last week" features


class StateUnavailable(RuntimeError):
    """The store cannot be reached, cannot be written (a read-only replica, a failover under way),
    or did not confirm the write in time; what was asked may or may not have been written."""


class BatchRejected(ValueError):
    """The store refused what a batch holds (not its own availability); nothing of it was written."""


class LeaseLost(RuntimeError):
    """A fenced decision write was refused: this replica no longer holds the target's lease."""


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """One target's decider lease as a claim found it.

    `token` is this holder's fencing token when it holds the lease now, else None; `holder` is
    the token of whoever holds it ('' for nobody); `remaining` the seconds until it expires.
    """

    target: str
    token: str | None
    holder: str
    remaining: float


@dataclasses.dataclass(frozen=True, slots=True)
class Intent:
    """One accepted session event for one target, with its delivery identity (source, id)."""

    target: str
    source: str
    id: str
    event: ledger.SessionEvent


@dataclasses.dataclass(frozen=True, slots=True)
class IngestResult:
    """Which intents of a batch were new (True) and which duplicates of earlier deliveries."""

    new: tuple[bool, ...]

    @property
    def accepted(self) -> int:
        return sum(self.new)

    @property
    def duplicates(self) -> int:
        return len(self.new) - sum(self.new)


class Store(Protocol):
    """What the listener writes and the decider reads. Every async method may raise StateUnavailable."""

    async def record_intents(self, intents: Sequence[Intent]) -> IngestResult:
        """Durably store a batch (sessions, dedup keys, arrival counts) all or none, then announce it."""
        ...

    async def count_sessions(self, target: str, now: datetime) -> ledger.SessionCount:
        """Sessions of `target` alive at `now`."""
        ...

    async def arrivals(self, target: str, since: datetime, until: datetime) -> dict[datetime, int]:
        """Session arrivals of `target` per minute in [since, until), minutes with none left out."""
        ...

    async def load_decision(self, target: str) -> policy.FloorDecision | None:
        """The last decision saved for `target`, or None."""
        ...

    async def save_decision(self, decision: policy.FloorDecision, *, fence: str = "") -> None:
        """Store `decision` as the current one for its target and publish it.

        With a `fence` (a lease token), only while that token holds the target's lease; raises
        LeaseLost, writing nothing, otherwise.
        """
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise StateUnavailable otherwise."""
        ...

    async def check_writable(self) -> None:
        """Return when the store answers and accepts writes; raise StateUnavailable otherwise."""
        ...

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Call `listener(target)` whenever a target's signals change (from any writer)."""
        ...

    def add_decision_listener(self, listener: DecisionListener) -> None:
        """Call `listener(decision)` whenever a decision is saved (by any replica)."""
        ...

    def add_resync_listener(self, listener: ResyncListener) -> None:
        """Call `listener()` after every (re)subscription and after the store comes back from a
        failure: announcements may have been missed, so listeners re-read what they follow."""
        ...

    async def close(self) -> None:
        """Stop listening and release connections."""
        ...


def _minute(at: datetime) -> int:
    return int(at.timestamp()) // 60


class MemoryStore:
    """In-process state. Bounded: `sessions_per_target` per ledger and `dedup_keys` remembered."""

    def __init__(self, *, sessions_per_target: int = 10_000, dedup_keys: int = 100_000) -> None:
        self._sessions_per_target = sessions_per_target
        self._ledgers: dict[str, ledger.SessionLedger] = {}
        self._dedup: collections.OrderedDict[tuple[str, str], datetime] = collections.OrderedDict()
        self._dedup_capacity = dedup_keys
        self._arrivals: dict[str, dict[int, int]] = {}
        self._decisions: dict[str, policy.FloorDecision] = {}
        self._change_listeners: list[ChangeListener] = []
        self._decision_listeners: list[DecisionListener] = []
        self._resync_listeners: list[ResyncListener] = []  # kept for the protocol: memory has no gaps
        self.dedup_dropped = 0

    async def record_intents(self, intents: Sequence[Intent]) -> IngestResult:
        new: list[bool] = []
        changed: set[str] = set()
        for intent in intents:
            key = (intent.source, intent.id)
            now = intent.event.at
            seen_until = self._dedup.get(key)
            new.append(seen_until is None or now >= seen_until)
            if not new[-1]:
                continue
            self._remember(key, now + DEDUP_TTL)
            book = self._ledgers.get(intent.target)
            if book is None:
                book = self._ledgers[intent.target] = ledger.SessionLedger(capacity=self._sessions_per_target)
            if book.apply(intent.event):
                changed.add(intent.target)
            if intent.event.type is ledger.SessionEventType.OPENED and intent.event.priority is _INTERACTIVE:
                counts = self._arrivals.setdefault(intent.target, {})
                minute = _minute(now)
                counts[minute] = counts.get(minute, 0) + 1
                oldest = minute - int(ARRIVAL_HISTORY.total_seconds()) // 60
                if len(counts) > ARRIVAL_HISTORY.total_seconds() // 60:
                    for stale in [m for m in counts if m < oldest]:
                        del counts[stale]
        for target in sorted(changed):
            for listener in self._change_listeners:
                listener(target)
        return IngestResult(new=tuple(new))

    def _remember(self, key: tuple[str, str], until: datetime) -> None:
        self._dedup[key] = until
        self._dedup.move_to_end(key)
        while len(self._dedup) > self._dedup_capacity:
            self._dedup.popitem(last=False)
            self.dedup_dropped += 1

    async def count_sessions(self, target: str, now: datetime) -> ledger.SessionCount:
        book = self._ledgers.get(target)
        if book is None:
            return ledger.SessionCount(active=0, next_expiry=None)
        book.prune(now)
        return book.count(now)

    async def arrivals(self, target: str, since: datetime, until: datetime) -> dict[datetime, int]:
        counts = self._arrivals.get(target, {})
        lo, hi = _minute(since), _minute(until)
        return {datetime.fromtimestamp(m * 60, UTC): n for m, n in sorted(counts.items()) if lo <= m < hi}

    async def load_decision(self, target: str) -> policy.FloorDecision | None:
        return self._decisions.get(target)

    async def save_decision(self, decision: policy.FloorDecision, *, fence: str = "") -> None:
        self._decisions[decision.target] = decision  # one process: it is the only decider
        for listener in self._decision_listeners:
            listener(decision)

    async def ping(self) -> None:
        return None

    async def check_writable(self) -> None:
        return None

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._change_listeners.append(listener)

    def add_decision_listener(self, listener: DecisionListener) -> None:
        self._decision_listeners.append(listener)

    def add_resync_listener(self, listener: ResyncListener) -> None:
        self._resync_listeners.append(listener)

    async def close(self) -> None:
        self._change_listeners.clear()
        self._decision_listeners.clear()
        self._resync_listeners.clear()

    def dropped_sessions(self, target: str) -> int:
        """Live sessions of `target` lost because its ledger was full."""
        book = self._ledgers.get(target)
        return 0 if book is None else book.dropped


# --- decisions on the wire (Redis values and pub/sub messages) ---


def encode_decision(decision: policy.FloorDecision) -> str:
    """A decision as compact JSON, lossless for `decode_decision`."""
    return json.dumps(
        {
            "target": decision.target,
            "floor": decision.floor,
            "source": decision.source.value,
            "reason": decision.reason,
            "decided_at": decision.decided_at.isoformat(),
            "next_change": None if decision.next_change is None else decision.next_change.isoformat(),
            "wanted": decision.wanted,
            "wanted_source": decision.wanted_source.value,
            "baseline": decision.baseline,
            "held": [[h.floor, h.source.value, h.wanted_until.isoformat()] for h in decision.held],
            "budget_day": decision.budget_day.isoformat(),
            "budget_used": decision.budget_used,
            "batch_replicas": decision.batch_replicas,
            "batch_used": decision.batch_used,
        },
        separators=(",", ":"),
    )


def decode_decision(text: str | bytes) -> policy.FloorDecision:
    """Parse what `encode_decision` wrote; raise ValueError on anything else."""
    try:
        raw: dict[str, Any] = json.loads(text)
        return policy.FloorDecision(
            target=raw["target"],
            floor=int(raw["floor"]),
            source=policy.Source(raw["source"]),
            reason=raw["reason"],
            decided_at=datetime.fromisoformat(raw["decided_at"]),
            next_change=None if raw["next_change"] is None else datetime.fromisoformat(raw["next_change"]),
            wanted=int(raw["wanted"]),
            wanted_source=policy.Source(raw["wanted_source"]),
            baseline=int(raw["baseline"]),
            held=tuple(
                policy.HeldLevel(int(f), policy.Source(s), datetime.fromisoformat(u)) for f, s, u in raw["held"]
            ),
            budget_day=date.fromisoformat(raw["budget_day"]),
            budget_used=float(raw["budget_used"]),
            batch_replicas=int(raw.get("batch_replicas", 0)),  # absent from decisions stored before batch
            batch_used=float(raw.get("batch_used", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a stored decision: {e}") from e


# --- Redis ---

_TYPE_CODES = {
    ledger.SessionEventType.OPENED: "o",
    ledger.SessionEventType.HEARTBEAT: "h",
    ledger.SessionEventType.CLOSED: "c",
}
MAX_GROUP_INTENTS = 512
MAX_LEASES_PER_CALL = 256
CHANGES_CHANNEL = "prewarm:changes"
DECISIONS_CHANNEL = "prewarm:decisions"
EPOCH_TTL = timedelta(days=30)  # a target's lease epoch outlives any token that could still be in use
_PUBSUB_BACKOFF_CAP = 0.5  # seconds between resubscription attempts, at most
# Error replies that say the server cannot take writes now, not that the request was wrong.
_UNAVAILABLE_REPLIES = (
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "OOM",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MISCONF",
    "NOPERM",
    "NOAUTH",
    "WRONGPASS",
)
_UNAVAILABLE_ERRORS = (
    redis.exceptions.ConnectionError,  # refused, reset, auth, loading, a demoted Sentinel master
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.ClusterError,  # cluster down, master down
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,  # no reachable node, slots not covered
    OSError,
    TimeoutError,
)


def _is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the store cannot serve now (503) rather than refusing the request."""
    if isinstance(error, _UNAVAILABLE_ERRORS):
        return True
    return isinstance(error, redis.exceptions.ResponseError) and str(error).startswith(_UNAVAILABLE_REPLIES)


def _is_refusal(error: BaseException) -> bool:
    """Whether the store (or the client encoding the call) refused what was asked: a script's error
    reply, a value that cannot be encoded. Anything else unexpected is treated as unavailability."""
    if _is_unavailable(error):
        return False
    return isinstance(error, redis.exceptions.ResponseError | redis.exceptions.DataError | UnicodeError)


def _short(error: BaseException) -> str:
    return (str(error) or type(error).__name__).replace("\n", " ")[:200]


def _key(target: str, part: str) -> str:
    return f"prewarm:{{{target}}}:{part}"


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _settle(done: asyncio.Future[IngestResult], result: IngestResult | BaseException) -> None:
    """Answer one waiting request, unless it stopped waiting."""
    if done.done():
        return
    if isinstance(result, BaseException):
        done.set_exception(result)
    else:
        done.set_result(result)


_Pending = tuple[Sequence[Intent], asyncio.Future[IngestResult]]
RedisClient = aioredis.Redis | aioredis_cluster.RedisCluster


class RedisStore:
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
        sessions_per_target: int = 10_000,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        self._client = client
        self._deployment = deployment
        self._sentinel = sentinel
        self._cluster = isinstance(client, aioredis_cluster.RedisCluster)
        if self._cluster and wait_replicas:
            raise ValueError("waiting for replicas is not supported on Redis Cluster")
        self._cap = sessions_per_target
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = max(1, round(wait_timeout * 1000))
        self._ingest = client.register_script(redis_scripts.INGEST)
        self._save = client.register_script(redis_scripts.SAVE_DECISION)
        self._claim = client.register_script(redis_scripts.CLAIM_LEASES)
        self._release = client.register_script(redis_scripts.RELEASE_LEASES)
        self._change_listeners: list[ChangeListener] = []
        self._decision_listeners: list[DecisionListener] = []
        self._resync_listeners: list[ResyncListener] = []
        self._listening: asyncio.Task[None] | None = None
        self._pending: collections.deque[_Pending] = collections.deque()
        self._committing: asyncio.Task[None] | None = None
        self._failing = False  # a call failed since the last one that worked: listeners resync on recovery
        self._cluster_ready = False
        self._cluster_initializing = asyncio.Lock()
        self._subscriber_node = 0  # Cluster: which node the next subscription tries
        self.dropped_sessions = 0

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

    # --- calls, failures and recovery ---

    @contextlib.asynccontextmanager
    async def _calling(self) -> AsyncIterator[None]:
        """Map failures to StateUnavailable (or let a refusal through); after a failure, the first
        call that works again resyncs the listeners."""
        try:
            if self._cluster and not self._cluster_ready:
                await self._initialize_cluster()
            yield
        except StateUnavailable:
            self._failing = True
            raise
        except Exception as e:
            if _is_refusal(e):
                raise
            if not _is_unavailable(e):  # a client library failure: retrying may well work
                log.warning("redis client failed: %r", e, exc_info=True)
            self._failing = True
            raise StateUnavailable(f"redis: {_short(e)}") from e
        if self._failing:
            self._failing = False
            log.info("redis answers again: re-reading the state")
            self._resync()

    async def _initialize_cluster(self) -> None:
        """Learn the Cluster's slots once, before any concurrent call: concurrent first calls on a
        fresh redis-py Cluster client can race on its connections."""
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

    # --- pub/sub ---

    async def start(self) -> None:
        """Begin relaying pub/sub changes and decisions to the listeners added so far.

        Add listeners before starting: the subscription covers the channels they need. It
        reconnects on its own when the server goes away, and once the server confirms each
        (re)subscription the resync listeners run, so whatever was announced in a gap is re-read.
        """
        if self._listening is None:
            self._listening = asyncio.create_task(self._listen(), name="redis-pubsub")

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
                if not _is_unavailable(e):
                    log.exception("redis pub/sub failed; resubscribing in %.2fs", backoff)
                else:
                    log.warning("redis pub/sub lost (%s); resubscribing in %.2fs", _short(e), backoff)
            clock.refuse_if_cancelling()  # a client library may have swallowed our cancellation
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _PUBSUB_BACKOFF_CAP)

    @contextlib.asynccontextmanager
    async def _subscription(self, channels: Sequence[str]) -> AsyncIterator[aioredis.client.PubSub]:
        """A subscription to `channels`: on the server or Sentinel master, or on one Cluster node
        (classic pub/sub messages reach every node), trying the next node on each attempt."""
        node_client: aioredis.Redis | None = None
        if isinstance(self._client, aioredis_cluster.RedisCluster):
            if not self._cluster_ready:
                await self._initialize_cluster()
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

    def _relay(self, message: dict[str, Any]) -> None:
        try:
            channel = message["channel"].decode()
            data = message["data"]
            if channel == CHANGES_CHANNEL:
                for target in data.decode().split("\n"):
                    for change_listener in self._change_listeners:
                        change_listener(target)
            elif channel == DECISIONS_CHANNEL:
                try:
                    decision = decode_decision(data)
                except ValueError as e:
                    log.warning("ignored a malformed decision on %s: %s", DECISIONS_CHANNEL, e)
                    return
                for decision_listener in self._decision_listeners:
                    decision_listener(decision)
        except Exception:  # one bad message or listener must not end the subscription
            log.exception("could not relay a message on %s", message.get("channel"))

    # --- ingest: group commit ---

    async def record_intents(self, intents: Sequence[Intent]) -> IngestResult:
        """Store a batch atomically; concurrent batches are group-committed in one script call.

        Batches that arrive while a call is in flight are written together by the next call (at
        most `MAX_GROUP_INTENTS` intents, whole batches only), so round trips stay few under load.
        Every caller gets its own answer: when a group call fails for another reason than the
        store's availability, each batch is written alone and only the one at fault is refused.
        On Redis Cluster a group is one call per hash slot; a batch naming several targets is then
        atomic per target only. Raises StateUnavailable or BatchRejected.
        """
        if not intents:
            return IngestResult(new=())
        done: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._pending.append((intents, done))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_pending(), name="redis-group-commit")
        return await done

    async def _commit_pending(self) -> None:
        group: list[_Pending] = []
        try:
            while self._pending:
                group = self._take_group()
                if group:
                    await self._commit(group)
                group = []
        finally:  # cancelled (the store closes) or a bug: nobody may be left waiting
            stranded = group + list(self._pending)
            self._pending.clear()
            for _, done in stranded:
                _settle(done, StateUnavailable("the store is closing"))

    def _take_group(self) -> list[_Pending]:
        group: list[_Pending] = []
        size = 0
        while self._pending and (not group or size + len(self._pending[0][0]) <= MAX_GROUP_INTENTS):
            batch, done = self._pending.popleft()
            if done.done():
                continue  # the request stopped waiting (it was answered 503): write nothing for it
            group.append((batch, done))
            size += len(batch)
        return group

    async def _commit(self, group: list[_Pending]) -> None:
        try:
            results = await self._write_group([batch for batch, _ in group])
        except StateUnavailable as e:
            for _, done in group:
                _settle(done, e)
        except Exception as e:
            if len(group) > 1:
                log.warning("a group commit of %d batches failed (%s); writing each alone", len(group), _short(e))
                for entry in group:
                    await self._commit([entry])
            elif _is_refusal(e):
                log.warning("redis refused a batch of %d intents: %s", len(group[0][0]), _short(e))
                _settle(group[0][1], BatchRejected(f"the store refused the batch: {_short(e)}"))
            else:
                log.warning("a batch of %d intents failed: %r", len(group[0][0]), e, exc_info=True)
                _settle(group[0][1], StateUnavailable(f"redis: {_short(e)}"))
        else:
            for (_, done), new in zip(group, results, strict=True):
                _settle(done, IngestResult(new=new))

    async def _write_group(self, batches: Sequence[Sequence[Intent]]) -> list[tuple[bool, ...]]:
        """Write the batches (one script call, or one per Cluster slot); their new-or-duplicate flags."""
        intents = [intent for batch in batches for intent in batch]
        if not self._cluster:
            flags = await self._run_ingest(intents)
        else:
            by_slot: dict[int, list[int]] = {}
            for position, intent in enumerate(intents):
                by_slot.setdefault(self._slot(intent.target), []).append(position)
            parts = list(by_slot.values())
            replies = await asyncio.gather(
                *(self._run_ingest([intents[p] for p in part]) for part in parts), return_exceptions=True
            )
            errors = [reply for reply in replies if isinstance(reply, BaseException)]
            if errors:  # a refusal first: it makes the group split and find the batch at fault
                raise next((e for e in errors if not isinstance(e, StateUnavailable)), errors[0])
            flags = [0] * len(intents)
            for part, reply in zip(parts, replies, strict=True):
                assert not isinstance(reply, BaseException)
                for position, flag in zip(part, reply, strict=True):
                    flags[position] = flag
        results: list[tuple[bool, ...]] = []
        offset = 0
        for batch in batches:
            results.append(tuple(bool(flag) for flag in flags[offset : offset + len(batch)]))
            offset += len(batch)
        return results

    def _slot(self, target: str) -> int:
        return int(redis.crc.key_slot(_key(target, "sessions").encode()))

    async def _run_ingest(self, intents: Sequence[Intent]) -> list[int]:
        now = max(i.event.at for i in intents)
        index: dict[str, int] = {}
        for intent in intents:
            index.setdefault(intent.target, len(index) + 1)
        keys: list[str] = []
        for target in index:
            keys += [_key(target, part) for part in redis_scripts.INGEST_KEYS]
        args: list[str | int] = [
            _ms(now),
            self._cap,
            int(DEDUP_TTL.total_seconds()),
            int(ARRIVAL_HISTORY.total_seconds()),
            1 if self._wait_replicas else 0,
            len(index),
            *index,
        ]
        for intent in intents:
            keys.append(_key(intent.target, "dedup:" + json.dumps([intent.source, intent.id], separators=(",", ":"))))
            event = intent.event
            batch = "" if event.priority is _INTERACTIVE else "b"
            args.append(
                f"{index[intent.target]}|{_TYPE_CODES[event.type]}{batch}|{_ms(event.at + event.ttl)}|"
                f"{_minute(event.at)}|{event.session}"
            )
        async with self._calling():
            if self._wait_replicas:
                reply = await self._call_and_wait(self._ingest, keys, args)
            else:
                reply = await self._ingest(keys=keys, args=args)
        self.dropped_sessions += int(reply[0])
        return [int(flag) for flag in reply[1:]]

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
        alive = f"({_ms(now)}"
        async with self._calling(), self._client.pipeline(transaction=False) as pipe:
            for key in (_key(target, "sessions"), _key(target, "batch")):
                pipe.zcount(key, alive, "+inf")
                pipe.zrangebyscore(key, alive, "+inf", start=0, num=1, withscores=True)
            interactive, first, batch, first_batch = await pipe.execute()
        expiries = [entries[0][1] for entries in (first, first_batch) if entries]
        next_expiry = datetime.fromtimestamp(min(expiries) / 1000, UTC) if expiries else None
        return ledger.SessionCount(active=int(interactive) + int(batch), next_expiry=next_expiry, batch=int(batch))

    async def arrivals(self, target: str, since: datetime, until: datetime) -> dict[datetime, int]:
        async with self._calling():
            raw = await self._client.hgetall(_key(target, "arrivals"))
        lo, hi = _minute(since), _minute(until)
        counts = {int(m): int(n) for m, n in raw.items()}
        return {datetime.fromtimestamp(m * 60, UTC): n for m, n in sorted(counts.items()) if lo <= m < hi}

    async def load_decision(self, target: str) -> policy.FloorDecision | None:
        """The stored decision; None when there is none or what is stored cannot be read (logged)."""
        async with self._calling():
            raw = await self._client.get(_key(target, "decision"))
        if raw is None:
            return None
        try:
            return decode_decision(raw)
        except ValueError as e:
            log.warning("%s: ignoring the stored decision: %s", target, e)
            return None

    # --- decisions and leases ---

    async def save_decision(self, decision: policy.FloorDecision, *, fence: str = "") -> None:
        text = encode_decision(decision)
        keys = [_key(decision.target, "decision"), _key(decision.target, "leader")]
        async with self._calling():
            stored = await self._save(keys=keys, args=[fence, text, DECISIONS_CHANNEL])
        if not int(stored):
            raise LeaseLost(f"{decision.target}: lease token {fence!r} is no longer the holder's")

    async def claim_leases(
        self, targets: Sequence[str], *, holder: str, held: Mapping[str, str], ttl: float, acquire: bool = True
    ) -> list[Lease]:
        """Renew the leases `held` (target -> token), take free ones when `acquire`, report the rest.

        A taken lease gets a new token (the target's epoch, incremented, and `holder`), so a
        former holder's token never matches again. Raises StateUnavailable.
        """
        results: list[Lease] = []
        ttl_ms = max(1, round(ttl * 1000))
        for chunk in self._slot_chunks(targets):
            keys = [key for target in chunk for key in (_key(target, "leader"), _key(target, "epoch"))]
            args: list[str | int] = [holder, ttl_ms, 1 if acquire else 0, int(EPOCH_TTL.total_seconds())]
            args += [held.get(target, "") for target in chunk]
            async with self._calling():
                reply = await self._claim(keys=keys, args=args)
            for target, (holds, token, remaining_ms) in zip(chunk, reply, strict=True):
                text = token.decode() if isinstance(token, bytes) else str(token)
                results.append(
                    Lease(
                        target=target,
                        token=text if int(holds) else None,
                        holder=text,
                        remaining=max(0, int(remaining_ms)) / 1000,
                    )
                )
        return results

    async def release_leases(self, held: Mapping[str, str]) -> None:
        """Give up the leases `held` (target -> token) that still hold those tokens."""
        for chunk in self._slot_chunks(list(held)):
            async with self._calling():
                await self._release(keys=[_key(t, "leader") for t in chunk], args=[held[t] for t in chunk])

    def _slot_chunks(self, targets: Sequence[str]) -> list[list[str]]:
        """Targets in groups one script call may name: a single server takes any, a Cluster one slot."""
        if not self._cluster:
            return [list(targets[i : i + MAX_LEASES_PER_CALL]) for i in range(0, len(targets), MAX_LEASES_PER_CALL)]
        by_slot: dict[int, list[str]] = {}
        for target in targets:
            by_slot.setdefault(self._slot(target), []).append(target)
        return list(by_slot.values())

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
                if _is_unavailable(e):
                    raise
                await self._client.ping()  # ROLE renamed or not allowed: reachability is all we can tell
                return
            name = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
            if name != "master":
                raise StateUnavailable(f"redis is a {name}: it refuses writes (READONLY)")

    # --- listeners and lifetime ---

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._change_listeners.append(listener)

    def add_decision_listener(self, listener: DecisionListener) -> None:
        self._decision_listeners.append(listener)

    def add_resync_listener(self, listener: ResyncListener) -> None:
        self._resync_listeners.append(listener)

    async def close(self) -> None:
        """Stop listening, answer every waiting batch (503) and close the clients; bounded."""
        tasks = [task for task in (self._listening, self._committing) if task is not None and not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)  # a client library may hold on to a cancellation
        self._listening = self._committing = None
        for _, done in self._pending:
            _settle(done, StateUnavailable("the store is closing"))
        self._pending.clear()
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(2.0):
                await self._client.aclose()
                if self._sentinel is not None:
                    await self._sentinel.aclose()


def build_store(url: str, *, wait_replicas: int = 0, wait_timeout: float = 1.0) -> MemoryStore | RedisStore:
    """`memory`, or a Redis URL (see redis_connection: one server, Sentinel or Cluster).

    Raises ConfigError naming `--store` (or the wait option) for anything that cannot work.
    """
    if url == "memory":
        if wait_replicas:
            problem = targets.Problem("--redis-wait-replicas", wait_replicas, "needs a Redis store with replicas")
            raise targets.ConfigError("--store", [problem])
        return MemoryStore()
    deployment = redis_connection.parse_redis_url(url)
    if deployment.topology is redis_connection.Topology.CLUSTER and wait_replicas:
        problem = targets.Problem("--redis-wait-replicas", wait_replicas, "is not supported on Redis Cluster")
        raise targets.ConfigError("--store", [problem])
    return RedisStore.from_url(url, wait_replicas=wait_replicas, wait_timeout=wait_timeout)
