"""The live tuner: history from the real memory store, an injected clock, the decider's reasons,
the closed loop on observed cold starts, and `prewarm serve` end to end (/targets and /metrics)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from support import wait_for, wait_for_async

from prewarm.core import ledger, policy, targets
from prewarm.replay import tuned_runs, tuning
from prewarm.service import clock, composition, decider, target_registry, telemetry
from prewarm.service import tuner as tuner_module
from prewarm.service.store import Intent, MemoryStore, StateUnavailable

NOW = datetime(2026, 5, 8, 12, 0, tzinfo=UTC)
OPTIONS = tuned_runs.HistoryOptions(tune_days=1.0, refit_hours=12.0)


def spec(name: str, *, objective: float | None = None, fleet: str = targets.DEFAULT_FLEET) -> targets.TargetSpec:
    return targets.TargetSpec(
        ref=targets.TargetRef("ml", name),
        kind=targets.TargetKind.KEDA,
        max=4,
        forecast=targets.ForecastSettings(enabled=True),
        objective=targets.ObjectiveSettings(objective),
        fleet=fleet,
    )


async def regular_history(store: MemoryStore, target: str, *, every: timedelta, days: float) -> None:
    """A session opening every `every` for `days` before NOW."""
    await open_at(store, target, [NOW - every * (i + 1) for i in range(int(timedelta(days=days) / every))])


async def open_at(store: MemoryStore, target: str, times: list[datetime]) -> None:
    intents = [
        Intent(
            target,
            "test",
            f"{target}-{i}",
            ledger.SessionEvent(ledger.SessionEventType.OPENED, f"s{i}", at, timedelta(seconds=30)),
        )
        for i, at in enumerate(sorted(times))
    ]
    await store.record_intents(intents)


class Starts:
    """Warm and cold session starts as the listener would count them; tests move them."""

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int]] = {}

    def __call__(self, target: str) -> tuple[int, int]:
        return self.counts.get(target, (0, 0))


async def test_an_objective_target_is_tuned_and_the_decision_says_how() -> None:
    store = MemoryStore()
    await regular_history(store, "ml/chat", every=timedelta(minutes=3), days=2.0)
    specs = {"ml/chat": spec("chat", objective=0.05), "ml/other": spec("other")}
    changed: list[str] = []
    tuner = tuner_module.Tuner(
        history=store.arrivals,
        clock=clock.ManualClock(NOW),
        specs=lambda: specs,
        fleets={},
        on_change=changed.append,
        options=OPTIONS,
    )
    assert tuner.effective(specs["ml/chat"]) == (specs["ml/chat"], "")  # nothing tuned yet
    await tuner.retune(NOW)
    assert changed == ["ml/chat"]  # ml/other has neither an objective nor a fleet budget
    tuned, note = tuner.effective(specs["ml/chat"])
    assert tuned.forecast.enabled and tuned != specs["ml/chat"]
    assert note.startswith("objective 5.0%: quantile ") and "predicted" in note
    assert tuner.effective(specs["ml/other"]) == (specs["ml/other"], "")
    view = tuner.describe("ml/chat")
    assert view is not None and view["objective"] == 0.05 and view["predicted_cold_start_fraction"] <= 0.05
    assert tuner.describe("ml/other") is None

    deciding = decider.Decider(
        registry=target_registry.TargetRegistry(specs.values()),
        store=store,
        clock=clock.ManualClock(NOW),
        forecast=lambda s, now: 1.0,
        tuned=tuner.effective,
        explain_tuning=tuner.describe,
    )
    decision = await deciding.decide("ml/chat", NOW)
    assert decision.source is policy.Source.FORECAST
    assert decision.reason == f"forecast 1 ({note})"
    (chat, other) = await deciding.describe()
    assert chat["tuning"]["setting"] == view["setting"] and "tuning" not in other


async def test_the_closed_loop_tightens_when_users_meet_cold_starts_and_relaxes_when_they_do_not() -> None:
    store = MemoryStore()
    gaps = np.random.default_rng(5).exponential(240.0, 800)  # Poisson arrivals, a 4 min mean gap
    await open_at(store, "ml/chat", [NOW - timedelta(seconds=float(s)) for s in np.cumsum(gaps)])
    specs = {"ml/chat": spec("chat", objective=0.10)}
    starts = Starts()
    changed: list[str] = []
    tuner = tuner_module.Tuner(
        history=store.arrivals,
        clock=clock.ManualClock(NOW),
        specs=lambda: specs,
        fleets={},
        on_change=changed.append,
        options=OPTIONS,
        starts=starts,
    )
    await tuner.retune(NOW)
    changed.clear()
    tuned_setting = tuner.describe("ml/chat")["setting"]  # type: ignore[index]
    tuner.check_objectives(NOW)  # the first sample: nothing to compare with yet
    starts.counts["ml/chat"] = (3, 1)
    tuner.check_objectives(NOW + timedelta(minutes=5))  # 4 starts: too few to judge
    assert changed == []
    starts.counts["ml/chat"] = (16, 4)  # 20 starts since the first sample, 4 cold: 20% > 10%
    tuner.check_objectives(NOW + timedelta(minutes=10))
    assert changed == ["ml/chat"]
    view = tuner.describe("ml/chat")
    assert view is not None and view["observed_cold_start_fraction"] == 0.2
    tighter = view["setting"]
    assert tighter != tuned_setting
    assert view["reason"] == f"objective 10.0%: observed 20.0% last 1h, {tuned_setting} -> {tighter}"
    # an hour later the early samples have left the window: 40 warm, 0 cold since then, well below
    starts.counts["ml/chat"] = (56, 4)
    tuner.check_objectives(NOW + timedelta(minutes=75))
    assert changed == ["ml/chat", "ml/chat"]
    relaxed = tuner.describe("ml/chat")
    assert relaxed is not None and relaxed["setting"] == tuned_setting
    assert relaxed["reason"] == f"objective 10.0%: observed 0.0% last 1h, {tighter} -> {tuned_setting}"
    starts.counts["ml/chat"] = (96, 4)
    tuner.check_objectives(NOW + timedelta(minutes=140))  # never cheaper than the tuned setting
    assert len(changed) == 2


async def test_a_fleet_budget_shares_hours_and_a_target_with_nothing_to_save_is_tuned_off() -> None:
    store = MemoryStore()
    await regular_history(store, "ml/busy", every=timedelta(minutes=2, seconds=30), days=2.0)
    specs = {"ml/busy": spec("busy", fleet="gpu"), "ml/quiet": spec("quiet", fleet="gpu")}
    tuner = tuner_module.Tuner(
        history=store.arrivals,
        clock=clock.ManualClock(NOW),
        specs=lambda: specs,
        fleets={"gpu": 30.0},
        on_change=lambda target: None,
        options=OPTIONS,
    )
    await tuner.retune(NOW)
    busy, quiet = tuner.describe("ml/busy"), tuner.describe("ml/quiet")
    assert busy is not None and quiet is not None
    assert busy["setting"] != "forecast off" and quiet["setting"] == "forecast off"
    assert busy["reason"].startswith("fleet gpu 30h/day: ")
    off, _ = tuner.effective(specs["ml/quiet"])
    assert not off.forecast.enabled  # the decider asks no forecast for it, as the replay assumed
    # the forecaster goes on predicting it from its configured spec, so a later retune can turn it on
    assert tuner.effective_specs()["ml/quiet"] == specs["ml/quiet"]


async def test_history_that_cannot_be_read_keeps_the_last_settings() -> None:
    store = MemoryStore()
    await regular_history(store, "ml/chat", every=timedelta(minutes=3), days=2.0)
    specs = {"ml/chat": spec("chat", objective=0.05)}
    failing = False

    async def history(target: str, since: datetime, until: datetime) -> dict[datetime, int]:
        if failing:
            raise StateUnavailable("redis: connection refused")
        return await store.arrivals(target, since, until)

    manual = clock.ManualClock(NOW)
    tuner = tuner_module.Tuner(
        history=history, clock=manual, specs=lambda: specs, fleets={}, on_change=lambda t: None, options=OPTIONS
    )
    task = asyncio.create_task(tuner.run())
    try:
        await wait_for(lambda: tuner.tuned_at == NOW, within=60)
        before = tuner.effective(specs["ml/chat"])
        failing = True
        manual.advance(timedelta(days=1))  # the daily retune fails: settings stay, retried in 5 min
        await asyncio.sleep(0)
        assert tuner.effective(specs["ml/chat"]) == before and tuner.tuned_at == NOW
        failing = False
        manual.advance(tuner_module.DEFAULT_CHECK)
        await wait_for(lambda: tuner.tuned_at == NOW + timedelta(days=1) + tuner_module.DEFAULT_CHECK, within=60)
    finally:
        task.cancel()


async def test_serve_shows_objectives_on_targets_and_metrics(tmp_path: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(
        """
fleet: {budget: 50h/day}
targets:
  - name: ml/chat
    kind: keda
    max: 4
    forecast: {enabled: true}
    objective: {coldStarts: 5%}
  - name: ml/batch
    kind: keda
    max: 4
    forecast: {enabled: true}
"""
    )
    options = composition.ServeOptions(config=config, http_host="127.0.0.1", http_port=0, tuning=OPTIONS)
    manual = clock.ManualClock(NOW)
    async with composition.run_service(options, clock=manual, out=io.StringIO()) as service:
        assert isinstance(service.store, MemoryStore)
        await regular_history(service.store, "ml/chat", every=timedelta(minutes=3), days=2.0)
        url = f"http://127.0.0.1:{service.http_port}"
        async with aiohttp.ClientSession() as http:

            async def tuned() -> bool:
                async with http.get(f"{url}/targets") as response:
                    rows = (await response.json())["targets"]
                return all(
                    row.get("tuning", {}).get("tuned_at") == (NOW + tuner_module.DEFAULT_RETUNE).isoformat()
                    for row in rows
                )

            # the start-up tuning ran before the history was written; the next retune sees it
            manual.advance(tuner_module.DEFAULT_RETUNE)
            await wait_for_async(tuned, within=60)
            async with http.get(f"{url}/targets") as response:
                rows = {row["target"]: row for row in (await response.json())["targets"]}
            async with http.get(f"{url}/metrics") as response:
                metrics = await response.text()
    assert rows["ml/chat"]["tuning"]["objective"] == 0.05
    assert rows["ml/chat"]["tuning"]["setting"] != "forecast off"  # its history needs pre-warming
    assert rows["ml/batch"]["tuning"]["fleet"] == targets.DEFAULT_FLEET
    assert rows["ml/batch"]["tuning"]["objective"] is None
    samples = {
        (line.split("{")[0], re.search(r'target="([^"]+)"', line).group(1)): float(line.rsplit(" ", 1)[1])  # type: ignore[union-attr]
        for line in metrics.splitlines()
        if line.startswith("prewarm_objective_")
    }
    assert samples[("prewarm_objective_cold_starts", "ml/chat")] == 0.05
    assert ("prewarm_objective_cold_starts", "ml/batch") not in samples  # a budget, no objective
    chat = rows["ml/chat"]["tuning"]
    assert samples[("prewarm_objective_predicted", "ml/chat")] == chat["predicted_cold_start_fraction"]
    assert samples[("prewarm_objective_warm_hours", "ml/chat")] == chat["predicted_warm_replica_hours_per_day"]
    assert samples[("prewarm_objective_quantile", "ml/batch")] == 0.0  # no history: tuned off


def test_telemetry_counts_starts_for_the_closed_loop() -> None:
    instruments = telemetry.Telemetry(
        meter_provider=MeterProvider(), tracer_provider=TracerProvider(), targets=["ml/chat"]
    )
    assert instruments.starts("ml/chat") == (0, 0)
    instruments.record_session_opened("ml/chat", floor_before=1)
    instruments.record_session_opened("ml/chat", floor_before=0)
    instruments.record_session_opened("ml/chat", floor_before=None)
    assert instruments.starts("ml/chat") == (1, 2)
    assert tuning.OFF.describe() == "forecast off"


async def test_a_gap_in_the_tuning_window_keeps_the_last_settings() -> None:
    """Unknown minutes (a Prometheus outage) are never read as zero demand: inside the tuning window
    they postpone the tuning; older ones, in the features' week only, are left out."""
    window_start = NOW - timedelta(days=OPTIONS.tune_days)

    def history_with(unknown_at: datetime) -> tuner_module.History:
        async def read(target: str, since: datetime, until: datetime) -> dict[datetime, float]:
            return {NOW - timedelta(minutes=3): 2.0, unknown_at: math.nan}

        return read

    with pytest.raises(StateUnavailable, match="ml/chat: 1 minutes of its tuning history are unknown"):
        await tuner_module.read_history(
            history_with(window_start + timedelta(hours=1)), ["ml/chat"], now=NOW, tune_days=OPTIONS.tune_days
        )
    counts = await tuner_module.read_history(
        history_with(window_start - timedelta(hours=1)), ["ml/chat"], now=NOW, tune_days=OPTIONS.tune_days
    )
    assert counts == {"ml/chat": {int((NOW - timedelta(minutes=3)).timestamp() // 60): 2}}


async def test_batch_session_starts_are_not_counted_as_warm_or_cold(tmp_path: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text("targets:\n  - {name: ml/chat, kind: keda, max: 4}\n")
    options = composition.ServeOptions(config=config, http_host="127.0.0.1", http_port=0)
    async with (
        composition.run_service(options, clock=clock.ManualClock(NOW), out=io.StringIO()) as service,
        aiohttp.ClientSession() as http,
    ):
        url = f"http://127.0.0.1:{service.http_port}"
        for event_id, priority in (("b1", "batch"), ("b2", "batch"), ("i1", "interactive")):
            event = {
                "specversion": "1.0",
                "type": "dev.prewarm.session.opened",
                "source": "/test",
                "id": event_id,
                "data": {"target": "ml/chat", "session": event_id, "priority": priority},
            }
            async with http.post(
                f"{url}/events", json=event, headers={"Content-Type": "application/cloudevents+json"}
            ) as response:
                assert response.status == 202
        async with http.get(f"{url}/metrics") as response:
            metrics = await response.text()
    cold = [line for line in metrics.splitlines() if line.startswith("prewarm_cold_starts_total{")]
    assert len(cold) == 1 and cold[0].endswith(" 1.0")  # the interactive session alone


async def test_a_fleet_budget_is_a_cap_the_decider_holds_however_traffic_moves() -> None:
    store = MemoryStore()
    await regular_history(store, "ml/busy", every=timedelta(minutes=2, seconds=30), days=2.0)
    specs = {"ml/busy": spec("busy", fleet="gpu"), "ml/quiet": spec("quiet", fleet="gpu")}
    decisions: dict[str, policy.FloorDecision] = {}
    changed: list[str] = []
    tuner = tuner_module.Tuner(
        history=store.arrivals,
        clock=clock.ManualClock(NOW),
        specs=lambda: specs,
        fleets={"gpu": 30.0},
        on_change=changed.append,
        options=OPTIONS,
        decisions=decisions.get,
    )
    await tuner.retune(NOW)
    tuner.share_fleet_budgets(NOW)
    fresh, _ = tuner.effective(specs["ml/busy"])
    assert fresh.budget is not None and fresh.budget > 0  # nothing spent yet: a share of the 30 h
    # traffic grew: busy has kept 4 replicas warm since 04:00, 32 replica-hours, over the budget
    tuned, _ = tuner.effective(specs["ml/busy"])
    decisions["ml/busy"] = policy.decide_floor(
        dataclasses.replace(tuned, budget=None), policy.Signals(forecast=4.0), NOW - timedelta(hours=8), None
    )
    changed.clear()
    tuner.share_fleet_budgets(NOW)
    assert "ml/busy" in changed  # re-decided with its new share
    capped, _ = tuner.effective(specs["ml/busy"])
    assert capped.budget == pytest.approx(32.0)  # what it spent, and not an hour more
    decision = policy.decide_floor(capped, policy.Signals(forecast=4.0), NOW, decisions["ml/busy"])
    assert (decision.floor, decision.source) == (0, policy.Source.BUDGET)
