"""The forecasting steps `prewarm replay` and `prewarm serve` share: which rows a pooled fit trains
on, the fit, the demand tails, and the prediction for one target at one minute.

Pure: arrays in, arrays out. Replay feeds trace counts, serve feeds Prometheus (or stored) counts;
fed the same counts at the same minute, both give the same prediction (tests/cli/test_forecast_explain.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from prewarm.forecast import arrival_model, idle_histogram, minute_features


@dataclasses.dataclass(frozen=True, slots=True)
class TargetHistory:
    """One target's per-minute counts from absolute minute `first_minute` (minutes since the epoch).

    `requests` are NaN where unknown; `sessions` (aligned) are intent's session openings, None for
    a target without intent.
    """

    first_minute: int
    requests: np.ndarray
    sessions: np.ndarray | None = None

    def index(self, minute: int) -> int:
        """The index of absolute `minute` in the arrays."""
        return minute - self.first_minute

    def features(self, indices: np.ndarray, horizon: int, dropped: tuple[str, ...] = ()) -> np.ndarray:
        """Feature rows for predictions at the start of each index in `indices`; the `dropped`
        features unknown (NaN) in every row, which leaves them out of a fit."""
        rows = minute_features.feature_matrix(
            self.requests, indices, first_minute=self.first_minute, horizon=horizon, sessions=self.sessions
        )
        for name in dropped:
            rows[:, minute_features.FEATURE_NAMES.index(name)] = np.nan
        return rows

    def learned(self, until: int) -> bool:
        """Whether the model speaks for this target at index `until` (enough known arrivals before it)."""
        return arrival_model.has_history(self.requests[: max(until, 0)])


def from_known_start(history: TargetHistory) -> TargetHistory:
    """`history` without its leading unknown minutes: a series starts where its data starts.

    A trace starts at its first minute, and a Prometheus series where it was first scraped; what
    lies before is not "unknown minutes inside the history" but no history at all.
    """
    known = np.flatnonzero(~np.isnan(history.requests))
    start = int(known[0]) if known.size else history.requests.size
    if start == 0:
        return history
    return TargetHistory(
        history.first_minute + start,
        history.requests[start:],
        None if history.sessions is None else history.sessions[start:],
    )


def training_rows(history: TargetHistory, *, until: int, config: arrival_model.ForecastConfig) -> np.ndarray:
    """Indices a fit at index `until` trains on: the last `training_minutes` whose labels are known,
    from the target's first arrival on (before it, a target did not exist yet)."""
    seen = np.flatnonzero(history.requests[: max(until, 0)] > 0)
    if seen.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo = max(0, until - config.training_minutes, int(seen[0]))
    hi = until - config.horizon + 1
    rows = np.arange(lo, max(lo, hi), dtype=np.int64)
    return np.asarray(rows[minute_features.labels_known(history.requests, rows, config.horizon)], dtype=np.int64)


def fit_at(
    histories: Mapping[str, TargetHistory],
    *,
    minute: int,
    config: arrival_model.ForecastConfig,
    features: Mapping[str, np.ndarray] | None = None,
) -> arrival_model.ArrivalModel:
    """The pooled model fitted at absolute `minute` on every target the model speaks for.

    The rows are sampled from all targets' labels first, so features are computed for the sampled
    rows only. `features`, when given, hold each target's feature rows for every index (replay
    computes them once for all refits); a row is the same whether computed alone or with others.
    """
    parts: list[tuple[str, np.ndarray]] = []
    labels: list[np.ndarray] = []
    for name in sorted(histories):  # the same rows in the same order, however the caller listed them
        history = histories[name]
        until = history.index(minute)
        if not history.learned(until):
            continue
        rows = training_rows(history, until=until, config=config)
        parts.append((name, rows))
        labels.append(minute_features.arrival_labels(history.requests, rows, config.horizon))
    outcomes = np.concatenate(labels) if labels else np.zeros(0, dtype=bool)
    sample = arrival_model.sample_training_rows(outcomes, config)
    if sample is None:
        return arrival_model.ArrivalModel(None, float(outcomes.mean()) if outcomes.size else 0.0)
    chosen = []
    offset = 0
    for name, rows in parts:
        picked = sample.rows[(sample.rows >= offset) & (sample.rows < offset + rows.size)] - offset
        offset += rows.size
        if picked.size:
            local = rows[picked]
            chosen.append(
                histories[name].features(local, config.horizon, config.dropped_features)
                if features is None
                else features[name][local]
            )
    return arrival_model.fit_sampled(
        np.concatenate(chosen),
        outcomes[sample.rows],
        base_rate=float(outcomes.mean()),
        odds_scale=sample.odds_scale,
        config=config,
    )


def demand_tails(
    histories: Mapping[str, TargetHistory],
    *,
    minute: int,
    horizon: int,
    service_seconds: Mapping[str, float | None] | None = None,
    lead_seconds: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """P(R >= k | N >= 1) per target from its known windows before `minute`, shrunk toward all
    targets': R the replicas an arrival in the horizon needs, from the arrivals N of each window,
    the target's mean service time known then (`service_seconds`; missing or None: R = N) and its
    cold-start time (`lead_seconds`; missing: the horizon), within which a window's arrivals may
    all come before a replica started for them is ready."""
    services = service_seconds or {}
    leads = lead_seconds or {}
    demands: dict[str, np.ndarray] = {}
    overlaps: dict[str, float] = {}
    for name in sorted(histories):
        history = histories[name]
        demands[name] = minute_features.demand_in_horizon(history.requests[: max(history.index(minute), 0)], horizon)
        overlaps[name] = arrival_model.overlap_share(services.get(name), leads.get(name, horizon * 60.0))
    busy = {name: int(np.count_nonzero(d >= 1)) for name, d in demands.items()}
    own = {name: arrival_model.demand_tail(d, overlap=overlaps[name]) for name, d in demands.items()}
    total = sum(busy.values())
    pooled = (
        np.sum([own[name] * busy[name] for name in demands], axis=0) / total
        if total
        else arrival_model.demand_tail(np.zeros(0))
    )
    return {name: arrival_model.demand_tail(d, pooled, overlap=overlaps[name]) for name, d in demands.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class Prediction:
    """The forecast for one target at the start of one minute."""

    probability: float | None  # P(at least one arrival in the horizon); None when the fallback rule answered
    tail: np.ndarray  # P(N >= k | N >= 1) for k = 1..MAX_LEVEL
    replicas: float  # what the forecast keeps warm

    @property
    def expected_requests(self) -> float | None:
        """E[N] over the horizon: P(N >= 1) * sum_k P(N >= k | N >= 1)."""
        return None if self.probability is None else self.probability * float(self.tail.sum())


def predict(
    model: arrival_model.ArrivalModel | None,
    history: TargetHistory,
    *,
    minute: int,
    horizon: int,
    quantile: float,
    tail: np.ndarray,
    concurrency: int = 1,
    keep_alive_minutes: int = 0,
    keep_alive_replicas: int = 1,
) -> Prediction:
    """The prediction at the start of absolute `minute`: the model's when it was fitted and speaks
    for the target, otherwise the hybrid-histogram rule on the minute counts; at least
    `keep_alive_replicas` within `keep_alive_minutes` of a minute with arrivals."""
    at = history.index(minute)
    here = np.asarray([at], dtype=np.int64)
    recent = float(
        arrival_model.keep_alive_replicas(
            history.requests, here, keep_alive_minutes=keep_alive_minutes, replicas=keep_alive_replicas
        )[0]
    )
    if model is not None and model.estimator is not None and history.learned(at):
        probability = float(model.probability(history.features(here, horizon))[0])
        replicas = float(arrival_model.replicas_for(np.asarray([probability]), tail, quantile, concurrency)[0])
        return Prediction(probability, tail, max(replicas, recent))
    warm = float(idle_histogram.fallback_replicas(history.requests, here, learned_until=max(at, 0))[0])
    return Prediction(None, tail, max(warm, recent))
