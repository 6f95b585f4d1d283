"""`prewarm serve` forecasting from a real Prometheus's request history, on an injected clock."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import PrometheusServer, recurring_openmetrics, wait_for, wait_for_async

from prewarm.core import policy, targets
from prewarm.service import clock, composition, history

# 12:02 on a day in the past: the target gets three requests at minute :05 of every hour, for
# eight days before and a day after, so "now" is three minutes before a recurring arrival.
NOW = datetime(2025, 6, 10, 12, 2, tzinfo=UTC)
CONFIG = """
targets:
  - name: ml/chat
    kind: keda
    max: 3
    hold: 60s
    forecast: {enabled: true, quantile: 0.9, horizon: 180s, history: knative, historyDays: 9}
  - name: ml/cron-only
    kind: keda
    max: 3
"""


def decision_at(service: composition.RunningService, at: datetime) -> bool:
    decision = service.decider.decisions.get("ml/chat")
    return decision is not None and decision.decided_at >= at


async def targets_view(http: aiohttp.ClientSession, service: composition.RunningService) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{service.http_port}/targets") as response:
        view = await response.json()
    return {item["target"]: item for item in view["targets"]}


async def test_serve_raises_the_floor_before_the_recurring_arrival_and_survives_prometheus_going_away(
    tmp_path: Path, prometheus_server: PrometheusServer
) -> None:
    prometheus_server.load_openmetrics(
        recurring_openmetrics(
            {"CHAT": (5, 3)},
            start=(NOW - timedelta(days=8)).timestamp(),
            end=(NOW + timedelta(days=1)).timestamp(),
            preset=targets.HistoryPreset.KNATIVE,
            namespace="ml",
        )
    )
    prometheus_server.start()
    config = tmp_path / "targets.yaml"
    config.write_text(CONFIG)
    manual = clock.ManualClock(NOW)
    out = io.StringIO()
    options = composition.ServeOptions(
        config=config,
        http_host="127.0.0.1",
        http_port=0,
        prometheus=history.PrometheusSettings(url=prometheus_server.url),
    )
    async with (
        composition.run_service(options, clock=manual, out=out) as service,
        aiohttp.ClientSession() as http,
    ):
        forecaster = service.forecaster
        # loaded and fitted before the first decision: no cold model after a restart
        first = forecaster.describe("ml/chat")
        assert first is not None and first["p_arrival"] is not None
        # nine days asked for; the data begins at the first arrival, 12:05 eight days ago
        assert first["history"]["minutes"] == 9 * 1440 and first["history"]["unknown_minutes"] == 1440 + 3
        await wait_for(lambda: decision_at(service, NOW))
        assert service.decider.decisions["ml/chat"].floor == 0  # 12:02: the window [12:02, 12:05) is quiet

        manual.set(NOW + timedelta(minutes=1))  # 12:03: [12:03, 12:06) holds the arrival at 12:05
        await wait_for(lambda: service.decider.decisions["ml/chat"].floor >= 1, within=30)
        raised = service.decider.decisions["ml/chat"]
        # three requests arrive together each hour: with concurrency 1 the forecast keeps three warm
        assert (raised.floor, raised.source, raised.reason) == (3, policy.Source.FORECAST, "forecast 3")
        assert raised.decided_at == NOW + timedelta(minutes=1)
        model = forecaster.model(3)

        manual.set(NOW + timedelta(minutes=4))  # 12:06: the arrival came and went
        await wait_for(lambda: forecaster.current_forecast(raised_spec(service), manual.now()) == 0.0, within=30)
        await wait_for(lambda: decision_at(service, NOW + timedelta(minutes=4)), within=30)
        assert service.decider.decisions["ml/chat"].reason.startswith("holding 3 (forecast) until 2025-06-10T12:07:00Z")
        manual.set(NOW + timedelta(minutes=5, seconds=1))  # past the 60 s hold
        await wait_for(lambda: service.decider.decisions["ml/chat"].floor == 0, within=30)
        assert service.decider.decisions["ml/chat"].reason == "min 0"

        prometheus_server.stop()
        manual.set(NOW + timedelta(minutes=6))  # 12:08: the read fails
        # a read in flight as it stopped may fail otherwise ("block is closing"): the 12:08 one is refused
        await wait_for(lambda: "Prometheus unavailable (" in (forecaster.degraded("ml/chat") or ""), within=30)
        await wait_for(lambda: "Prometheus unavailable (" in service.decider.decisions["ml/chat"].reason, within=30)
        reason = service.decider.decisions["ml/chat"].reason
        assert "forecast degraded: history read failed: Prometheus unavailable (" in reason
        assert forecaster.model(3) is model  # the last model is kept
        assert forecaster.current_forecast(raised_spec(service), manual.now()) is not None  # not zero demand
        view = await targets_view(http, service)
        assert view["ml/chat"]["forecast"]["degraded"] is True
        assert view["ml/chat"]["forecast"]["degraded_reason"].startswith("history read failed: Prometheus unavailable")
        assert view["ml/cron-only"]["forecast"] is None
        unknown_while_down = view["ml/chat"]["forecast"]["history"]["unknown_minutes"]

        prometheus_server.start()
        manual.set(NOW + timedelta(minutes=7))  # 12:09: read again, the missed minute included
        await wait_for(lambda: forecaster.degraded("ml/chat") is None, within=30)
        await wait_for(lambda: "degraded" not in service.decider.decisions["ml/chat"].reason, within=30)

        async def minute_reread() -> bool:
            view = await targets_view(http, service)
            return bool(view["ml/chat"]["forecast"]["history"]["unknown_minutes"] == unknown_while_down - 2)

        # the 1,443 unknown minutes before the data less the six the window slid by, and 12:07
        assert unknown_while_down == 1440 + 3 - 6 + 1
        # at 12:09 one more slid out, and 12:07 and 12:08 were read
        await wait_for_async(minute_reread, within=30)
    assert "2025-06-10T12:03:00Z ml/chat 0 -> 3 [forecast] forecast 3" in out.getvalue()


def raised_spec(service: composition.RunningService) -> targets.TargetSpec:
    return service.decider.specs["ml/chat"]


async def test_serve_refuses_a_history_target_without_prometheus(tmp_path: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(CONFIG)
    options = composition.ServeOptions(config=config, http_host="127.0.0.1", http_port=0)
    with pytest.raises(targets.ConfigError) as caught:
        async with composition.run_service(options, clock=clock.ManualClock(NOW), out=io.StringIO()):
            pass
    assert [str(p) for p in caught.value.problems] == [
        "ml/chat: forecast.history: 'knative' needs --prometheus or PREWARM_PROMETHEUS_URL"
    ]


async def test_serve_keeps_running_when_prometheus_rejects_a_target_query(
    tmp_path: Path, prometheus_server: PrometheusServer
) -> None:
    prometheus_server.load_openmetrics(
        recurring_openmetrics(
            {"CHAT": (5, 3)},
            start=(NOW - timedelta(days=2)).timestamp(),
            end=NOW.timestamp(),
            preset=targets.HistoryPreset.KNATIVE,
            namespace="ml",
        )
    )
    prometheus_server.start()
    config = tmp_path / "targets.yaml"
    config.write_text(
        CONFIG
        + "  - name: ml/typo\n    kind: keda\n    max: 2\n"
        + "    forecast: {enabled: true, history: promql, historyQuery: 'sum(rate(x{app=\"$name\"}[1m])'}\n"
        + "  - name: ml/per-pod\n    kind: keda\n    max: 2\n"
        + "    forecast: {enabled: true, history: promql, historyQuery: "
        + "'increase({__name__=\"kn_serving_invocation_duration_seconds_count\"}[1m]) or vector(1)'}\n"
    )
    options = composition.ServeOptions(
        config=config,
        http_host="127.0.0.1",
        http_port=0,
        prometheus=history.PrometheusSettings(url=prometheus_server.url),
    )
    async with composition.run_service(options, clock=clock.ManualClock(NOW), out=io.StringIO()) as service:
        await wait_for(lambda: {"ml/chat", "ml/typo", "ml/per-pod"} <= set(service.decider.decisions))
        typo = service.decider.decisions["ml/typo"]
        assert typo.floor == 0
        assert "forecast degraded: history read failed: Prometheus rejected the query (bad_data: " in typo.reason
        per_pod = service.forecaster.degraded("ml/per-pod")
        assert per_pod is not None and "series where one is expected" in per_pod
        assert service.forecaster.degraded("ml/chat") is None
        assert not service.decider_task.done()


async def test_serve_refuses_an_unknown_history_preset_before_starting(tmp_path: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(CONFIG.replace("history: knative", "history: graphite"))
    options = composition.ServeOptions(
        config=config, http_host="127.0.0.1", http_port=0, prometheus=history.PrometheusSettings(url="http://x:9090")
    )
    with pytest.raises(targets.ConfigError) as caught:
        async with composition.run_service(options, clock=clock.ManualClock(NOW), out=io.StringIO()):
            pass
    assert [str(p) for p in caught.value.problems] == [
        "targets[0].forecast.history: 'graphite' is not a history preset (knative, keda-http, vllm, promql)"
    ]
