"""The fleet budget as a cap: what is left of the day shared out, marginal gain first when it binds."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from prewarm.core import fleet_budget, policy, targets
from prewarm.core.fleet_budget import FleetMember

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # 12 hours left in the budget day


# At noon half the day's spend is done (uniform): a member expects to spend as much again as its
# day's total, estimated from (used + a quarter day of its tuned hours) / (0.5 + 0.25), less used.
@pytest.mark.parametrize(
    ("budget", "members", "expected"),
    [
        (  # 48 h left; a expects (6 + 3) / 0.75 / 2 = 6 h more, b (6 + 9) / 0.75 / 2 = 10: spare 32 h as 6:10
            60.0,
            [FleetMember("a", 6.0, 0.5, 1.0), FleetMember("b", 6.0, 1.5, 9.0)],
            {"a": 6.0 + 6.0 + 12.0, "b": 6.0 + 10.0 + 20.0},
        ),
        (  # 24 h expected, 12 h left: the better gain (b, 14 h expected) takes all 12
            36.0,
            [FleetMember("a", 12.0, 0.5, 1.0), FleetMember("b", 12.0, 1.5, 9.0)],
            {"a": 12.0, "b": 24.0},
        ),
        (  # 22 h expected, 8 h left: the better gain (b, 10 h expected) takes the 8, a gives up its 12
            32.0,
            [FleetMember("a", 12.0, 1.0, 1.0), FleetMember("b", 12.0, 0.5, 9.0)],
            {"a": 12.0, "b": 20.0},
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


# Two members each expecting 12 more hours at their tuned setting (the top rung, 24 warm h/day),
# whose ladders scale to 0, 6 and 12 hours for the rest of the day. Steps saving 60/6 (a) and 50/6
# (b) cold starts per hour come before the top steps (20/6 each).
LADDER_A = ((4.0, 100.0), (14.0, 40.0), (24.0, 20.0))
LADDER_B = ((4.0, 100.0), (14.0, 50.0), (24.0, 30.0))


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (48.0, {"a": fleet_budget.Grant(24.0, 2), "b": fleet_budget.Grant(24.0, 2)}),
        (36.0, {"a": fleet_budget.Grant(18.0, 1), "b": fleet_budget.Grant(18.0, 1)}),
        (33.0, {"a": fleet_budget.Grant(18.0, 1), "b": fleet_budget.Grant(15.0, 0)}),
        (30.0, {"a": fleet_budget.Grant(18.0, 1), "b": fleet_budget.Grant(12.0, 0)}),
        (20.0, {"a": fleet_budget.Grant(12.0, 0), "b": fleet_budget.Grant(12.0, 0)}),
    ],
    ids=["fits", "binds-both-step-down", "binds-headroom-below-a-step", "binds-best-step-first", "over"],
)
def test_a_binding_cap_steps_every_member_down_its_ladder(
    budget: float, expected: dict[str, fleet_budget.Grant]
) -> None:
    members = [FleetMember("a", 12.0, 1.0, 2.0, LADDER_A), FleetMember("b", 12.0, 1.0, 2.0, LADDER_B)]
    grants = fleet_budget.share_rungs(budget=budget, members=members, now=NOON)
    assert {n: g.rung for n, g in grants.items()} == {n: g.rung for n, g in expected.items()}
    assert {n: g.budget for n, g in grants.items()} == pytest.approx({n: g.budget for n, g in expected.items()})
    assert sum(g.budget for g in grants.values()) <= max(budget, 24.0) + 1e-9


def test_a_ladder_runs_cheapest_first() -> None:
    with pytest.raises(ValueError, match="cheapest first"):
        FleetMember("a", 0.0, 1.0, 1.0, ((10.0, 5.0), (4.0, 9.0)))


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


@pytest.mark.parametrize(
    ("profile", "at", "done"),
    [
        (None, NOON, 0.5),
        ([1.0] * 12 + [0.0] * 12, NOON, 1.0),  # all spend in the first half of the day
        ([0.0] * 12 + [1.0] * 12, NOON, 0.0),
        ([1.0] * 24, datetime(2026, 3, 2, 6, 30, tzinfo=UTC), 6.5 / 24),
        ([0.0] * 24, NOON, 0.5),  # nothing spent on the history: uniform
    ],
    ids=["uniform", "front-loaded", "back-loaded", "within-an-hour", "empty-profile"],
)
def test_done_share_follows_the_days_profile(profile: list[float] | None, at: datetime, done: float) -> None:
    assert fleet_budget.done_share(profile, at) == pytest.approx(done)


def test_a_day_whose_spend_comes_late_is_not_cut_for_its_morning() -> None:
    # 10 h spent by noon, in a day that spends three quarters of its hours in the afternoon
    member = FleetMember("a", 10.0, 1.0, 1.0)
    uniform = fleet_budget.share_budget(budget=60.0, members=[member], now=NOON)
    assert uniform == {"a": 60.0}
    late = [0.5] * 12 + [1.5] * 12
    assert fleet_budget.expected_rest(member, fleet_budget.done_share(late, NOON)) == pytest.approx(
        (10.0 + 6.0) / 0.5 * 0.75
    )
