"""The live tuner: objectives and fleet budgets turned into each target's forecast setting.

At start-up and every `retune` (a day by default) it reads the per-minute arrival history of every
forecast target that has an objective or shares a fleet budget, replays it under the tuner's grid
(`prewarm.replay.tuned_runs.tune_history`, in a worker thread: never on the event loop) and keeps
the chosen settings. Every `check` (5 min) it closes the loop on what users met: when a target's
cold-start share over the last hour drifts above its objective it moves one step down the target's
curve (fewer cold starts, more warm hours); when it is well below, one step back toward the tuned
setting, never cheaper than it. Every `check` it also holds each fleet budget as a cap: what is left
of the day's pre-warm replica-hours becomes per-target budgets, and when the cap binds cheaper
settings down each target's hull (`core/fleet_budget.py`). The decider asks `effective(spec)`
before each decision.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from prewarm.core import fleet_budget, policy, targets
from prewarm.forecast import minute_features
from prewarm.replay import tuned_runs, tuning
from prewarm.service import clock, telemetry
from prewarm.service.store import StateUnavailable

log = logging.getLogger(__name__)

# A target's arrivals per minute in [since, until): minutes with none left out, unknown ones NaN.
History = Callable[[str, datetime, datetime], Awaitable[Mapping[datetime, float]]]
Starts = Callable[[str], tuple[int, int]]  # target -> (warm, cold) session starts counted so far

DEFAULT_RETUNE = timedelta(days=1)
DEFAULT_CHECK = timedelta(minutes=5)
OBSERVATION_WINDOW = timedelta(hours=1)
MIN_OBSERVED_STARTS = 10  # fewer starts in the last hour say too little to move a setting
RELAX_BELOW = 0.5  # relax once the observed share is under half the objective
_FEATURE_HISTORY = timedelta(minutes=minute_features.HISTORY_MINUTES)  # what features and fits look back over


@dataclasses.dataclass(slots=True)
class _Tuned:
    """One target's tuned state: the ladder of settings the closed loop may move along."""

    choice: tuning.Choice
    ladder: list[tuning.Setting]  # the tuned setting first, then ever fewer predicted cold starts
    step: int = 0
    note: str = ""


async def read_history(
    history: History, names: Iterable[str], *, now: datetime, tune_days: float
) -> dict[str, dict[int, int]]:
    """Each target's arrivals per absolute minute, over its tuning window and the week of features
    before it. Raises StateUnavailable when a minute of a tuning window is unknown: a gap read as
    zero demand would tune for less than the users need, so the last settings are kept instead."""
    window = now - timedelta(days=tune_days)
    counts: dict[str, dict[int, int]] = {}
    for name in names:
        raw = await history(name, window - _FEATURE_HISTORY, now)
        unknown = sum(1 for at, n in raw.items() if math.isnan(n) and at >= window)
        if unknown:
            raise StateUnavailable(f"{name}: {unknown} minutes of its tuning history are unknown")
        counts[name] = {int(at.timestamp() // 60): int(n) for at, n in raw.items() if not math.isnan(n)}
    return counts


class Tuner:
    """Serves each tuned target's setting to the decider and the forecaster; call `run()` once."""

    def __init__(
        self,
        *,
        history: History,
        clock: clock.Clock,
        specs: Callable[[], Mapping[str, targets.TargetSpec]],
        fleets: Mapping[str, float],
        on_change: Callable[[str], None],
        options: tuned_runs.HistoryOptions | None = None,
        starts: Starts | None = None,
        telemetry: telemetry.Telemetry | None = None,
        retune: timedelta = DEFAULT_RETUNE,
        check: timedelta = DEFAULT_CHECK,
        decisions: Callable[[str], policy.FloorDecision | None] | None = None,
    ) -> None:
        self._history = history
        self._clock = clock
        self._specs = specs
        self._fleets = dict(fleets)
        self._on_change = on_change
        self._options = options or tuned_runs.HistoryOptions()
        self._starts = starts
        self._telemetry = telemetry
        self._retune = retune
        self._check = check
        self._tuned: dict[str, _Tuned] = {}
        self._curves: dict[str, tuning.TargetCurve] = {}
        self._profile: tuple[float, ...] | None = None  # how a day's fleet spend falls over its hours
        self._decisions = decisions  # each target's current decision: what it spent today
        self._shares: dict[str, float] = {}  # each fleet target's budget for today under its fleet's cap
        self._rungs: dict[str, tuning.Setting] = {}  # the cheaper setting a binding cap stepped a target down to
        self._samples: dict[str, collections.deque[tuple[datetime, int, int]]] = {}
        self.tuned_at: datetime | None = None

    def follow_decisions(self, decisions: Callable[[str], policy.FloorDecision | None]) -> None:
        """Read each target's current decision (what it spent today) from `decisions`: the decider,
        built after the tuner because it decides with the tuned specs."""
        self._decisions = decisions

    def tunable(self, spec: targets.TargetSpec) -> bool:
        """Whether the tuner chooses `spec`'s setting: a forecast target with an objective or a budget."""
        return spec.forecast.enabled and (spec.objective.cold_starts is not None or spec.fleet in self._fleets)

    def effective(self, spec: targets.TargetSpec) -> tuple[targets.TargetSpec, str]:
        """`spec` with its tuned setting, and how that setting was chosen (empty when untuned)."""
        tuned = self._tuned.get(str(spec.ref))
        if tuned is None or not self.tunable(spec):
            return spec, ""
        setting = self._rungs.get(str(spec.ref), tuned.ladder[tuned.step]).apply(spec)
        capped = fleet_budget.capped_budget(spec.budget, self._shares, str(spec.ref))
        if capped != spec.budget:
            setting = dataclasses.replace(setting, budget=capped)
        return setting, tuned.note or tuned.choice.reason

    def effective_specs(self) -> dict[str, targets.TargetSpec]:
        """Every target's spec as the forecaster should predict it. A target tuned off keeps its
        configured spec here: the decider ignores its forecast, but the forecaster goes on reading
        its history and predicting it, so a later step or retune can turn it on again."""
        specs = {}
        for name, spec in self._specs().items():
            tuned = self.effective(spec)[0]
            specs[name] = tuned if tuned.forecast.enabled else spec
        return specs

    def describe(self, target: str) -> dict[str, Any] | None:
        """The tuning of `target` for `/targets`: objective, setting, predicted share and hours, note."""
        tuned = self._tuned.get(target)
        if tuned is None:
            return None
        choice = tuned.choice
        return {
            "objective": choice.objective,
            "fleet": choice.fleet,
            "setting": self._rungs.get(target, tuned.ladder[tuned.step]).describe(),
            "tuned_setting": choice.setting.describe(),
            "predicted_cold_start_fraction": choice.predicted.cold_share,
            "predicted_warm_replica_hours_per_day": choice.predicted.warm_hours_per_day,
            "keepalive_seconds_for_same_share": choice.keepalive_seconds,
            "observed_cold_start_fraction": self._observed(target),
            "reason": tuned.note or choice.reason,
            "tuned_at": None if self.tuned_at is None else self.tuned_at.isoformat(),
        }

    async def run(self) -> None:
        """Tune at start-up and every `retune`; check objectives every `check`, forever."""
        wake = asyncio.Event()
        next_tune = self._clock.now()
        while True:
            now = self._clock.now()
            if now >= next_tune:
                try:
                    await self.retune(now)
                    next_tune = now + self._retune
                except StateUnavailable as e:
                    log.warning("tuning postponed, history unavailable: %s", e)
                    next_tune = now + self._check
                except Exception:  # a failed tuning keeps the last settings and tries again later
                    log.exception("tuning at %s failed", now)
                    next_tune = now + self._check
            self.check_objectives(now)
            self.share_fleet_budgets(now)
            await self._clock.wait_until(min(next_tune, now + self._check), wake)

    async def retune(self, now: datetime) -> None:
        """Read every tunable target's history and choose its setting (in a worker thread)."""
        specs = {name: spec for name, spec in self._specs().items() if self.tunable(spec)}
        if not specs:
            self._tuned.clear()
            return
        counts = await read_history(self._history, specs, now=now, tune_days=self._options.tune_days)
        result, curves = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: tuned_runs.tune_history(counts, specs, self._fleets, now=now.timestamp(), options=self._options),
        )
        self.tuned_at = now
        self._curves = curves
        self._profile = result.spend_profile
        previous = self._tuned
        self._tuned = {}
        for name, choice in result.choices.items():
            hull = [s for s, _ in tuning.lower_hull(curves[name])]
            tighter = [s for s in hull if curves[name].scores[s].cold_share < choice.predicted.cold_share - 1e-12]
            self._tuned[name] = _Tuned(choice, [choice.setting, *tighter])
            before = previous.get(name)
            if before is None or before.ladder[before.step] != choice.setting:
                log.info("tuned %s: %s", name, choice.reason)
                self._on_change(name)
            if self._telemetry is not None:
                self._telemetry.record_tuning(
                    name,
                    objective=choice.objective,
                    quantile=choice.setting.quantile,
                    predicted_cold_share=choice.predicted.cold_share,
                    predicted_warm_hours=choice.predicted.warm_hours_per_day,
                )
        for allocation in result.fleets.values():
            if allocation.over_budget:
                log.warning(
                    "fleet %s: the cheapest settings need %.1f warm h/day, over its budget of %g",
                    allocation.name,
                    allocation.allocated_hours_per_day,
                    allocation.budget_hours_per_day,
                )

    def share_fleet_budgets(self, now: datetime) -> None:
        """Hold each fleet budget as a cap: share what is left of today's pre-warm hours among the
        fleet's tuned targets (`fleet_budget.share_rungs`), as per-target budgets the decider
        enforces and, when the cap binds, cheaper settings down each target's hull; re-decide the
        targets whose share or setting changed."""
        if self._decisions is None:
            return
        shares: dict[str, float] = {}
        rungs: dict[str, tuning.Setting] = {}
        for fleet, budget in self._fleets.items():
            members, ladders = [], {}
            for name, tuned in sorted(self._tuned.items()):
                if tuned.choice.fleet != fleet or tuned.choice.objective is not None:
                    continue
                spent = policy.spent_today(self._decisions(name), now)
                member, ladders[name] = tuned_runs.fleet_member(name, spent, tuned.choice, self._curves.get(name))
                members.append(member)
            grants = fleet_budget.share_rungs(budget=budget, members=members, now=now, profile=self._profile)
            for name, grant in grants.items():
                shares[name] = grant.budget
                if ladders[name] and ladders[name][grant.rung] != self._tuned[name].choice.setting:
                    rungs[name] = ladders[name][grant.rung]
        before, self._shares = self._shares, shares
        stepped, self._rungs = self._rungs, rungs
        for name in sorted(set(before) | set(shares)):
            if abs(before.get(name, -1.0) - shares.get(name, -1.0)) > 1e-6 or stepped.get(name) != rungs.get(name):
                if name in rungs and stepped.get(name) != rungs[name]:
                    log.info("fleet cap binds: %s steps down to %s", name, rungs[name].describe())
                self._on_change(name)

    def check_objectives(self, now: datetime) -> None:
        """Sample each objective target's warm/cold starts; move its setting one step when the last
        hour's cold-start share drifts above the objective, or back when it is well below."""
        if self._starts is None:
            return
        for name, tuned in self._tuned.items():
            objective = tuned.choice.objective
            if objective is None:
                continue
            warm, cold = self._starts(name)
            samples = self._samples.setdefault(name, collections.deque())
            samples.append((now, warm, cold))
            while len(samples) > 1 and samples[1][0] <= now - OBSERVATION_WINDOW:
                samples.popleft()
            observed = self._observed(name)
            if self._telemetry is not None and observed is not None:
                self._telemetry.record_observed_cold_share(name, observed)
            if observed is None:
                continue
            step = tuned.step
            if observed > objective and step + 1 < len(tuned.ladder):
                step += 1
            elif observed < objective * RELAX_BELOW and step > 0:
                step -= 1
            if step == tuned.step:
                continue
            before, after = tuned.ladder[tuned.step], tuned.ladder[step]
            tuned.step = step
            tuned.note = (
                f"objective {objective:.1%}: observed {observed:.1%} last 1h, {before.describe()} -> {after.describe()}"
            )
            log.info("%s: %s", name, tuned.note)
            self._on_change(name)

    def _observed(self, target: str) -> float | None:
        """The cold-start share of the starts sampled over the last hour (None: too few to judge)."""
        samples = self._samples.get(target)
        if not samples or len(samples) < 2:
            return None
        (_, warm0, cold0), (_, warm1, cold1) = samples[0], samples[-1]
        total = (warm1 - warm0) + (cold1 - cold0)
        if total < MIN_OBSERVED_STARTS:
            return None
        return (cold1 - cold0) / total
