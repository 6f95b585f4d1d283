"""The live forecaster on the real memory store, an injected clock and a real OpenTelemetry reader."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from prewarm.core import ledger, policy, targets
from prewarm.service import actuation, clock, decider, forecast_loop, state, telemetry

NOW = datetime(2026, 5, 8, 12, 0, tzinfo=UTC)


def spec(name: str, *, enabled: bool = True) -> targets.TargetSpec:
    return targets.TargetSpec(
        ref=targets.TargetRef("ml", name),
        kind=targets.TargetKind.KEDA,
        max=4,
        forecast=targets.ForecastSettings(enabled=enabled, quantile=0.9, horizon=timedelta(seconds=60)),
    )


async def open_sessions(store: state.MemoryStore, target: str, times: list[datetime]) -> None:
    intents = [
        state.Intent(
            target,
            "test",
            f"{target}-{i}",
            ledger.SessionEvent(ledger.SessionEventType.OPENED, f"s{i}", at, timedelta(seconds=60)),
        )
        for i, at in enumerate(times)
    ]
    await store.record_intents(intents)


async def history(store: state.MemoryStore) -> None:
    """ml/busy: a session every minute in the last two hours and at midday all week.
    ml/quiet: the same midday pattern, but nothing since three days ago."""
    busy = [NOW - timedelta(minutes=m) for m in range(1, 121)]
    quiet = []
    for day in range(3, 7):
        midday = NOW - timedelta(days=day)
        block = [midday - timedelta(minutes=m) for m in range(0, 180)]
        busy += block
        quiet += block
    await open_sessions(store, "ml/busy", sorted(busy))
    await open_sessions(store, "ml/quiet", sorted(quiet))


async def test_forecast_follows_each_targets_history_and_feeds_the_decider() -> None:
    store = state.MemoryStore()
    await history(store)
    specs = {str(s.ref): s for s in (spec("busy"), spec("quiet"), spec("new"), spec("off", enabled=False))}
    changed: list[str] = []
    loop = forecast_loop.ForecastLoop(
        store=store, clock=clock.ManualClock(NOW), specs=lambda: specs, on_change=changed.append
    )
    assert loop.current_forecast(specs["ml/busy"], NOW) is None  # nothing predicted yet
    await loop.update(NOW)
    values = {name: loop.current_forecast(s, NOW) for name, s in specs.items()}
    assert values["ml/busy"] is not None and values["ml/busy"] >= 1.0
    assert values == {"ml/busy": values["ml/busy"], "ml/quiet": 0.0, "ml/new": 0.0, "ml/off": None}
    assert sorted(changed) == ["ml/busy", "ml/new", "ml/quiet"]
    await loop.update(NOW + timedelta(seconds=20))  # same minute, same answers: nobody is told again
    assert len(changed) == 3

    deciding = decider.Decider(
        target_specs=list(specs.values()),
        store=store,
        actuators=[actuation.LogActuator(io.StringIO())],
        clock=clock.ManualClock(NOW),
        forecast=loop.current_forecast,
    )
    busy = await deciding.decide("ml/busy", NOW)
    assert busy.source is policy.Source.FORECAST and busy.floor >= 1
    quiet = await deciding.decide("ml/quiet", NOW)
    assert quiet.floor == 0


async def test_every_prediction_is_scored_once_its_horizon_has_passed() -> None:
    store = state.MemoryStore()
    await history(store)
    reader = InMemoryMetricReader()
    instruments = telemetry.Telemetry(
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=TracerProvider(),
        targets=["ml/busy", "ml/quiet"],
    )
    specs = {str(s.ref): s for s in (spec("busy"), spec("quiet"))}
    loop = forecast_loop.ForecastLoop(
        store=store,
        clock=clock.ManualClock(NOW),
        specs=lambda: specs,
        on_change=lambda _: None,
        telemetry=instruments,
    )
    await loop.update(NOW)
    await open_sessions(store, "ml/busy", [NOW + timedelta(seconds=30)])  # busy did get one
    await loop.update(NOW + timedelta(minutes=1))
    points = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "prewarm.forecast.error":
                    for point in metric.data.data_points:
                        points[point.attributes["target"]] = (point.count, point.sum)
    assert set(points) == {"ml/busy", "ml/quiet"}
    assert points["ml/busy"][0] == 1 and points["ml/quiet"][0] == 1
    assert 0.0 <= points["ml/busy"][1] < 0.5  # predicted likely, and it came
    assert 0.0 <= points["ml/quiet"][1] < 0.5  # predicted unlikely, and nothing came
