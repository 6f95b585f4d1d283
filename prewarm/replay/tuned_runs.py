"""Replays with objectives and fleet budgets: tune on the history before the scored window, then
score the chosen settings after it, and report what was achieved against what was asked.

The curves come from the same `Replay` (forecast, decision core, autoscaler simulation) that
scores every other policy, replayed over the `tune_days` before `--score-from`; the tuner never
sees the scored window.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from prewarm.core import fleet_budget, policy, targets
from prewarm.forecast import arrival_model, minute_features
from prewarm.replay import evaluator, simulation, traces, tuning

DEFAULT_TUNE_DAYS = 4.0
_WARM_UP_SECONDS = 3600.0  # decisions start this long before a window, so holds and floors are in force


@dataclasses.dataclass(frozen=True, slots=True)
class TargetOutcome:
    """One target of a tuned run: the setting chosen on history, predicted there, achieved after."""

    target: str
    setting: str
    reason: str
    predicted_cold_share: float
    predicted_warm_hours_per_day: float
    requests: int
    cold_starts: int
    warm_hours_per_day: float

    @property
    def cold_share(self) -> float:
        return self.cold_starts / self.requests if self.requests else 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class TunedRun:
    """A replay of the `prewarm` policy with tuned settings, and what was asked of it."""

    score: evaluator.PolicyScore
    objective: float | None  # requested cold-start share for every target
    fleet_budget: float | None  # requested warm replica-hours per day for the fleet
    predicted: tuning.Score  # on the tuning window
    targets: tuple[TargetOutcome, ...]
    over_budget: bool = False  # even the cheapest settings needed more than the fleet budget
    daily_spend: tuple[tuple[str, float], ...] = ()  # (UTC day, pre-warm replica-hours) under the fleet cap


def tuning_window(replay: evaluator.Replay, tune_days: float) -> simulation.Window:
    """The `tune_days` before the scored window (from the trace's start at the earliest)."""
    start = max(replay.trace.start, replay.window.start - tune_days * 86400.0)
    return simulation.Window(start, replay.window.start)


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How live per-minute history becomes a tuning replay: what it does not record is assumed."""

    tune_days: float = DEFAULT_TUNE_DAYS
    cold_start_seconds: float = 30.0  # the model server's cold start
    request_seconds: float = 20.0  # how long a request runs (per-minute counts do not say)
    refit_hours: float = 12.0
    seed: int = 0

    def __post_init__(self) -> None:
        values = (self.tune_days, self.cold_start_seconds, self.request_seconds, self.refit_hours)
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError("HistoryOptions needs tune_days, cold_start_seconds, request_seconds, refit_hours > 0")


def tune_history(
    counts: Mapping[str, Mapping[int, int]],
    specs: Mapping[str, targets.TargetSpec],
    fleets: Mapping[str, float],
    *,
    now: float,
    options: HistoryOptions,
) -> tuple[tuning.TuningResult, dict[str, tuning.TargetCurve]]:
    """Tune `specs` (by target name) on their per-minute arrival `counts` (absolute minutes) up to
    `now`, as live history records them: each minute's arrivals spread inside it (seeded), each
    running `options.request_seconds`."""
    trace = traces.trace_from_minute_counts(
        {name: counts.get(name, {}) for name in specs}, request_seconds=options.request_seconds, seed=options.seed
    )
    return tune_trace(trace, specs, fleets, now=now, options=options)


def tune_trace(
    trace: traces.Trace | None,
    specs: Mapping[str, targets.TargetSpec],
    fleets: Mapping[str, float],
    *,
    now: float,
    options: HistoryOptions,
) -> tuple[tuning.TuningResult, dict[str, tuning.TargetCurve]]:
    """Tune `specs` (by trace target name) on the `tune_days` of `trace` before `now`: the same
    forecast, decision core and simulation as a replay. Trace targets without a spec are ignored.

    A target with no arrivals in the history gets an empty curve: nothing to save, so the cheapest
    setting (the forecast off) is chosen for it.
    """
    curves: dict[str, tuning.TargetCurve] = {}
    replays: list[tuple[evaluator.Replay, simulation.Window]] = []
    if trace is not None:
        kept = [_before(t, now) for t in trace.targets if t.name in specs and t.arrivals.size and t.arrivals[0] < now]
        by_horizon: dict[int, list[traces.TargetRequests]] = {}
        for requests in kept:  # one pooled model per horizon, as the live forecaster fits them
            horizon = minute_features.horizon_minutes(specs[requests.name].forecast.horizon.total_seconds())
            by_horizon.setdefault(horizon, []).append(requests)
        for horizon, group in sorted(by_horizon.items()):
            history = traces.Trace(
                tuple(group), min(float(t.arrivals[0]) for t in group), max(float(t.arrivals[-1]) for t in group)
            )
            settings = evaluator.ReplaySettings(
                cold_starts=np.asarray([options.cold_start_seconds]),
                seed=options.seed,
                score_from=now,
                forecast=arrival_model.ForecastConfig(horizon=horizon, seed=options.seed),
                refit_minutes=max(1, round(options.refit_hours * 60)),
                tune_days=options.tune_days,
            )
            replay = evaluator.Replay(history, settings)
            window = simulation.Window(max(history.start, now - options.tune_days * 86400.0), now)
            curves.update(history_curves(replay, window, specs))
            replays.append((replay, window))
    empty = tuning.Score(0, 0, 0.0)
    for name in specs:
        if name not in curves:
            curves[name] = tuning.TargetCurve(
                name,
                dict.fromkeys(tuning.SETTING_GRID, empty),
                dict.fromkeys(evaluator.KEEPALIVE_SWEEP, empty),
            )
    result = tuning.tune(curves, specs, fleets)
    if not fleets:
        return result, curves
    hours = np.zeros(24)
    for replay, window in replays:  # how the tuned settings' spend fell over the hours of a day
        tuned = {
            t.name: choice.setting.apply(specs[t.name])
            for t in replay.trace.targets
            if (choice := result.choices.get(t.name)) is not None
        }
        replicas = {
            name: replay.forecast_replicas(spec, name) if spec.forecast.enabled else None
            for name, spec in tuned.items()
        }
        hours += hourly_spend(replay, tuned, replicas, window)
    return dataclasses.replace(result, spend_profile=profile_of(hours)), curves


def history_curves(
    replay: evaluator.Replay,
    window: simulation.Window,
    specs: Mapping[str, targets.TargetSpec],
    *,
    grid: Sequence[tuning.Setting] = tuning.SETTING_GRID,
    on_target: Callable[[str], None] | None = None,
) -> dict[str, tuning.TargetCurve]:
    """Every target's curve over `window`: each setting replayed through `decide_floor` and the
    autoscaler simulation, and each reference keep-alive, as the scored replays do."""
    curves: dict[str, tuning.TargetCurve] = {}
    for index, request in enumerate(replay.trace.targets):
        history = _TargetHistory(replay, index, specs[request.name], window)
        curves[request.name] = tuning.score_curve(request.name, history.replay_setting, history.replay_keepalive, grid)
        if on_target is not None:
            on_target(request.name)
    return curves


@dataclasses.dataclass(frozen=True, slots=True)
class _TargetHistory:
    """One target's requests over a tuning window, replayed under any setting or keep-alive.

    Settings that ask for the same replicas in every minute of the window replay alike, so each
    distinct per-minute floor is replayed once (most settings coincide for quiet targets).
    """

    replay: evaluator.Replay
    index: int
    spec: targets.TargetSpec
    window: simulation.Window
    _seen: dict[bytes, tuning.Score] = dataclasses.field(default_factory=dict)

    def _score(self, floor: simulation.FloorSteps) -> tuning.Score:
        outcome = self.replay.simulate(self.index, floor, self.window)
        days = max(self.window.end - self.window.start, 1.0) / 86400.0
        return tuning.Score(outcome.requests, outcome.cold_starts, outcome.warm_seconds / 3600.0 / days)

    def replay_setting(self, setting: tuning.Setting) -> tuning.Score:
        request = self.replay.trace.targets[self.index]
        start = max(self.replay.trace.start, self.window.start - _WARM_UP_SECONDS)
        spec = setting.apply(self.spec)
        forecast = self.replay.prepare_forecast()
        lo = max(0, int(start // 60) - forecast.first_minute)
        hi = max(lo, int(self.window.end // 60) - forecast.first_minute + 1)
        replicas = None
        if spec.forecast.enabled:  # off: the floor never rises, one key for every such setting
            replicas = forecast.replicas(
                request.name,
                spec.forecast.quantile,
                self.replay.settings.concurrency,
                keep_alive_minutes=spec.forecast.keep_alive_minutes,
                keep_alive_replicas=spec.forecast.keep_alive_replicas,
                span=(lo, hi),
            )
        key = b"off" if replicas is None else replicas[lo:hi].tobytes()
        if key not in self._seen:
            floor = evaluator.decision_floor(
                spec,
                start=start,
                end=self.window.end,
                forecast_replicas=replicas,
                first_minute=forecast.first_minute,
            )
            self._seen[key] = self._score(floor)
        return self._seen[key]

    def replay_keepalive(self, seconds: float) -> tuning.Score:
        request = self.replay.trace.targets[self.index]
        return self._score(evaluator.keepalive_floor(request.arrivals, request.exec_seconds, seconds))


def replay_specs(replay: evaluator.Replay, *, objective: float | None) -> dict[str, targets.TargetSpec]:
    """The spec each trace target is tuned with: replay's default spec, with `objective` if given."""
    return {
        request.name: dataclasses.replace(
            replay.spec_for(request.name, replay.settings.quantile),
            objective=targets.ObjectiveSettings(cold_starts=objective),
        )
        for request in replay.trace.targets
    }


def run_tuned(
    replay: evaluator.Replay,
    curves: Mapping[str, tuning.TargetCurve],
    *,
    objective: float | None = None,
    fleet_budget: float | None = None,
) -> TunedRun:
    """Tune every target for `objective` and/or `fleet_budget` on `curves`, then score the chosen
    settings over the replay's scored window."""
    specs = replay_specs(replay, objective=objective)
    fleets = {} if fleet_budget is None else {targets.DEFAULT_FLEET: fleet_budget}
    result = tuning.tune(curves, specs, fleets)
    total = simulation.Outcome()
    outcomes: list[TargetOutcome] = []
    predicted = tuning.Score(0, 0, 0.0)
    start = max(replay.trace.start, replay.window.start - _WARM_UP_SECONDS)
    tuned = {
        name: spec if (choice := result.choices.get(name)) is None else choice.setting.apply(spec)
        for name, spec in specs.items()
    }
    capped: dict[str, simulation.FloorSteps] = {}
    daily: tuple[tuple[str, float], ...] = ()
    if fleet_budget is not None:
        capped, daily = capped_floors(replay, tuned, result, curves, budget=fleet_budget, start=start)
    for index, request in enumerate(replay.trace.targets):
        choice = result.choices.get(request.name)
        spec = tuned[request.name]
        floor = (
            capped[request.name]
            if request.name in capped
            else replay.prewarm_floor(spec, request, intent=False, start=start, end=replay.window.end)
        )
        outcome = replay.simulate(index, floor, replay.window)
        total.add(outcome)
        setting = tuning.Setting.of(spec)
        history = curves[request.name].scores.get(setting) if choice is None else choice.predicted
        predicted = predicted + (history or tuning.Score(0, 0, 0.0))
        outcomes.append(
            TargetOutcome(
                target=request.name,
                setting=setting.describe(),
                reason="" if choice is None else choice.reason,
                predicted_cold_share=0.0 if history is None else history.cold_share,
                predicted_warm_hours_per_day=0.0 if history is None else history.warm_hours_per_day,
                requests=outcome.requests,
                cold_starts=outcome.cold_starts,
                warm_hours_per_day=outcome.warm_seconds / 3600.0 / replay.days,
            )
        )
    parts = ([f"objective {objective:.1%}"] if objective is not None else []) + (
        [f"fleet {fleet_budget:g}h/day"] if fleet_budget is not None else []
    )
    name = f"prewarm ({', '.join(parts)})"
    return TunedRun(
        score=evaluator.PolicyScore.from_outcome(
            name, total, replay.days, synthetic=False, scored=replay.scored_requests()
        ),
        objective=objective,
        fleet_budget=fleet_budget,
        predicted=predicted,
        targets=tuple(outcomes),
        over_budget=any(fleet.over_budget for fleet in result.fleets.values()),
        daily_spend=daily,
    )


CAP_CHECK_SECONDS = 300.0  # how often the fleet's shares are recomputed (the live tuner's check)


def marginal_gain(curve: tuning.TargetCurve, setting: tuning.Setting) -> float:
    """Cold starts the last step of `curve`'s lower hull up to `setting` saved per warm hour a day."""
    hull = tuning.lower_hull(curve)
    settings = [s for s, _ in hull]
    if setting not in settings or settings.index(setting) == 0:
        return 0.0
    i = settings.index(setting)
    (_, before), (_, after) = hull[i - 1], hull[i]
    hours = after.warm_hours_per_day - before.warm_hours_per_day
    return max(0.0, before.cold_starts - after.cold_starts) / max(hours, 1e-9)


def ladder(curve: tuning.TargetCurve, setting: tuning.Setting) -> list[tuple[tuning.Setting, tuning.Score]]:
    """`curve`'s lower hull from its cheapest setting up to `setting`: the settings a fleet cap may
    step the target down to (just `setting` when it is not on the hull)."""
    hull = tuning.lower_hull(curve)
    settings = [s for s, _ in hull]
    if setting not in settings:
        return [(setting, curve.scores[setting])] if setting in curve.scores else []
    return hull[: settings.index(setting) + 1]


def fleet_member(
    name: str, spent: float, choice: tuning.Choice | None, curve: tuning.TargetCurve | None
) -> tuple[fleet_budget.FleetMember, list[tuning.Setting]]:
    """One target as a member for `fleet_budget.share_rungs`: its spend so far, its tuned setting's
    predicted hours as the rate it keeps, that setting's marginal gain and the ladder down its hull;
    with the settings of the ladder's rungs."""
    if choice is None:
        return fleet_budget.FleetMember(name, spent, 0.0, 0.0), []
    rungs = [] if curve is None else ladder(curve, choice.setting)
    gain = 0.0 if curve is None else marginal_gain(curve, choice.setting)
    member = fleet_budget.FleetMember(
        name,
        spent,
        choice.predicted.warm_hours_per_day / 24.0,
        gain,
        tuple((score.warm_hours_per_day, float(score.cold_starts)) for _, score in rungs) if len(rungs) > 1 else (),
    )
    return member, [s for s, _ in rungs] if len(rungs) > 1 else []


def fleet_members(
    result: tuning.TuningResult, curves: Mapping[str, tuning.TargetCurve], used: Mapping[str, float]
) -> tuple[list[fleet_budget.FleetMember], dict[str, list[tuning.Setting]]]:
    """The fleet's members for `fleet_budget.share_rungs` (`fleet_member`), and each one's rungs."""
    members, rungs = [], {}
    for name, spent in sorted(used.items()):
        member, rungs[name] = fleet_member(name, spent, result.choices.get(name), curves.get(name))
        members.append(member)
    return members, rungs


def capped_floors(
    replay: evaluator.Replay,
    specs: Mapping[str, targets.TargetSpec],
    result: tuning.TuningResult,
    curves: Mapping[str, tuning.TargetCurve],
    *,
    budget: float,
    start: float,
) -> tuple[dict[str, simulation.FloorSteps], tuple[tuple[str, float], ...]]:
    """Every target's floor under the fleet cap, decided as the live decider does: every
    `CAP_CHECK_SECONDS` the fleet's pre-warm spend today is shared out (`fleet_budget.share_rungs`)
    into per-target budgets that `decide_floor` holds and the rung of each target's ladder it
    decides with. Also each scored UTC day's pre-warm spend."""
    forecast = replay.prepare_forecast()
    replicas: dict[tuple[str, tuning.Setting], np.ndarray | None] = {}

    def series_of(name: str, spec: targets.TargetSpec) -> np.ndarray | None:
        key = (name, tuning.Setting.of(spec))
        if key not in replicas:
            replicas[key] = replay.forecast_replicas(spec, name) if spec.forecast.enabled else None
        return replicas[key]

    tuned_replicas = {name: series_of(name, spec) for name, spec in specs.items()}
    profile = spend_profile(replay, specs, tuned_replicas, tuning_window(replay, replay.settings.tune_days))
    previous: dict[str, policy.FloorDecision | None] = dict.fromkeys(specs)
    changes: dict[str, list[tuple[float, int]]] = {name: [] for name in specs}
    end = replay.window.end
    at = start
    while at < end:
        until = min(end, (math.floor(at / CAP_CHECK_SECONDS) + 1) * CAP_CHECK_SECONDS)
        now = evaluator.utc_datetime(at)
        used = {name: policy.spent_today(decision, now) for name, decision in previous.items()}
        members, rungs = fleet_members(result, curves, used)
        grants = fleet_budget.share_rungs(budget=budget, members=members, now=now, profile=profile)
        shares = {name: grant.budget for name, grant in grants.items()}
        lo = max(0, int(at // 60) - forecast.first_minute)
        hi = int(until // 60) - forecast.first_minute + 1
        for name, spec in specs.items():
            if rungs.get(name) and name in grants:
                spec = rungs[name][grants[name].rung].apply(spec)
            capped = dataclasses.replace(spec, budget=fleet_budget.capped_budget(spec.budget, shares, name))
            series = series_of(name, spec)
            span, previous[name] = evaluator.decision_changes(
                capped,
                start=at,
                end=until,
                forecast_replicas=None if series is None else series[lo:hi],
                first_minute=forecast.first_minute + lo,
                previous=previous[name],
            )
            changes[name].extend(span)
        at = until
    floors = {name: simulation.FloorSteps.from_changes(steps) for name, steps in changes.items()}
    return floors, daily_floor_hours(floors.values(), replay.window)


def spend_profile(
    replay: evaluator.Replay,
    specs: Mapping[str, targets.TargetSpec],
    replicas: Mapping[str, np.ndarray | None],
    window: simulation.Window,
) -> tuple[float, ...] | None:
    """The share of the fleet's pre-warm spend in each UTC hour of the day over `window` (the
    tuning history), with the tuned settings; None when nothing was spent."""
    return profile_of(hourly_spend(replay, specs, replicas, window))


def profile_of(hours: np.ndarray) -> tuple[float, ...] | None:
    """24 hourly replica-hour totals as shares of their sum; None when it is 0."""
    total = float(hours.sum())
    return tuple(float(h) / total for h in hours) if total > 0 else None


def hourly_spend(
    replay: evaluator.Replay,
    specs: Mapping[str, targets.TargetSpec],
    replicas: Mapping[str, np.ndarray | None],
    window: simulation.Window,
) -> np.ndarray:
    """Replica-seconds the floors of `specs` (forecast `replicas` per target) hold in each UTC hour
    of the day over `window`, summed over the days."""
    first_minute = replay.prepare_forecast().first_minute
    hours = np.zeros(24)
    for request in replay.trace.targets:
        series = replicas.get(request.name)
        if series is None:
            continue
        floor = evaluator.decision_floor(
            dataclasses.replace(specs[request.name], budget=None),
            start=window.start,
            end=window.end,
            forecast_replicas=series,
            first_minute=first_minute,
        )
        bounds = [*floor.times, window.end]
        for (a, b), level in zip(itertools.pairwise(bounds), floor.levels, strict=False):
            at = a
            while at < b and level:
                hour_end = (math.floor(at / 3600.0) + 1) * 3600.0
                upto = min(b, hour_end)
                hours[int(at // 3600.0) % 24] += level * (upto - at)
                at = upto
    return hours


def daily_floor_hours(
    floors: Iterable[simulation.FloorSteps], window: simulation.Window
) -> tuple[tuple[str, float], ...]:
    """Replica-hours the floors held in each UTC day that `window` touches, within the window (a
    day the window cuts short shows what was spent in it)."""
    first_day = math.floor(window.start / 86400.0)
    last_day = math.ceil(window.end / 86400.0 - 1e-3)  # a trace ends a second or so past its last request
    totals = dict.fromkeys(range(first_day, max(first_day + 1, last_day)), 0.0)
    for floor in floors:
        bounds = [*floor.times, math.inf]
        for (a, b), level in zip(itertools.pairwise(bounds), floor.levels, strict=False):
            for day in totals:
                lo = max(a, day * 86400.0, window.start)
                hi = min(b, (day + 1) * 86400.0, window.end)
                if hi > lo:
                    totals[day] += level * (hi - lo) / 3600.0
    return tuple((evaluator.utc_datetime(day * 86400.0).date().isoformat(), hours) for day, hours in totals.items())


@dataclasses.dataclass(frozen=True, slots=True)
class TuningReport:
    """Every tuned run of one replay: the objectives asked for, then the fleet-budget sweep."""

    tune_window: simulation.Window
    objectives: tuple[TunedRun, ...]
    fleet: tuple[TunedRun, ...]  # by budget, cheapest first


def run_tuning(
    replay: evaluator.Replay,
    *,
    objectives: Sequence[float],
    fleet_budgets: Sequence[float],
    tune_days: float,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> TuningReport:
    """Replay the history once per setting (curves), then tune and score each objective and budget."""
    window = tuning_window(replay, tune_days)
    step = evaluator.ProgressSteps(len(replay.trace.targets) + len(objectives) + len(fleet_budgets), on_progress)
    specs = replay_specs(replay, objective=None)
    curves = history_curves(replay, window, specs, on_target=lambda name: step(f"tune {name}"))
    objective_runs = []
    for objective in objectives:
        objective_runs.append(run_tuned(replay, curves, objective=objective))
        step(f"objective {objective:.1%}")
    fleet_runs = []
    for budget in sorted(fleet_budgets):
        fleet_runs.append(run_tuned(replay, curves, fleet_budget=budget))
        step(f"fleet {budget:g}h/day")
    return TuningReport(window, tuple(objective_runs), tuple(fleet_runs))


def _before(requests: traces.TargetRequests, now: float) -> traces.TargetRequests:
    """`requests` cut to the arrivals before `now`: the tuner never sees what comes after."""
    keep = int(np.searchsorted(requests.arrivals, now, side="left"))
    return traces.TargetRequests(
        requests.name, requests.arrivals[:keep], requests.exec_seconds[:keep], requests.groups[:keep]
    )
