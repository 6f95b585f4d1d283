"""The live forecaster: the replay's `forecast` code fed from the store's per-minute arrival counters.

Each minute it reads every forecast-enabled target's arrival history, predicts the replicas worth
keeping warm for the target's horizon, and tells the decider which targets' forecasts changed.
It refits the pooled model every `refit` (15 min by default) in a worker thread, so the event
loop never waits on scikit-learn; until a fit has both outcomes to learn from, targets use the
hybrid-histogram fallback and the fit is tried again each minute. It also scores each past
prediction once its horizon has passed (`prewarm.forecast.error`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import numpy as np

from prewarm.core import targets
from prewarm.forecast import arrival_model, idle_histogram, minute_features
from prewarm.service import clock, state, telemetry

log = logging.getLogger(__name__)

DEFAULT_REFIT = timedelta(minutes=15)


@dataclasses.dataclass(frozen=True, slots=True)
class _Prediction:
    minute: int  # absolute minute the prediction was made at
    horizon: int
    probability: float | None  # None when the fallback rule answered


class ForecastLoop:
    """Serves `current_forecast(spec, now)` to the decider from predictions made at each minute's start."""

    def __init__(
        self,
        *,
        store: state.Store,
        clock: clock.Clock,
        specs: Callable[[], Mapping[str, targets.TargetSpec]],
        on_change: Callable[[str], None],
        telemetry: telemetry.Telemetry | None = None,
        refit: timedelta = DEFAULT_REFIT,
        config: arrival_model.ForecastConfig | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._specs = specs
        self._on_change = on_change
        self._telemetry = telemetry
        self._refit = refit
        self._config = config or arrival_model.ForecastConfig()
        self._values: dict[str, float] = {}
        self._models: dict[int, arrival_model.ArrivalModel] = {}  # by horizon in minutes
        self._fitted_at: datetime | None = None
        self._pending: dict[str, list[_Prediction]] = {}

    def current_forecast(self, spec: targets.TargetSpec, now: datetime) -> float | None:
        """The replicas the latest prediction keeps warm for `spec`, or None before the first one."""
        return self._values.get(str(spec.ref))

    async def run(self) -> None:
        """Predict at the start of every minute, forever."""
        wake = asyncio.Event()
        while True:
            now = self._clock.now()
            try:
                await self.update(now)
            except state.StateUnavailable as e:
                log.warning("forecast skipped, store unavailable: %s", e)
            except Exception:  # one bad minute must not end forecasting for good
                log.exception("forecast update at %s failed", now)
            minute = math.floor(now.timestamp() / 60)
            await self._clock.wait_until(datetime.fromtimestamp((minute + 1) * 60, UTC), wake)

    async def update(self, now: datetime) -> None:
        """Refit when due, then predict every forecast-enabled target for the minute that `now` is in."""
        enabled = {name: spec for name, spec in self._specs().items() if spec.forecast.enabled}
        if not enabled:
            return
        minute = math.floor(now.timestamp() / 60)
        first = minute - minute_features.HISTORY_MINUTES
        counts: dict[str, np.ndarray] = {}
        for name in enabled:
            counts[name] = await self._history(name, first, minute)
        horizons = {
            name: minute_features.horizon_minutes(spec.forecast.horizon.total_seconds())
            for name, spec in enabled.items()
        }
        due = self._fitted_at is None or now - self._fitted_at >= self._refit
        if due:
            self._fitted_at = now
        for horizon in set(horizons.values()):
            fitted = self._models.get(horizon)
            if due or fitted is None or fitted.estimator is None:  # no model yet: try again each minute
                rows = [counts[n] for n, h in horizons.items() if h == horizon]
                self._models[horizon] = await asyncio.get_running_loop().run_in_executor(
                    None, self._fit, rows, first, horizon
                )
        index = minute_features.HISTORY_MINUTES  # `minute` relative to `first`
        demands = {
            h: {n: minute_features.demand_in_horizon(c, h) for n, c in counts.items()} for h in set(horizons.values())
        }
        pooled = {
            h: arrival_model.demand_tail(np.concatenate(list(d.values()))) for h, d in demands.items()
        }  # the prior
        for name, spec in enabled.items():
            horizon = horizons[name]
            history = counts[name]
            self._score(name, history, first, minute)
            here = np.asarray([index])
            probability: float | None = None
            model = self._models.get(horizon)
            if arrival_model.has_history(history) and model is not None and model.estimator is not None:
                features = minute_features.feature_matrix(history, here, first_minute=first, horizon=horizon)
                probability = float(model.probability(features)[0])
                tail = arrival_model.demand_tail(demands[horizon][name], pooled[horizon])
                value = float(arrival_model.replicas_for(np.asarray([probability]), tail, spec.forecast.quantile)[0])
            else:
                value = float(idle_histogram.fallback_replicas(history, here, learned_until=index)[0])
            self._pending.setdefault(name, []).append(_Prediction(minute, horizon, probability))
            if self._values.get(name) != value:
                self._values[name] = value
                self._on_change(name)
        for gone in set(self._values) - set(enabled):
            del self._values[gone]
            self._pending.pop(gone, None)

    async def _history(self, target: str, first: int, minute: int) -> np.ndarray:
        since = datetime.fromtimestamp(first * 60, UTC)
        until = datetime.fromtimestamp(minute * 60, UTC)
        raw = await self._store.arrivals(target, since, until)
        counts = np.zeros(minute - first + 1)  # the last slot (this minute) stays 0: not known yet
        for at, count in raw.items():
            counts[math.floor(at.timestamp() / 60) - first] = count
        return counts

    def _fit(self, rows: list[np.ndarray], first: int, horizon: int) -> arrival_model.ArrivalModel:
        """Pooled fit over every target of this horizon whose labels are already known."""
        usable = [c for c in rows if arrival_model.has_history(c)]
        if not usable:
            return arrival_model.ArrivalModel(None, 0.0)
        end = minute_features.HISTORY_MINUTES - horizon + 1
        minutes = np.arange(max(0, end - self._config.training_minutes), end)
        features = np.concatenate(
            [minute_features.feature_matrix(c, minutes, first_minute=first, horizon=horizon) for c in usable]
        )
        labels = np.concatenate([minute_features.arrival_labels(c, minutes, horizon) for c in usable])
        return arrival_model.fit_arrival_model(features, labels, self._config)

    def _score(self, target: str, history: np.ndarray, first: int, minute: int) -> None:
        """Record |P(arrival) - observed| for predictions whose horizon has fully passed."""
        pending = self._pending.get(target, [])
        keep = []
        for prediction in pending:
            if prediction.minute + prediction.horizon > minute:
                keep.append(prediction)
                continue
            if prediction.probability is None or self._telemetry is None:
                continue
            start = prediction.minute - first
            observed = float(history[start : start + prediction.horizon].sum() > 0)
            self._telemetry.record_forecast_error(target, abs(prediction.probability - observed))
        self._pending[target] = keep
