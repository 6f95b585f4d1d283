"""`prewarm tune` on a trace written here and on the arrival history a real redis-server holds."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import RedisServer

from prewarm import cli
from prewarm.core import ledger
from prewarm.service.store import Intent, RedisStore

ALIBABA_HEADER = (
    "gmt_create,predict_type,predict_status,exec_time_seconds,groupId,prompt_length,negative_prompt_length,"
    "num_images_per_prompt,num_inference_steps,checkpoint_model_version_id,num_lora"
)
START = datetime(2024, 11, 15, tzinfo=UTC)


def write_trace(path: Path) -> None:
    """M0000 every 2.5 min for three days; M0001 twice a day."""
    rows = [(START + timedelta(seconds=150 * i), "M0000") for i in range(3 * 24 * 24)]
    rows += [(START + timedelta(days=d, hours=h), "M0001") for d in range(3) for h in (9, 17)]
    lines = [ALIBABA_HEADER] + [
        f"{at:%Y-%m-%d %H:%M:%S},TXT_2_IMG,SUCCEED,10.0,G1,10.0,,1.0,30.0,{model},0" for at, model in sorted(rows)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_tune_a_trace_prints_each_targets_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "requests.csv"
    write_trace(trace)
    args = ["tune", "--trace", str(trace), "--format", "alibaba-genai", "--tune-days", "1", "--objective", "cold=5%"]
    assert cli.main([*args, "--fleet-budget", "30h/day"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| target | requests | objective | fleet | setting |")
    assert "| M0000 | " in table and "| M0001 | " in table
    assert "fleet default: " in table
    assert cli.main([*args, "--json"]) == 0
    rows = {row["target"]: row for row in json.loads(capsys.readouterr().out)["targets"]}
    busy = rows["M0000"]
    assert busy["objective"] == 0.05 and busy["met"] is True and busy["pooled"] is False
    assert busy["predicted_cold_start_fraction"] <= 0.05 and busy["setting"] != "forecast off"
    assert rows["M0001"]["pooled"] is True  # two requests a day: tuned with the pooled rare group


def test_tune_reads_the_history_prewarm_serve_stored(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime(2026, 5, 8, 12, 0, tzinfo=UTC)
    store = RedisStore.from_url(redis_server.url)
    opened = [
        Intent(
            "ml/chat",
            "test",
            f"e{i}",
            ledger.SessionEvent(
                ledger.SessionEventType.OPENED, f"s{i}", now - timedelta(seconds=150 * (i + 1)), timedelta(seconds=30)
            ),
        )
        for i in range(2 * 24 * 24)
    ]

    async def fill() -> None:
        try:
            for first in range(0, len(opened), 200):
                await store.record_intents(opened[first : first + 200])
        finally:
            await store.close()

    asyncio.run(fill())
    config = tmp_path / "targets.yaml"
    config.write_text(
        "targets:\n"
        "  - {name: ml/chat, kind: keda, max: 4, forecast: {enabled: true}, objective: {coldStarts: 10%}}\n"
        "  - {name: ml/idle, kind: keda, max: 4, forecast: {enabled: true}, objective: {coldStarts: 10%}}\n"
        "  - {name: ml/plain, kind: keda, max: 4}\n"
    )
    at = f"{now:%Y-%m-%d %H:%M:%S}"
    args = ["tune", "--config", str(config), "--store", redis_server.url, "--at", at, "--tune-days", "1", "--json"]
    assert cli.main(args) == 0
    rows = {row["target"]: row for row in json.loads(capsys.readouterr().out)["targets"]}
    assert set(rows) == {"ml/chat", "ml/idle"}  # ml/plain has no forecast to tune
    assert rows["ml/chat"]["requests"] > 500 and rows["ml/chat"]["predicted_cold_start_fraction"] <= 0.10
    assert rows["ml/idle"]["setting"] == "forecast off" and rows["ml/idle"]["requests"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace", "x.csv"], "--trace needs --format"),
        (["--store", "redis://127.0.0.1:1/0"], "--store needs --config: the targets to tune"),
        (["--trace", "x.csv", "--format", "alibaba-genai", "--objective", "cold=150%"], "'cold=150%' must be between"),
        (["--trace", "x.csv", "--format", "alibaba-genai", "--fleet-budget=-3h"], "'-3h' must be >= 0 replica-hours"),
        (["--trace", "x.csv", "--format", "alibaba-genai", "--tune-cold-start", "never"], "--tune-cold-start: 'never'"),
        (["--trace", "x.csv", "--format", "alibaba-genai", "--tune-days", "1e9"], "--tune-days: 1000000000.0 must be"),
    ],
    ids=["trace-without-format", "store-without-config", "objective", "budget", "cold-start", "tune-days"],
)
def test_bad_arguments_exit_2_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli.main(["tune", *args]) == 2
    assert message in capsys.readouterr().err


def test_targets_are_tuned_with_their_own_forecast_horizon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A target forecasting 5 minutes ahead is replayed with a 5-minute model, as serve fits one."""
    trace = tmp_path / "requests.csv"
    write_trace(trace)
    config = tmp_path / "targets.yaml"
    config.write_text(
        "targets:\n"
        "  - {name: trace/m0000, kind: keda, max: 4, forecast: {enabled: true, horizon: 5m}, "
        "objective: {coldStarts: 5%}}\n"
    )
    args = ["tune", "--trace", str(trace), "--format", "alibaba-genai", "--config", str(config), "--tune-days", "1"]
    assert cli.main([*args, "--objective", "cold=50%", "--json"]) == 0
    rows = {row["target"]: row for row in json.loads(capsys.readouterr().out)["targets"]}
    assert rows["M0000"]["objective"] == 0.05  # its own objective; M0001 takes the flag's
    assert rows["M0000"]["met"] is True and rows["M0001"]["objective"] == 0.5
