"""Per-minute features of a target's arrival history, and the labels they are trained on.

Pure: arrays in, arrays out; no clock, no I/O. At the start of minute `m` a target's features come
from its counts of minutes `< m` only, so a row never sees its own future. The same functions feed
`prewarm serve` (from Prometheus or stored counts) and `prewarm replay` (from a trace).

A count may be NaN: the minute is unknown (Prometheus recorded nothing then), which is not the
same as no arrivals. A window sum then scales the known minutes' sum up to the whole window (a
rate estimate); a window with no known minute takes the rate of the next longer trailing window
(the last day's, for windows a day or a week back), so a short outage reads as the recent rate,
never as zero nor as a value training never saw. Only a week with nothing known stays NaN. A
label whose window is unknown is not trained on. With no unknown minute every feature is exactly
the plain sum.
"""

from __future__ import annotations

import math

import numpy as np

# SciPy is imported where first used: it takes seconds to import, and `prewarm serve` without
# forecast-enabled targets never needs it.


MINUTES_PER_DAY = 1440
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
HISTORY_MINUTES = MINUTES_PER_WEEK + 60  # what the features look back over, at most


_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday is 0)

FEATURE_NAMES = (
    "time_of_day_sin",
    "time_of_day_cos",
    "day_of_week_sin",
    "day_of_week_cos",
    "arrivals_1m",
    "arrivals_5m",
    "arrivals_15m",
    "arrivals_60m",
    "arrivals_1d",
    "arrivals_7d",
    "same_window_yesterday",
    "around_this_time_yesterday",
    "around_this_time_last_week",
    "ewma_10m",
    "minutes_idle",
    "active_minutes_7d",
    "sessions_1m",  # session openings (intent) beside requests; NaN for targets without intent
    "sessions_5m",
    "sessions_60m",
)


def horizon_minutes(horizon_seconds: float) -> int:
    """A forecast horizon in whole minutes (at least one)."""
    return max(1, math.ceil(horizon_seconds / 60.0 - 1e-9))


def _window_sums(cumulative: np.ndarray, minutes: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Sum of counts over minutes [m + lo, m + hi) for each m, clipped to the recorded range."""
    last = cumulative.size - 1
    a = np.clip(minutes + lo, 0, last)
    b = np.clip(minutes + hi, 0, last)
    return np.asarray(cumulative[b] - cumulative[a], dtype=np.float64)


class _Sums:
    """Cumulative sums of one count series with unknown (NaN) minutes, for window sums."""

    def __init__(self, counts: np.ndarray) -> None:
        known = ~np.isnan(counts)
        self.mask = known
        self.complete = bool(known.all())
        self.counts = counts if self.complete else np.where(known, counts, 0.0)
        self.total = np.concatenate(([0.0], np.cumsum(self.counts)))
        self.active = np.concatenate(([0.0], np.cumsum(self.counts > 0)))
        self.known = None if self.complete else np.concatenate(([0.0], np.cumsum(known)))

    def window(self, minutes: np.ndarray, lo: int, hi: int, *, active: bool = False) -> np.ndarray:
        """Arrivals (or minutes with arrivals) in [m + lo, m + hi), scaled up over unknown minutes."""
        summed = _window_sums(self.active if active else self.total, minutes, lo, hi)
        if self.known is None:
            return summed
        known = _window_sums(self.known, minutes, lo, hi)
        span = _window_sums(np.arange(self.total.size, dtype=np.float64), minutes, lo, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.where(known > 0, summed * span / known, np.nan)
        return np.asarray(np.where(known == span, summed, scaled), dtype=np.float64)

    def ewma(self, minutes: np.ndarray) -> np.ndarray:
        """A 10-minute-half-life EWMA of the counts before each minute; unknown minutes do not count."""
        from scipy import signal

        if self.counts.size == 0:
            return np.zeros(minutes.size)
        b, a = [1 - 0.5 ** (1 / 10)], [1, -(0.5 ** (1 / 10))]
        ewma = signal.lfilter(b, a, self.counts)
        if not self.complete:
            weight = signal.lfilter(b, a, self.mask.astype(np.float64))
            full = signal.lfilter(b, a, np.ones(self.counts.size))
            with np.errstate(divide="ignore", invalid="ignore"):
                ewma = np.where(weight > 0, ewma * (full / weight), np.nan)  # exactly ewma where all known
        before = minutes - 1
        return np.asarray(np.where(before >= 0, ewma[np.clip(before, 0, self.counts.size - 1)], 0.0), dtype=np.float64)


def last_arrival_before(counts: np.ndarray, minutes: np.ndarray) -> np.ndarray:
    """For each minute index m, the last index below m with (known) arrivals, or -1 when there is none."""
    if counts.size == 0:
        return np.full(minutes.size, -1, dtype=np.int64)
    index = np.arange(counts.size)
    last_active = np.maximum.accumulate(np.where(counts > 0, index, -1))
    return np.asarray(np.where(minutes >= 1, last_active[np.clip(minutes - 1, 0, counts.size - 1)], -1), dtype=np.int64)


def feature_matrix(
    counts: np.ndarray,
    minutes: np.ndarray,
    *,
    first_minute: int,
    horizon: int,
    sessions: np.ndarray | None = None,
) -> np.ndarray:
    """Features for a prediction at the start of each minute index in `minutes`.

    `counts[i]` holds the arrivals of absolute minute `first_minute + i` (minutes since the Unix
    epoch, UTC; NaN when unknown); a row for index `m` reads `counts[:m]` only, so it never sees its
    own future. `sessions`, aligned with `counts`, are the target's session openings (intent);
    None when the target has no intent signal, which leaves those columns NaN.
    """
    counts = np.asarray(counts, dtype=np.float64)
    minutes = np.asarray(minutes, dtype=np.int64)
    sums = _Sums(counts)
    absolute = minutes + first_minute
    day_angle = 2 * np.pi * (absolute % MINUTES_PER_DAY) / MINUTES_PER_DAY
    week_angle = 2 * np.pi * (((absolute // MINUTES_PER_DAY) + _EPOCH_WEEKDAY) % 7) / 7
    seen = last_arrival_before(counts, minutes)
    idle = np.clip(np.where(seen >= 0, minutes - 1 - seen, HISTORY_MINUTES), 0, HISTORY_MINUTES)
    # Trailing windows, longest first: one with no known minute takes the next longer one's rate,
    # so a short outage reads as "the recent rate", never as a value training never saw.
    trailing: dict[int, np.ndarray] = {}
    rate = np.full(minutes.size, np.nan)
    recorded = np.clip(minutes, 0, counts.size)  # how much of a trailing window the array holds
    rates: dict[int, np.ndarray] = {}
    for width in (MINUTES_PER_WEEK, MINUTES_PER_DAY, 60, 15, 5, 1):
        summed = sums.window(minutes, -width, 0)
        trailing[width] = np.where(np.isnan(summed), rate * width, summed)
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = rates[width] = trailing[width] / np.minimum(width, recorded)
    daily_rate = rates[MINUTES_PER_DAY]

    def earlier(lo: int, hi: int) -> np.ndarray:
        """A window a day or a week back; unknown, it takes the last day's rate."""
        summed = sums.window(minutes, lo, hi)
        return np.asarray(np.where(np.isnan(summed), daily_rate * (hi - lo), summed), dtype=np.float64)

    ewma = sums.ewma(minutes)
    columns = [
        np.sin(day_angle),
        np.cos(day_angle),
        np.sin(week_angle),
        np.cos(week_angle),
        np.log1p(trailing[1]),
        np.log1p(trailing[5]),
        np.log1p(trailing[15]),
        np.log1p(trailing[60]),
        np.log1p(trailing[MINUTES_PER_DAY]),
        np.log1p(trailing[MINUTES_PER_WEEK]),
        np.log1p(earlier(-MINUTES_PER_DAY, -MINUTES_PER_DAY + horizon)),
        np.log1p(earlier(-MINUTES_PER_DAY - 30, -MINUTES_PER_DAY + 30 + horizon)),
        np.log1p(earlier(-MINUTES_PER_WEEK - 30, -MINUTES_PER_WEEK + 30 + horizon)),
        np.log1p(np.where(np.isnan(ewma), rates[15], ewma)),
        np.log1p(idle),
        sums.window(minutes, -MINUTES_PER_WEEK, 0, active=True) / MINUTES_PER_WEEK,
    ]
    if sessions is None:
        columns += [np.full(minutes.size, np.nan)] * 3
    else:
        opened = _Sums(np.asarray(sessions, dtype=np.float64))
        columns += [np.log1p(opened.window(minutes, -w, 0)) for w in (1, 5, 60)]
    return np.column_stack(columns).astype(np.float32)


def arrival_labels(counts: np.ndarray, minutes: np.ndarray, horizon: int) -> np.ndarray:
    """For each minute index m: whether any (known) arrival falls in minutes [m, m + horizon)."""
    counts = np.asarray(counts, dtype=np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(np.where(np.isnan(counts), 0.0, counts))))
    return _window_sums(cumulative, np.asarray(minutes, dtype=np.int64), 0, horizon) > 0


def labels_known(counts: np.ndarray, minutes: np.ndarray, horizon: int) -> np.ndarray:
    """For each minute index m: whether its label is known (an arrival seen, or every minute known)."""
    counts = np.asarray(counts, dtype=np.float64)
    unknown = np.concatenate(([0.0], np.cumsum(np.isnan(counts))))
    minutes = np.asarray(minutes, dtype=np.int64)
    return np.asarray(
        (_window_sums(unknown, minutes, 0, horizon) == 0) | arrival_labels(counts, minutes, horizon), dtype=bool
    )


def demand_in_horizon(counts: np.ndarray, horizon: int) -> np.ndarray:
    """Arrivals in [m, m + horizon) for every minute index m whose window is fully recorded and known."""
    counts = np.asarray(counts, dtype=np.float64)
    unknown = np.isnan(counts)
    cumulative = np.concatenate(([0.0], np.cumsum(np.where(unknown, 0.0, counts))))
    if cumulative.size <= horizon:
        return np.zeros(0)
    demand = np.asarray(cumulative[horizon:] - cumulative[:-horizon], dtype=np.float64)
    if not unknown.any():
        return demand
    missing = np.concatenate(([0], np.cumsum(unknown)))
    return np.asarray(demand[(missing[horizon:] - missing[:-horizon]) == 0], dtype=np.float64)
