"""Metrics and traces from a real app: drive events, decisions and pod phases, scrape /metrics,
and read spans from an in-memory exporter."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from support import wait_for, wait_for_async

from prewarm.core import ledger
from prewarm.service import clock, composition
from prewarm.service.store import Intent

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DASHBOARD = (Path(__file__).resolve().parents[2] / "manifests" / "grafana" / "kube-prewarm-dashboard.json").read_text()
FORECAST_PANEL_METRICS = {"prewarm_forecast_error_sum", "prewarm_forecast_error_count"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class App:
    def __init__(
        self, service: composition.RunningService, spans: InMemorySpanExporter, manual: clock.ManualClock
    ) -> None:
        self.service = service
        self.spans = spans
        self.clock = manual
        self.url = f"http://127.0.0.1:{service.http_port}"

    async def send(self, http: aiohttp.ClientSession, event: dict[str, Any]) -> int:
        body = {"specversion": "1.0", "source": "/test", "time": self.clock.now().isoformat(), **event}
        async with http.post(
            f"{self.url}/events", json=body, headers={"Content-Type": "application/cloudevents+json"}
        ) as response:
            return response.status

    async def metrics(self, http: aiohttp.ClientSession) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with http.get(f"{self.url}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
        return {
            (
                sample.name,
                tuple(sorted((k, v) for k, v in sample.labels.items() if not k.startswith("otel_"))),
            ): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    config = tmp_path / "targets.yaml"
    config.write_text("targets: [{name: ml/chat, kind: keda, max: 3, sessionsPerReplica: 1, hold: 0s, budget: 10}]\n")
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    manual = clock.ManualClock(T0)
    options = composition.ServeOptions(config=config, http_host="127.0.0.1", http_port=0)
    async with composition.run_service(
        options, clock=manual, out=io.StringIO(), tracer_provider=tracer_provider
    ) as service:
        yield App(service, spans, manual)


def phase(pod: str, name: str, at_s: float) -> dict[str, Any]:
    return {
        "type": "dev.prewarm.pod.phase",
        "id": f"{pod}-{name}",
        "time": (T0 + timedelta(seconds=at_s)).isoformat(),
        "data": {"target": "ml/chat", "pod": pod, "phase": name},
    }


async def test_metrics_and_traces_follow_events_decisions_and_phases(app: App) -> None:
    decisions = app.service.decider.decisions
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: "ml/chat" in decisions)
        # a session opens while nothing is warm (cold), carrying the caller's trace
        opened = {
            "type": "dev.prewarm.session.opened",
            "id": "o1",
            "traceparent": TRACEPARENT,
            "data": {"target": "ml/chat", "session": "s1"},
        }
        assert await app.send(http, opened) == 202
        assert await app.send(http, opened) == 202  # redelivered: a duplicate
        await wait_for(lambda: decisions["ml/chat"].floor == 1)
        # a second session finds the floor already raised (warm)
        assert await app.send(http, {**opened, "id": "o2", "data": {"target": "ml/chat", "session": "s2"}}) == 202
        await wait_for(lambda: decisions["ml/chat"].floor == 2)
        # a pod starts and serves: its phases become one trace and duration samples
        for name, at_s in [
            ("container_started", 0),
            ("cache_restored", 1),
            ("weights_loaded", 9),
            ("runtime_ready", 12),
            ("first_token", 13),
        ]:
            app.clock.set(T0 + timedelta(seconds=at_s))  # events are never later than their receipt
            assert await app.send(http, phase("chat-abc", name, at_s)) == 202
        # both sessions close: the intent-driven raise was used before the floor fell
        for i in (1, 2):
            closed = {
                "type": "dev.prewarm.session.closed",
                "id": f"c{i}",
                "data": {"target": "ml/chat", "session": f"s{i}"},
            }
            assert await app.send(http, closed) == 202
        await wait_for(lambda: decisions["ml/chat"].floor == 0)
        # an event for an unknown target is rejected and never becomes a label value
        unknown = {"type": "dev.prewarm.session.opened", "id": "x", "data": {"target": "ml/evil-123", "session": "s"}}
        assert await app.send(http, unknown) == 422
        metrics = await app.metrics(http)

    chat = (("target", "ml/chat"),)
    assert metrics[("prewarm_floor", (("source", "min"), *chat))] == 0
    assert metrics[("prewarm_floor", (("source", "intent"), *chat))] == 0  # superseded source set to 0
    assert metrics[("prewarm_sessions_active", chat)] == 0
    assert metrics[("prewarm_events_total", (("outcome", "accepted"), ("type", "opened")))] == 2
    assert metrics[("prewarm_events_total", (("outcome", "duplicate"), ("type", "opened")))] == 1
    assert metrics[("prewarm_events_total", (("outcome", "accepted"), ("type", "closed")))] == 2
    assert metrics[("prewarm_events_total", (("outcome", "accepted"), ("type", "phase")))] == 5
    assert metrics[("prewarm_events_total", (("outcome", "rejected.422"), ("type", "unknown")))] == 1
    assert metrics[("prewarm_cold_starts_total", chat)] == 1
    assert metrics[("prewarm_warm_starts_total", chat)] == 1
    assert metrics[("prewarm_pool_hit_ratio", chat)] == 0.5
    assert metrics[("prewarm_intent_prediction_accuracy", chat)] == 1.0
    assert metrics[("prewarm_cold_start_duration_seconds_sum", (("phase", "weights_loaded"), *chat))] == 9.0
    assert metrics[("prewarm_cold_start_duration_seconds_sum", (("phase", "first_token"), *chat))] == 13.0
    assert metrics[("prewarm_actuations_total", (("actuator", "log"), ("outcome", "applied")))] >= 3
    assert metrics[("prewarm_decision_duration_seconds_count", ())] >= 4  # one sample per batch, no target label
    assert not [k for k in metrics if k[0].startswith("prewarm_decision_duration") and "target" in dict(k[1])]
    assert ("prewarm_budget_used_hours", chat) in metrics
    assert not [key for key in metrics if "ml/evil-123" in str(key)]

    # every metric the shipped Grafana dashboard queries is one the app exports
    queried = set(re.findall(r"prewarm_[a-z_]+", DASHBOARD)) - FORECAST_PANEL_METRICS  # no forecast target here
    exported = {name for name, _ in metrics}
    assert queried and queried <= exported, queried - exported

    spans = app.spans.get_finished_spans()
    decided = [s for s in spans if s.name == "decide floor" and s.context.trace_id == int(TRACE_ID, 16)]
    assert decided, "the intent event's trace continues into its decision"
    actuated = [
        s
        for s in spans
        if s.name == "actuate" and s.parent is not None and s.parent.span_id == decided[0].context.span_id
    ]
    assert actuated, "actuation is a child of the decision"
    pod = next(s for s in spans if s.name == "pod start")
    children = sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == pod.context.span_id),
        key=lambda s: s.start_time or 0,
    )
    assert [s.name for s in children] == ["cache_restored", "weights_loaded", "runtime_ready", "first_token"]
    assert ((pod.end_time or 0) - (pod.start_time or 0)) / 1e9 == pytest.approx(13.0)
    assert [((s.end_time or 0) - (s.start_time or 0)) / 1e9 for s in children] == pytest.approx([1, 8, 3, 1])


async def test_sessions_dropped_from_a_full_ledger_are_counted_on_metrics(app: App) -> None:
    """A target keeps at most 10,000 live sessions; the ones that expire first make room, and each
    is counted on /metrics for its target."""
    opened = [
        Intent(
            "ml/chat",
            "/flood",
            f"e{i}",
            ledger.SessionEvent(
                ledger.SessionEventType.OPENED, f"s{i}", T0, timedelta(seconds=300 + i), ledger.Priority.INTERACTIVE
            ),
        )
        for i in range(10_003)
    ]
    await app.service.store.record_intents(opened)
    assert (await app.service.store.count_sessions("ml/chat", T0)).active == 10_000
    async with aiohttp.ClientSession() as http:
        metrics = await app.metrics(http)
    assert metrics[("prewarm_sessions_dropped_total", (("target", "ml/chat"),))] == 3


async def test_bad_phase_is_rejected(app: App) -> None:
    async with aiohttp.ClientSession() as http:
        bad = phase("p", "dreaming", 0)
        assert await app.send(http, bad) == 400


async def test_the_cache_wrapper_and_the_sdk_report_pod_phases(app: App, tmp_path: Path) -> None:
    import asyncio
    import os
    import sys

    from prewarm import sdk

    env = {
        **os.environ,
        "PREWARM_EVENTS_URL": f"{app.url}/events",
        "PREWARM_TARGET": "ml/chat",
        "POD_NAME": "chat-xyz",
        "PREWARM_MODEL": "chat",
    }
    wrapper = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "prewarm.cli",
        "cache",
        "exec",
        "--root",
        str(tmp_path / "cache"),
        "--",
        sys.executable,
        "-c",
        "pass",
        env=env,
    )
    assert await asyncio.wait_for(wrapper.wait(), 60) == 0
    async with sdk.AsyncIntentClient(app.url) as client:
        client.phase("ml/chat", "chat-xyz", "weights_loaded")
        with pytest.raises(ValueError, match="not one of"):
            client.phase("ml/chat", "chat-xyz", "napping")
        await client.flush()
    async with aiohttp.ClientSession() as http:
        metrics = await app.metrics(http)
    chat = (("target", "ml/chat"),)
    for name in ("cache_restored", "weights_loaded"):
        assert metrics[("prewarm_cold_start_duration_seconds_count", (("phase", name), *chat))] == 1
    assert metrics[("prewarm_events_total", (("outcome", "accepted"), ("type", "phase")))] == 3


async def test_forecast_error_is_scraped_once_a_prediction_can_be_scored(tmp_path: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(
        "targets: [{name: ml/chat, kind: keda, max: 3, forecast: {enabled: true, quantile: 0.9, horizon: 60s}}]\n"
    )
    manual = clock.ManualClock(T0)
    options = composition.ServeOptions(config=config, http_host="127.0.0.1", http_port=0)
    async with composition.run_service(options, clock=manual, out=io.StringIO()) as service:
        # A history to learn from: one session three hours ago (training starts at a target's first
        # arrival, so the quiet hours between are its negatives), then one in every minute of the
        # last half hour, 12:00 included.
        past = [T0 - timedelta(hours=3)] + [T0 - timedelta(minutes=m) for m in range(31)]
        await service.store.record_intents(
            [
                Intent(
                    "ml/chat",
                    "test",
                    f"h{i}",
                    ledger.SessionEvent(ledger.SessionEventType.OPENED, f"s{i}", at, timedelta(seconds=60)),
                )
                for i, at in enumerate(sorted(past))
            ]
        )
        app = App(service, InMemorySpanExporter(), manual)
        async with aiohttp.ClientSession() as http:
            manual.advance(timedelta(minutes=1))  # predicts for [12:01, 12:02) from the history
            await wait_for(
                lambda: (
                    service.decider.decisions.get("ml/chat") is not None
                    and service.decider.decisions["ml/chat"].source.value == "forecast"
                )
            )
            manual.advance(timedelta(minutes=1))  # that window has passed: the prediction is scored
            error_count = ("prewarm_forecast_error_count", (("target", "ml/chat"),))
            scraped: dict[Any, float] = {}

            async def scored() -> bool:
                scraped.update(await app.metrics(http))
                return scraped.get(error_count, 0) >= 1

            await wait_for_async(scored)
    assert scraped[error_count] == 1
    assert set(re.findall(r"prewarm_[a-z_]+", DASHBOARD)) >= FORECAST_PANEL_METRICS
    assert {name for name, _ in scraped} >= FORECAST_PANEL_METRICS
    # predicted a likely arrival after thirty busy minutes, and none came: a large error
    assert 0.5 < scraped[("prewarm_forecast_error_sum", (("target", "ml/chat"),))] <= 1.0
