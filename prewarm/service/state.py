"""Durable state behind the decision loop: sessions, dedup keys, arrival counters and decisions.

`MemoryStore` is the embedded default (one process, lost on exit). `RedisStore` keeps the same
state in Redis, shared by every replica, and announces changes on pub/sub. Both write a batch of
intents all or nothing, and both bound their memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions

from prewarm.core import ledger, policy, targets

log = logging.getLogger(__name__)

ChangeListener = Callable[[str], None]
DecisionListener = Callable[[policy.FloorDecision], None]

_INTERACTIVE = ledger.Priority.INTERACTIVE
DEDUP_TTL = timedelta(hours=24)
ARRIVAL_HISTORY = timedelta(days=8)  # enough for "same minute last week" features


class StateUnavailable(RuntimeError):
    """The store cannot be reached; nothing was written."""


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

    async def save_decision(self, decision: policy.FloorDecision) -> None:
        """Store `decision` as the current one for its target and publish it."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise StateUnavailable otherwise."""
        ...

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Call `listener(target)` whenever a target's signals change (from any writer)."""
        ...

    def add_decision_listener(self, listener: DecisionListener) -> None:
        """Call `listener(decision)` whenever a decision is saved (by any replica)."""
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

    async def save_decision(self, decision: policy.FloorDecision) -> None:
        self._decisions[decision.target] = decision
        for listener in self._decision_listeners:
            listener(decision)

    async def ping(self) -> None:
        return None

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._change_listeners.append(listener)

    def add_decision_listener(self, listener: DecisionListener) -> None:
        self._decision_listeners.append(listener)

    async def close(self) -> None:
        self._change_listeners.clear()
        self._decision_listeners.clear()

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

# KEYS: three per target of the batch (sessions, closed, arrivals), then one dedup key per intent,
#       then one per target: its batch sessions.
# ARGV: now_ms, session cap, dedup ttl s, arrivals ttl s, number of targets, the target names, then
#       one packed string per intent: "<target index>|<o|h|c>[b]|<expires_ms>|<minute>|<session id>"
#       (`b` marks a batch session: kept in the batch set, not counted as an arrival).
# Returns {dropped, then 1 (accepted) or 0 (duplicate) per intent}, and publishes the changed
# targets, newline-separated, as one message on prewarm:changes. All keys of a target share its
# {namespace/name} hash tag. A session keeps the class of the first event seen for it.
_INGEST_SCRIPT = r"""
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local dedup_ttl = tonumber(ARGV[3])
local arrivals_ttl = tonumber(ARGV[4])
local ntargets = tonumber(ARGV[5])
local first_intent = 6 + ntargets
local first_batch = ntargets*3 + #ARGV - first_intent + 1
for t = 1, ntargets do
  redis.call('ZREMRANGEBYSCORE', KEYS[t*3-2], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[t*3-1], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[first_batch + t], '-inf', now)
end
local dropped = 0
local results = {0}
local changed, touched = {}, {}
for a = first_intent, #ARGV do
  local ti, kind, batch, expires, minute, session = string.match(ARGV[a], '^(%d+)|(%a)(b?)|(%d+)|(%d+)|(.*)$')
  ti = tonumber(ti)
  local sessions, closed, arrivals = KEYS[ti*3-2], KEYS[ti*3-1], KEYS[ti*3]
  local batches = KEYS[first_batch + ti]
  if not redis.call('SET', KEYS[ntargets*3 + a - first_intent + 1], '1', 'NX', 'EX', dedup_ttl) then
    results[#results + 1] = 0
  else
    results[#results + 1] = 1
    touched[ti] = true
    if kind == 'c' then
      if redis.call('ZREM', sessions, session) + redis.call('ZREM', batches, session) > 0 then changed[ti] = true end
      redis.call('ZADD', closed, 'GT', expires, session)
    elseif not redis.call('ZSCORE', closed, session) then
      local live = sessions
      if batch == 'b' then
        if not redis.call('ZSCORE', sessions, session) then live = batches end
      elseif redis.call('ZSCORE', batches, session) then
        live = batches
      end
      if redis.call('ZADD', live, 'GT', 'CH', expires, session) == 1 then changed[ti] = true end
      local size = redis.call('ZCARD', live)
      if size > cap then
        redis.call('ZPOPMIN', live, size - cap)
        dropped = dropped + size - cap
      end
    end
    if kind == 'o' and batch == '' then
      redis.call('HINCRBY', arrivals, minute, 1)
    end
  end
end
local names = {}
for ti, _ in pairs(touched) do
  redis.call('PEXPIRE', KEYS[ti*3-2], dedup_ttl * 1000)
  redis.call('PEXPIRE', KEYS[ti*3-1], dedup_ttl * 1000)
  redis.call('PEXPIRE', KEYS[first_batch + ti], dedup_ttl * 1000)
  redis.call('EXPIRE', KEYS[ti*3], arrivals_ttl)
  if changed[ti] then names[#names + 1] = ARGV[5 + ti] end
end
if #names > 0 then
  redis.call('PUBLISH', 'prewarm:changes', table.concat(names, '\n'))
end
results[1] = dropped
return results
"""

_TYPE_CODES = {
    ledger.SessionEventType.OPENED: "o",
    ledger.SessionEventType.HEARTBEAT: "h",
    ledger.SessionEventType.CLOSED: "c",
}
MAX_GROUP_INTENTS = 512
CHANGES_CHANNEL = "prewarm:changes"
DECISIONS_CHANNEL = "prewarm:decisions"


def _key(target: str, part: str) -> str:
    return f"prewarm:{{{target}}}:{part}"


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class RedisStore:
    """State in Redis (a single server, or Sentinel through a Sentinel-aware client).

    Handlers fail fast: a short socket timeout turns an unreachable server into StateUnavailable.
    """

    def __init__(self, client: aioredis.Redis, *, sessions_per_target: int = 10_000) -> None:
        self._client = client
        self._cap = sessions_per_target
        self._ingest = client.register_script(_INGEST_SCRIPT)
        self._change_listeners: list[ChangeListener] = []
        self._decision_listeners: list[DecisionListener] = []
        self._listening: asyncio.Task[None] | None = None
        self._pending: collections.deque[tuple[Sequence[Intent], asyncio.Future[IngestResult]]] = collections.deque()
        self._committing: asyncio.Task[None] | None = None
        self.dropped_sessions = 0

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 1.0, sessions_per_target: int = 10_000) -> RedisStore:
        """Build a store from `redis://host:port/db` (or `rediss://`), failing fast on timeouts."""
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=10
        )
        return cls(client, sessions_per_target=sessions_per_target)

    async def start(self) -> None:
        """Begin relaying pub/sub changes and decisions to the listeners added so far.

        Add listeners before starting: the subscription covers the channels they need. It
        reconnects on its own when the server goes away.
        """
        if self._listening is None:
            self._listening = asyncio.create_task(self._listen(), name="redis-pubsub")

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    # Only what someone listens to: decisions are a message per decision.
                    channels = [CHANGES_CHANNEL] if self._change_listeners else []
                    channels += [DECISIONS_CHANNEL] if self._decision_listeners else []
                    if not channels:
                        return
                    await pubsub.subscribe(*channels)
                    backoff = 0.05
                    async for message in pubsub.listen():
                        self._relay(message)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
                log.warning("redis pub/sub lost (%s); retrying in %.2fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _relay(self, message: dict[str, Any]) -> None:
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

    async def record_intents(self, intents: Sequence[Intent]) -> IngestResult:
        """Store a batch atomically; concurrent batches are group-committed in one script call.

        Batches that arrive while a call is in flight are written together by the next call (at
        most `MAX_GROUP_INTENTS` intents, whole batches only), so round trips stay few under load.
        """
        if not intents:
            return IngestResult(new=())
        done: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._pending.append((intents, done))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_pending(), name="redis-group-commit")
        return await done

    async def _commit_pending(self) -> None:
        while self._pending:
            group: list[tuple[Sequence[Intent], asyncio.Future[IngestResult]]] = []
            size = 0
            while self._pending and (not group or size + len(self._pending[0][0]) <= MAX_GROUP_INTENTS):
                batch, done = self._pending.popleft()
                group.append((batch, done))
                size += len(batch)
            try:
                flags = await self._run_ingest([intent for batch, _ in group for intent in batch])
            except StateUnavailable as e:
                for _, done in group:
                    if not done.done():
                        done.set_exception(e)
                continue
            offset = 0
            for batch, done in group:
                new = tuple(bool(flag) for flag in flags[offset : offset + len(batch)])
                offset += len(batch)
                if not done.done():
                    done.set_result(IngestResult(new=new))

    async def _run_ingest(self, intents: Sequence[Intent]) -> list[int]:
        now = max(i.event.at for i in intents)
        index: dict[str, int] = {}
        for intent in intents:
            index.setdefault(intent.target, len(index) + 1)
        keys: list[str] = []
        for target in index:
            keys += [_key(target, "sessions"), _key(target, "closed"), _key(target, "arrivals")]
        args: list[str | int] = [
            _ms(now),
            self._cap,
            int(DEDUP_TTL.total_seconds()),
            int(ARRIVAL_HISTORY.total_seconds()),
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
        keys += [_key(target, "batch") for target in index]
        try:
            reply = await self._ingest(keys=keys, args=args)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise StateUnavailable(f"redis: {e}") from e
        self.dropped_sessions += int(reply[0])
        return [int(flag) for flag in reply[1:]]

    async def count_sessions(self, target: str, now: datetime) -> ledger.SessionCount:
        alive = f"({_ms(now)}"
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in (_key(target, "sessions"), _key(target, "batch")):
                    pipe.zcount(key, alive, "+inf")
                    pipe.zrangebyscore(key, alive, "+inf", start=0, num=1, withscores=True)
                interactive, first, batch, first_batch = await pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise StateUnavailable(f"redis: {e}") from e
        expiries = [entries[0][1] for entries in (first, first_batch) if entries]
        next_expiry = datetime.fromtimestamp(min(expiries) / 1000, UTC) if expiries else None
        return ledger.SessionCount(active=int(interactive) + int(batch), next_expiry=next_expiry, batch=int(batch))

    async def arrivals(self, target: str, since: datetime, until: datetime) -> dict[datetime, int]:
        try:
            raw = await self._client.hgetall(_key(target, "arrivals"))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise StateUnavailable(f"redis: {e}") from e
        lo, hi = _minute(since), _minute(until)
        counts = {int(m): int(n) for m, n in raw.items()}
        return {datetime.fromtimestamp(m * 60, UTC): n for m, n in sorted(counts.items()) if lo <= m < hi}

    async def load_decision(self, target: str) -> policy.FloorDecision | None:
        try:
            raw = await self._client.get(_key(target, "decision"))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise StateUnavailable(f"redis: {e}") from e
        return None if raw is None else decode_decision(raw)

    async def save_decision(self, decision: policy.FloorDecision) -> None:
        text = encode_decision(decision)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(_key(decision.target, "decision"), text)
                pipe.publish(DECISIONS_CHANNEL, text)
                await pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise StateUnavailable(f"redis: {e}") from e

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise StateUnavailable(f"redis: {e}") from e

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._change_listeners.append(listener)

    def add_decision_listener(self, listener: DecisionListener) -> None:
        self._decision_listeners.append(listener)

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        await self._client.aclose()


def build_store(url: str) -> MemoryStore | RedisStore:
    """`memory`, or `redis://host:port/db` (`rediss://` for TLS, `unix://` for a socket).

    Raises ConfigError naming `--store` for anything else.
    """
    if url == "memory":
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore.from_url(url)
    raise targets.ConfigError("--store", [targets.Problem("--store", url, "is not memory or a redis:// URL")])
