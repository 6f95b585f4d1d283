"""Session ledger: idempotence, reordering, TTL boundary, bounded memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prewarm.core.ledger import Priority, SessionCount, SessionEvent, SessionEventType, SessionLedger

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(seconds=300)
OPENED, BEAT, CLOSED = SessionEventType.OPENED, SessionEventType.HEARTBEAT, SessionEventType.CLOSED
INTERACTIVE, BATCH = Priority.INTERACTIVE, Priority.BATCH


def ev(
    kind: SessionEventType, session: str, at_s: float, ttl_s: float = 300, priority: Priority = INTERACTIVE
) -> SessionEvent:
    return SessionEvent(
        type=kind, session=session, at=T0 + timedelta(seconds=at_s), ttl=timedelta(seconds=ttl_s), priority=priority
    )


# (events in arrival order, seconds after T0 to count at, expected active, expected next expiry offset)
CASES = [
    ([ev(OPENED, "a", 0)], 0, 1, 300),
    ([ev(OPENED, "a", 0)], 299.999, 1, 300),
    ([ev(OPENED, "a", 0)], 300, 0, None),  # alive while now < expires_at: gone exactly at the TTL
    ([ev(OPENED, "a", 0), ev(OPENED, "a", 0)], 10, 1, 300),
    ([ev(OPENED, "a", 0), ev(BEAT, "a", 200)], 400, 1, 500),
    ([ev(OPENED, "a", 0), ev(BEAT, "a", 200), ev(BEAT, "a", 100)], 450, 1, 500),  # late beat never shortens
    ([ev(BEAT, "a", 0)], 10, 1, 300),  # a heartbeat without its opened still counts
    ([ev(OPENED, "a", 0), ev(CLOSED, "a", 50)], 60, 0, None),
    ([ev(CLOSED, "a", 50), ev(OPENED, "a", 0)], 60, 0, None),  # closed before opened wins
    ([ev(CLOSED, "a", 50), ev(BEAT, "a", 40)], 60, 0, None),
    ([ev(OPENED, "a", 0), ev(CLOSED, "a", 50), ev(CLOSED, "a", 50)], 60, 0, None),
    ([ev(OPENED, "a", 0), ev(OPENED, "b", 100, ttl_s=60)], 120, 2, 160),
    ([ev(OPENED, "a", 0), ev(OPENED, "b", 0), ev(CLOSED, "b", 10)], 20, 1, 300),
]
IDS = [
    "opened-counts",
    "just-before-ttl",
    "ttl-boundary-exclusive",
    "duplicate-opened-idempotent",
    "heartbeat-extends",
    "reordered-heartbeat-never-shortens",
    "heartbeat-alone-opens",
    "closed-ends",
    "closed-before-opened-wins",
    "closed-before-heartbeat-wins",
    "duplicate-closed-idempotent",
    "per-event-ttl",
    "one-of-two-closed",
]


@pytest.mark.parametrize(("events", "at_s", "active", "expiry_s"), CASES, ids=IDS)
def test_count(events: list[SessionEvent], at_s: float, active: int, expiry_s: float | None) -> None:
    book = SessionLedger()
    book.apply_all(events)
    expected_expiry = None if expiry_s is None else T0 + timedelta(seconds=expiry_s)
    assert book.count(T0 + timedelta(seconds=at_s)) == SessionCount(active=active, next_expiry=expected_expiry)


# (events, seconds after T0 to count at, expected count)
CLASS_CASES = [
    ([ev(OPENED, "a", 0, priority=BATCH)], 10, SessionCount(1, T0 + TTL, batch=1)),
    (
        [ev(OPENED, "a", 0), ev(OPENED, "b", 100, ttl_s=60, priority=BATCH)],
        120,
        SessionCount(2, T0 + timedelta(seconds=160), batch=1),
    ),
    # a session keeps the class of the first event seen for it
    ([ev(OPENED, "a", 0, priority=BATCH), ev(BEAT, "a", 100)], 350, SessionCount(1, T0 + timedelta(seconds=400), 1)),
    ([ev(OPENED, "a", 0), ev(BEAT, "a", 100, priority=BATCH)], 350, SessionCount(1, T0 + timedelta(seconds=400), 0)),
    # a closed without the class ends a batch session too
    ([ev(OPENED, "a", 0, priority=BATCH), ev(CLOSED, "a", 50)], 60, SessionCount(0, None, 0)),
    ([ev(OPENED, "a", 0, priority=BATCH)], 300, SessionCount(0, None, 0)),
]


@pytest.mark.parametrize(
    ("events", "at_s", "expected"),
    CLASS_CASES,
    ids=["batch-counted-apart", "both-classes", "first-class-wins", "first-class-wins-interactive",
         "closed-ends-batch", "batch-expires"],
)  # fmt: skip
def test_count_by_class(events: list[SessionEvent], at_s: float, expected: SessionCount) -> None:
    book = SessionLedger()
    book.apply_all(events)
    assert book.count(T0 + timedelta(seconds=at_s)) == expected


def test_a_batch_flood_never_evicts_an_interactive_session() -> None:
    book = SessionLedger(capacity=3)
    book.apply_all([ev(OPENED, "chat-1", 0), ev(OPENED, "chat-2", 1)])
    for i in range(50):
        book.apply(ev(OPENED, f"job-{i}", 2 + i, priority=BATCH))
    assert book.count(T0 + timedelta(seconds=60)) == SessionCount(3, T0 + TTL, batch=1)
    assert book.dropped == 49
    book.apply(ev(OPENED, "chat-3", 70))  # a new interactive session pushes out the batch one
    assert book.count(T0 + timedelta(seconds=71)) == SessionCount(3, T0 + TTL, batch=0)


def test_apply_reports_changes_only() -> None:
    book = SessionLedger()
    assert book.apply(ev(OPENED, "a", 0)) is True
    assert book.apply(ev(OPENED, "a", 0)) is False
    assert book.apply(ev(BEAT, "a", 10)) is True
    assert book.apply(ev(CLOSED, "a", 20)) is True
    assert book.apply(ev(CLOSED, "a", 20)) is False
    assert book.apply(ev(OPENED, "a", 30)) is False


def test_prune_forgets_expired_entries_and_tombstones() -> None:
    book = SessionLedger()
    book.apply_all([ev(OPENED, "a", 0), ev(CLOSED, "b", 0), ev(OPENED, "c", 200)])
    assert book.prune(T0 + TTL) == 2
    assert len(book) == 1
    # once the tombstone is gone the id may be used again
    book.apply(ev(OPENED, "b", 400))
    assert book.count(T0 + timedelta(seconds=410)).active == 2


def test_capacity_bounds_memory_and_counts_drops() -> None:
    book = SessionLedger(capacity=3)
    for i in range(10):
        book.apply(ev(OPENED, f"s{i}", i))
    assert len(book) == 3
    assert book.dropped == 7
    # the sessions kept are those that expire last
    assert book.count(T0 + timedelta(seconds=10)) == SessionCount(active=3, next_expiry=T0 + timedelta(seconds=307))


def test_capacity_evicts_dead_entries_before_live_ones() -> None:
    book = SessionLedger(capacity=2)
    book.apply_all([ev(OPENED, "live", 0), ev(CLOSED, "gone", 0)])
    book.apply(ev(OPENED, "new", 1))
    assert book.dropped == 0
    assert book.count(T0 + timedelta(seconds=2)).active == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"at": datetime(2026, 5, 1), "ttl": TTL}, "SessionEvent.at must be timezone-aware"),
        ({"at": T0, "ttl": timedelta(0)}, "SessionEvent.ttl must be positive"),
    ],
    ids=["naive-time", "zero-ttl"],
)
def test_event_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        SessionEvent(type=OPENED, session="a", **kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == message


class ReferenceLedger:
    """The ledger's rules written the slow, obvious way: every operation walks every entry."""

    def __init__(self, capacity: int) -> None:
        self.entries: dict[str, list[object]] = {}  # session -> [expires_at, closed, batch]
        self.capacity = capacity
        self.dropped = 0

    def apply(self, event: SessionEvent) -> None:
        expires_at = event.at + event.ttl
        entry = self.entries.get(event.session)
        if entry is None:
            if len(self.entries) >= self.capacity:
                for sid in [s for s, e in self.entries.items() if e[0] <= event.at]:  # type: ignore[operator]
                    del self.entries[sid]
            if len(self.entries) >= self.capacity:
                # tombstones first, then batch sessions, each the one that expires first
                victim = min(
                    self.entries,
                    key=lambda s: (not self.entries[s][1], not self.entries[s][1] and not self.entries[s][2],
                                   self.entries[s][0], s),
                )  # fmt: skip
                self.dropped += not self.entries[victim][1]
                del self.entries[victim]
            self.entries[event.session] = [expires_at, event.type is CLOSED, event.priority is BATCH]
        elif event.type is CLOSED:
            entry[0], entry[1] = max(entry[0], expires_at), True  # type: ignore[call-overload]
        elif not entry[1]:
            entry[0] = max(entry[0], expires_at)  # type: ignore[call-overload]

    def count(self, now: datetime) -> SessionCount:
        alive = sorted((e[0], e[2]) for e in self.entries.values() if not e[1] and now < e[0])  # type: ignore[operator]
        batch = sum(1 for _, is_batch in alive if is_batch)
        return SessionCount(active=len(alive), next_expiry=alive[0][0] if alive else None, batch=batch)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([OPENED, BEAT, CLOSED]),
            st.sampled_from("abcdefg"),
            st.integers(0, 1000),
            st.integers(1, 400),
            st.sampled_from([INTERACTIVE, BATCH]),
        ),
        max_size=60,
    ),
    st.integers(1, 5),
    st.lists(st.integers(0, 1500), min_size=1, max_size=5),
)
def test_sorted_bookkeeping_matches_the_obvious_rules(
    raw: list[tuple[SessionEventType, str, int, int, Priority]], capacity: int, probes: list[int]
) -> None:
    book, reference = SessionLedger(capacity=capacity), ReferenceLedger(capacity)
    for kind, session, at_s, ttl_s, priority in raw:
        event = ev(kind, session, at_s, ttl_s, priority)
        book.apply(event)
        reference.apply(event)
        assert len(book) == len(reference.entries)
    assert book.dropped == reference.dropped
    for at_s in sorted(probes):
        now = T0 + timedelta(seconds=at_s)
        assert book.count(now) == reference.count(now)
