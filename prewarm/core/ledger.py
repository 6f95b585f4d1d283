"""Session ledger: which intent sessions of one target are alive at an instant.

Pure: every operation takes the event's time. Events are idempotent and may arrive in any order:
a session is alive while `now < expires_at`; heartbeats only ever extend it; a `closed` leaves a
tombstone so that an `opened` or heartbeat that arrives after it (reordered delivery) stays dead.
Tombstones are kept for the session TTL after the close, longer than any late copy should take.
Sessions are counted by class (interactive or batch); a session's class is the one of the first
event seen for it.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Iterable
from datetime import datetime, timedelta


class Priority(enum.Enum):
    """A session's class: interactive sessions raise floors, batch ones only up to the batch allowance."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


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
    priority: Priority = Priority.INTERACTIVE

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("SessionEvent.at must be timezone-aware")
        if self.ttl <= timedelta(0):
            raise ValueError("SessionEvent.ttl must be positive")


@dataclasses.dataclass(slots=True)
class _Entry:
    expires_at: datetime
    closed: bool
    priority: Priority = Priority.INTERACTIVE


@dataclasses.dataclass(frozen=True, slots=True)
class SessionCount:
    """Sessions alive at an instant (`batch` of them batch), and when the first expires (a floor may drop then)."""

    active: int
    next_expiry: datetime | None
    batch: int = 0


class SessionLedger:
    """The sessions of one target. Deterministic: the same events give the same answers.

    `capacity` bounds memory: when full, an `opened` for a new id evicts the entry that expires
    first (tombstones first, then batch sessions, so a batch flood never pushes out an interactive
    session) and `dropped` counts live sessions lost that way.
    Live sessions (per class) and tombstones are also kept sorted by expiry, so counting, pruning
    and eviction cost O(log n) searches instead of a walk over every session.
    """

    __slots__ = ("_dead", "_entries", "_live", "capacity", "dropped")

    def __init__(self, *, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._entries: dict[str, _Entry] = {}
        # (expires_at, session) of open sessions, per class, sorted
        self._live: dict[Priority, list[tuple[datetime, str]]] = {p: [] for p in Priority}
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
                self._add(session, _Entry(expires_at=expires_at, closed=True, priority=event.priority))
                return True
            if entry.closed:
                if expires_at > entry.expires_at:
                    self._move(session, entry, expires_at, closed=True)
                return False
            self._move(session, entry, max(entry.expires_at, expires_at), closed=True)
            return True
        if entry is None:
            self._make_room(event.at)
            self._add(session, _Entry(expires_at=expires_at, closed=False, priority=event.priority))
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
        """Live sessions at `now` (alive while now < expires_at), how many are batch, and the earliest expiry."""
        active = batch = 0
        next_expiry: datetime | None = None
        for priority, ordered in self._live.items():
            first_alive = bisect.bisect_right(ordered, now, key=_expiry)
            alive = len(ordered) - first_alive
            if not alive:
                continue
            active += alive
            batch += alive if priority is Priority.BATCH else 0
            first = ordered[first_alive][0]
            next_expiry = first if next_expiry is None else min(next_expiry, first)
        return SessionCount(active=active, next_expiry=next_expiry, batch=batch)

    def prune(self, now: datetime) -> int:
        """Forget entries (live or tombstones) that expired at or before `now`; return how many."""
        forgotten = 0
        for ordered in (*self._live.values(), self._dead):
            gone = bisect.bisect_right(ordered, now, key=_expiry)
            for _, session in ordered[:gone]:
                del self._entries[session]
            del ordered[:gone]
            forgotten += gone
        return forgotten

    def __len__(self) -> int:
        return len(self._entries)

    def _ordered(self, entry: _Entry) -> list[tuple[datetime, str]]:
        return self._dead if entry.closed else self._live[entry.priority]

    def _add(self, session: str, entry: _Entry) -> None:
        self._entries[session] = entry
        bisect.insort(self._ordered(entry), (entry.expires_at, session))

    def _move(self, session: str, entry: _Entry, expires_at: datetime, *, closed: bool) -> None:
        ordered = self._ordered(entry)
        del ordered[bisect.bisect_left(ordered, (entry.expires_at, session))]
        entry.expires_at, entry.closed = expires_at, closed
        bisect.insort(self._ordered(entry), (expires_at, session))

    def _make_room(self, now: datetime) -> None:
        if len(self._entries) < self.capacity:
            return
        self.prune(now)
        if len(self._entries) < self.capacity:
            return
        if self._dead:
            _, victim = self._dead.pop(0)
        else:
            batch = self._live[Priority.BATCH]
            _, victim = (batch or self._live[Priority.INTERACTIVE]).pop(0)
            self.dropped += 1
        del self._entries[victim]


def _expiry(item: tuple[datetime, str]) -> datetime:
    return item[0]
