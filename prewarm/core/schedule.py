"""Cron windows: which floor a schedule asks for at an instant, and when that next changes.

Pure: time is a parameter. Schedules are 5-field cron expressions read in local wall-clock time of
an IANA timezone, with two explicit DST rules (those of Vixie cron):

- a start that falls in a spring-forward gap fires at the end of the gap (02:30 -> 03:00);
- a wall time in the repeated fall-back hour fires once, at its first occurrence (hourly
  schedules included: `0 * * * *` fires at 01:00 EDT, not again at 01:00 EST).

A window's `duration` is elapsed time, so `22:00 for 4h` lasts four real hours even across a change.
Overlapping windows do not add up: the largest floor wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

# A start is searched for at most this far from `now`: schedules that fire less than once a year
# (such as `0 0 30 2 *`) never open a window.
_MAX_LOOKAROUND = timedelta(days=366)
_MAX_CHAINED_RUNS = 64


@dataclasses.dataclass(frozen=True, slots=True)
class CronWindow:
    """Keep `floor` replicas warm for `duration` from each time `schedule` fires in `timezone`."""

    schedule: str
    duration: timedelta
    floor: int
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if self.duration <= timedelta(0) or self.floor < 0:
            raise ValueError(f"cron window {self.schedule!r}: duration must be > 0 and floor >= 0")


@dataclasses.dataclass(frozen=True, slots=True)
class CronState:
    """What the cron windows ask for at one instant."""

    floor: int
    window: CronWindow | None  # the window that set `floor`, None when no window is open
    ends_at: datetime | None  # when that window's current run ends
    next_change: datetime | None  # the next start or end of any window


def parse_schedule(raw: object) -> str:
    """Validate a 5-field cron expression and return it normalised to single spaces."""
    if not isinstance(raw, str):
        raise ValueError("is not a cron expression")
    fields = raw.split()
    if len(fields) != 5:
        raise ValueError(f"is not a 5-field cron expression (has {len(fields)} fields)")
    text = " ".join(fields)
    if not croniter.is_valid(text):
        raise ValueError("is not a valid cron expression")
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError("never fires") from None
    return text


def parse_timezone(raw: object) -> str:
    """Validate an IANA timezone name."""
    if not isinstance(raw, str) or not raw:
        raise ValueError("is not an IANA timezone name")
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not an IANA timezone name") from None
    return raw


def _wall_to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """Map a naive local wall time to the UTC instant cron fires at (see module docstring)."""
    first = wall.replace(tzinfo=zone, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant  # exists (the first occurrence when repeated)
    # In a gap: fold=1 reads it with the later offset, an instant before the transition; fold=0
    # with the earlier one, an instant after it. Find the transition between them to the second.
    lo = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    hi = instant
    if lo > hi:
        lo, hi = hi, lo
    offset_lo = lo.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == offset_lo:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def _latest_start(window: CronWindow, zone: ZoneInfo, now: datetime) -> datetime | None:
    """The latest start instant <= now, or None within the look-around."""
    local = now.astimezone(zone)
    # In a repeated hour the wall clock has run back: starts up to the offset change ahead of the
    # naive reading may already have fired.
    ahead = (local.replace(fold=0).utcoffset() or timedelta(0)) - (local.replace(fold=1).utcoffset() or timedelta(0))
    start_from = local.replace(tzinfo=None) + max(ahead, timedelta(0)) + timedelta(seconds=1)
    it = croniter(window.schedule, start_from)
    limit = now - _MAX_LOOKAROUND
    while True:
        try:
            wall = it.get_prev(datetime)
        except CroniterBadDateError:
            return None
        instant = _wall_to_instant(wall, zone)
        if instant <= now:
            return instant
        if instant < limit:
            return None


def _next_start(window: CronWindow, zone: ZoneInfo, after: datetime) -> datetime | None:
    """The earliest start instant strictly after `after`, or None within the look-around."""
    # Wall-to-instant is monotonic, so no start after the naive reading can lie before `after`.
    it = croniter(window.schedule, after.astimezone(zone).replace(tzinfo=None))
    limit = after + _MAX_LOOKAROUND
    while True:
        try:
            instant = _wall_to_instant(it.get_next(datetime), zone)
        except CroniterBadDateError:
            return None
        if instant > after:
            return instant
        if instant > limit:
            return None


def _run_end(window: CronWindow, zone: ZoneInfo, start: datetime) -> datetime:
    """When the run that began at `start` ends, following starts that fire before it ends.

    A schedule that re-fires before each run ends is followed for a bounded number of runs; the
    end returned then is a time to look again, not a drop.
    """
    end = start + window.duration
    for _ in range(_MAX_CHAINED_RUNS):
        following = _next_start(window, zone, start)
        if following is None or following >= end:
            return end
        start, end = following, following + window.duration
    return end


def evaluate_windows(windows: Iterable[CronWindow], now: datetime) -> CronState:
    """The floor the windows ask for at `now` (largest open window wins) and the next change time."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    best: CronWindow | None = None
    best_end: datetime | None = None
    changes: list[datetime] = []
    for window in windows:
        zone = ZoneInfo(window.timezone)
        start = _latest_start(window, zone, now)
        if start is not None and now < start + window.duration:
            end = _run_end(window, zone, start)
            changes.append(end)
            if best is None or window.floor > best.floor:
                best, best_end = window, end
        upcoming = _next_start(window, zone, now)
        if upcoming is not None:
            changes.append(upcoming)
    return CronState(
        floor=best.floor if best is not None else 0,
        window=best,
        ends_at=best_end,
        next_change=min(changes) if changes else None,
    )
