"""The embedded store: one process's state in memory, lost on exit, bounded."""

from __future__ import annotations

import collections
from collections.abc import Container, Sequence
from datetime import UTC, datetime

from prewarm.core import ledger, policy
from prewarm.service.store.leases import LeaseStore
from prewarm.service.store.listeners import StoreListeners
from prewarm.service.store.protocol import (
    ARRIVAL_HISTORY,
    DEDUP_TTL,
    IngestResult,
    Intent,
    arrival_minute,
)

_INTERACTIVE = ledger.Priority.INTERACTIVE


class MemoryStore(StoreListeners):
    """In-process state. Bounded: `sessions_per_target` per ledger and `dedup_keys` remembered."""

    def __init__(self, *, sessions_per_target: int = 10_000, dedup_keys: int = 100_000) -> None:
        super().__init__()
        self._sessions_per_target = sessions_per_target
        self._ledgers: dict[str, ledger.SessionLedger] = {}
        self._dedup: collections.OrderedDict[tuple[str, str], datetime] = collections.OrderedDict()
        self._dedup_capacity = dedup_keys
        self._arrivals: dict[str, dict[int, int]] = {}
        self._decisions: dict[str, policy.FloorDecision] = {}
        self.dedup_dropped = 0

    @property
    def leases(self) -> LeaseStore | None:
        """None: one process holds the state, so it decides every target."""
        return None

    async def record_intents(self, intents: Sequence[Intent]) -> IngestResult:
        new: list[bool] = []
        changed: set[str] = set()
        dropped: dict[str, int] = {}
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
            before = book.dropped
            if book.apply(intent.event):
                changed.add(intent.target)
            if book.dropped > before:
                dropped[intent.target] = dropped.get(intent.target, 0) + book.dropped - before
            if intent.event.type is ledger.SessionEventType.OPENED and intent.event.priority is _INTERACTIVE:
                counts = self._arrivals.setdefault(intent.target, {})
                minute = arrival_minute(now)
                counts[minute] = counts.get(minute, 0) + 1
                oldest = minute - int(ARRIVAL_HISTORY.total_seconds()) // 60
                if len(counts) > ARRIVAL_HISTORY.total_seconds() // 60:
                    for stale in [m for m in counts if m < oldest]:
                        del counts[stale]
        for target in sorted(changed):
            for listener in self._change_listeners:
                listener(target)
        for target, count in sorted(dropped.items()):
            for dropped_listener in self._dropped_listeners:
                dropped_listener(target, count)
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
        lo, hi = arrival_minute(since), arrival_minute(until)
        return {datetime.fromtimestamp(m * 60, UTC): n for m, n in sorted(counts.items()) if lo <= m < hi}

    async def load_decision(self, target: str) -> policy.FloorDecision | None:
        return self._decisions.get(target)

    async def save_decision(self, decision: policy.FloorDecision, *, fence: str = "") -> None:
        self._decisions[decision.target] = decision  # one process: it is the only decider
        for listener in self._decision_listeners:
            listener(decision)

    async def decision_inputs(
        self, targets: Sequence[str], now: datetime, *, cached: Container[str] = ()
    ) -> list[tuple[ledger.SessionCount, policy.FloorDecision | None]]:
        return [
            (await self.count_sessions(target, now), None if target in cached else self._decisions.get(target))
            for target in targets
        ]

    async def load_decisions(self, targets: Sequence[str]) -> list[policy.FloorDecision | None]:
        return [self._decisions.get(target) for target in targets]

    async def save_decisions(self, decisions: Sequence[tuple[policy.FloorDecision, str]]) -> list[bool]:
        for decision, fence in decisions:
            await self.save_decision(decision, fence=fence)
        return [True] * len(decisions)

    async def ping(self) -> None:
        return None

    async def check_writable(self) -> None:
        return None

    async def start(self) -> None:
        """Nothing to start: listeners are called as the writes happen."""
        return None

    async def close(self) -> None:
        self._change_listeners.clear()
        self._decision_listeners.clear()
        self._resync_listeners.clear()
        self._dropped_listeners.clear()
