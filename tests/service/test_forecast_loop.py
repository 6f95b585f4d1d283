"""The live forecaster on the real memory store, an injected clock and a real OpenTelemetry reader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from support import PrometheusServer, recurring_openmetrics

from prewarm.core import ledger, policy, targets
from prewarm.service import clock, cold_starts, decider, forecast_loop, history, target_registry, telemetry
from prewarm.service.store import Intent, MemoryStore

NOW = datetime(2026, 5, 8, 12, 0, tzinfo=UTC)


def spec(name: str, *, enabled: bool = True) -> targets.TargetSpec:
    return targets.TargetSpec(
        ref=targets.TargetRef("ml", name),
        kind=targets.TargetKind.KEDA,
        max=4,
        forecast=targets.ForecastSettings(enabled=enabled, quantile=0.9, horizon=timedelta(seconds=60)),
    )


async def open_sessions(store: MemoryStore, target: str, times: list[datetime]) -> None:
    intents = [
        Intent(
            target,
            "test",
            f"{target}-{i}",
            ledger.SessionEvent(ledger.SessionEventType.OPENED, f"s{i}", at, timedelta(seconds=60)),
        )
        for i, at in enumerate(times)
    ]
    await store.record_intents(intents)


async def session_history(store: MemoryStore) -> None:
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
    store = MemoryStore()
    await session_history(store)
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
        registry=target_registry.TargetRegistry(specs.values()),
        store=store,
        clock=clock.ManualClock(NOW),
        forecast=loop.current_forecast,
    )
    busy = await deciding.decide("ml/busy", NOW)
    assert busy.source is policy.Source.FORECAST and busy.floor >= 1
    quiet = await deciding.decide("ml/quiet", NOW)
    assert quiet.floor == 0


async def test_every_prediction_is_scored_once_its_horizon_has_passed() -> None:
    store = MemoryStore()
    await session_history(store)
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


# --- request history from a real Prometheus ---

HISTORY_NOW = datetime(2025, 6, 10, 12, 2, tzinfo=UTC)


def history_spec(ref: str, preset: targets.HistoryPreset, query: str | None = None) -> targets.TargetSpec:
    namespace, _, name = ref.partition("/")
    return targets.TargetSpec(
        ref=targets.TargetRef(namespace, name),
        kind=targets.TargetKind.KEDA,
        max=4,
        forecast=targets.ForecastSettings(
            True, 0.9, timedelta(seconds=180), targets.HistorySettings(preset, query=query, days=7)
        ),
    )


def load_recurring(
    server: PrometheusServer, namespaces: dict[str, dict[str, tuple[int, int]]], run_seconds: float = 300.0
) -> None:
    text = "".join(
        recurring_openmetrics(
            names,
            start=(HISTORY_NOW - timedelta(days=6)).timestamp(),
            end=(HISTORY_NOW + timedelta(hours=2)).timestamp(),
            preset=targets.HistoryPreset.KNATIVE,
            namespace=namespace,
            run_seconds=run_seconds,
        ).removesuffix("# EOF\n")
        for namespace, names in namespaces.items()
    )
    server.load_openmetrics(text.replace("# TYPE up gauge\n", "", len(namespaces) - 1) + "# EOF\n")


@pytest.fixture
async def reader(prometheus_server: PrometheusServer) -> AsyncIterator[history.HistoryReader]:
    load_recurring(prometheus_server, {"ml": {"A": (5, 2), "B": (35, 1)}, "other": {"C": (20, 1)}})
    prometheus_server.start()
    settings = history.PrometheusSettings(url=prometheus_server.url)
    session = history.open_session(settings)
    yield history.HistoryReader(history.PrometheusClient(session=session, settings=settings))
    await session.close()


async def test_history_loads_at_start_then_each_minute_reads_once_per_preset_and_namespace(
    reader: history.HistoryReader,
) -> None:
    specs = {
        str(s.ref): s
        for s in (
            history_spec("ml/a", targets.HistoryPreset.KNATIVE),
            history_spec("ml/b", targets.HistoryPreset.KNATIVE),
            history_spec("other/c", targets.HistoryPreset.KNATIVE),
            history_spec(
                "ml/d",
                targets.HistoryPreset.PROMQL,
                'sum(increase(kn_serving_invocation_duration_seconds_count{kn_service_name="a"}[1m]))',
            ),
        )
    }
    manual = clock.ManualClock(HISTORY_NOW)
    loop = forecast_loop.ForecastLoop(
        store=MemoryStore(), clock=manual, specs=lambda: specs, on_change=lambda _: None, history_reader=reader
    )
    await loop.prepare()
    assert reader.calls == 3  # ml (a and b), other (c), and d's own promql: seven days fit one range
    assert loop.model(3) is not None and loop.model(3).estimator is not None  # fitted before serving
    assert {name: loop.current_forecast(spec, HISTORY_NOW) for name, spec in specs.items()} == dict.fromkeys(
        specs, 0.0
    )  # 12:02: [12:02, 12:05) is quiet for every target
    for minute in range(1, 4):
        manual.set(HISTORY_NOW + timedelta(minutes=minute))
        await loop.update(manual.now())
        assert reader.calls == 3 + 3 * minute
        if minute == 1:  # 12:03: [12:03, 12:06) holds a's two requests at :05, which d reads too
            assert {name: loop.current_forecast(spec, manual.now()) for name, spec in specs.items()} == {
                "ml/a": 2.0,
                "ml/b": 0.0,
                "other/c": 0.0,
                "ml/d": 2.0,
            }
    explained = loop.explain(specs["ml/a"])
    assert explained["history"]["minutes"] == 7 * 1440
    assert explained["history"]["unknown_minutes"] == 1440 + 3 - 3  # the day before the data, less three minutes
    assert explained["history"]["sessions"] is None


async def test_an_outage_keeps_the_last_model_even_when_a_refit_is_due(
    reader: history.HistoryReader, prometheus_server: PrometheusServer
) -> None:
    specs = {"ml/a": history_spec("ml/a", targets.HistoryPreset.KNATIVE)}
    manual = clock.ManualClock(HISTORY_NOW)
    changed: list[str] = []
    loop = forecast_loop.ForecastLoop(
        store=MemoryStore(),
        clock=manual,
        specs=lambda: specs,
        on_change=changed.append,
        history_reader=reader,
        refit=timedelta(minutes=1),
    )
    await loop.prepare()
    model = loop.model(3)
    prometheus_server.stop()
    manual.set(HISTORY_NOW + timedelta(minutes=1))  # 12:03: a refit is due, and the read fails
    await loop.update(manual.now())
    assert loop.model(3) is model
    reason = loop.degraded("ml/a")
    assert reason is not None and reason.startswith("history read failed: Prometheus unavailable (")
    assert loop.current_forecast(specs["ml/a"], manual.now()) == 2.0  # from the history read before
    prometheus_server.start()
    manual.set(HISTORY_NOW + timedelta(minutes=2))
    await loop.update(manual.now())
    assert loop.degraded("ml/a") is None and loop.model(3) is not model
    assert changed.count("ml/a") >= 3  # the first forecast, degraded, recovered


async def test_session_openings_are_a_feature_beside_requests(reader: history.HistoryReader) -> None:
    specs = {
        "ml/a": history_spec("ml/a", targets.HistoryPreset.KNATIVE),
        "ml/b": history_spec("ml/b", targets.HistoryPreset.KNATIVE),
    }
    store = MemoryStore()
    await open_sessions(store, "ml/a", [HISTORY_NOW - timedelta(minutes=m) for m in (3, 63, 123)])
    loop = forecast_loop.ForecastLoop(
        store=store,
        clock=clock.ManualClock(HISTORY_NOW),
        specs=lambda: specs,
        on_change=lambda _: None,
        history_reader=reader,
    )
    await loop.prepare()
    assert loop.explain(specs["ml/a"])["history"]["sessions"] == 3.0
    assert loop.explain(specs["ml/b"])["history"]["sessions"] is None  # no intent: those features are unknown


async def test_a_history_target_without_prometheus_is_degraded_not_zero() -> None:
    """As for a Knative Service whose annotations ask for history when serve has no --prometheus."""
    specs = {"ml/a": history_spec("ml/a", targets.HistoryPreset.KNATIVE)}
    changed: list[str] = []
    loop = forecast_loop.ForecastLoop(
        store=MemoryStore(), clock=clock.ManualClock(HISTORY_NOW), specs=lambda: specs, on_change=changed.append
    )
    await loop.prepare()
    assert loop.degraded("ml/a") == "forecast.history needs Prometheus (--prometheus or PREWARM_PROMETHEUS_URL)"
    assert loop.current_forecast(specs["ml/a"], HISTORY_NOW) is None  # no forecast, rather than a made-up zero
    assert changed == ["ml/a"]


async def test_floors_follow_the_work_the_request_duration_histogram_reports(
    prometheus_server: PrometheusServer,
) -> None:
    load_recurring(prometheus_server, {"ml": {"A": (5, 2)}}, run_seconds=1.0)  # 1 s requests, 10 s apart
    prometheus_server.start()
    settings = history.PrometheusSettings(url=prometheus_server.url)
    specs = {
        "ml/a": history_spec("ml/a", targets.HistoryPreset.KNATIVE),
        "ml/d": history_spec(
            "ml/d",
            targets.HistoryPreset.PROMQL,
            'sum(increase(kn_serving_invocation_duration_seconds_count{kn_service_name="a"}[1m]))',
        ),
    }
    async with history.open_session(settings) as session:
        reader = history.HistoryReader(history.PrometheusClient(session=session, settings=settings))
        manual = clock.ManualClock(HISTORY_NOW + timedelta(minutes=1))  # 12:03: a's two requests come at :05
        loop = forecast_loop.ForecastLoop(
            store=MemoryStore(),
            clock=manual,
            specs=lambda: specs,
            on_change=lambda _: None,
            history_reader=reader,
        )
        await loop.prepare()
    # a's preset reads its durations beside its counts: one replica serves both requests; d's promql
    # template reads counts alone, so each arrival of the horizon keeps a replica (sizing by arrivals)
    assert {name: loop.current_forecast(spec, manual.now()) for name, spec in specs.items()} == {
        "ml/a": 1.0,
        "ml/d": 2.0,
    }


def test_cold_starts_are_the_median_from_container_start_to_runtime_ready() -> None:
    times = cold_starts.ColdStartTimes()
    t0 = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
    assert times.seconds("ml/a") is None
    for pod, ready in (("p1", 20), ("p2", 40), ("p3", 30)):
        times.record(target="ml/a", pod=pod, phase="container_started", at=t0)
        times.record(target="ml/a", pod=pod, phase="weights_loaded", at=t0 + timedelta(seconds=ready - 5))
        times.record(target="ml/a", pod=pod, phase="runtime_ready", at=t0 + timedelta(seconds=ready))
    times.record(target="ml/a", pod="unseen", phase="runtime_ready", at=t0)  # its start was never reported
    assert times.seconds("ml/a") == 30.0
    assert times.seconds("ml/b") is None
