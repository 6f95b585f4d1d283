"""Learned forecasts: per-minute arrival history in, the replicas worth keeping warm out.

Pure: arrays in, arrays out; no clock, no I/O. The same functions serve `prewarm serve` (fed from
the store's per-minute arrival counters) and `prewarm replay` (fed from a trace).

At the start of minute `m` a target's features come from its counts of minutes `< m` only. The
model estimates P(at least one arrival in minutes [m, m + horizon)); one model is fitted on the
rows of all targets together, so rare targets borrow from busy ones through their rate features.
A target keeps `k` replicas warm while P(N >= k) > 1 - quantile, i.e. while the `quantile` of its
demand N needs them; P(N >= k | N >= 1) for k >= 2 comes from the target's own history.
Targets with too little history fall back to the hybrid-histogram rule (`histogram_windows`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# scikit-learn and SciPy are imported where first used: they take seconds to import, and
# `prewarm serve` without forecast-enabled targets never needs them.

MINUTES_PER_DAY = 1440
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
HISTORY_MINUTES = MINUTES_PER_WEEK + 60  # what the features look back over, at most
MIN_ARRIVAL_MINUTES = 1  # minutes with arrivals a target needs before the model speaks for it
MAX_LEVEL = 16  # highest floor the demand tail is estimated for
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


class ModelKind(enum.Enum):
    """The scikit-learn models tried for P(arrival); the replay decides which earns its keep."""

    BOOSTING = "boosting"  # HistGradientBoostingClassifier
    LOGISTIC = "logistic"  # standardized logistic regression


@dataclasses.dataclass(frozen=True, slots=True)
class ForecastConfig:
    """How a forecaster is trained: horizon in minutes, model kind, bounded history, sampling."""

    horizon: int = 1
    model: ModelKind = ModelKind.BOOSTING
    training_minutes: int = MINUTES_PER_WEEK  # rows older than this are not trained on
    max_training_rows: int = 30_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError("ForecastConfig.horizon must be >= 1 minute")
        if self.training_minutes < self.horizon or self.max_training_rows < 100:
            raise ValueError("ForecastConfig needs training_minutes >= horizon and max_training_rows >= 100")


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


def demand_tail(demand: np.ndarray, prior: np.ndarray | None = None, prior_weight: float = 20.0) -> np.ndarray:
    """P(N >= k | N >= 1) for k = 1..MAX_LEVEL from per-window demands, shrunk toward `prior`.

    With few busy windows of its own a target leans on the prior (the pooled tail of all targets).
    """
    busy = demand[demand >= 1]
    levels = np.arange(1, MAX_LEVEL + 1)
    if busy.size:
        own = (busy[:, None] >= levels[None, :]).mean(axis=0)
    else:
        own = np.zeros(MAX_LEVEL)
        own[0] = 1.0
    if prior is None:
        return np.asarray(own, dtype=np.float64)
    weight = busy.size / (busy.size + prior_weight)
    return np.asarray(weight * own + (1 - weight) * prior, dtype=np.float64)


def replicas_for(p_arrival: np.ndarray, tail: np.ndarray, quantile: float, concurrency: int = 1) -> np.ndarray:
    """Replicas that keep the `quantile` of demand warm: the largest k with P(N >= k) > 1 - quantile.

    P(N >= k) = p_arrival * tail[k - 1]; `concurrency` requests share one replica.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError("quantile must be in (0, 1)")
    p = np.nan_to_num(np.asarray(p_arrival, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    needed = (p[:, None] * tail[None, :]) > (1.0 - quantile) + 1e-12  # 1 - 0.9 is 0.0999...98
    requests = needed.sum(axis=1)
    return np.asarray(np.ceil(requests / concurrency), dtype=np.float64)


def build_model(kind: ModelKind, seed: int) -> Any:
    """A fresh, unfitted scikit-learn classifier of `kind`."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind is ModelKind.LOGISTIC:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=1.0))
    return HistGradientBoostingClassifier(
        max_iter=60,
        learning_rate=0.12,
        max_leaf_nodes=31,
        min_samples_leaf=40,
        l2_regularization=1.0,
        random_state=seed,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ArrivalModel:
    """A fitted P(arrival in horizon) model; `constant` stands in when training saw one class only.

    Training samples negatives (and, past half the budget, positives) at different rates;
    `odds_scale` (negative rate / positive rate) maps the model's odds back to the population's.
    """

    estimator: Any  # a fitted scikit-learn classifier, or None
    constant: float
    odds_scale: float = 1.0

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(at least one arrival in the horizon) for each feature row."""
        if self.estimator is None or features.shape[0] == 0:
            return np.full(features.shape[0], self.constant)
        sampled = np.clip(np.asarray(self.estimator.predict_proba(features)[:, 1], dtype=np.float64), 1e-12, 1 - 1e-12)
        odds = sampled / (1.0 - sampled) * self.odds_scale
        return odds / (1.0 + odds)


def fit_arrival_model(features: np.ndarray, labels: np.ndarray, config: ForecastConfig) -> ArrivalModel:
    """Fit on at most `config.max_training_rows` rows: positives first, negatives sampled (seeded).

    Sampling instead of weighting keeps the fit fast; the odds are corrected afterwards.
    """
    labels = np.asarray(labels, dtype=bool)
    if labels.size == 0 or labels.all() or not labels.any():
        return ArrivalModel(None, float(labels.mean()) if labels.size else 0.0)
    rng = np.random.default_rng(config.seed)
    positives = np.flatnonzero(labels)
    negatives = np.flatnonzero(~labels)
    positive_rate = min(1.0, (config.max_training_rows // 2) / positives.size)
    if positive_rate < 1.0:
        positives = rng.choice(positives, config.max_training_rows // 2, replace=False)
    keep_negatives = min(negatives.size, config.max_training_rows - positives.size)
    negative_rate = keep_negatives / negatives.size
    negatives = rng.choice(negatives, keep_negatives, replace=False)
    rows = np.sort(np.concatenate((positives, negatives)))
    estimator = build_model(config.model, config.seed)
    estimator.fit(features[rows], labels[rows])
    return ArrivalModel(estimator, float(labels.mean()), odds_scale=negative_rate / positive_rate)


@dataclasses.dataclass(frozen=True, slots=True)
class HistogramWindows:
    """The hybrid-histogram rule's windows after an execution ends (seconds), and which rule set them.

    Unload at the end of an execution, load again `prewarm` later, keep loaded for `keepalive`.
    `prewarm` 0 means stay loaded for `keepalive` after the execution.
    """

    prewarm: float
    keepalive: float
    rule: str  # "histogram", "fixed" (not representative) or "out-of-range"


HISTOGRAM_BIN_SECONDS = 60.0
HISTOGRAM_RANGE_SECONDS = 4 * 3600.0
HISTOGRAM_MIN_SAMPLES = 10
HISTOGRAM_MIN_CV = 2.0
HISTOGRAM_OUT_OF_RANGE_SHARE = 0.5
HISTOGRAM_HEAD, HISTOGRAM_TAIL = 0.05, 0.99
HISTOGRAM_MARGIN = 0.10
OUT_OF_RANGE_MARGIN = 0.15


class IdleHistogram:
    """The hybrid-histogram policy's state for one target (Shahrad et al., ATC 2020), updated in O(1).

    1-minute bins over 4 h. `windows()` reads it: representative (>= 10 idle times in range and a
    bin-count CV >= 2): pre-warm at the 5th percentile's bin start less 10%, keep alive to the
    99th percentile's bin end plus 10%. Mostly (> 50%) out of range: the paper fits ARIMA; we
    predict the next idle time as the median of the last five out-of-range ones and pre-warm 15%
    before it, keeping alive for 30% of it. Otherwise the paper's fallback: no pre-warm, keep
    alive for the whole 4 h range.
    """

    _BINS = int(HISTOGRAM_RANGE_SECONDS // HISTOGRAM_BIN_SECONDS)

    def __init__(self) -> None:
        self._counts = np.zeros(self._BINS, dtype=np.int64)
        self._inside = 0
        self._outside = 0
        self._recent_outside: list[float] = []

    def add(self, idle_seconds: float) -> None:
        if idle_seconds >= HISTOGRAM_RANGE_SECONDS:
            self._outside += 1
            self._recent_outside = [*self._recent_outside[-4:], idle_seconds]
        else:
            self._counts[int(max(idle_seconds, 0.0) // HISTOGRAM_BIN_SECONDS)] += 1
            self._inside += 1

    def windows(self) -> HistogramWindows:
        total = self._inside + self._outside
        if total and self._outside / total > HISTOGRAM_OUT_OF_RANGE_SHARE:
            predicted = float(np.median(self._recent_outside))
            return HistogramWindows(
                predicted * (1 - OUT_OF_RANGE_MARGIN), predicted * 2 * OUT_OF_RANGE_MARGIN, "out-of-range"
            )
        fixed = HistogramWindows(0.0, HISTOGRAM_RANGE_SECONDS, "fixed")
        if self._inside < HISTOGRAM_MIN_SAMPLES:
            return fixed
        mean = self._inside / self._BINS
        if self._counts.std() / mean < HISTOGRAM_MIN_CV:
            return fixed
        cumulative = np.cumsum(self._counts) / self._inside
        head_bin = int(np.searchsorted(cumulative, HISTOGRAM_HEAD))
        tail_bin = int(np.searchsorted(cumulative, HISTOGRAM_TAIL))
        prewarm = head_bin * HISTOGRAM_BIN_SECONDS * (1 - HISTOGRAM_MARGIN)
        keepalive_until = (tail_bin + 1) * HISTOGRAM_BIN_SECONDS * (1 + HISTOGRAM_MARGIN)
        return HistogramWindows(prewarm, max(keepalive_until - prewarm, 0.0), "histogram")


def histogram_windows(idle_times: Sequence[float] | np.ndarray) -> HistogramWindows:
    """The hybrid-histogram windows learned from `idle_times` (seconds, oldest first)."""
    histogram = IdleHistogram()
    for idle in np.asarray(idle_times, dtype=np.float64).tolist():
        histogram.add(idle)
    return histogram.windows()


def histogram_floor(idle_seconds: float, windows: HistogramWindows) -> int:
    """1 while `idle_seconds` since the last execution fall inside the rule's warm window, else 0."""
    return 1 if windows.prewarm <= idle_seconds < windows.prewarm + windows.keepalive else 0


def has_history(counts_before: np.ndarray) -> bool:
    """Whether a target has seen arrivals in enough minutes for the model to speak for it."""
    return int(np.count_nonzero(counts_before)) >= MIN_ARRIVAL_MINUTES


def fallback_replicas(counts: np.ndarray, minutes: np.ndarray, *, learned_until: int) -> np.ndarray:
    """The hybrid-histogram rule on minute counts, for the start of each minute index in `minutes`.

    Idle times are the gaps between minutes with arrivals before `learned_until`; each row's idle
    time since the last arrival reads `counts[:m]` only, like the features.
    """
    counts = np.asarray(counts)
    minutes = np.asarray(minutes, dtype=np.int64)
    active = np.flatnonzero(counts[:learned_until])
    windows = histogram_windows((np.diff(active) - 1) * 60.0)
    seen = last_arrival_before(counts, minutes)
    idle = (minutes - 1 - seen) * 60.0
    warm = (seen >= 0) & (idle >= windows.prewarm) & (idle < windows.prewarm + windows.keepalive)
    return np.asarray(warm, dtype=np.float64)
