"""The fleet budget as a cap: what is left of the day shared out, marginal gain first when it binds."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from prewarm.core import fleet_budget, policy, targets
from prewarm.core.fleet_budget import FleetMember

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # 12 hours left in the budget day


@pytest.mark.parametrize(
    ("budget", "members", "expected"),
    [
        (  # 48 h left, 6 h and 18 h expected: each gets them, the spare 24 h in proportion (1:3)
            60.0,
            [FleetMember("a", 6.0, 0.5, 1.0), FleetMember("b", 6.0, 1.5, 9.0)],
            {"a": 6.0 + 6.0 + 6.0, "b": 6.0 + 18.0 + 18.0},
        ),
        (  # 24 h expected, 12 h left: the better gain (b, 18 h expected) takes all 12
            36.0,
            [FleetMember("a", 12.0, 0.5, 1.0), FleetMember("b", 12.0, 1.5, 9.0)],
            {"a": 12.0, "b": 24.0},
        ),
        (  # the better gain's 6 h fit; the other gets the 2 h left
            32.0,
            [FleetMember("a", 12.0, 1.0, 1.0), FleetMember("b", 12.0, 0.5, 9.0)],
            {"a": 12.0 + 2.0, "b": 12.0 + 6.0},
        ),
        (  # already over: nobody gets more, nothing spent is taken back
            10.0,
            [FleetMember("a", 8.0, 1.0, 1.0), FleetMember("b", 6.0, 1.0, 2.0)],
            {"a": 8.0, "b": 6.0},
        ),
        (  # nobody expects to spend: the whole rest shared evenly
            20.0,
            [FleetMember("a", 0.0, 0.0, 0.0), FleetMember("b", 0.0, 0.0, 0.0)],
            {"a": 10.0, "b": 10.0},
        ),
        (20.0, [], {}),
    ],
    ids=["fits", "binds-gain-first", "binds-remainder", "over", "no-expectations", "empty"],
)
def test_share_budget(budget: float, members: list[FleetMember], expected: dict[str, float]) -> None:
    shares = fleet_budget.share_budget(budget=budget, members=members, now=NOON)
    assert shares == pytest.approx(expected)
    assert sum(shares.values()) <= max(budget, sum(m.used for m in members)) + 1e-9


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")], ids=["negative", "nan", "inf"])
def test_a_member_needs_finite_non_negative_numbers(bad: float) -> None:
    with pytest.raises(ValueError, match=r"FleetMember\.rate must be a finite number >= 0"):
        FleetMember("a", 0.0, bad, 0.0)


def test_hours_left_run_to_the_next_utc_midnight() -> None:
    assert fleet_budget.hours_left(NOON) == 12.0
    assert fleet_budget.hours_left(datetime(2026, 3, 2, 23, 30, tzinfo=UTC)) == 0.5
    assert fleet_budget.hours_left(datetime(2026, 3, 2, 0, 0, tzinfo=UTC)) == 24.0


def test_capped_budget_is_the_smaller_of_own_and_fleet_share() -> None:
    assert fleet_budget.capped_budget(None, {"a": 3.0}, "a") == 3.0
    assert fleet_budget.capped_budget(2.0, {"a": 3.0}, "a") == 2.0
    assert fleet_budget.capped_budget(2.0, {}, "a") == 2.0
    assert fleet_budget.capped_budget(None, {}, "a") is None


def test_a_share_is_held_by_the_decision_core_and_spend_never_passes_it() -> None:
    spec = targets.TargetSpec(
        ref=targets.TargetRef("ml", "a"),
        kind=targets.TargetKind.KEDA,
        max=8,
        hold=timedelta(0),
        forecast=targets.ForecastSettings(enabled=True),
    )
    decision = None
    at = NOON
    for _ in range(12):  # the forecast keeps asking for 4 replicas; each 15 min the share is recomputed
        used = policy.spent_today(decision, at)
        share = fleet_budget.share_budget(budget=3.0, members=[FleetMember("ml/a", used, 4.0, 1.0)], now=at)
        capped = dataclasses.replace(spec, budget=share["ml/a"])
        decision = policy.decide_floor(capped, policy.Signals(forecast=4.0), at, decision)
        at += timedelta(minutes=15)
    assert policy.spent_today(decision, at) == pytest.approx(3.0)
    assert decision is not None and decision.floor == 0 and decision.source is policy.Source.BUDGET
