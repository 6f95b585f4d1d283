"""The live forecaster: the replay's forecasting steps (`forecast/pooled_forecast.py`) fed from
Prometheus request history, or from the store's session openings for targets without one.

At start-up (`prepare`) it loads each history target's last `forecast.historyDays` from Prometheus
and fits before the first forecast is served; then, at the start of every minute, it re-reads the
last few minutes (one query per preset and namespace), predicts the replicas worth keeping warm
for each target's horizon, and tells the decider which targets' forecasts changed. It refits the
pooled model every `refit` (15 min by default). Fits and predictions run in a worker thread, so the
event loop never waits on scikit-learn. A failed read keeps the last model and the history read
so far (the minutes it could not read are unknown, not zero) and marks the target degraded until
a read succeeds. It also scores each past prediction once its horizon has passed
(`prewarm.forecast.error`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from prewarm.core import policy, targets
from prewarm.forecast import arrival_model, minute_features, pooled_forecast, request_history
from prewarm.service import clock, history, telemetry
from prewarm.service.store import ARRIVAL_HISTORY, StateUnavailable, Store

log = logging.getLogger(__name__)

DEFAULT_REFIT = timedelta(minutes=15)
REREAD_MINUTES = 5  # minutes re-read each refresh: the newest may not all have been scraped yet
SESSION_MINUTES = int(ARRIVAL_HISTORY.total_seconds() // 60)  # what the store keeps


def _utc(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class _Prediction:
    minute: int  # absolute minute the prediction was made at
    horizon: int
    probability: float | None  # None when the fallback rule answered


@dataclasses.dataclass(slots=True)
class _History:
    """One history target's counts as read from Prometheus: minutes [first, first + size)."""

    query: str
    days: int
    first_minute: int
    counts: np.ndarray  # NaN where unknown (not read yet, or Prometheus had nothing)
    read_until: int  # every minute before this was read by a successful query (the newest, again)
    seconds: np.ndarray | None = None  # request seconds per minute, aligned with counts (NaN unknown)

    def extend(self, first: int, end: int) -> None:
        """Keep minutes [first, end) only; new minutes are unknown."""
        self.counts = self._moved(self.counts, first, end)
        self.seconds = self._moved(self.seconds if self.seconds is not None else np.zeros(0), first, end)
        self.first_minute = first

    def _moved(self, values: np.ndarray, first: int, end: int) -> np.ndarray:
        kept = np.full(end - first, np.nan)
        lo, hi = max(first, self.first_minute), min(end, self.first_minute + values.size)
        if lo < hi:
            kept[lo - first : hi - first] = values[lo - self.first_minute : hi - self.first_minute]
        return kept

    def write(self, first: int, counts: np.ndarray, seconds: np.ndarray | None = None) -> None:
        lo = first - self.first_minute
        start = max(lo, 0)
        stop = min(lo + counts.size, self.counts.size)
        if start < stop:
            self.counts[start:stop] = counts[start - lo : stop - lo]
            if seconds is not None and seconds.size == counts.size and self.seconds is not None:
                self.seconds[start:stop] = seconds[start - lo : stop - lo]

    def service_seconds(self, minute: int) -> float | None:
        """The mean request duration over the minutes before `minute` (None: no duration known)."""
        if self.seconds is None:
            return None
        until = max(0, min(minute - self.first_minute, self.counts.size))
        return request_history.mean_service_seconds(self.counts[:until], self.seconds[:until])


@dataclasses.dataclass(frozen=True, slots=True)
class _Step:
    """Everything one minute's predictions were made from, kept for `describe` and `explain`."""

    minute: int
    histories: Mapping[str, pooled_forecast.TargetHistory]
    predictions: Mapping[str, pooled_forecast.Prediction]
    horizons: Mapping[str, int]


class ForecastLoop:
    """Serves `current_forecast(spec, now)` to the decider from predictions made at each minute's start."""

    def __init__(
        self,
        *,
        store: Store,
        clock: clock.Clock,
        specs: Callable[[], Mapping[str, targets.TargetSpec]],
        on_change: Callable[[str], None],
        telemetry: telemetry.Telemetry | None = None,
        refit: timedelta = DEFAULT_REFIT,
        config: arrival_model.ForecastConfig | None = None,
        history_reader: history.HistoryReader | None = None,
        cold_starts: Callable[[str], float | None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._specs = specs
        self._on_change = on_change
        self._telemetry = telemetry
        self._refit = refit
        self._config = config or arrival_model.ForecastConfig()
        self._reader = history_reader
        self._cold_starts = cold_starts  # a target's measured cold-start seconds (pod start phases), or None
        self._values: dict[str, float] = {}
        self._models: dict[int, arrival_model.ArrivalModel] = {}  # by horizon in minutes
        self._fitted_at: dict[int, datetime] = {}
        self._pending: dict[str, list[_Prediction]] = {}
        self._histories: dict[str, _History] = {}
        self._degraded: dict[str, str] = {}
        self._step: _Step | None = None
        self._updated_minute: int | None = None

    def use_specs(self, specs: Callable[[], Mapping[str, targets.TargetSpec]]) -> None:
        """Predict targets as `specs()` gives them from now on (the tuner's effective specs, which
        themselves replay this loop's arrivals: the composition root joins the two this way)."""
        self._specs = specs

    # --- what the decider and operators read ---

    def current_forecast(self, spec: targets.TargetSpec, now: datetime) -> float | None:
        """The replicas the latest prediction keeps warm for `spec`, or None before the first one."""
        return self._values.get(str(spec.ref))

    async def arrivals(self, target: str, since: datetime, until: datetime) -> dict[datetime, float]:
        """Arrivals of `target` per minute in [since, until), minutes with none left out and unknown
        ones NaN: the requests read from Prometheus for a history target (nothing read yet is
        unknown), else the store's session openings. What the tuner replays, so it tunes on the
        counts the forecast learns from."""
        spec = self._specs().get(target)
        if spec is None or spec.forecast.history is None:
            return dict(await self._store.arrivals(target, since, until))
        lo, hi = math.floor(since.timestamp() / 60), math.ceil(until.timestamp() / 60)
        read = self._histories.get(target)
        if read is None:
            return {_utc(minute): math.nan for minute in range(lo, hi)}
        counts: dict[datetime, float] = {}
        for minute in range(max(lo, read.first_minute), min(hi, read.first_minute + read.counts.size)):
            count = float(read.counts[minute - read.first_minute])
            if count != 0.0:  # NaN (unknown) is kept
                counts[_utc(minute)] = count
        return counts

    def degraded(self, target: str) -> str | None:
        """Why `target`'s forecast is degraded (its history could not be read), or None."""
        return self._degraded.get(target)

    def model(self, horizon: int) -> arrival_model.ArrivalModel | None:
        """The pooled model in use for `horizon` minutes (None before the first fit)."""
        return self._models.get(horizon)

    def describe(self, target: str) -> dict[str, Any] | None:
        """The forecast of `target` for /targets: value, P(arrival), degraded reason, history read."""
        step = self._step
        if step is None or target not in step.predictions:
            return None
        prediction = step.predictions[target]
        return {
            "replicas": self._values.get(target),
            "p_arrival": prediction.probability,
            "degraded": target in self._degraded,
            "degraded_reason": self._degraded.get(target),
            "history": self._describe_history(target, step),
        }

    def explain(self, spec: targets.TargetSpec) -> dict[str, Any]:
        """The whole story of the latest prediction for `spec`, as `prewarm forecast explain` prints it."""
        target = str(spec.ref)
        step = self._step
        if step is None or target not in step.predictions:
            raise KeyError(f"{target} has no forecast (is forecast.enabled set?)")
        prediction = step.predictions[target]
        at = _utc(step.minute)
        value = self._values.get(target)
        decision = policy.decide_floor(
            spec, policy.Signals(forecast=value, forecast_degraded=self._degraded.get(target)), at, None
        )
        tail = [round(float(p), 6) for p in prediction.tail if p > 0]
        return {
            "target": target,
            "at": at.isoformat().replace("+00:00", "Z"),
            "horizon_seconds": step.horizons[target] * 60,
            "history": self._describe_history(target, step),
            "model": "fallback" if prediction.probability is None else "pooled",
            "p_arrival": prediction.probability,
            "predicted_demand": {
                "expected_requests": prediction.expected_requests,
                "p_at_least_k_given_any": tail,  # P(N >= k | N >= 1), k = 1, 2, ...
            },
            "forecast_replicas": value,
            "floor": decision.floor,
            "source": decision.source.value,
            "reason": decision.reason,
            "degraded": self._degraded.get(target),
        }

    def _describe_history(self, target: str, step: _Step) -> dict[str, Any]:
        spec = self._specs().get(target)
        used = step.histories[target]
        known = used.requests[: max(used.index(step.minute), 0)]
        view: dict[str, Any] = {
            "source": "sessions" if spec is None or spec.forecast.history is None else "prometheus",
            "first_known": _utc(used.first_minute).isoformat().replace("+00:00", "Z") if known.size else None,
            "requests": float(np.nansum(known)),
            "sessions": None if used.sessions is None else float(np.nansum(used.sessions)),
        }
        read = self._histories.get(target)
        if read is not None and spec is not None and spec.forecast.history is not None:
            until = min(step.minute, read.first_minute + read.counts.size)
            window = read.counts[: max(until - read.first_minute, 0)]
            view.update(
                preset=spec.forecast.history.preset.value,
                query=read.query,
                since=_utc(read.first_minute).isoformat().replace("+00:00", "Z"),
                until=_utc(until).isoformat().replace("+00:00", "Z"),
                minutes=int(window.size),
                unknown_minutes=int(np.isnan(window).sum()),
            )
        return view

    # --- the loop ---

    async def prepare(self) -> None:
        """Load history and fit for the current minute, before the first forecast is served."""
        now = self._clock.now()
        try:
            await self.update(now)
        except StateUnavailable as e:
            log.warning("first forecast skipped, store unavailable: %s", e)

    async def run(self) -> None:
        """Predict at the start of every minute, forever."""
        wake = asyncio.Event()
        while True:
            now = self._clock.now()
            minute = math.floor(now.timestamp() / 60)
            if minute != self._updated_minute:
                try:
                    await self.update(now)
                except StateUnavailable as e:
                    log.warning("forecast skipped, store unavailable: %s", e)
                except Exception:  # one bad minute must not end forecasting for good
                    log.exception("forecast update at %s failed", now)
            await self._clock.wait_until(_utc(minute + 1), wake)

    async def update(self, now: datetime) -> None:
        """Refresh histories, refit when due, then predict every forecast-enabled target for `now`'s minute."""
        enabled = {name: spec for name, spec in self._specs().items() if spec.forecast.enabled}
        minute = math.floor(now.timestamp() / 60)
        self._updated_minute = minute
        reasons = await self._refresh(enabled, minute)
        failed = {name for name, reason in reasons.items() if reason is not None}
        histories = {name: await self._target_history(name, spec, minute) for name, spec in enabled.items()}
        horizons = {
            name: minute_features.horizon_minutes(max(spec.forecast.horizon.total_seconds(), self._lead_seconds(spec)))
            for name, spec in enabled.items()
        }
        loop = asyncio.get_running_loop()
        for horizon in sorted(set(horizons.values())):
            fitted = self._models.get(horizon)
            fitted_at = self._fitted_at.get(horizon)
            learned = fitted is not None and fitted.estimator is not None
            if learned and fitted_at is not None and now - fitted_at < self._refit:
                continue  # not due; until a fit learned something, it is tried again each minute
            # targets whose read failed this minute are left out; none left: keep the last model
            fresh = {n: h for n, h in histories.items() if horizons[n] == horizon and n not in failed}
            if not fresh and fitted is not None:
                continue
            fit = functools.partial(
                pooled_forecast.fit_at, fresh, minute=minute, config=dataclasses.replace(self._config, horizon=horizon)
            )
            self._models[horizon] = await loop.run_in_executor(None, fit)
            self._fitted_at[horizon] = now
        predictions = await loop.run_in_executor(None, self._predict, histories, horizons, enabled, minute)
        self._step = _Step(minute, histories, predictions, horizons)
        for name, reason in reasons.items():  # after the step, so a re-decision sees this minute's forecast
            self._set_degraded(name, reason)
        for name, prediction in predictions.items():
            self._score(name, histories[name], minute)
            self._pending.setdefault(name, []).append(_Prediction(minute, horizons[name], prediction.probability))
            value = self._value(enabled[name], histories[name], prediction)
            if self._values.get(name) != value:
                if value is None:
                    del self._values[name]
                else:
                    self._values[name] = value
                self._on_change(name)
        for gone in set(self._values) - set(enabled):
            del self._values[gone]
            self._pending.pop(gone, None)
        for gone in set(self._histories) - set(enabled):
            del self._histories[gone]
            self._set_degraded(gone, None)

    @staticmethod
    def _value(
        spec: targets.TargetSpec,
        used: pooled_forecast.TargetHistory,
        prediction: pooled_forecast.Prediction,
    ) -> float | None:
        """The replicas to serve: None for a history target of which nothing is known yet."""
        if spec.forecast.history is not None and not np.isfinite(used.requests).any():
            return None
        return prediction.replicas

    def _predict(
        self,
        histories: Mapping[str, pooled_forecast.TargetHistory],
        horizons: Mapping[str, int],
        enabled: Mapping[str, targets.TargetSpec],
        minute: int,
    ) -> dict[str, pooled_forecast.Prediction]:
        """Every target's prediction at `minute` (run in a worker thread)."""
        predictions = {}
        for horizon in sorted(set(horizons.values())):
            group = {n: h for n, h in histories.items() if horizons[n] == horizon}
            tails = pooled_forecast.demand_tails(
                group,
                minute=minute,
                horizon=horizon,
                service_seconds={n: self._service_seconds(n, minute) for n in group},
                lead_seconds={n: self._lead_seconds(enabled[n]) for n in group},
            )
            for name, used in group.items():
                predictions[name] = pooled_forecast.predict(
                    self._models.get(horizon),
                    used,
                    minute=minute,
                    horizon=horizon,
                    quantile=enabled[name].forecast.quantile,
                    tail=tails[name],
                    keep_alive_minutes=enabled[name].forecast.keep_alive_minutes,
                    keep_alive_replicas=enabled[name].forecast.keep_alive_replicas,
                )
        return predictions

    def _service_seconds(self, target: str, minute: int) -> float | None:
        """`target`'s mean request duration from its history's request-duration histogram, if any."""
        read = self._histories.get(target)
        return None if read is None else read.service_seconds(minute)

    def _lead_seconds(self, spec: targets.TargetSpec) -> float:
        """How long ahead a replica must be started: the target's measured cold start, else its horizon."""
        measured = self._cold_starts(str(spec.ref)) if self._cold_starts is not None else None
        return measured if measured is not None else spec.forecast.horizon.total_seconds()

    # --- histories ---

    async def _refresh(self, enabled: Mapping[str, targets.TargetSpec], minute: int) -> dict[str, str | None]:
        """Read new minutes of every history target from Prometheus; why each target's read failed (or None)."""
        wanted = {n: s for n, s in enabled.items() if s.forecast.history is not None}
        if not wanted:
            return {}
        if self._reader is None:
            return dict.fromkeys(wanted, "forecast.history needs Prometheus (--prometheus or PREWARM_PROMETHEUS_URL)")
        by_start: dict[int, list[targets.TargetSpec]] = {}
        for name, spec in wanted.items():
            assert spec.forecast.history is not None
            first = minute - spec.forecast.history.days * minute_features.MINUTES_PER_DAY
            buffered = self._histories.get(name)
            query = self._reader.query_of(spec)
            days = spec.forecast.history.days
            if buffered is None or buffered.query != query or buffered.days != days:  # new or changed: load it all
                buffered = self._histories[name] = _History(query, days, first, np.full(0, np.nan), first)
            buffered.extend(first, minute + 1)  # the last slot, this minute, is not over yet
            start = max(first, min(buffered.read_until, minute) - REREAD_MINUTES)
            by_start.setdefault(start, []).append(spec)
        reasons: dict[str, str | None] = {}
        for start, specs in sorted(by_start.items()):
            reads = await self._reader.read(specs, first_minute=start, end_minute=minute)
            for spec in specs:
                name = str(spec.ref)
                read = reads.get(name)
                if read is None or read.counts is None:
                    reasons[name] = f"history read failed: {'no query' if read is None else read.error}"
                    continue
                buffered = self._histories[name]
                buffered.write(start, read.counts, read.seconds)
                buffered.read_until = minute
                reasons[name] = None
        if self._telemetry is not None:
            for name in wanted:
                buffered = self._histories[name]
                self._telemetry.record_history_unknown(name, int(np.isnan(buffered.counts[:-1]).sum()))
        return reasons

    def _set_degraded(self, target: str, reason: str | None) -> None:
        if self._degraded.get(target) == reason:
            return
        if reason is None:
            self._degraded.pop(target, None)
            log.info("%s: forecast history read again", target)
        else:
            self._degraded[target] = reason
            log.warning("%s: forecast degraded: %s", target, reason)
        if self._telemetry is not None:
            self._telemetry.record_forecast_degraded(target, reason is not None)
        self._on_change(target)

    async def _target_history(self, name: str, spec: targets.TargetSpec, minute: int) -> pooled_forecast.TargetHistory:
        """The counts the forecast steps read for `name`: Prometheus requests with session openings
        beside them, or (without a history) session openings as the arrivals."""
        first = minute - SESSION_MINUTES
        openings = await self._store.arrivals(name, _utc(first), _utc(minute))
        sessions = np.zeros(minute - first + 1)
        for at, count in openings.items():
            sessions[math.floor(at.timestamp() / 60) - first] = count  # the last slot stays 0: not known yet
        read = self._histories.get(name)
        if spec.forecast.history is None:
            return pooled_forecast.TargetHistory(first, sessions)
        if read is None:  # no Prometheus to read it from: nothing is known
            return pooled_forecast.TargetHistory(minute + 1, np.zeros(0))
        requests = read.counts  # minutes [read.first_minute, minute], as `sessions` ends at `minute` too
        aligned: np.ndarray | None = None
        if openings:  # older minutes than the store keeps are unknown
            aligned = np.full(requests.size, np.nan)
            lo = max(first, read.first_minute)
            aligned[lo - read.first_minute :] = sessions[lo - first :]
        return pooled_forecast.from_known_start(pooled_forecast.TargetHistory(read.first_minute, requests, aligned))

    def _score(self, target: str, used: pooled_forecast.TargetHistory, minute: int) -> None:
        """Record |P(arrival) - observed| for predictions whose horizon has fully passed."""
        pending = self._pending.get(target, [])
        keep = []
        for prediction in pending:
            if prediction.minute + prediction.horizon > minute:
                keep.append(prediction)
                continue
            if prediction.probability is None or self._telemetry is None:
                continue
            start = used.index(prediction.minute)
            window = used.requests[max(start, 0) : max(start + prediction.horizon, 0)]
            if window.size < prediction.horizon or (np.isnan(window).any() and not np.nansum(window) > 0):
                continue  # the outcome is unknown
            observed = float(np.nansum(window) > 0)
            self._telemetry.record_forecast_error(target, abs(prediction.probability - observed))
        self._pending[target] = keep
