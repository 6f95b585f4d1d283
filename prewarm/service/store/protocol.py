"""The store's contract: what the listener writes and the decider reads, and how it fails."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from prewarm.core import ledger, policy

if TYPE_CHECKING:
    from prewarm.service.store.leases import LeaseStore

ChangeListener = Callable[[str], None]
DecisionListener = Callable[[policy.FloorDecision], None]
ResyncListener = Callable[[], None]
DroppedListener = Callable[[str, int], None]

DEDUP_TTL = timedelta(hours=24)
ARRIVAL_HISTORY = timedelta(days=8)  # enough for "same minute last week" features


class StateUnavailable(RuntimeError):
    """The store cannot be reached, cannot be written (a read-only replica, a failover under way),
    or did not confirm the write in time; what was asked may or may not have been written."""


class BatchRejected(ValueError):
    """The store refused what a batch holds (not its own availability); nothing of it was written."""


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


def arrival_minute(at: datetime) -> int:
    """The minute (since the epoch) an arrival is counted in."""
    return int(at.timestamp()) // 60


class Store(Protocol):
    """What the listener writes and the decider reads. Every async method may raise StateUnavailable."""

    @property
    def leases(self) -> LeaseStore | None:
        """The per-target decider leases when several replicas share this store, else None."""
        ...

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

    async def decision_inputs(
        self, targets: Sequence[str], now: datetime, *, cached: Container[str] = ()
    ) -> list[tuple[ledger.SessionCount, policy.FloorDecision | None]]:
        """For each of `targets`, in order: its sessions alive at `now` and its last saved decision,
        read in one round trip where the store can (what deciding a batch of targets needs). The
        decision of a target in `cached` (the caller holds it) is None: not decoded again."""
        ...

    async def load_decisions(self, targets: Sequence[str]) -> list[policy.FloorDecision | None]:
        """The last decision saved for each of `targets`, in order, in one round trip where it can."""
        ...

    async def save_decisions(self, decisions: Sequence[tuple[policy.FloorDecision, str]]) -> list[bool]:
        """`save_decision` for each (decision, fence) in one round trip where the store can; False
        where the fence no longer held (that one was not written), True where it was stored."""
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

    def add_dropped_listener(self, listener: DroppedListener) -> None:
        """Call `listener(target, n)` when a write dropped `n` live sessions of `target` because
        its ledger was full (the sessions that expire first go first)."""
        ...

    async def start(self) -> None:
        """Begin relaying announcements to the listeners added so far (add them first)."""
        ...

    async def close(self) -> None:
        """Stop listening and release connections."""
        ...
