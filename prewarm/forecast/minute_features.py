"""Per-minute features of a target's arrival history, and the labels they are trained on.

Pure: arrays in, arrays out; no clock, no I/O. At the start of minute `m` a target's features come
from its counts of minutes `< m` only, so a row never sees its own future. The same functions feed
`prewarm serve` (from stored counts) and `prewarm replay` (from a trace).
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


def last_arrival_before(counts: np.ndarray, minutes: np.ndarray) -> np.ndarray:
    """For each minute index m, the last index below m with arrivals, or -1 when there is none."""
    if counts.size == 0:
        return np.full(minutes.size, -1, dtype=np.int64)
    index = np.arange(counts.size)
    last_active = np.maximum.accumulate(np.where(counts > 0, index, -1))
    return np.asarray(np.where(minutes >= 1, last_active[np.clip(minutes - 1, 0, counts.size - 1)], -1), dtype=np.int64)


def feature_matrix(counts: np.ndarray, minutes: np.ndarray, *, first_minute: int, horizon: int) -> np.ndarray:
    """Features for a prediction at the start of each minute index in `minutes`.

    `counts[i]` holds the arrivals of absolute minute `first_minute + i` (minutes since the Unix
    epoch, UTC); a row for index `m` reads `counts[:m]` only, so it never sees its own future.
    """
    counts = np.asarray(counts, dtype=np.float64)
    minutes = np.asarray(minutes, dtype=np.int64)
    cumulative = np.concatenate(([0.0], np.cumsum(counts)))
    active = np.concatenate(([0.0], np.cumsum(counts > 0)))
    absolute = minutes + first_minute
    day_angle = 2 * np.pi * (absolute % MINUTES_PER_DAY) / MINUTES_PER_DAY
    week_angle = 2 * np.pi * (((absolute // MINUTES_PER_DAY) + _EPOCH_WEEKDAY) % 7) / 7
    from scipy import signal

    ewma = signal.lfilter([1 - 0.5 ** (1 / 10)], [1, -(0.5 ** (1 / 10))], counts) if counts.size else counts
    before = minutes - 1
    ewma_now = np.where(before >= 0, ewma[np.clip(before, 0, max(counts.size - 1, 0))] if counts.size else 0.0, 0.0)
    seen = last_arrival_before(counts, minutes)
    idle = np.clip(np.where(seen >= 0, minutes - 1 - seen, HISTORY_MINUTES), 0, HISTORY_MINUTES)
    columns = [
        np.sin(day_angle),
        np.cos(day_angle),
        np.sin(week_angle),
        np.cos(week_angle),
        np.log1p(_window_sums(cumulative, minutes, -1, 0)),
        np.log1p(_window_sums(cumulative, minutes, -5, 0)),
        np.log1p(_window_sums(cumulative, minutes, -15, 0)),
        np.log1p(_window_sums(cumulative, minutes, -60, 0)),
        np.log1p(_window_sums(cumulative, minutes, -MINUTES_PER_DAY, 0)),
        np.log1p(_window_sums(cumulative, minutes, -MINUTES_PER_WEEK, 0)),
        np.log1p(_window_sums(cumulative, minutes, -MINUTES_PER_DAY, -MINUTES_PER_DAY + horizon)),
        np.log1p(_window_sums(cumulative, minutes, -MINUTES_PER_DAY - 30, -MINUTES_PER_DAY + 30 + horizon)),
        np.log1p(_window_sums(cumulative, minutes, -MINUTES_PER_WEEK - 30, -MINUTES_PER_WEEK + 30 + horizon)),
        np.log1p(ewma_now),
        np.log1p(idle),
        _window_sums(active, minutes, -MINUTES_PER_WEEK, 0) / MINUTES_PER_WEEK,
    ]
    return np.column_stack(columns).astype(np.float32)


def arrival_labels(counts: np.ndarray, minutes: np.ndarray, horizon: int) -> np.ndarray:
    """For each minute index m: whether any arrival falls in minutes [m, m + horizon)."""
    cumulative = np.concatenate(([0.0], np.cumsum(np.asarray(counts, dtype=np.float64))))
    return _window_sums(cumulative, np.asarray(minutes, dtype=np.int64), 0, horizon) > 0


def demand_in_horizon(counts: np.ndarray, horizon: int) -> np.ndarray:
    """Arrivals in [m, m + horizon) for every minute index m whose window is fully recorded."""
    cumulative = np.concatenate(([0.0], np.cumsum(np.asarray(counts, dtype=np.float64))))
    if cumulative.size <= horizon:
        return np.zeros(0)
    return np.asarray(cumulative[horizon:] - cumulative[:-horizon], dtype=np.float64)
