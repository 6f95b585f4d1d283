"""A fleet budget held as a cap: what is left of the day's pre-warm replica-hours, shared out.

A fleet group's targets may keep `budget` pre-warm replica-hours per UTC day in total. Every few
minutes the decider's caller turns what is left of today's budget into a per-target budget
(`TargetSpec.budget`) that `policy.decide_floor` already enforces: a target that has spent its
share stops pre-warming until it gets more, so the fleet never spends more than the budget however
traffic moves. When what the targets expect to spend fits, each gets what it expects and the rest
is shared in proportion (traffic that grows finds hours waiting); when it does not, the targets
that save the fewest cold starts per hour (their marginal gain) give up their hours first.

Pure: numbers in, numbers out; time is a parameter.
"""

from __future__ import annotations

import dataclasses
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

    def __post_init__(self) -> None:
        for name in ("used", "rate", "gain"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"FleetMember.{name} must be a finite number >= 0, got {value!r}")


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


def share_budget(
    *, budget: float, members: Sequence[FleetMember], now: datetime, profile: Sequence[float] | None = None
) -> dict[str, float]:
    """Each member's pre-warm budget for today (replica-hours, what it used included), summing to
    at most max(budget, what all used): spent hours are never taken back.

    What a member will spend until midnight is its `expected_rest` (`profile`: how a day's spend
    falls over its hours): traffic that grew is seen before the budget runs out. When that fits,
    each member gets it and the spare in proportion; when it does not, the members whose hours save
    the fewest cold starts (marginal gain) give theirs up first.
    """
    done = done_share(profile, now)
    used = sum(m.used for m in members)
    remaining = max(0.0, budget - used)
    wants = {m.target: expected_rest(m, done) for m in members}
    total = sum(wants.values())
    grants: dict[str, float] = dict.fromkeys(wants, 0.0)
    if total <= remaining + _EPSILON:
        spare = remaining - total
        for m in members:
            share = wants[m.target] / total if total > _EPSILON else 1.0 / len(members)
            grants[m.target] = wants[m.target] + spare * share
    else:
        left = remaining
        for m in sorted(members, key=lambda m: (-m.gain, m.target)):
            grants[m.target] = min(wants[m.target], left)
            left -= grants[m.target]
    return {m.target: m.used + grants[m.target] for m in members}


def capped_budget(own: float | None, share: Mapping[str, float], target: str) -> float | None:
    """A target's budget under the fleet cap: the smaller of its own and its fleet share (if any)."""
    fleet = share.get(target)
    if fleet is None:
        return own
    return fleet if own is None else min(own, fleet)
