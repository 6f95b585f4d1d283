"""decide_floor: tables of signals -> floor/source/reason, and properties over random histories."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prewarm.core import policy, schedule
from prewarm.core.policy import Signals, Source
from prewarm.core.targets import BatchAllowance, TargetKind, TargetRef, TargetSpec

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def spec(**overrides: object) -> TargetSpec:
    fields: dict[str, object] = {"ref": TargetRef("ml", "chat"), "kind": TargetKind.KEDA, "max": 10}
    fields.update(overrides)
    return TargetSpec(**fields)  # type: ignore[arg-type]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(target: TargetSpec, steps: list[tuple[float, Signals]]) -> list[policy.FloorDecision]:
    """Decide at each (seconds after T0, signals), feeding each decision into the next."""
    decisions: list[policy.FloorDecision] = []
    previous = None
    for seconds, signals in steps:
        previous = policy.decide_floor(target, signals, at(seconds), previous)
        decisions.append(previous)
    return decisions


# (target, steps, expected (floor, source) after each step)
CASES = [
    (spec(), [(0, Signals())], [(0, Source.MIN)]),
    (spec(min=2), [(0, Signals(sessions=3))], [(2, Source.MIN)]),  # tie: the static source is named
    (spec(min=1), [(0, Signals(sessions=9))], [(3, Source.INTENT)]),
    (spec(sessions_per_replica=1, max=3), [(0, Signals(sessions=50))], [(3, Source.INTENT)]),
    (
        spec(hold=timedelta(seconds=120)),
        [(0, Signals(sessions=8)), (10, Signals()), (129.999, Signals()), (130, Signals())],
        [(2, Source.INTENT), (2, Source.INTENT), (2, Source.INTENT), (0, Source.MIN)],
    ),
    (
        # lowering in two steps: each level is held for `hold` after it was last wanted
        spec(hold=timedelta(seconds=60), sessions_per_replica=1),
        [
            (0, Signals(sessions=5)),
            (10, Signals(sessions=3)),
            (69, Signals(sessions=0)),
            (70, Signals(sessions=0)),
            (128, Signals()),
            (129, Signals()),
        ],
        [
            (5, Source.INTENT),
            (5, Source.INTENT),
            (5, Source.INTENT),
            (3, Source.INTENT),
            (3, Source.INTENT),
            (0, Source.MIN),
        ],
    ),
    (
        # a raise during a hold is immediate and restarts the hold for the new level
        spec(hold=timedelta(seconds=60), sessions_per_replica=1),
        [
            (0, Signals(sessions=2)),
            (10, Signals()),
            (20, Signals(sessions=4)),
            (30, Signals()),
            (89, Signals()),
            (90, Signals()),
        ],
        [
            (2, Source.INTENT),
            (2, Source.INTENT),
            (4, Source.INTENT),
            (4, Source.INTENT),
            (4, Source.INTENT),
            (0, Source.MIN),
        ],
    ),
    (spec(hold=timedelta(0)), [(0, Signals(sessions=4)), (1, Signals())], [(1, Source.INTENT), (0, Source.MIN)]),
    (
        spec(forecast=policy.targets.ForecastSettings(enabled=True)),
        [(0, Signals(forecast=math.nan))],
        [(0, Source.MIN)],
    ),
    (
        spec(forecast=policy.targets.ForecastSettings(enabled=True)),
        [(0, Signals(forecast=math.inf))],
        [(0, Source.MIN)],
    ),
    (spec(forecast=policy.targets.ForecastSettings(enabled=True)), [(0, Signals(forecast=-3.0))], [(0, Source.MIN)]),
    (
        spec(forecast=policy.targets.ForecastSettings(enabled=True)),
        [(0, Signals(forecast=2.2))],
        [(3, Source.FORECAST)],
    ),
    (
        spec(forecast=policy.targets.ForecastSettings(enabled=True)),
        [(0, Signals(forecast=2.0 + 1e-12))],
        [(2, Source.FORECAST)],
    ),
    (spec(), [(0, Signals(forecast=5.0))], [(0, Source.MIN)]),  # forecast disabled: ignored
    (
        # budget 1 replica-hour/day: 2 replicas above baseline for 30 min spend it all
        spec(budget=1.0, sessions_per_replica=1, min=1),
        [(0, Signals(sessions=3)), (1799, Signals(sessions=3)), (1800, Signals(sessions=3))],
        [(3, Source.INTENT), (3, Source.INTENT), (1, Source.BUDGET)],
    ),
    (
        # the budget also cuts a held floor, and does not wait for the hold
        spec(budget=0.5, sessions_per_replica=1, hold=timedelta(hours=2)),
        [(0, Signals(sessions=1)), (60, Signals()), (1800, Signals())],
        [(1, Source.INTENT), (1, Source.INTENT), (0, Source.BUDGET)],
    ),
    (spec(budget=0.0), [(0, Signals(sessions=1))], [(0, Source.BUDGET)]),
    (
        # a cron window is kept when the budget is spent
        spec(budget=0.0, cron=(schedule.CronWindow("0 12 * * *", timedelta(hours=1), 2),)),
        [(0, Signals(sessions=20))],
        [(2, Source.BUDGET)],
    ),
    # batch sessions: never above the batch allowance; interactive ones as before
    (spec(sessions_per_replica=1), [(0, Signals(batch_sessions=1000))], [(0, Source.MIN)]),
    (
        spec(sessions_per_replica=1, batch=BatchAllowance(floor=2)),
        [(0, Signals(batch_sessions=1000))],
        [(2, Source.BATCH)],
    ),
    (
        spec(sessions_per_replica=1, batch=BatchAllowance(floor=2)),
        [(0, Signals(sessions=3, batch_sessions=1000))],
        [(3, Source.INTENT)],
    ),
    (
        # 1 interactive + 5 batch sessions need 2 replicas of 4 slots; interactive alone needs 1
        spec(sessions_per_replica=4, batch=BatchAllowance(floor=2)),
        [(0, Signals(sessions=1, batch_sessions=5))],
        [(2, Source.BATCH)],
    ),
    (
        spec(sessions_per_replica=1, batch=BatchAllowance(floor=2)),
        [(0, Signals(sessions=2, batch_sessions=5))],
        [(2, Source.INTENT)],
    ),
    (
        # batch share 25% of 1 replica-hour: 2 batch replicas spend it in 450 s; interactive still raises
        spec(sessions_per_replica=1, budget=1.0, batch=BatchAllowance(floor=2, budget_share=0.25)),
        [
            (0, Signals(batch_sessions=5)),
            (449, Signals(batch_sessions=5)),
            (450, Signals(batch_sessions=5)),
            (460, Signals(sessions=1, batch_sessions=5)),
        ],
        [(2, Source.BATCH), (2, Source.BATCH), (0, Source.MIN), (1, Source.INTENT)],
    ),
    (
        # a spent batch share also ends a held batch level, without waiting for the hold
        spec(sessions_per_replica=1, hold=timedelta(hours=2), budget=1.0, batch=BatchAllowance(1, 0.1)),
        [(0, Signals(batch_sessions=1)), (60, Signals()), (360, Signals())],
        [(1, Source.BATCH), (1, Source.BATCH), (0, Source.MIN)],
    ),
]
IDS = [
    "nothing-wanted",
    "min-wins-tie",
    "intent-ceil",
    "ceiling-clamp",
    "hold-down-timing",
    "hold-steps-down-level-by-level",
    "raise-during-hold",
    "no-hold",
    "nan-forecast-is-zero",
    "inf-forecast-is-zero",
    "negative-forecast-is-zero",
    "forecast-ceil",
    "forecast-float-noise",
    "forecast-disabled",
    "budget-exhaustion",
    "budget-cuts-hold",
    "zero-budget",
    "budget-keeps-cron",
    "batch-flood-without-allowance",
    "batch-flood-capped-at-allowance",
    "interactive-above-batch-allowance",
    "batch-tops-up-interactive",
    "batch-tie-names-intent",
    "batch-share-exhaustion",
    "batch-share-cuts-hold",
]


@pytest.mark.parametrize(("target", "steps", "expected"), CASES, ids=IDS)
def test_decide_floor_table(
    target: TargetSpec, steps: list[tuple[float, Signals]], expected: list[tuple[int, Source]]
) -> None:
    assert [(d.floor, d.source) for d in run(target, steps)] == expected


def test_reasons_are_one_line_and_name_the_signal() -> None:
    target = spec(max=2, sessions_per_replica=1, hold=timedelta(seconds=60), budget=1.0)
    first, held, spent = run(target, [(0, Signals(sessions=5)), (10, Signals()), (1800, Signals(sessions=5))])
    assert first.reason == "intent 5 (5 interactive sessions / 1 per replica), clamped to max 2"
    assert held.reason == "holding 2 (intent) until 2026-05-01T12:01:10Z; now wanted 0: min 0"
    assert spent.reason == (
        "budget 1 replica-hours/day spent (1.00 used); intent 5 (5 interactive sessions / 1 per replica) ignored, "
        "floor 0 from max(min, cron) until midnight UTC"
    )
    assert all("\n" not in d.reason for d in (first, held, spent))


def test_batch_reasons_name_the_class() -> None:
    target = spec(sessions_per_replica=1, hold=timedelta(0), budget=1.0, batch=BatchAllowance(2, 0.25))
    raised, spent = run(target, [(0, Signals(batch_sessions=40)), (450, Signals(batch_sessions=40))])
    assert raised.reason == "batch 2 (40 batch sessions / 1 per replica, batch floor 2)"
    assert raised.next_change == at(450)  # 2 batch replicas spend the 0.25 replica-hour share in 450 s
    assert spent.reason == "min 0"  # the batch candidate lost: min is named, batch is 0
    mixed = policy.decide_floor(target, Signals(sessions=1, batch_sessions=40), at(500), spent)
    assert mixed.reason == "intent 1 (1 interactive sessions / 1 per replica)"
    capped = policy.decide_floor(spec(max=1, batch=BatchAllowance(1)), Signals(batch_sessions=9), at(0), None)
    assert capped.reason == "batch 1 (9 batch sessions / 4 per replica, batch floor 1)"


def test_batch_replicas_and_their_spend_are_accounted() -> None:
    target = spec(sessions_per_replica=1, budget=10.0, batch=BatchAllowance(floor=3, budget_share=0.5))
    first, second, third = run(
        target,
        [
            (0, Signals(sessions=1, batch_sessions=9)),  # floor 3: 1 for interactive, 2 for batch
            (1800, Signals(sessions=2, batch_sessions=9)),  # floor 3: 1 for batch
            (3600, Signals(sessions=4, batch_sessions=9)),  # floor 4: none for batch
        ],
    )
    assert [(d.floor, d.batch_replicas) for d in (first, second, third)] == [(3, 2), (3, 1), (4, 0)]
    assert second.batch_used == pytest.approx(1.0)  # 2 replicas for 30 min
    assert third.batch_used == pytest.approx(1.5)
    assert third.budget_used == pytest.approx(3.0)  # 3 replicas above the baseline of 0 for an hour


def test_cron_reason_and_next_change() -> None:
    target = spec(cron=(schedule.CronWindow("0 22 * * *", timedelta(hours=4), 1, "UTC"),))
    decision = policy.decide_floor(target, Signals(), datetime(2026, 5, 1, 23, tzinfo=UTC), None)
    assert (decision.floor, decision.source) == (1, Source.CRON)
    assert decision.reason == "cron 1 ('0 22 * * *' in UTC until 2026-05-02T02:00:00Z)"
    assert decision.next_change == datetime(2026, 5, 2, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "floor", "next_change"),
    [
        (datetime(2026, 3, 8, 12, 54, tzinfo=UTC), 0, datetime(2026, 3, 8, 12, 55, tzinfo=UTC)),
        (datetime(2026, 3, 8, 12, 55, tzinfo=UTC), 2, datetime(2026, 3, 9, 1, 55, tzinfo=UTC)),
        (datetime(2026, 11, 1, 13, 55, tzinfo=UTC), 2, datetime(2026, 11, 2, 2, 55, tzinfo=UTC)),
    ],
    ids=["ny-spring-sunday-before", "ny-spring-sunday-edt", "ny-fall-sunday-est"],
)
def test_cron_in_new_york_across_dst(now: datetime, floor: int, next_change: datetime) -> None:
    target = spec(cron=(schedule.CronWindow("55 8 * * *", timedelta(hours=13), 2, "America/New_York"),))
    decision = policy.decide_floor(target, Signals(), now, None)
    assert (decision.floor, decision.next_change) == (floor, next_change)


def test_next_change_is_the_earliest_of_hold_expiry_and_budget() -> None:
    target = spec(sessions_per_replica=1, hold=timedelta(seconds=60), budget=1.0)
    first = policy.decide_floor(target, Signals(sessions=2, next_session_expiry=at(3600)), at(0), None)
    assert first.next_change == at(1800)  # 2 replicas spend 1 replica-hour in 30 min, before the expiry
    second = policy.decide_floor(target, Signals(), at(10), first)
    assert second.next_change == at(70)  # the hold ends before the budget runs out


def test_budget_resets_at_utc_midnight() -> None:
    target = spec(sessions_per_replica=1, budget=1.0)
    late = datetime(2026, 5, 1, 23, 0, tzinfo=UTC)
    first = policy.decide_floor(target, Signals(sessions=2), late, None)
    spent = policy.decide_floor(target, Signals(sessions=2), late + timedelta(minutes=30), first)
    assert (spent.floor, spent.source) == (0, Source.BUDGET)
    assert spent.next_change == datetime(2026, 5, 2, tzinfo=UTC)
    fresh = policy.decide_floor(target, Signals(sessions=2), datetime(2026, 5, 2, tzinfo=UTC), spent)
    assert (fresh.floor, fresh.budget_used) == (2, 0.0)


def test_budget_spend_is_split_at_midnight() -> None:
    target = spec(sessions_per_replica=1, budget=10.0)
    first = policy.decide_floor(target, Signals(sessions=2), datetime(2026, 5, 1, 23, tzinfo=UTC), None)
    later = policy.decide_floor(target, Signals(sessions=2), datetime(2026, 5, 2, 0, 30, tzinfo=UTC), first)
    assert later.budget_day.isoformat() == "2026-05-02"
    assert later.budget_used == pytest.approx(1.0)  # 2 replicas x 30 min after midnight


def test_time_never_goes_backwards() -> None:
    first = policy.decide_floor(spec(), Signals(sessions=1), at(100), None)
    second = policy.decide_floor(spec(), Signals(), at(50), first)
    assert second.decided_at == at(100)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        policy.decide_floor(spec(), Signals(), datetime(2026, 5, 1), None)


# --- properties over random histories ---

steps_strategy = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=4000),
        st.integers(min_value=0, max_value=200),
        st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    ),
    min_size=1,
    max_size=12,
)
target_strategy = st.builds(
    lambda lo, extra, spr, hold, budget, forecast: spec(
        min=lo,
        max=lo + extra,
        sessions_per_replica=spr,
        hold=timedelta(seconds=hold),
        budget=budget,
        forecast=policy.targets.ForecastSettings(enabled=forecast),
        cron=(schedule.CronWindow("*/20 * * * *", timedelta(minutes=7), lo + extra),),
    ),
    st.integers(0, 5),
    st.integers(0, 10),
    st.integers(1, 8),
    st.integers(0, 600),
    st.one_of(st.none(), st.floats(0, 5)),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    target=target_strategy,
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=4000),
            st.integers(min_value=0, max_value=6),
            st.one_of(st.none(), st.floats(0, 3)),
        ),
        min_size=1,
        max_size=12,
    ),
    allowance=st.integers(0, 4),
    share=st.one_of(st.none(), st.floats(0, 1)),
    flood=st.lists(st.integers(0, 10_000), min_size=12, max_size=12),
)
def test_a_batch_flood_never_lifts_the_floor_above_the_batch_allowance(
    target: TargetSpec,
    steps: list[tuple[float, int, float | None]],
    allowance: int,
    share: float | None,
    flood: list[int],
) -> None:
    """Beside the same interactive history, batch sessions add nothing above max(allowance, that floor),
    and spend at most their share of the budget, deciding at every change as the decider does."""
    allowance = min(allowance, target.max)
    share = share if target.budget is not None else None
    # no cron window and a low min, so that batch has room to matter
    target = dataclasses.replace(target, min=min(target.min, 1), cron=(), batch=BatchAllowance(allowance, share))
    flooded: policy.FloorDecision | None = None
    alone: policy.FloorDecision | None = None
    signals = (Signals(), Signals())
    elapsed = 0.0

    def decide(now: datetime) -> None:
        nonlocal flooded, alone
        flooded = policy.decide_floor(target, signals[0], now, flooded)
        alone = policy.decide_floor(target, signals[1], now, alone)
        assert all(d.next_change is None or d.next_change > now for d in (flooded, alone))
        assert flooded.floor <= max(alone.floor, allowance)
        assert flooded.batch_replicas <= allowance
        if share is not None and target.budget is not None:
            assert flooded.batch_used <= share * target.budget + 1e-6

    for (gap, sessions, forecast), batch in zip(steps, flood, strict=False):
        elapsed += gap
        while flooded is not None and alone is not None:
            due = [d.next_change for d in (flooded, alone) if d.next_change is not None and d.next_change < at(elapsed)]
            if not due:
                break
            decide(min(due))
        signals = (
            Signals(sessions=sessions, forecast=forecast, batch_sessions=batch),
            Signals(sessions=sessions, forecast=forecast),
        )
        decide(at(elapsed))


@settings(max_examples=200, deadline=None)
@given(target=target_strategy, steps=steps_strategy, extra=st.integers(1, 50))
def test_floor_within_bounds_and_monotone_in_sessions(
    target: TargetSpec, steps: list[tuple[float, int, float | None]], extra: int
) -> None:
    previous = None
    elapsed = 0.0
    for gap, sessions, forecast in steps:
        elapsed += gap
        now = at(elapsed)
        decision = policy.decide_floor(target, Signals(sessions=sessions, forecast=forecast), now, previous)
        more = policy.decide_floor(target, Signals(sessions=sessions + extra, forecast=forecast), now, previous)
        assert target.min <= decision.floor <= target.max
        assert more.floor >= decision.floor
        assert decision.next_change is None or decision.next_change > now
        previous = decision
