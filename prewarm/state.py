"""Durable state behind the decision loop: sessions per target, and the last decision per target.

`MemoryStore` is the embedded default (one process, lost on exit). A shared store (Redis) implements
the same `Store` protocol so every replica serves the same stored decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from prewarm import ledger, policy

ChangeListener = Callable[[str], None]


class StateUnavailable(RuntimeError):
    """The store cannot be reached; nothing was written."""


class Store(Protocol):
    """What the listener writes and the decider reads. Every method may raise StateUnavailable."""

    async def record_session_events(self, target: str, events: Sequence[ledger.SessionEvent]) -> None:
        """Durably apply `events` to `target`'s sessions, all or none, then announce the change."""
        ...

    async def count_sessions(self, target: str, now: datetime) -> ledger.SessionCount:
        """Sessions of `target` alive at `now`."""
        ...

    async def load_decision(self, target: str) -> policy.FloorDecision | None:
        """The last decision saved for `target`, or None."""
        ...

    async def save_decision(self, decision: policy.FloorDecision) -> None:
        """Store `decision` as the current one for its target."""
        ...

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Call `listener(target)` whenever a target's signals change (from any writer)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryStore:
    """In-process state with bounded sessions per target (see `ledger.SessionLedger.capacity`)."""

    def __init__(self, *, sessions_per_target: int = 10_000) -> None:
        self._sessions_per_target = sessions_per_target
        self._ledgers: dict[str, ledger.SessionLedger] = {}
        self._decisions: dict[str, policy.FloorDecision] = {}
        self._listeners: list[ChangeListener] = []

    async def record_session_events(self, target: str, events: Sequence[ledger.SessionEvent]) -> None:
        book = self._ledgers.get(target)
        if book is None:
            book = self._ledgers[target] = ledger.SessionLedger(capacity=self._sessions_per_target)
        if book.apply_all(events):
            self._announce(target)

    async def count_sessions(self, target: str, now: datetime) -> ledger.SessionCount:
        book = self._ledgers.get(target)
        if book is None:
            return ledger.SessionCount(active=0, next_expiry=None)
        book.prune(now)
        return book.count(now)

    async def load_decision(self, target: str) -> policy.FloorDecision | None:
        return self._decisions.get(target)

    async def save_decision(self, decision: policy.FloorDecision) -> None:
        self._decisions[decision.target] = decision

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def close(self) -> None:
        self._listeners.clear()

    def dropped_sessions(self, target: str) -> int:
        """Live sessions of `target` lost because its ledger was full."""
        book = self._ledgers.get(target)
        return 0 if book is None else book.dropped

    def _announce(self, target: str) -> None:
        for listener in self._listeners:
            listener(target)
