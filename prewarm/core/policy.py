"""The decision core: signals for one target in, a replica floor with its reason out.

Pure: no I/O, no clock; `now` is a parameter and the previous decision carries all memory.

    wanted = clamp(max(min, ceil(sessions / sessionsPerReplica), cron, forecast, batch), 0, max)
    batch = min(ceil((sessions + batch sessions) / sessionsPerReplica), batch.floor)

`sessions` are interactive sessions; batch sessions raise the floor only up to the target's batch
allowance. Raises take effect at once. A lower floor waits until `hold` has passed since each
higher level was last wanted (a sliding-window maximum, kept exact in `FloorDecision.held`).
Replica-hours the floor spends above max(min, cron) count against the target's daily `budget` (UTC
days); once it is spent, the floor is max(min, cron) until the next UTC midnight, and the hold does
not apply. The replicas only batch asks for also count against `batch.budgetShare` of that budget;
once their share is spent, batch raises nothing (held batch levels included) until midnight.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from datetime import UTC, date, datetime, time, timedelta

from prewarm.core import schedule, targets

_BUDGET_EPSILON = 1e-9  # replica-hours; absorbs float error when spend lands exactly on the budget
_FORECAST_EPSILON = 1e-9  # replicas; 2.0000000001 replicas is 2, not 3


class Source(enum.Enum):
    """The signal that set a floor."""

    MIN = "min"
    CRON = "cron"
    FORECAST = "forecast"
    INTENT = "intent"
    BATCH = "batch"
    BUDGET = "budget"


# When several signals ask for the same level, name the most static one: the floor would be the
# same without the others. Batch comes last: it never takes credit for what interactive users need.
_SOURCE_PRIORITY = (Source.MIN, Source.CRON, Source.FORECAST, Source.INTENT, Source.BATCH)


@dataclasses.dataclass(frozen=True, slots=True)
class Signals:
    """What the store knows about one target at `now`: interactive and batch sessions, the forecast."""

    sessions: int = 0  # interactive sessions
    next_session_expiry: datetime | None = None  # of either class
    forecast: float | None = None  # replicas the forecaster would keep warm; None when it has none
    forecast_note: str = ""  # how the forecast's setting was chosen, for the reason (e.g. an objective)
    batch_sessions: int = 0
    forecast_degraded: str | None = None  # why the forecast's history could not be read, if so

    def __post_init__(self) -> None:
        if self.sessions < 0:
            raise ValueError("Signals.sessions must be >= 0")
        if self.batch_sessions < 0:
            raise ValueError("Signals.batch_sessions must be >= 0")


@dataclasses.dataclass(frozen=True, slots=True)
class HeldLevel:
    """A floor level that was wanted until `wanted_until`, held for `hold` after that."""

    floor: int
    source: Source
    wanted_until: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class FloorDecision:
    """The floor for one target, why, and when it may next change without a new signal."""

    target: str
    floor: int
    source: Source
    reason: str
    decided_at: datetime
    next_change: datetime | None
    wanted: int  # the floor the signals ask for now, before the hold
    wanted_source: Source  # the signal behind `wanted`
    baseline: int  # max(min, cron): what the budget never takes away
    held: tuple[HeldLevel, ...]  # levels above `wanted` still held, highest first
    budget_day: date
    budget_used: float  # pre-warm replica-hours spent on budget_day up to decided_at
    batch_replicas: int = 0  # replicas of `floor` that only batch sessions asked for
    batch_used: float = 0.0  # replica-hours batch_replicas spent on budget_day up to decided_at


def sanitize_forecast(value: float | None) -> int:
    """Replicas a forecast asks for: NaN, infinite, negative or missing count as 0."""
    if value is None or not math.isfinite(value) or value <= 0:
        return 0
    return math.ceil(value - _FORECAST_EPSILON)


def _spent_today(previous: FloorDecision | None, now: datetime, today: date) -> tuple[float, float]:
    """Replica-hours spent today up to `now`: above the baseline, and by batch alone."""
    if previous is None:
        return 0.0, 0.0
    day_start = datetime.combine(today, time(), tzinfo=UTC)
    same_day = previous.budget_day == today
    used = previous.budget_used if same_day else 0.0
    batch_used = previous.batch_used if same_day else 0.0
    since = max(previous.decided_at, day_start)
    if now > since:
        hours = (now - since).total_seconds() / 3600.0
        used += max(0, previous.floor - previous.baseline) * hours
        batch_used += previous.batch_replicas * hours
    return used, batch_used


def spent_today(previous: FloorDecision | None, now: datetime) -> float:
    """Pre-warm replica-hours `previous`'s target has spent on `now`'s UTC day up to `now`."""
    now = now.astimezone(UTC)
    return _spent_today(previous, now, now.date())[0]


def decide_floor(
    target: targets.TargetSpec,
    signals: Signals,
    now: datetime,
    previous: FloorDecision | None,
) -> FloorDecision:
    """Decide the floor of `target` at `now` given `signals` and the previous decision (or None)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    if previous is not None and now < previous.decided_at:
        now = previous.decided_at  # a decision never goes back in time
    today = now.date()
    cron = schedule.evaluate_windows(target.cron, now)

    per_replica = target.sessions_per_replica
    intent = math.ceil(signals.sessions / per_replica)
    forecast = sanitize_forecast(signals.forecast) if target.forecast.enabled else 0
    used, batch_used = _spent_today(previous, now, today)
    budget = target.budget
    batch_budget = None if budget is None or target.batch.budget_share is None else budget * target.batch.budget_share
    batch_spent = batch_budget is not None and batch_used >= batch_budget - _BUDGET_EPSILON
    batch = 0
    if signals.batch_sessions and not batch_spent:
        batch = min(math.ceil((signals.sessions + signals.batch_sessions) / per_replica), target.batch.floor)
    floors = (target.min, cron.floor, forecast, intent, batch)  # in _SOURCE_PRIORITY's order
    top = max(floors)
    chosen = _SOURCE_PRIORITY[floors.index(top)]  # the first source, in priority order, at the top
    detail = _describe_source(chosen, top, target, signals, cron, batch_budget if batch_spent else None)
    wanted = min(top, target.max)
    without_batch = min(max(floors[:-1]), target.max)
    baseline = min(max(target.min, cron.floor), target.max)
    clamp_note = f", clamped to max {target.max}" if top > target.max else ""

    degraded = (
        f"; forecast degraded: {signals.forecast_degraded}"
        if target.forecast.enabled and signals.forecast_degraded
        else ""
    )
    changes: list[datetime] = [t for t in (cron.next_change, signals.next_session_expiry) if t is not None]
    held = _hold_levels(previous, wanted, now, target.hold)
    if batch_spent:
        held = tuple(level for level in held if level.source is not Source.BATCH)
    unbudgeted = held[0].floor if held else wanted

    if budget is not None and used >= budget - _BUDGET_EPSILON and unbudgeted > baseline:
        baseline_source = Source.CRON if cron.floor > target.min else Source.MIN
        reason = (
            f"budget {budget:g} replica-hours/day spent ({used:.2f} used); "
            f"{detail} ignored, floor {baseline} from max(min, cron) until midnight UTC{degraded}"
        )
        changes.append(datetime.combine(today + timedelta(days=1), time(), tzinfo=UTC))
        return FloorDecision(
            target=str(target.ref),
            floor=baseline,
            source=Source.BUDGET,
            reason=reason,
            decided_at=now,
            next_change=min(changes),
            wanted=baseline,
            wanted_source=baseline_source,
            baseline=baseline,
            held=(),
            budget_day=today,
            budget_used=used,
            batch_replicas=0,
            batch_used=batch_used,
        )

    if held:
        floor, source = held[0].floor, held[0].source
        release = held[0].wanted_until + target.hold
        reason = (
            f"holding {floor} ({source.value}) until {release:%Y-%m-%dT%H:%M:%SZ}; "
            f"now wanted {wanted}: {detail}{clamp_note}"
        )
        changes.append(release)
    else:
        floor, source = wanted, chosen
        reason = f"{detail}{clamp_note}"
    reason += degraded

    if budget is not None and floor > baseline:
        remaining = max(0.0, budget - used)
        changes.append(now + timedelta(hours=remaining / (floor - baseline)))
    others = max([without_batch, *(level.floor for level in held if level.source is not Source.BATCH)])
    batch_replicas = max(0, floor - others)
    if batch_budget is not None and batch_replicas:
        changes.append(now + timedelta(hours=max(0.0, batch_budget - batch_used) / batch_replicas))

    return FloorDecision(
        target=str(target.ref),
        floor=floor,
        source=source,
        reason=reason,
        decided_at=now,
        next_change=min(changes) if changes else None,
        wanted=wanted,
        wanted_source=chosen,
        baseline=baseline,
        held=held,
        budget_day=today,
        budget_used=used,
        batch_replicas=batch_replicas,
        batch_used=batch_used,
    )


def _hold_levels(previous: FloorDecision | None, wanted: int, now: datetime, hold: timedelta) -> tuple[HeldLevel, ...]:
    """Levels above `wanted` that were wanted within the last `hold`, highest first.

    Invariant: higher levels were last wanted earlier, so the first level is released first.
    """
    if previous is None:
        return ()
    levels = list(previous.held)
    if previous.wanted > wanted:
        # The previous wanted level stayed wanted until now and dominates lower held levels.
        levels = [lv for lv in levels if lv.floor > previous.wanted]
        levels.append(HeldLevel(previous.wanted, previous.wanted_source, now))
    return tuple(lv for lv in levels if lv.floor > wanted and now < lv.wanted_until + hold)


def _describe_source(
    source: Source,
    floor: int,
    target: targets.TargetSpec,
    signals: Signals,
    cron: schedule.CronState,
    spent_batch_share: float | None,
) -> str:
    """Why `source` asks for `floor`, for the chosen source only (a decision formats one)."""
    per_replica = target.sessions_per_replica
    if source is Source.MIN:
        return f"min {floor}"
    if source is Source.CRON:
        return _describe_cron(cron)
    if source is Source.FORECAST:
        return f"forecast {floor}" + (f" ({signals.forecast_note})" if signals.forecast_note else "")
    if source is Source.INTENT:
        return f"intent {floor} ({signals.sessions} interactive sessions / {per_replica} per replica)"
    if spent_batch_share is not None and signals.batch_sessions:
        return (
            f"batch 0 ({signals.batch_sessions} batch sessions; "
            f"batch share {spent_batch_share:g} replica-hours/day spent)"
        )
    return (
        f"batch {floor} ({signals.batch_sessions} batch sessions / {per_replica} per replica, "
        f"batch floor {target.batch.floor})"
    )


def _describe_cron(cron: schedule.CronState) -> str:
    if cron.window is None or cron.ends_at is None:
        return "cron 0 (no window open)"
    return (
        f"cron {cron.floor} ('{cron.window.schedule}' in {cron.window.timezone} "
        f"until {cron.ends_at:%Y-%m-%dT%H:%M:%SZ})"
    )
