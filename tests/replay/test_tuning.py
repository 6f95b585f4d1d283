"""The tuner: cheapest settings for objectives and marginal-gain fleet budgets, on hand-built curves
with worked answers, and on hand-made traces replayed through the real forecast and simulation."""

from __future__ import annotations

from datetime import UTC, datetime

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from prewarm.core import targets
from prewarm.replay import evaluator, simulation, traces, tuned_runs, tuning

OFF = tuning.OFF
LOW = tuning.Setting(0.5)
MID = tuning.Setting(0.9)
HIGH = tuning.Setting(0.99, 10, 2)


def curve(name: str, points: dict[tuning.Setting, tuple[int, float]], requests: int = 100) -> tuning.TargetCurve:
    """A curve from {setting: (cold starts, warm hours per day)}."""
    return tuning.TargetCurve(
        name,
        {s: tuning.Score(requests, cold, hours) for s, (cold, hours) in points.items()},
        {600.0: tuning.Score(requests, requests // 2, 5.0), 7200.0: tuning.Score(requests, requests // 4, 20.0)},
    )


def spec(name: str, *, objective: float | None = None, fleet: str = targets.DEFAULT_FLEET) -> targets.TargetSpec:
    return targets.TargetSpec(
        ref=targets.TargetRef("ns", name),
        kind=targets.TargetKind.KEDA,
        max=10,
        forecast=targets.ForecastSettings(enabled=True),
        objective=targets.ObjectiveSettings(objective),
        fleet=fleet,
    )


@pytest.mark.parametrize(
    ("objective", "expected", "met"),
    [
        (0.50, OFF, True),  # off already meets it: 40 of 100
        (0.20, MID, True),  # LOW has 25%, MID 10% is the cheapest at or under 20%
        (0.10, MID, True),  # exactly at the objective counts as met
        (0.05, HIGH, True),
        (0.0, HIGH, False),  # nothing reaches 0%: the fewest cold starts
    ],
    ids=["loose", "middle", "exactly-at", "tight", "unreachable"],
)
def test_cheapest_setting_meeting_an_objective(objective: float, expected: tuning.Setting, met: bool) -> None:
    c = curve("a", {OFF: (40, 1.0), LOW: (25, 3.0), MID: (10, 6.0), HIGH: (2, 30.0)})
    assert tuning.cheapest_meeting(c, objective) == (expected, met)


def test_the_lower_hull_drops_dominated_and_concave_points() -> None:
    worse = tuning.Setting(0.7)
    c = curve(
        "a",
        {
            OFF: (100, 0.0),
            LOW: (60, 10.0),  # above the segment OFF -> MID: buys cold starts at a worse rate than MID
            worse: (90, 12.0),  # dominated: costs more than LOW and saves less
            MID: (10, 20.0),
            HIGH: (5, 40.0),
        },
    )
    assert [s for s, _ in tuning.lower_hull(c)] == [OFF, MID, HIGH]


def test_a_budget_goes_where_it_saves_the_most_cold_starts_per_hour() -> None:
    busy = curve("busy", {OFF: (100, 0.0), MID: (20, 10.0)})  # 8 cold starts saved per hour
    rare = curve("rare", {OFF: (10, 0.0), MID: (0, 10.0)})  # 1 per hour
    assert tuning.allocate({"busy": busy, "rare": rare}, 10.0) == {"busy": MID, "rare": OFF}
    assert tuning.allocate({"busy": busy, "rare": rare}, 20.0) == {"busy": MID, "rare": MID}
    assert tuning.allocate({"busy": busy, "rare": rare}, 9.9) == {"busy": OFF, "rare": OFF}


def test_a_step_that_does_not_fit_lets_a_cheaper_step_of_another_target_through() -> None:
    big = curve("big", {OFF: (100, 0.0), MID: (0, 50.0)})  # 2 per hour, but 50 h
    small = curve("small", {OFF: (10, 0.0), MID: (5, 5.0)})  # 1 per hour, 5 h
    assert tuning.allocate({"big": big, "small": small}, 20.0) == {"big": OFF, "small": MID}


def test_tune_pools_rare_targets_and_leaves_targets_without_objective_or_budget_alone() -> None:
    curves = {
        "busy": curve("busy", {OFF: (50, 1.0), MID: (4, 8.0), HIGH: (1, 20.0)}, requests=100),
        "rare-a": curve("rare-a", {OFF: (3, 0.1), MID: (1, 2.0)}, requests=5),
        "rare-b": curve("rare-b", {OFF: (5, 0.1), MID: (0, 2.0)}, requests=5),
        "untuned": curve("untuned", {OFF: (5, 0.1), MID: (0, 2.0)}, requests=500),
    }
    specs = {
        "busy": spec("busy", objective=0.05),
        "rare-a": spec("rare-a", objective=0.2),
        "rare-b": spec("rare-b", objective=0.2),
        "untuned": spec("untuned", fleet="other"),
    }
    result = tuning.tune(curves, specs, {})
    assert set(result.choices) == {"busy", "rare-a", "rare-b"}
    assert result.choices["busy"].setting == MID and not result.choices["busy"].pooled
    # pooled: 8 of 10 cold with OFF is 80%, 1 of 10 with MID is 10% <= 20%
    assert result.choices["rare-a"].setting == result.choices["rare-b"].setting == MID
    assert result.choices["rare-a"].pooled and "pooled over 2 rare" in result.choices["rare-a"].reason


def test_a_fleet_budget_is_what_objectives_leave_of_it() -> None:
    curves = {
        "slo": curve("slo", {OFF: (50, 1.0), MID: (4, 8.0)}),
        "a": curve("a", {OFF: (50, 1.0), MID: (10, 6.0)}),
        "b": curve("b", {OFF: (50, 1.0), MID: (30, 6.0)}),
    }
    specs = {"slo": spec("slo", objective=0.05), "a": spec("a"), "b": spec("b")}
    result = tuning.tune(curves, specs, {targets.DEFAULT_FLEET: 15.0})
    # slo takes 8 h; a and b start at 1 h each (10 h); 5 h are left: a's step (40 per 5 h) fits, b's not
    assert {n: c.setting for n, c in result.choices.items()} == {"slo": MID, "a": MID, "b": OFF}
    fleet = result.fleets[targets.DEFAULT_FLEET]
    assert (fleet.objective_hours_per_day, fleet.allocated_hours_per_day) == (8.0, 15.0)
    assert not fleet.over_budget


def test_the_keep_alive_that_reaches_the_same_share_is_reported() -> None:
    c = curve("a", {OFF: (40, 1.0), MID: (30, 6.0)})  # reference keep-alives: 50% at 600 s, 25% at 7200 s
    assert tuning.keepalive_for_share(c, 0.30) == (7200.0, c.keepalive[7200.0])
    assert tuning.keepalive_for_share(c, 0.10) is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 100), st.floats(0.0, 100.0)), min_size=1, max_size=8),
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6),
)
def test_a_tighter_objective_never_costs_fewer_warm_hours(points: list[tuple[int, float]], shares: list[float]) -> None:
    grid = [OFF, *(tuning.Setting(q) for q in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99))]
    c = curve("a", dict(zip(grid, points, strict=False)))
    hours = [c.scores[tuning.cheapest_meeting(c, share)[0]].warm_hours_per_day for share in sorted(shares)]
    assert hours == sorted(hours, reverse=True)


# --- end to end on hand-made traces: the real forecast, decision core and simulation ---

T0 = datetime(2024, 3, 4, tzinfo=UTC).timestamp()
DAYS = 4
TUNE_DAYS = 2.0


def replay_of(requests: list[traces.TargetRequests], *, cold: float = 30.0) -> evaluator.Replay:
    trace = traces.Trace(
        tuple(requests),
        start=min(float(r.arrivals[0]) for r in requests),
        end=max(float(r.arrivals[-1]) for r in requests),
    )
    settings_ = evaluator.ReplaySettings(
        cold_starts=np.asarray([cold]),
        seed=0,
        score_from=T0 + (DAYS - 1) * 86400.0,
        tune_days=TUNE_DAYS,
        refit_minutes=720,
    )
    return evaluator.Replay(trace, settings_)


def requests(name: str, arrivals: np.ndarray, run_s: float = 10.0) -> traces.TargetRequests:
    return traces.TargetRequests(name, arrivals, np.full(arrivals.size, run_s), ("g",) * arrivals.size)


def test_a_fleet_budget_that_fits_one_target_goes_to_the_regular_one() -> None:
    regular = requests("regular", T0 + np.arange(0, DAYS * 86400.0, 150.0))  # every 2.5 min: cold every time
    # three a day at times nothing predicts: pre-warming it buys little per hour
    rare_times = np.random.default_rng(7).uniform(0, 86400.0, (DAYS, 3)) + np.arange(DAYS)[:, None] * 86400.0
    rare = requests("rare", T0 + np.sort(rare_times.ravel()))
    replay = replay_of([regular, rare])
    window = tuned_runs.tuning_window(replay, TUNE_DAYS)
    specs = tuned_runs.replay_specs(replay, objective=None)
    curves = tuned_runs.history_curves(replay, window, specs)
    off = {name: c.scores[tuning.OFF] for name, c in curves.items()}
    # Reactive alone every regular request is cold: loaded at 30 s, run to 40 s, let go by the KPA
    # 90 s later at 130 s, 20 s before the next one. Kept warm, none is.
    assert off["regular"].cold_share == pytest.approx(1.0)
    steps = {}
    for name, c in curves.items():
        (_, cheapest), (_, next_point), *_ = tuning.lower_hull(c)
        steps[name] = next_point.warm_hours_per_day - cheapest.warm_hours_per_day
    # a budget that fits either target's first step, not both
    budget = off["regular"].warm_hours_per_day + off["rare"].warm_hours_per_day + max(steps.values()) + 0.01
    assert sum(steps.values()) > max(steps.values()) + 0.01
    result = tuning.tune(curves, specs, {targets.DEFAULT_FLEET: budget})
    assert result.choices["regular"].setting != tuning.OFF
    assert result.choices["regular"].predicted.cold_share < 0.05
    assert result.choices["rare"].setting == tuning.OFF
    assert result.fleets[targets.DEFAULT_FLEET].allocated_hours_per_day <= budget


def test_objective_zero_never_buys_fewer_warm_hours_than_the_oracle() -> None:
    rng = np.random.default_rng(3)
    bursts = np.concatenate([T0 + d * 3600.0 * 5 + np.cumsum(rng.exponential(40.0, 6)) for d in range(DAYS * 4)])
    replay = replay_of([requests("bursty", np.sort(bursts), run_s=20.0)])
    window = tuned_runs.tuning_window(replay, TUNE_DAYS)
    specs = tuned_runs.replay_specs(replay, objective=0.0)
    curves = tuned_runs.history_curves(replay, window, specs)
    choice = tuning.tune(curves, specs, {}).choices["bursty"]
    request = replay.trace.targets[0]
    oracle = simulation.simulate_oracle(
        request.arrivals,
        request.exec_seconds,
        simulation.ColdStarts(replay.settings.cold_starts, 0, 0),
        concurrency=1,
        window=window,
    )
    oracle_hours = oracle.warm_seconds / 3600.0 / ((window.end - window.start) / 86400.0)
    assert choice.predicted.warm_hours_per_day >= oracle_hours
    shares = [0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    hours = [
        curves["bursty"].scores[tuning.cheapest_meeting(curves["bursty"], s)[0]].warm_hours_per_day for s in shares
    ]
    assert hours == sorted(hours, reverse=True)


def test_tuned_runs_score_the_chosen_settings_after_the_tuning_window() -> None:
    regular = requests("regular", T0 + np.arange(0, DAYS * 86400.0, 150.0))
    replay = replay_of([regular])
    report = tuned_runs.run_tuning(replay, objectives=[0.05], fleet_budgets=[30.0, 5.0], tune_days=TUNE_DAYS)
    assert report.tune_window == simulation.Window(replay.window.start - TUNE_DAYS * 86400.0, replay.window.start)
    (objective,) = report.objectives
    assert objective.objective == 0.05 and objective.score.policy == "prewarm (objective 5.0%)"
    assert objective.score.cold_start_fraction <= 0.05
    assert [run.fleet_budget for run in report.fleet] == [5.0, 30.0]  # cheapest first
    cheap, rich = report.fleet
    assert cheap.score.cold_starts > rich.score.cold_starts
    assert rich.targets[0].setting != "forecast off" and cheap.targets[0].setting == "forecast off"


def test_a_fleet_cap_changes_nothing_it_need_not_and_holds_every_day_it_binds() -> None:
    regular = requests("regular", T0 + np.arange(0, DAYS * 86400.0, 150.0))
    busy = requests("busy", T0 + np.arange(0, DAYS * 86400.0, 40.0), run_s=30.0)
    replay = replay_of([regular, busy])
    window = tuned_runs.tuning_window(replay, TUNE_DAYS)
    specs = tuned_runs.replay_specs(replay, objective=None)
    curves = tuned_runs.history_curves(replay, window, specs)
    result = tuning.tune(curves, specs, {targets.DEFAULT_FLEET: 1000.0})
    tuned = {name: result.choices[name].setting.apply(spec) for name, spec in specs.items()}
    start = replay.window.start - 3600.0
    free, _ = tuned_runs.capped_floors(replay, tuned, result, curves, budget=1e6, start=start)
    for request in replay.trace.targets:
        alone = replay.prewarm_floor(tuned[request.name], request, intent=False, start=start, end=replay.window.end)
        assert free[request.name] == alone
    _, daily = tuned_runs.capped_floors(replay, tuned, result, curves, budget=10.0, start=start)
    assert [day for day, _ in daily] == ["2024-03-07"]
    # wants far more: spent to the cap, never past it (a target stepped down to a cheaper rung may
    # leave a little of its headroom unspent at midnight)
    assert 9.9 <= daily[0][1] <= 10.0 + 1e-6
    assert tuned_runs.daily_floor_hours(free.values(), replay.window)[0][1] > 20.0


def test_tuning_for_a_fleet_measures_how_a_days_spend_falls_over_its_hours() -> None:
    # requests every 2.5 min, only from 08:00 to 12:00 UTC each day
    days = np.arange(DAYS)[:, None] * 86400.0
    busy = requests("office", np.sort((T0 + 8 * 3600.0 + days + np.arange(0, 4 * 3600.0, 150.0)).ravel()))
    specs = {"office": tuned_runs.replay_specs(replay_of([busy]), objective=None)["office"]}
    options = tuned_runs.HistoryOptions(tune_days=TUNE_DAYS, refit_hours=12.0)
    now = T0 + (DAYS - 1) * 86400.0
    result, _ = tuned_runs.tune_trace(
        replay_of([busy]).trace, specs, {targets.DEFAULT_FLEET: 50.0}, now=now, options=options
    )
    assert result.choices["office"].setting != tuning.OFF
    profile = result.spend_profile
    assert profile is not None and sum(profile) == pytest.approx(1.0)
    assert max(range(24), key=profile.__getitem__) in range(8, 12)  # the most in the office hours
    assert sum(profile[:7]) == 0.0  # and nothing in the small hours, long after the last request
    alone, _ = tuned_runs.tune_trace(replay_of([busy]).trace, specs, {}, now=now, options=options)
    assert alone.spend_profile is None  # no fleet budget: nothing to measure it for


def test_a_fleet_member_may_step_down_its_hull_to_the_cheapest_setting() -> None:
    off, low, mid, high = tuning.OFF, tuning.Setting(0.3), tuning.Setting(0.7), tuning.Setting(0.9)
    above = tuning.Setting(0.5)  # dearer than `low` and no better: off the hull
    scores = {
        off: tuning.Score(100, 60, 10.0),
        low: tuning.Score(100, 30, 14.0),
        above: tuning.Score(100, 40, 18.0),
        mid: tuning.Score(100, 20, 20.0),
        high: tuning.Score(100, 15, 40.0),
    }
    curve = tuning.TargetCurve("t", scores, {})
    assert [s for s, _ in tuned_runs.ladder(curve, mid)] == [off, low, mid]  # up to the tuned setting
    assert [s for s, _ in tuned_runs.ladder(curve, above)] == [above]  # off the hull: nowhere to step
    choice = tuning.Choice("t", mid, scores[mid], "fleet", None, targets.DEFAULT_FLEET, True, False, None, None)
    member, rungs = tuned_runs.fleet_member("t", 3.0, choice, curve)
    assert rungs == [off, low, mid]
    assert member.ladder == ((10.0, 60.0), (14.0, 30.0), (20.0, 20.0))
    assert (member.used, member.rate) == (3.0, pytest.approx(20.0 / 24.0))
    assert member.gain == pytest.approx(10.0 / 6.0)
