"""`prewarm history export` and `prewarm forecast explain` against a real Prometheus, and the parity
of the live forecast with `prewarm replay`'s: the same counts give the same prediction."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import PrometheusServer

from prewarm import cli
from prewarm.core import targets
from prewarm.forecast import arrival_model, request_history
from prewarm.replay import evaluator, traces

START = datetime(2025, 6, 2, 0, 0, tzinfo=UTC)
HEADER = "gmt_create,predict_type,predict_status,exec_time_seconds,groupId,checkpoint_model_version_id"


def write_trace(path: Path) -> None:
    """Eight days of three models: M0 every hour at :05 (1-3 requests), M1 on weekday office hours
    at random, M2 a few times a day at random; seeded."""
    rng = np.random.default_rng(7)
    rows: list[tuple[datetime, str]] = []
    for hour in range(8 * 24):
        at = START + timedelta(hours=hour)
        rows += [(at + timedelta(minutes=5, seconds=int(s)), "M0") for s in rng.integers(0, 50, rng.integers(1, 4))]
        if 9 <= at.hour < 17 and at.weekday() < 5:
            rows += [(at + timedelta(seconds=int(s)), "M1") for s in rng.integers(0, 3600, rng.poisson(6))]
        if rng.random() < 0.15:
            rows.append((at + timedelta(seconds=int(rng.integers(0, 3600))), "M2"))
    lines = [HEADER] + [
        f"{at:%Y-%m-%d %H:%M:%S},TXT_2_IMG,SUCCEED,12.0,G{i % 5},{model}" for i, (at, model) in enumerate(sorted(rows))
    ]
    path.write_text("\n".join(lines) + "\n")


CONFIG = """targets:
  - {name: replay/m0, kind: keda, max: 1000, forecast: {enabled: true, history: knative}}
  - {name: replay/m1, kind: keda, max: 1000, forecast: {enabled: true, history: knative}}
  - {name: replay/m2, kind: keda, max: 1000, forecast: {enabled: true, history: knative}}
"""


@pytest.fixture
def loaded(tmp_path: Path, prometheus_server: PrometheusServer, capsys: pytest.CaptureFixture[str]) -> Path:
    """The trace, exported with `prewarm history export` and loaded into the running Prometheus."""
    trace = tmp_path / "trace.csv"
    write_trace(trace)
    exported = tmp_path / "trace.om"
    status = cli.main(["history", "export", "--trace", str(trace), "--format", "alibaba-genai", "--out", str(exported)])
    assert status == 0
    assert "3 targets" in capsys.readouterr().err
    prometheus_server.load_openmetrics(exported.read_text())
    prometheus_server.start()
    (tmp_path / "targets.yaml").write_text(CONFIG)
    return trace


def explain(
    tmp_path: Path, server: PrometheusServer, capsys: pytest.CaptureFixture[str], target: str, at: str
) -> dict[str, Any]:
    argv = ["forecast", "explain", target, "--config", str(tmp_path / "targets.yaml"), "--at", at]
    assert cli.main([*argv, "--prometheus", server.url]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


@pytest.mark.parametrize(
    ("target", "at"),
    [
        ("replay/m0", "2025-06-09 12:04:00"),  # a minute before m0's hourly requests
        ("replay/m0", "2025-06-09 12:30:00"),
        ("replay/m1", "2025-06-09 10:15:00"),  # a Monday morning
        ("replay/m2", "2025-06-09T18:00:00Z"),
    ],
    ids=["m0-before-arrival", "m0-quiet", "m1-office-hours", "m2-rare"],
)
def test_serve_and_replay_give_the_same_prediction_for_the_same_counts(
    target: str, at: str, tmp_path: Path, loaded: Path, prometheus_server: PrometheusServer, capsys: Any
) -> None:
    live = explain(tmp_path, prometheus_server, capsys, target, at)
    trace = traces.read_trace(loaded, traces.TraceFormat.ALIBABA_GENAI, seed=0)
    minute = int(datetime.fromisoformat(at).replace(tzinfo=UTC).timestamp() // 60)
    replayed = evaluator.forecast_trace(
        trace, arrival_model.ForecastConfig(horizon=1), predict_from=minute * 60, refit_minutes=1_000_000
    )
    name = target.split("/")[1].upper()
    index = minute - replayed.first_minute
    p_replay = float(replayed.probability[name][index])
    assert live["model"] == "pooled" and not np.isnan(p_replay)
    assert live["p_arrival"] == p_replay  # exactly: the same features, rows, fit and seed
    assert live["forecast_replicas"] == float(replayed.replicas(name, 0.9, 1)[index])
    tail = [round(float(p), 6) for p in replayed.tails[name][0] if p > 0]
    assert live["predicted_demand"]["p_at_least_k_given_any"] == tail


def test_explain_says_what_history_it_read(
    tmp_path: Path, loaded: Path, prometheus_server: PrometheusServer, capsys: Any
) -> None:
    live = explain(tmp_path, prometheus_server, capsys, "replay/m0", "2025-06-09 12:05:30")
    spec = targets.parse_config_document(CONFIG, source="t").targets[0]
    first = traces.read_trace(loaded, traces.TraceFormat.ALIBABA_GENAI, seed=0).start
    minute = int(datetime(2025, 6, 9, 12, 5, tzinfo=UTC).timestamp() // 60)
    expected_unknown = (minute - 14 * 1440 <= int(first // 60)) and int(first // 60) - (minute - 14 * 1440)
    assert live["at"] == "2025-06-09T12:05:00Z"
    assert live["history"] == {
        "source": "prometheus",
        "preset": "knative",
        "query": request_history.target_query(spec).expression,  # coverage from `up`, the default
        "since": "2025-05-26T12:05:00Z",
        "until": "2025-06-09T12:05:00Z",
        "minutes": 14 * 1440,
        "unknown_minutes": expected_unknown,  # the days before the trace began
        "first_known": datetime.fromtimestamp(first // 60 * 60, UTC).isoformat().replace("+00:00", "Z"),
        "requests": live["history"]["requests"],
        "sessions": None,
    }
    counts = traces.read_trace(loaded, traces.TraceFormat.ALIBABA_GENAI, seed=0).targets[0].arrivals
    assert live["history"]["requests"] == float((counts < minute * 60).sum())
    assert live["p_arrival"] > 0.5 and live["forecast_replicas"] >= 1.0  # m0's requests come in minute :05
    assert (live["floor"], live["source"]) == (live["forecast_replicas"], "forecast")
    assert live["degraded"] is None and live["horizon_seconds"] == 60


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["replay/nope"], "TARGET: 'replay/nope' is not a target in the config"),
        (
            ["replay/nope", "--at", "yesterday", "--store", "sqlite://"],  # every problem at once
            "(3 problems):\n  - TARGET: 'replay/nope' is not a target in the config\n"
            "  - --at: 'yesterday' is not YYYY-MM-DD HH:MM:SS or ISO 8601\n"
            "  - --store: 'sqlite://' is not memory, redis://host:port/db, rediss://, unix://, "
            "redis+sentinel://host:port[,host:port]/service[/db] or redis+cluster://host:port[,host:port]",
        ),
        (["replay/m0"], "replay/m0: forecast.history: 'knative' needs --prometheus or PREWARM_PROMETHEUS_URL"),
        (["replay/m0", "--prometheus", "localhost:9090"], "--prometheus: 'localhost:9090' is not an http"),
    ],
    ids=["unknown-target", "three-at-once", "no-prometheus", "bad-url"],
)
def test_explain_refuses_bad_input_with_one_message(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.delenv("PREWARM_PROMETHEUS_URL", raising=False)
    (tmp_path / "targets.yaml").write_text(CONFIG)
    argv = ["forecast", "explain", "--config", str(tmp_path / "targets.yaml"), *extra]
    if extra[0] != "replay/m0":
        argv += ["--prometheus", "http://127.0.0.1:9"]  # never asked: the arguments are refused first
    status = cli.main(argv)
    assert status == 2
    assert message in capsys.readouterr().err


def test_export_refuses_a_bad_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(HEADER + "\n2025/06/02 00:00:00,T,S,1,G,M0\n")
    status = cli.main(["history", "export", "--trace", str(trace), "--format", "alibaba-genai", "--out", "x.om"])
    assert status == 2
    assert "line 2, column 'gmt_create': bad timestamp '2025/06/02 00:00:00'" in capsys.readouterr().err
    assert not Path("x.om").exists()
