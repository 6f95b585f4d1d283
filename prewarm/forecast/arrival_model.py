"""The learned arrival model and the rule that turns its probabilities into replicas.

Pure: arrays in, arrays out; no clock, no I/O. The model estimates P(at least one arrival in
minutes [m, m + horizon)); one model is fitted on the rows of all targets together, so rare targets
borrow from busy ones through their rate features. A target keeps `k` replicas warm while
P(N >= k) > 1 - quantile, i.e. while the `quantile` of its demand N needs them; P(N >= k | N >= 1)
for k >= 2 comes from the target's own history.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import numpy as np

from prewarm.forecast import minute_features

# scikit-learn is imported where first used: it takes seconds to import, and `prewarm serve`
# without forecast-enabled targets never needs it.


MIN_ARRIVAL_MINUTES = 1  # minutes with arrivals a target needs before the model speaks for it
MAX_LEVEL = 16  # highest floor the demand tail is estimated for


class ModelKind(enum.Enum):
    """The scikit-learn models tried for P(arrival); the replay decides which earns its keep."""

    BOOSTING = "boosting"  # HistGradientBoostingClassifier
    LOGISTIC = "logistic"  # standardized logistic regression


@dataclasses.dataclass(frozen=True, slots=True)
class ForecastConfig:
    """How a forecaster is trained: horizon in minutes, model kind, bounded history, sampling."""

    horizon: int = 1
    model: ModelKind = ModelKind.BOOSTING
    training_minutes: int = minute_features.MINUTES_PER_WEEK  # rows older than this are not trained on
    max_training_rows: int = 30_000
    seed: int = 0
    dropped_features: tuple[str, ...] = ()  # minute_features.FEATURE_NAMES left out (measuring what each earns)

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError("ForecastConfig.horizon must be >= 1 minute")
        unknown = sorted(set(self.dropped_features) - set(minute_features.FEATURE_NAMES))
        if unknown:
            raise ValueError(f"ForecastConfig.dropped_features: unknown features {unknown}")
        if self.training_minutes < self.horizon or self.max_training_rows < 100:
            raise ValueError("ForecastConfig needs training_minutes >= horizon and max_training_rows >= 100")


def overlap_share(service_seconds: float | None, lead_seconds: float) -> float:
    """The chance that another arrival of a window is in service at the same time as a given one
    (their starts less than a service time apart, either way), at most 1.

    A replica started for an arrival is ready a cold start (`lead_seconds`) later, so the floor must
    hold what arrives within one lead time; a window's arrivals are taken to come within one (they
    cluster), each in service for the mean service time (Little's law: requests in service =
    arrivals x service time). Unknown service time is 1: every arrival needs its own replica.
    """
    if service_seconds is None or not math.isfinite(service_seconds) or lead_seconds <= 0:
        return 1.0
    return min(1.0, max(0.0, 2.0 * service_seconds / lead_seconds))


def replicas_needed_tail(arrivals: np.ndarray, overlap: float) -> np.ndarray:
    """P(R >= k) for k = 1..MAX_LEVEL, per window with `arrivals[i]` >= 1 arrivals: the replicas an
    arrival needs are itself plus the others in service then, 1 + Binomial(n - 1, overlap).

    With overlap 1 this is n (every arrival of the window in service at once: sizing by arrivals);
    with short requests it is about 1 + (n - 1) x service time / window, with its binomial tail.
    """
    n = np.asarray(arrivals, dtype=np.float64)
    levels = np.arange(MAX_LEVEL)  # k - 1: others in service
    if overlap >= 1.0:
        return np.asarray(n[:, None] >= levels[None, :] + 1, dtype=np.float64)
    others = np.maximum(n - 1.0, 0.0)
    distinct, inverse = np.unique(others, return_inverse=True)
    survival = np.ones((distinct.size, MAX_LEVEL))
    if overlap > 0.0:
        # pmf of 0..MAX_LEVEL-2 others by the recurrence P(j + 1) = P(j) (m - j) / (j + 1) p / (1 - p);
        # P(0) underflows to 0 only where the mean is in the hundreds, and then every level is needed
        pmf = np.exp(distinct * math.log1p(-overlap))
        ratio = overlap / (1.0 - overlap)
        cdf = np.zeros_like(pmf)
        for j in range(MAX_LEVEL - 1):
            cdf = cdf + pmf
            survival[:, j + 1] = np.clip(1.0 - cdf, 0.0, 1.0)
            pmf = pmf * np.maximum(distinct - j, 0.0) / (j + 1) * ratio
    else:
        survival[:, 1:] = 0.0
    return np.asarray(survival[inverse], dtype=np.float64)


def demand_tail(
    demand: np.ndarray, prior: np.ndarray | None = None, prior_weight: float = 20.0, *, overlap: float = 1.0
) -> np.ndarray:
    """P(R >= k | N >= 1) for k = 1..MAX_LEVEL from per-window arrivals N, shrunk toward `prior`:
    R, the replicas an arrival needs, is N itself with `overlap` 1 (`replicas_needed_tail`).

    With few busy windows of its own a target leans on the prior (the pooled tail of all targets).
    """
    busy = demand[demand >= 1]
    if busy.size:
        own = replicas_needed_tail(busy, overlap).mean(axis=0)
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


def keep_alive_replicas(
    counts: np.ndarray, minutes: np.ndarray, *, keep_alive_minutes: int, replicas: int = 1
) -> np.ndarray:
    """`replicas` at the start of each minute index m that had arrivals within the last
    `keep_alive_minutes` minutes (read from `counts[:m]`, like the features), else 0.

    A per-target keep-alive beside the learned floor: the tuner raises it where recent traffic
    predicts the next request better than the pooled model does.
    """
    minutes = np.asarray(minutes, dtype=np.int64)
    if keep_alive_minutes <= 0:
        return np.zeros(minutes.size)
    seen = minute_features.last_arrival_before(np.asarray(counts), minutes)
    recent = (seen >= 0) & (minutes - seen <= keep_alive_minutes)
    return np.where(recent, float(replicas), 0.0)


def build_model(kind: ModelKind, seed: int) -> Any:
    """A fresh, unfitted scikit-learn classifier of `kind`."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind is ModelKind.LOGISTIC:  # unknown (NaN) features take the column mean; boosting routes them itself
        return make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), LogisticRegression(max_iter=300, C=1.0))
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
    `columns` are the feature columns it was fitted on: a column unknown (NaN) in every training
    row, such as intent for a pool without intent, is left out.
    """

    estimator: Any  # a fitted scikit-learn classifier, or None
    constant: float
    odds_scale: float = 1.0
    columns: tuple[int, ...] | None = None  # None: every column

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(at least one arrival in the horizon) for each feature row."""
        if self.estimator is None or features.shape[0] == 0:
            return np.full(features.shape[0], self.constant)
        if self.columns is not None:
            features = features[:, list(self.columns)]
        sampled = np.clip(np.asarray(self.estimator.predict_proba(features)[:, 1], dtype=np.float64), 1e-12, 1 - 1e-12)
        odds = sampled / (1.0 - sampled) * self.odds_scale
        return odds / (1.0 + odds)


@dataclasses.dataclass(frozen=True, slots=True)
class TrainingSample:
    """The rows a fit trains on (sorted indices into its labels) and the odds correction they need."""

    rows: np.ndarray
    odds_scale: float  # negative sampling rate / positive sampling rate


def sample_training_rows(labels: np.ndarray, config: ForecastConfig) -> TrainingSample | None:
    """At most `config.max_training_rows` rows: positives first (up to half), negatives sampled
    (seeded). None when the labels hold one class only: there is nothing to learn.

    Sampling instead of weighting keeps the fit fast; the odds are corrected afterwards. Callers
    compute features for the sampled rows only.
    """
    labels = np.asarray(labels, dtype=bool)
    if labels.size == 0 or labels.all() or not labels.any():
        return None
    rng = np.random.default_rng(config.seed)
    positives = np.flatnonzero(labels)
    negatives = np.flatnonzero(~labels)
    positive_rate = min(1.0, (config.max_training_rows // 2) / positives.size)
    if positive_rate < 1.0:
        positives = rng.choice(positives, config.max_training_rows // 2, replace=False)
    keep_negatives = min(negatives.size, config.max_training_rows - positives.size)
    negative_rate = keep_negatives / negatives.size
    negatives = rng.choice(negatives, keep_negatives, replace=False)
    return TrainingSample(np.sort(np.concatenate((positives, negatives))), negative_rate / positive_rate)


def fit_sampled(
    features: np.ndarray, labels: np.ndarray, *, base_rate: float, odds_scale: float, config: ForecastConfig
) -> ArrivalModel:
    """Fit on sampled rows (`sample_training_rows`); columns unknown in every row are left out."""
    known = ~np.isnan(features).all(axis=0)
    columns = None if known.all() else tuple(int(c) for c in np.flatnonzero(known))
    estimator = build_model(config.model, config.seed)
    estimator.fit(features if columns is None else features[:, list(columns)], np.asarray(labels, dtype=bool))
    return ArrivalModel(estimator, base_rate, odds_scale=odds_scale, columns=columns)


def fit_arrival_model(features: np.ndarray, labels: np.ndarray, config: ForecastConfig) -> ArrivalModel:
    """Fit on at most `config.max_training_rows` of the rows (`sample_training_rows`); a constant
    when the labels hold one class only."""
    labels = np.asarray(labels, dtype=bool)
    sample = sample_training_rows(labels, config)
    if sample is None:
        return ArrivalModel(None, float(labels.mean()) if labels.size else 0.0)
    return fit_sampled(
        features[sample.rows],
        labels[sample.rows],
        base_rate=float(labels.mean()),
        odds_scale=sample.odds_scale,
        config=config,
    )


def has_history(counts_before: np.ndarray) -> bool:
    """Whether a target has seen arrivals in enough (known) minutes for the model to speak for it."""
    return int(np.count_nonzero(np.asarray(counts_before) > 0)) >= MIN_ARRIVAL_MINUTES
