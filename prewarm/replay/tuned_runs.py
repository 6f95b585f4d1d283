"""Replays with objectives and fleet budgets: tune on the history before the scored window, then
score the chosen settings after it, and report what was achieved against what was asked.

The curves come from the same `Replay` (forecast, decision core, autoscaler simulation) that
scores every other policy, replayed over the `tune_days` before `--score-from`; the tuner never
sees the scored window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from prewarm.core import targets
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
    empty = tuning.Score(0, 0, 0.0)
    for name in specs:
        if name not in curves:
            curves[name] = tuning.TargetCurve(
                name,
                dict.fromkeys(tuning.SETTING_GRID, empty),
                dict.fromkeys(evaluator.KEEPALIVE_SWEEP, empty),
            )
    return tuning.tune(curves, specs, fleets), curves


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
    for index, request in enumerate(replay.trace.targets):
        choice = result.choices.get(request.name)
        spec = specs[request.name] if choice is None else choice.setting.apply(specs[request.name])
        floor = replay.prewarm_floor(spec, request, intent=False, start=start, end=replay.window.end)
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
    )


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
