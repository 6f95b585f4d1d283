"""Session ledger: which intent sessions of one target are alive at an instant.

Pure: every operation takes the event's time. Events are idempotent and may arrive in any order:
a session is alive while `now < expires_at`; heartbeats only ever extend it; a `closed` leaves a
tombstone so that an `opened` or heartbeat that arrives after it (reordered delivery) stays dead.
Tombstones are kept for the session TTL after the close, longer than any late copy should take.
"""

from __future__ import annotations

import bisect
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
    Live sessions and tombstones are also kept sorted by expiry, so counting, pruning and
    eviction cost O(log n) searches instead of a walk over every session.
    """

    __slots__ = ("_dead", "_entries", "_live", "capacity", "dropped")

    def __init__(self, *, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._entries: dict[str, _Entry] = {}
        self._live: list[tuple[datetime, str]] = []  # (expires_at, session) of open sessions, sorted
        self._dead: list[tuple[datetime, str]] = []  # the same for tombstones (closed sessions)
        self.capacity = capacity
        self.dropped = 0

    def apply(self, event: SessionEvent) -> bool:
        """Apply one event; return True when it changed what the ledger holds."""
        expires_at = event.at + event.ttl
        session = event.session
        entry = self._entries.get(session)
        if event.type is SessionEventType.CLOSED:
            if entry is None:
                self._make_room(event.at)
                self._add(session, _Entry(expires_at=expires_at, closed=True))
                return True
            if entry.closed:
                if expires_at > entry.expires_at:
                    self._move(session, entry, expires_at, closed=True)
                return False
            self._move(session, entry, max(entry.expires_at, expires_at), closed=True)
            return True
        if entry is None:
            self._make_room(event.at)
            self._add(session, _Entry(expires_at=expires_at, closed=False))
            return True
        if entry.closed or expires_at <= entry.expires_at:
            return False
        self._move(session, entry, expires_at, closed=False)
        return True

    def apply_all(self, events: Iterable[SessionEvent]) -> bool:
        """Apply events in order; return True when any changed the ledger."""
        changed = False
        for event in events:
            changed = self.apply(event) or changed
        return changed

    def count(self, now: datetime) -> SessionCount:
        """Live sessions at `now` (alive while now < expires_at) and the earliest expiry among them."""
        first_alive = bisect.bisect_right(self._live, now, key=_expiry)
        if first_alive == len(self._live):
            return SessionCount(active=0, next_expiry=None)
        return SessionCount(active=len(self._live) - first_alive, next_expiry=self._live[first_alive][0])

    def prune(self, now: datetime) -> int:
        """Forget entries (live or tombstones) that expired at or before `now`; return how many."""
        forgotten = 0
        for ordered in (self._live, self._dead):
            gone = bisect.bisect_right(ordered, now, key=_expiry)
            for _, session in ordered[:gone]:
                del self._entries[session]
            del ordered[:gone]
            forgotten += gone
        return forgotten

    def __len__(self) -> int:
        return len(self._entries)

    def _add(self, session: str, entry: _Entry) -> None:
        self._entries[session] = entry
        bisect.insort(self._dead if entry.closed else self._live, (entry.expires_at, session))

    def _move(self, session: str, entry: _Entry, expires_at: datetime, *, closed: bool) -> None:
        ordered = self._dead if entry.closed else self._live
        del ordered[bisect.bisect_left(ordered, (entry.expires_at, session))]
        entry.expires_at, entry.closed = expires_at, closed
        bisect.insort(self._dead if closed else self._live, (expires_at, session))

    def _make_room(self, now: datetime) -> None:
        if len(self._entries) < self.capacity:
            return
        self.prune(now)
        if len(self._entries) < self.capacity:
            return
        if self._dead:
            _, victim = self._dead.pop(0)
        else:
            _, victim = self._live.pop(0)
            self.dropped += 1
        del self._entries[victim]


def _expiry(item: tuple[datetime, str]) -> datetime:
    return item[0]
