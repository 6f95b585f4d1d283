"""Session ledger: which intent sessions of one target are alive at an instant.

Pure: every operation takes the event's time. Events are idempotent and may arrive in any order:
a session is alive while `now < expires_at`; heartbeats only ever extend it; a `closed` leaves a
tombstone so that an `opened` or heartbeat that arrives after it (reordered delivery) stays dead.
Tombstones are kept for the session TTL after the close, longer than any late copy should take.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from datetime import datetime, timedelta


class SessionEventType(enum.Enum):
    """What a frontend said about a session."""

    OPENED = "dev.prewarm.session.opened"
    HEARTBEAT = "dev.prewarm.session.heartbeat"
    CLOSED = "dev.prewarm.session.closed"


@dataclasses.dataclass(frozen=True, slots=True)
class SessionEvent:
    """One validated session event for one target; `at` is when it happened, `ttl` how long it lasts."""

    type: SessionEventType
    session: str
    at: datetime
    ttl: timedelta

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("SessionEvent.at must be timezone-aware")
        if self.ttl <= timedelta(0):
            raise ValueError("SessionEvent.ttl must be positive")


@dataclasses.dataclass(slots=True)
class _Entry:
    expires_at: datetime
    closed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class SessionCount:
    """Sessions alive at an instant, and when the first of them expires (a floor may drop then)."""

    active: int
    next_expiry: datetime | None


class SessionLedger:
    """The sessions of one target. Deterministic: the same events give the same answers.

    `capacity` bounds memory: when full, an `opened` for a new id evicts the entry that expires
    first (dead entries before live ones) and `dropped` counts live sessions lost that way.
    """

    __slots__ = ("_entries", "capacity", "dropped")

    def __init__(self, *, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._entries: dict[str, _Entry] = {}
        self.capacity = capacity
        self.dropped = 0

    def apply(self, event: SessionEvent) -> bool:
        """Apply one event; return True when it changed what the ledger holds."""
        expires_at = event.at + event.ttl
        entry = self._entries.get(event.session)
        if event.type is SessionEventType.CLOSED:
            if entry is None:
                self._make_room(event.at)
                self._entries[event.session] = _Entry(expires_at=expires_at, closed=True)
                return True
            if entry.closed:
                if expires_at > entry.expires_at:
                    entry.expires_at = expires_at
                return False
            entry.closed = True
            entry.expires_at = max(entry.expires_at, expires_at)
            return True
        if entry is None:
            self._make_room(event.at)
            self._entries[event.session] = _Entry(expires_at=expires_at, closed=False)
            return True
        if entry.closed or expires_at <= entry.expires_at:
            return False
        entry.expires_at = expires_at
        return True

    def apply_all(self, events: Iterable[SessionEvent]) -> bool:
        """Apply events in order; return True when any changed the ledger."""
        changed = False
        for event in events:
            changed = self.apply(event) or changed
        return changed

    def count(self, now: datetime) -> SessionCount:
        """Live sessions at `now` (alive while now < expires_at) and the earliest expiry among them."""
        active = 0
        next_expiry: datetime | None = None
        for entry in self._entries.values():
            if not entry.closed and now < entry.expires_at:
                active += 1
                if next_expiry is None or entry.expires_at < next_expiry:
                    next_expiry = entry.expires_at
        return SessionCount(active=active, next_expiry=next_expiry)

    def prune(self, now: datetime) -> int:
        """Forget entries (live or tombstones) that expired at or before `now`; return how many."""
        expired = [sid for sid, e in self._entries.items() if e.expires_at <= now]
        for sid in expired:
            del self._entries[sid]
        return len(expired)

    def __len__(self) -> int:
        return len(self._entries)

    def _make_room(self, now: datetime) -> None:
        if len(self._entries) < self.capacity:
            return
        self.prune(now)
        if len(self._entries) < self.capacity:
            return
        victim = min(self._entries, key=lambda sid: (not self._entries[sid].closed, self._entries[sid].expires_at))
        if not self._entries[victim].closed:
            self.dropped += 1
        del self._entries[victim]
