"""A fleet budget held as a cap: what is left of the day's pre-warm replica-hours, shared out.

A fleet group's targets may keep `budget` pre-warm replica-hours per UTC day in total. Every few
minutes the decider's caller turns what is left of today's budget into a per-target budget
(`TargetSpec.budget`) that `policy.decide_floor` already enforces: a target that has spent its
share stops pre-warming until it gets more, so the fleet never spends more than the budget however
traffic moves. When what the targets expect to spend fits, each gets what it expects and the rest
is shared in proportion (traffic that grows finds hours waiting); when it does not, the hours left
go where they save the most cold starts: every target with a ladder (its cheaper settings along its
convex hull of cold starts against hours) steps down it, the steps that save the fewest cold starts
per hour given up first, rather than some targets stopping outright while others keep their tuned
setting. A target without a ladder has two rungs: nothing, or what it expects at its tuned setting.

Pure: numbers in, numbers out; time is a parameter.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta

_EPSILON = 1e-9


@dataclasses.dataclass(frozen=True, slots=True)
class FleetMember:
    """One target of a fleet group: what it spent today, what it was tuned to keep, what an hour saves."""

    target: str
    used: float  # pre-warm replica-hours spent today so far
    rate: float  # replicas its tuned setting keeps on average (its predicted hours per day / 24)
    gain: float  # cold starts its last warm hour a day saves at its tuned setting (marginal gain)
    # (warm hours per day, cold starts) of its settings on its lower convex hull, cheapest first, up
    # to its tuned setting (the last): the settings it may step down to when the cap binds
    ladder: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("used", "rate", "gain"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"FleetMember.{name} must be a finite number >= 0, got {value!r}")
        for hours, cold in self.ladder:
            if not (0 <= hours < float("inf") and 0 <= cold < float("inf")):
                raise ValueError(f"FleetMember.ladder needs finite numbers >= 0, got {(hours, cold)!r}")
        pairs = zip(self.ladder, self.ladder[1:], strict=False)
        if any(b[0] < a[0] or b[1] > a[1] for a, b in pairs):
            raise ValueError("FleetMember.ladder must run cheapest first, each rung more hours and no more cold starts")

    def rungs(self, rest: float) -> list[tuple[float, float]]:
        """(hours left today, cold starts a day) at each rung, when the tuned setting (the last)
        would spend `rest` more: pre-warm spend scales with each rung's warm hours above the
        cheapest rung's (the reactive autoscaler's own, which no floor pays for)."""
        if len(self.ladder) < 2:
            return [(0.0, self.gain * rest), (rest, 0.0)]
        base, top = self.ladder[0][0], self.ladder[-1][0]
        span = top - base
        return [(rest * (hours - base) / span if span > _EPSILON else rest, cold) for hours, cold in self.ladder]


def hours_left(now: datetime) -> float:
    """Hours from `now` to the next UTC midnight (the budget day's end)."""
    now = now.astimezone(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), time(), tzinfo=UTC)
    return (midnight - now).total_seconds() / 3600.0


PRIOR_DAYS = 0.25  # a member's tuned hours weigh as much as this share of a day's spend seen today


def done_share(profile: Sequence[float] | None, now: datetime) -> float:
    """The share of a day's spend expected before `now`, from `profile` (the share spent in each
    UTC hour, 24 values) or, without one, uniform."""
    elapsed = 24.0 - hours_left(now)
    if profile is None or len(profile) != 24 or not sum(profile) > 0:
        return elapsed / 24.0
    total = sum(profile)
    hour = min(int(elapsed), 23)
    return (sum(profile[:hour]) + profile[hour] * (elapsed - hour)) / total


def expected_rest(member: FleetMember, done: float) -> float:
    """Pre-warm replica-hours `member` will spend for the rest of the day: its day's total estimated
    from what it spent while `done` of the day's spend was expected, with its tuned hours as a prior
    worth `PRIOR_DAYS`, times what is left of the day."""
    tuned_day = member.rate * 24.0
    day_total = (member.used + tuned_day * PRIOR_DAYS) / (done + PRIOR_DAYS)
    return max(0.0, day_total * (1.0 - done))


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """One member's share of the day: its pre-warm budget (replica-hours, used included) and the
    rung of its ladder to decide with (its last rung, the tuned setting, unless the cap binds)."""

    budget: float
    rung: int


def share_budget(
    *, budget: float, members: Sequence[FleetMember], now: datetime, profile: Sequence[float] | None = None
) -> dict[str, float]:
    """Each member's pre-warm budget for today (`share_rungs` without the rungs)."""
    return {
        name: grant.budget
        for name, grant in share_rungs(budget=budget, members=members, now=now, profile=profile).items()
    }


def share_rungs(
    *, budget: float, members: Sequence[FleetMember], now: datetime, profile: Sequence[float] | None = None
) -> dict[str, Grant]:
    """Each member's pre-warm budget for today and the rung it decides with; the budgets sum to at
    most max(budget, what all used): spent hours are never taken back.

    What a member will spend until midnight is its `expected_rest` (`profile`: how a day's spend
    falls over its hours): traffic that grew is seen before the budget runs out. When that fits,
    each member keeps its tuned setting and gets what it expects and the spare in proportion; when
    it does not, every member starts at its cheapest rung and the hours left buy rungs, the step
    that saves the most cold starts per hour first; the first step that does not fit is not taken,
    its member gets what is left as headroom on its rung (on the higher rung it would run out and
    stop before midnight, which stepping down is there to avoid).
    """
    done = done_share(profile, now)
    used = sum(m.used for m in members)
    remaining = max(0.0, budget - used)
    wants = {m.target: expected_rest(m, done) for m in members}
    total = sum(wants.values())
    top = {m.target: max(1, len(m.ladder) - 1) for m in members}
    if total <= remaining + _EPSILON:
        spare = remaining - total
        grants = {}
        for m in members:
            share = wants[m.target] / total if total > _EPSILON else 1.0 / len(members)
            grants[m.target] = Grant(m.used + wants[m.target] + spare * share, top[m.target])
        return grants
    rungs = {m.target: m.rungs(wants[m.target]) for m in members}
    at = dict.fromkeys(rungs, 0)
    bought = {name: ladder[0][0] for name, ladder in rungs.items()}
    left = remaining - sum(bought.values())
    steps: list[tuple[float, str, int]] = []

    def offer(name: str) -> None:
        ladder, i = rungs[name], at[name]
        if i + 1 < len(ladder):
            cost = ladder[i + 1][0] - ladder[i][0]
            saved = ladder[i][1] - ladder[i + 1][1]
            heapq.heappush(steps, (-saved / max(cost, _EPSILON), name, i))

    for name in sorted(rungs):
        offer(name)
    while steps and left > _EPSILON:  # the hull's steps fall in rate, so this walks them in rate order
        _, name, i = heapq.heappop(steps)
        cost = rungs[name][i + 1][0] - rungs[name][i][0]
        if cost > left + _EPSILON:  # the first step that does not fit: what is left is headroom on its rung
            bought[name] += left
            break
        at[name] = i + 1
        bought[name] += cost
        left -= cost
        offer(name)
    return {m.target: Grant(m.used + bought[m.target], at[m.target]) for m in members}


def capped_budget(own: float | None, share: Mapping[str, float], target: str) -> float | None:
    """A target's budget under the fleet cap: the smaller of its own and its fleet share (if any)."""
    fleet = share.get(target)
    if fleet is None:
        return own
    return fleet if own is None else min(own, fleet)
