"""Objectives, not knobs: find each target's cheapest forecast setting from its own recent history.

The tuner replays a window of history under every setting of a small grid (quantile, keep-alive)
with the same decision core and autoscaler simulation that `prewarm replay` scores policies with,
which gives each target a curve of cold starts against warm replica-hours. Then:

- a target with an objective (`coldStarts: 5%`) gets the cheapest setting whose replayed cold-start
  share meets it, or the setting with the fewest cold starts when none does;
- the other targets of a fleet group with a budget share what is left of it by marginal gain:
  warm hours go, step by step along each target's lower convex hull, to whichever target saves the
  most cold starts per hour, so a busy, regular model gets its floor before one called twice a day.

Targets with too few requests in the window to judge alone are tuned together as one pooled group
with one setting (a prior for rare targets). Pure: arrays and dataclasses in and out.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta

from prewarm.core import targets
from prewarm.replay import evaluator

RARE_REQUESTS = 30  # fewer requests than this in the window: tuned with the pooled rare group
POOLED = "(rare targets, pooled)"
# Quantile 0.05 warms only where an arrival is all but certain: the "barely pre-warm" end of the grid.
_QUANTILES = (0.05, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
_KEEP_ALIVES = ((0, 1), (2, 1), (5, 1), (10, 1), (20, 1), (40, 1), (10, 2))  # (minutes, replicas) after arrivals


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One point of the forecast knobs the tuner searches; quantile None turns the forecast off
    (the reactive autoscaler alone, the cheapest point of every curve)."""

    quantile: float | None
    keep_alive_minutes: int = 0
    keep_alive_replicas: int = 1

    def describe(self) -> str:
        if self.quantile is None:
            return "forecast off"
        text = f"quantile {self.quantile:g}"
        if self.keep_alive_minutes:
            text += f", keep-alive {self.keep_alive_minutes}m x{self.keep_alive_replicas}"
        return text

    def apply(self, spec: targets.TargetSpec) -> targets.TargetSpec:
        """`spec` with this setting's forecast knobs."""
        if self.quantile is None:
            return dataclasses.replace(spec, forecast=dataclasses.replace(spec.forecast, enabled=False))
        forecast = dataclasses.replace(
            spec.forecast,
            enabled=True,
            quantile=self.quantile,
            keep_alive=timedelta(minutes=self.keep_alive_minutes),
            keep_alive_replicas=self.keep_alive_replicas,
        )
        return dataclasses.replace(spec, forecast=forecast)

    @classmethod
    def of(cls, spec: targets.TargetSpec) -> Setting:
        """The setting `spec` is configured with."""
        if not spec.forecast.enabled:
            return cls(None)
        return cls(
            spec.forecast.quantile,
            spec.forecast.keep_alive_minutes,
            spec.forecast.keep_alive_replicas,
        )

    def sort_key(self) -> tuple[float, int, int]:
        return (-1.0 if self.quantile is None else self.quantile, self.keep_alive_minutes, self.keep_alive_replicas)


OFF = Setting(None)
SETTING_GRID: tuple[Setting, ...] = (OFF, *(Setting(q, k, r) for q in _QUANTILES for k, r in _KEEP_ALIVES))


@dataclasses.dataclass(frozen=True, slots=True)
class Score:
    """What one setting (or keep-alive) cost and suffered over the tuning window."""

    requests: int
    cold_starts: int
    warm_hours_per_day: float

    @property
    def cold_share(self) -> float:
        return self.cold_starts / self.requests if self.requests else 0.0

    def __add__(self, other: Score) -> Score:
        return Score(
            self.requests + other.requests,
            self.cold_starts + other.cold_starts,
            self.warm_hours_per_day + other.warm_hours_per_day,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class TargetCurve:
    """One target's replayed history: a score per setting, and per keep-alive for reference."""

    target: str
    scores: Mapping[Setting, Score]
    keepalive: Mapping[float, Score]  # keep-alive seconds -> score, the reference users know

    @property
    def requests(self) -> int:
        return next(iter(self.scores.values())).requests if self.scores else 0


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """The setting chosen for one target, what it is predicted to do, and why."""

    target: str
    setting: Setting
    predicted: Score
    reason: str  # "objective 5%: ..." or "fleet default 400h/day: ..."
    objective: float | None  # the requested cold-start share, if any
    fleet: str
    met: bool  # whether the objective is met on the history (True without an objective)
    pooled: bool  # tuned with the rare targets' pooled group
    keepalive_seconds: float | None  # the keep-alive that reaches the same share on the history
    keepalive_hours_per_day: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class FleetAllocation:
    """How one fleet group's budget was spent."""

    name: str
    budget_hours_per_day: float
    objective_hours_per_day: float  # taken first by targets with their own objective
    allocated_hours_per_day: float  # predicted warm hours of the whole group

    @property
    def over_budget(self) -> bool:
        return self.allocated_hours_per_day > self.budget_hours_per_day + 1e-9


@dataclasses.dataclass(frozen=True, slots=True)
class TuningResult:
    """Choices for every tuned target and the state of every fleet budget."""

    choices: Mapping[str, Choice]
    fleets: Mapping[str, FleetAllocation]
    # the share of the tuned settings' pre-warm spend in each UTC hour of a day on the history
    # (what a fleet cap expects of the rest of a day); None when not measured
    spend_profile: tuple[float, ...] | None = None


def score_curve(
    target: str,
    replay_setting: Callable[[Setting], Score],
    replay_keepalive: Callable[[float], Score],
    grid: Sequence[Setting] = SETTING_GRID,
) -> TargetCurve:
    """Replay one target's history under every setting of `grid` and every reference keep-alive."""
    return TargetCurve(
        target,
        {setting: replay_setting(setting) for setting in grid},
        {seconds: replay_keepalive(seconds) for seconds in evaluator.KEEPALIVE_SWEEP},
    )


def _pooled(curves: Sequence[TargetCurve]) -> TargetCurve:
    """One curve for several targets tuned together: scores added setting by setting."""
    settings = curves[0].scores.keys()
    return TargetCurve(
        POOLED,
        {s: _sum(c.scores[s] for c in curves) for s in settings},
        {k: _sum(c.keepalive[k] for c in curves) for k in curves[0].keepalive},
    )


def _sum(scores: Iterable[Score]) -> Score:
    total = Score(0, 0, 0.0)
    for score in scores:
        total = total + score
    return total


def cheapest_meeting(curve: TargetCurve, objective: float) -> tuple[Setting, bool]:
    """The setting with the fewest warm hours whose share meets `objective`; when none does, the one
    with the lowest share (the cheapest of those). Returns the setting and whether it meets it."""
    ranked = sorted(curve.scores.items(), key=lambda item: (item[1].warm_hours_per_day, item[0].sort_key()))
    for setting, score in ranked:
        if score.cold_share <= objective + 1e-12:
            return setting, True
    setting, _ = min(ranked, key=lambda item: (item[1].cold_share, item[1].warm_hours_per_day, item[0].sort_key()))
    return setting, False


def keepalive_for_share(curve: TargetCurve, share: float) -> tuple[float, Score] | None:
    """The shortest reference keep-alive whose share on the history is at most `share` (None: none)."""
    for seconds, score in sorted(curve.keepalive.items()):
        if score.cold_share <= share + 1e-12:
            return seconds, score
    return None


def lower_hull(curve: TargetCurve) -> list[tuple[Setting, Score]]:
    """The settings on the lower convex hull of cold starts against warm hours, cheapest first:
    each step buys cold starts at a falling rate, which is what marginal allocation needs."""
    points = sorted(
        curve.scores.items(), key=lambda item: (item[1].warm_hours_per_day, item[1].cold_starts, item[0].sort_key())
    )
    frontier: list[tuple[Setting, Score]] = []
    for setting, score in points:
        if not frontier or score.cold_starts < frontier[-1][1].cold_starts:
            frontier.append((setting, score))
    hull: list[tuple[Setting, Score]] = []
    for point in frontier:
        while len(hull) >= 2:
            (_, a), (_, b), c = hull[-2], hull[-1], point[1]
            # drop b when it lies on or above the segment from a to c
            if (b.cold_starts - a.cold_starts) * (c.warm_hours_per_day - a.warm_hours_per_day) >= (
                c.cold_starts - a.cold_starts
            ) * (b.warm_hours_per_day - a.warm_hours_per_day):
                hull.pop()
            else:
                break
        hull.append(point)
    return hull


def allocate(curves: Mapping[str, TargetCurve], budget: float) -> dict[str, Setting]:
    """Spend `budget` warm hours per day across `curves` by marginal gain: start every target at its
    cheapest hull point, then repeatedly take the step that saves the most cold starts per hour
    while it fits. A step that does not fit is skipped; cheaper steps of others may still fit."""
    hulls = {name: lower_hull(curve) for name, curve in curves.items()}
    position = dict.fromkeys(hulls, 0)
    spent = sum(hull[0][1].warm_hours_per_day for hull in hulls.values())
    steps: list[tuple[float, str, int]] = []

    def offer(name: str) -> None:
        hull, i = hulls[name], position[name]
        if i + 1 < len(hull):
            cost = hull[i + 1][1].warm_hours_per_day - hull[i][1].warm_hours_per_day
            gain = hull[i][1].cold_starts - hull[i + 1][1].cold_starts
            heapq.heappush(steps, (-gain / max(cost, 1e-9), name, i))

    for name in sorted(hulls):
        offer(name)
    while steps:
        _, name, i = heapq.heappop(steps)
        hull = hulls[name]
        cost = hull[i + 1][1].warm_hours_per_day - hull[i][1].warm_hours_per_day
        if spent + cost > budget + 1e-9:
            continue
        spent += cost
        position[name] = i + 1
        offer(name)
    return {name: hulls[name][position[name]][0] for name in hulls}


def tune(
    curves: Mapping[str, TargetCurve],
    specs: Mapping[str, targets.TargetSpec],
    fleets: Mapping[str, float],
    *,
    rare_requests: int = RARE_REQUESTS,
) -> TuningResult:
    """Choose a setting for every target of `curves` that has an objective or belongs to a fleet
    group with a budget (`fleets`: group -> warm replica-hours per day). Others are left out."""
    choices: dict[str, Choice] = {}
    allocations: dict[str, FleetAllocation] = {}

    def decide(
        names: Sequence[str], setting: Setting, reason: str, *, objective: float | None, met: bool, pooled: bool
    ) -> None:
        for name in names:
            curve = curves[name]
            predicted = curve.scores[setting]
            reference = keepalive_for_share(curve, predicted.cold_share)
            choices[name] = Choice(
                target=name,
                setting=setting,
                predicted=predicted,
                reason=reason,
                objective=objective,
                fleet=specs[name].fleet,
                met=met,
                pooled=pooled,
                keepalive_seconds=None if reference is None else reference[0],
                keepalive_hours_per_day=None if reference is None else reference[1].warm_hours_per_day,
            )

    # 1. objectives: per target (or per pooled group of rare targets asking the same share)
    by_objective: dict[float, list[str]] = {}
    for name, curve in sorted(curves.items()):
        objective = specs[name].objective.cold_starts
        if objective is None:
            continue
        if curve.requests >= rare_requests:
            setting, met = cheapest_meeting(curve, objective)
            reason = _objective_reason(objective, setting, curve.scores[setting], met)
            decide([name], setting, reason, objective=objective, met=met, pooled=False)
        else:
            by_objective.setdefault(objective, []).append(name)
    for objective, names in by_objective.items():
        pooled = _pooled([curves[n] for n in names])
        setting, met = cheapest_meeting(pooled, objective)
        reason = _objective_reason(objective, setting, pooled.scores[setting], met) + f", pooled over {len(names)} rare"
        decide(names, setting, reason, objective=objective, met=met, pooled=True)

    # 2. fleet budgets: what objectives left of each group's budget, by marginal gain
    for group, budget in sorted(fleets.items()):
        members = sorted(n for n in curves if specs[n].fleet == group)
        taken = sum(choices[n].predicted.warm_hours_per_day for n in members if n in choices)
        free = [n for n in members if n not in choices]
        units: dict[str, TargetCurve] = {n: curves[n] for n in free if curves[n].requests >= rare_requests}
        rare = [n for n in free if curves[n].requests < rare_requests]
        if rare:
            units[POOLED] = _pooled([curves[n] for n in rare])
        chosen = allocate(units, budget - taken) if units else {}
        for unit, setting in chosen.items():
            names = rare if unit == POOLED else [unit]
            score = units[unit].scores[setting]
            reason = (
                f"fleet {group} {budget:g}h/day: {setting.describe()}, predicted {score.cold_share:.1%} cold, "
                f"{score.warm_hours_per_day:.1f} warm h/day"
            )
            decide(names, setting, reason, objective=None, met=True, pooled=unit == POOLED)
        allocations[group] = FleetAllocation(
            name=group,
            budget_hours_per_day=budget,
            objective_hours_per_day=taken,
            allocated_hours_per_day=sum(choices[n].predicted.warm_hours_per_day for n in members if n in choices),
        )
    return TuningResult(choices, allocations)


def _objective_reason(objective: float, setting: Setting, score: Score, met: bool) -> str:
    verdict = "" if met else " (not reachable: fewest cold starts)"
    return (
        f"objective {objective:.1%}: {setting.describe()}, predicted {score.cold_share:.1%} cold at "
        f"{score.warm_hours_per_day:.1f} warm h/day{verdict}"
    )
