"""`prewarm replay` end to end on small traces written here, and on the shared traces when present."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from prewarm import cli
from prewarm.replay import evaluator, traces

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
ALIBABA_HEADER = (
    "gmt_create,predict_type,predict_status,exec_time_seconds,groupId,prompt_length,negative_prompt_length,"
    "num_images_per_prompt,num_inference_steps,checkpoint_model_version_id,num_lora"
)
SUMMARY_KEYS = {
    "policy",
    "requests",
    "cold_starts",
    "cold_start_fraction",
    "wait_p50_s",
    "wait_p99_s",
    "warm_replica_hours_per_day",
    "idle_replica_hours_per_day",
    "synthetic_intent",
    "ttft",
}
TTFT_KEYS = {
    "priority",
    "requests",
    "cold_starts",
    "hit_rate",
    *(f"{kind}_p{q}_s" for kind in ("warm", "cold", "blended") for q in (50, 95, 99)),
    "warm_replica_hours_per_day",
    "gpu_busy_over_warm",
}


def write_alibaba(path: Path, seed: int = 4, days: int = 3) -> list[datetime]:
    """Three models over `days` days: a busy daytime one, a periodic one and a rare one."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 11, 15, tzinfo=UTC)
    rows: list[tuple[datetime, str, str, float]] = []
    for day in range(days):
        base = start + timedelta(days=day)
        for _ in range(60):
            at = base + timedelta(hours=9, seconds=float(rng.uniform(0, 8 * 3600)))
            rows.append((at, f"G{rng.integers(0, 6):04d}", "M0000", float(rng.uniform(5, 40))))
        for hour in range(0, 24, 2):
            rows.append((base + timedelta(hours=hour, minutes=5), "G0100", "M0001", 12.0))
        if day % 2 == 0:
            rows.append((base + timedelta(hours=15, minutes=33), "G0200", "M0002", 30.0))
    rows.sort()
    lines = [ALIBABA_HEADER]
    for at, group, model, run in rows:
        lines.append(f"{at:%Y-%m-%d %H:%M:%S},TXT_2_IMG,SUCCEED,{run:.1f},{group},10.0,,1.0,30.0,{model},0")
    lines.append("2024-11-17 23:00:00,TXT_2_IMG,PENDING,0.0,G0300,,,,,,0")  # no model: left out
    path.write_text("\n".join(lines) + "\n")
    return [r[0] for r in rows]


def write_cold_starts(path: Path) -> None:
    path.write_text("timestamp_anon,value,container_ip\n" + "".join(f"1.0,{ms},x\n" for ms in (9000, 23000, 41000)))


def replay_args(trace: Path, out: Path, *extra: str) -> list[str]:
    return ["replay", "--trace", str(trace), "--format", "alibaba-genai", "--out", str(out), "--refit", "12h", *extra]


def test_replay_writes_summary_report_and_frontier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "requests.csv"
    arrivals = write_alibaba(trace)
    dist = tmp_path / "load.csv"
    write_cold_starts(dist)
    out = tmp_path / "out"
    code = cli.main(
        replay_args(
            trace,
            out,
            "--cold-start-dist",
            str(dist),
            "--score-from",
            "2024-11-16 00:00:00",
            "--intent-lead",
            "lognormal:15,1",
            "--seed",
            "3",
        )
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    names = [row["policy"] for row in summary]
    assert names == ["knative-default", "keepalive:600", "hybrid-histogram", "prewarm", "prewarm +intent", "oracle"]
    assert all(set(row) == SUMMARY_KEYS for row in summary)
    scored = sum(a >= datetime(2024, 11, 16, tzinfo=UTC) for a in arrivals)
    assert {row["requests"] for row in summary} == {scored}
    for row in summary:  # a recorded trace: every request interactive
        assert [c["priority"] for c in row["ttft"]] == ["all", "interactive", "batch"]
        assert all(set(c) == TTFT_KEYS for c in row["ttft"])
        every, interactive, batch = row["ttft"]
        assert every["requests"] == interactive["requests"] == scored and batch["requests"] == 0
        assert every["cold_starts"] == row["cold_starts"]
        assert batch["hit_rate"] is None and batch["blended_p95_s"] is None
    by_name = {row["policy"]: row for row in summary}
    assert by_name["oracle"]["cold_starts"] == 0
    assert by_name["knative-default"]["cold_starts"] > by_name["keepalive:600"]["cold_starts"] > 0
    assert by_name["prewarm +intent"]["synthetic_intent"] is True
    frontier = json.loads((out / "frontier.json").read_text())
    assert [r["policy"] for r in frontier["keepalive"]] == [f"keepalive:{s:g}" for s in evaluator.KEEPALIVE_SWEEP]
    assert len(frontier["prewarm"]) == len(frontier["prewarm_intent"]) == len(evaluator.QUANTILE_SWEEP)
    report = (out / "report.md").read_text()
    assert "**synthetic intent** (lognormal:15,1)" in report and "1 rows without a target left out" in report
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "ttft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Time to first token (TTFT)" in report and "derived from published figures, not measured" in report
    captured = capsys.readouterr()
    assert "| oracle |" in captured.out and "/" in captured.err  # the table, and the progress bar


def test_same_seed_same_summary_and_score_from_excludes_earlier_requests(tmp_path: Path) -> None:
    trace = tmp_path / "requests.csv"
    arrivals = write_alibaba(trace)
    dist = tmp_path / "load.csv"
    write_cold_starts(dist)
    outputs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        args = replay_args(
            trace,
            tmp_path / name,
            "--cold-start-dist",
            str(dist),
            "--seed",
            seed,
            "--no-sweep",
            "--policies",
            "knative-default,prewarm",
            "--score-from",
            "2024-11-17 00:00:00",
        )
        assert cli.main(args) == 0
        outputs.append((tmp_path / name / "summary.json").read_text())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]  # other cold-start draws
    rows = json.loads(outputs[0])
    assert rows[0]["requests"] == sum(a >= datetime(2024, 11, 17, tzinfo=UTC) for a in arrivals)
    assert not (tmp_path / "a" / "frontier.json").read_text().count('keepalive:60"')


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda text: text.replace("gmt_create,", "created,", 1), "line 1: missing column 'gmt_create'"),
        (
            lambda text: text.replace("2024-11-15 ", "2024/11/15 ", 1),
            "line 2, column 'gmt_create': bad timestamp '2024/11/15",
        ),
        (
            lambda text: text.replace(",12.0,G0100", ",-3,G0100", 1),
            "column 'exec_time_seconds': '-3' is not a duration",
        ),
    ],
    ids=["missing-column", "bad-timestamp", "negative-run-time"],
)
def test_a_malformed_trace_names_line_and_column_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mangle: object, message: str
) -> None:
    trace = tmp_path / "requests.csv"
    write_alibaba(trace)
    trace.write_text(mangle(trace.read_text()))  # type: ignore[operator]
    assert cli.main(replay_args(trace, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert message in err and str(trace) in err
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_reported_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "requests.csv"
    write_alibaba(trace)
    args = replay_args(
        trace,
        tmp_path / "out",
        "--policies",
        "knative-default,warmest,keepalive:soon",
        "--score-from",
        "yesterday",
        "--intent-lead",
        "normal:1",
        "--concurrency",
        "0",
        "--hold",
        "a while",
    )
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    for expected in (
        "'warmest' is not a policy",
        "'keepalive:soon': keepalive needs a duration",
        "--hold: 'a while' is not a duration",
        "--score-from: 'yesterday'",
        "--intent-lead: 'normal:1'",
        "--concurrency: 0 must be >= 1",
    ):
        assert expected in err


def profile_args(out: Path, *extra: str) -> list[str]:
    return [
        "replay", "--profile", "mixed-priority", "--profile-param", "length=8h", "--profile-param", "warmup=2h",
        "--seed", "2", "--no-sweep", "--refit", "12h", "--out", str(out), *extra,
    ]  # fmt: skip


def test_a_profile_replay_reports_ttft_by_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    extra = ["--intent-lead", "lognormal:15,1", "--batch-floor", "1", "--budget", "4", "--batch-budget-share", "20%"]
    assert cli.main(profile_args(out, *extra)) == 0
    summary = json.loads((out / "summary.json").read_text())
    by_name = {row["policy"]: row for row in summary}
    assert set(by_name) == {
        "knative-default", "keepalive:600", "hybrid-histogram", "prewarm", "prewarm +intent", "oracle"
    }  # fmt: skip
    for row in summary:
        every, interactive, batch = row["ttft"]
        assert every["requests"] == interactive["requests"] + batch["requests"] == row["requests"]
        assert every["cold_starts"] == interactive["cold_starts"] + batch["cold_starts"] == row["cold_starts"]
        assert batch["requests"] > 0
        assert 0 < every["gpu_busy_over_warm"] <= 1
    oracle = by_name["oracle"]["ttft"][0]
    assert (oracle["hit_rate"], oracle["cold_p50_s"]) == (1.0, None)
    report = (out / "report.md").read_text()
    assert "mixed-priority (length=28800s" in report and "(synthetic profile, seed 2)" in report
    assert "| *published, 7B tuned (reference, not measured here)* | all |" in report
    assert "| prewarm +intent | batch |" in report
    assert (out / "ttft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| oracle | interactive |" in capsys.readouterr().out


def test_the_same_seed_gives_the_same_profile_summary(tmp_path: Path) -> None:
    outputs = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        args = profile_args(tmp_path / name, "--policies", "knative-default,keepalive:600")
        args[args.index("--seed") + 1] = seed
        assert cli.main(args) == 0
        outputs.append((tmp_path / name / "summary.json").read_text())
    assert outputs[0] == outputs[1] != outputs[2]


@pytest.mark.parametrize(
    ("extra", "messages"),
    [
        (
            ["--profile-param", "batch_share=150%", "--profile-param", "jobs=3"],
            ["batch_share='150%' must be between 0% and 100%", "jobs='3': mixed-priority has no parameter 'jobs'"],
        ),
        (["--profile-param", "length=ten hours"], ["length='ten hours' is not a duration"]),
        (["--batch-budget-share", "20%"], ["--batch-budget-share: '20%' needs a --budget to share"]),
        (["--batch-floor", "-1", "--budget", "lots"], ["--batch-floor: '-1' must be >= 0", "--budget: 'lots'"]),
        (["--format", "alibaba-genai"], ["--format: 'alibaba-genai' applies to --trace only"]),
    ],
    ids=["share-and-unknown", "bad-duration", "share-without-budget", "bad-batch-flags", "format-with-profile"],
)
def test_bad_profile_parameters_exit_2_naming_parameter_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], messages: list[str]
) -> None:
    assert cli.main(profile_args(tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    for message in messages:
        assert message in err
    assert not (tmp_path / "out").exists()


def test_a_profile_check_across_parameters_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["replay", "--profile", "idle-to-burst", "--profile-param", "idle_min=20m", "--out", str(tmp_path)]
    assert cli.main(args) == 2
    assert "idle_max='900s' must be >= idle_min (1200s)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "flat"], "argument --profile: invalid choice: 'flat'"),
        ([], "one of the arguments --trace --profile is required"),
        (["--trace", "t.csv", "--profile", "sawtooth"], "argument --profile: not allowed with argument --trace"),
    ],
    ids=["unknown-profile", "no-source", "both-sources"],
)
def test_the_source_is_a_trace_or_a_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["replay", *args, "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_profile_param_without_a_profile_and_format_without_a_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "requests.csv"
    write_alibaba(trace)
    args = ["replay", "--trace", str(trace), "--profile-param", "cycles=3", "--out", str(tmp_path / "out")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--profile-param: 'cycles=3' needs --profile" in err and "--format: required with --trace" in err


def test_a_ttft_file_naming_an_unknown_target_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dist = tmp_path / "ttft.csv"
    dist.write_text("target,value\nllm-7b-0,500\nllm-7b-9,500\n")
    assert cli.main(profile_args(tmp_path / "out", "--ttft-dist", str(dist))) == 2
    assert "--ttft-dist" in (err := capsys.readouterr().err) and "targets not in the trace: llm-7b-9" in err
    dist.write_text("target,value\nllm-7b-0,500\n")
    assert cli.main(profile_args(tmp_path / "out", "--ttft-dist", str(dist), "--policies", "oracle")) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "ttft.csv (per target)" in (tmp_path / "out" / "report.md").read_text()
    assert summary[0]["ttft"][0]["hit_rate"] == 1.0


def test_a_missing_trace_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(replay_args(tmp_path / "nowhere.csv", tmp_path / "out")) == 2
    assert (
        f"cannot read {tmp_path / 'nowhere.csv'}:\n  - cannot open: No such file or directory"
        in capsys.readouterr().err
    )


def test_a_bad_cold_start_file_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "requests.csv"
    write_alibaba(trace)
    dist = tmp_path / "load.csv"
    dist.write_text("timestamp_anon,value\n1,2000\n2,fast\n")
    assert cli.main(replay_args(trace, tmp_path / "out", "--cold-start-dist", str(dist))) == 2
    assert "line 3, column 'value': 'fast' is not a duration > 0 (ms)" in capsys.readouterr().err


def test_azure_functions_minutes_are_spread_with_the_seed(tmp_path: Path) -> None:
    minutes = ",".join(f"{m}_minute" for m in range(1, 11))
    (tmp_path / "x_inv.csv").write_text(
        f"HashFunction,HashOwner,HashApp,{minutes}\nf1,o,a,1,0,0,3,0,0,0,0,0,1\nf2,o,a,0,0,0,0,0,0,0,0,0,0\n"
    )
    (tmp_path / "x_run.csv").write_text("HashOwner,HashApp,HashFunction,Average,Count\no,a,f1,1500,5\no,a,f2,10,0\n")
    first = traces.read_azure_functions(tmp_path / "x_inv.csv", seed=1)
    again = traces.read_azure_functions(tmp_path / "x_inv.csv", seed=1)
    assert [t.name for t in first.targets] == ["f1"]  # f2 never ran
    arrivals = first.targets[0].arrivals
    np.testing.assert_array_equal(arrivals, again.targets[0].arrivals)
    minute_of = ((arrivals - traces.AZURE_DAY_START.timestamp()) // 60).astype(int).tolist()
    assert minute_of == [0, 3, 3, 3, 9]
    assert first.targets[0].exec_seconds.tolist() == [1.5] * 5
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "replay",
                "--trace",
                str(tmp_path / "x_inv.csv"),
                "--format",
                "azure-functions",
                "--no-sweep",
                "--policies",
                "keepalive:60,oracle",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [r["requests"] for r in json.loads((out / "summary.json").read_text())] == [5, 5]


def test_azure_counts_must_be_counts(tmp_path: Path) -> None:
    (tmp_path / "y_inv.csv").write_text("HashFunction,HashOwner,HashApp,1_minute,2_minute\nf1,o,a,1,x\n")
    (tmp_path / "y_run.csv").write_text("HashOwner,HashApp,HashFunction,Average\no,a,f1,10\n")
    with pytest.raises(traces.TraceError, match="line 2, column '2_minute': 'x' is not a count >= 0"):
        traces.read_azure_functions(tmp_path / "y_inv.csv", seed=0)


@pytest.mark.skipif(not (SHARED / "alibaba_genai_2026").is_dir(), reason="shared traces not present")
def test_the_shared_alibaba_trace_parses() -> None:
    trace = traces.read_alibaba_genai(SHARED / "alibaba_genai_2026" / "requests_until_2024-11-27.csv")
    assert trace.requests + trace.skipped == 9930
    assert len(trace.targets) > 50
    samples = traces.read_cold_start_distribution(SHARED / "alibaba_genai_2026" / "basemodel_load_latency_ms.csv")
    assert 15.0 < float(np.median(samples)) < 30.0


def test_objectives_and_fleet_budgets_are_tuned_before_score_from_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "requests.csv"
    arrivals = write_alibaba(trace)
    out = tmp_path / "out"
    args = replay_args(
        trace,
        out,
        "--no-sweep",
        "--policies",
        "knative-default,keepalive:600",
        "--score-from",
        "2024-11-17 00:00:00",
        "--tune-days",
        "1",
        "--objective",
        "cold=10%",
        "--fleet-budget",
        "30h/day,2h/day",
    )
    assert cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["policy"] for r in summary] == [
        "knative-default",
        "keepalive:600",
        "prewarm (objective 10.0%)",
        "prewarm (fleet 2h/day)",
        "prewarm (fleet 30h/day)",
    ]
    scored = sum(a >= datetime(2024, 11, 17, tzinfo=UTC) for a in arrivals)
    objective, cheap, rich = summary[2:]
    assert objective["requested"] == {"cold_start_fraction": 0.1}
    assert cheap["requested"] == {"warm_replica_hours_per_day": 2.0}
    for row in (objective, cheap, rich):
        assert set(row) == SUMMARY_KEYS | {"requested", "over_budget", "predicted", "targets", "daily_spend"}
        assert row["requests"] == scored == sum(t["requests"] for t in row["targets"])
        assert {t["target"] for t in row["targets"]} == {"M0000", "M0001", "M0002"}
        assert [(c["priority"], c["requests"]) for c in row["ttft"]] == [("all", scored), ("interactive", scored),
                                                                         ("batch", 0)]  # fmt: skip
        assert row["ttft"][0]["cold_starts"] == row["cold_starts"]
    assert rich["cold_starts"] <= cheap["cold_starts"]
    # 2 h/day is less than the reactive autoscaler alone keeps warm: every target's forecast is off
    assert cheap["over_budget"] is True and rich["over_budget"] is False
    assert {t["setting"] for t in cheap["targets"]} == {"forecast off"}
    assert rich["predicted"]["warm_replica_hours_per_day"] <= 30.0
    assert objective["daily_spend"] == []  # an objective has no fleet budget to cap
    for row, budget in ((cheap, 2.0), (rich, 30.0)):  # the cap holds on every scored day
        assert row["daily_spend"] and all(d["pre_warm_replica_hours"] <= budget + 1e-6 for d in row["daily_spend"])
    frontier = json.loads((out / "frontier.json").read_text())
    assert [r["policy"] for r in frontier["prewarm_fleet"]] == ["prewarm (fleet 2h/day)", "prewarm (fleet 30h/day)"]
    report = (out / "report.md").read_text()
    assert "## Objectives and fleet budgets" in report
    assert "Tuned on the history from 2024-11-16 00:00 to 2024-11-17 00:00 UTC" in report
    assert "### prewarm (objective 10.0%): per target" in report
    assert "| prewarm (fleet 30h/day) | interactive |" in report  # in the TTFT table too
    assert (
        "| prewarm (fleet 2h/day) | 2 warm h/day (below what the cheapest settings need) |" in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--objective", "cold=150%"], "--objective: 'cold=150%' must be between 0% and 100%"),
        (["--objective", "warm=5%"], "--objective: 'warm=5%' is not cold=SHARE (e.g. cold=5%)"),
        (["--fleet-budget=-3h"], "--fleet-budget: '-3h' must be >= 0 replica-hours per day"),
        (["--fleet-budget", "lots"], "--fleet-budget: 'lots' is not replica-hours per day (use 400h/day)"),
        (["--fleet-budget", "100h/day", "--tune-days", "0"], "--tune-days: 0.0 must be > 0"),
    ],
    ids=["share-over-100", "unknown-objective", "negative-budget", "not-hours", "no-tune-days"],
)
def test_bad_objectives_and_budgets_exit_2_naming_the_flag_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    trace = tmp_path / "requests.csv"
    write_alibaba(trace)
    args = replay_args(trace, tmp_path / "out", "--score-from", "2024-11-17 00:00:00", *extra)
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_objectives_need_score_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "requests.csv"
    write_alibaba(trace)
    assert cli.main(replay_args(trace, tmp_path / "out", "--objective", "cold=5%")) == 2
    assert "--objective and --fleet-budget need --score-from" in capsys.readouterr().err


def test_cold_start_tiers_show_what_staged_weights_buy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "requests.csv"
    write_alibaba(trace)
    dist = tmp_path / "cold.csv"
    rows = [f"{ms},not staged," for ms in range(20_000, 30_000, 500)]
    rows += [f"{ms},staged," for ms in range(3_000, 5_000, 100)]
    rows += ["900,staged,M0001"]  # a small model staged: its own, faster, cold starts
    dist.write_text("value,tier,target\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = replay_args(
        trace, out, "--cold-start-dist", str(dist), "--no-sweep", "--policies", "knative-default,prewarm"
    )
    assert cli.main([*args, "--score-from", "2024-11-16 00:00:00"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    plain = {r["policy"]: r for r in summary if "weights_tier" not in r}
    staged = {r["policy"]: r for r in summary if r.get("weights_tier") == "staged"}
    assert set(plain) == set(staged) == {"knative-default", "prewarm"}
    for policy in plain:  # same floors and requests; only the cold starts' length changes
        assert staged[policy]["requests"] == plain[policy]["requests"]
        without = next(row for row in plain[policy]["ttft"] if row["priority"] == "all")
        with_tier = next(row for row in staged[policy]["ttft"] if row["priority"] == "all")
        assert with_tier["cold_p95_s"] < without["cold_p95_s"]
        assert with_tier["blended_p95_s"] <= without["blended_p95_s"]
    shared, own = traces.read_cold_start_tiers(dist).for_targets(traces.STAGED, ["M0000", "M0001"])
    assert (shared.min(), shared.max(), own["M0001"].tolist(), list(own)) == (3.0, 4.9, [0.9], ["M0001"])
    text = (out / "report.md").read_text()
    assert "## Weights tier: staged against not staged" in text
    assert "its `not staged` rows" in text
    printed = capsys.readouterr().out
    assert "| policy | cold starts | cold TTFT p95 s: not staged / staged |" in printed

    dist.write_text("value,tier\n20000,not staged\n3000,fast\n")
    assert cli.main(replay_args(trace, tmp_path / "bad", "--cold-start-dist", str(dist))) == 2
    err = capsys.readouterr().err
    assert "line 3, column 'tier': 'fast' is not 'staged' or 'not staged'" in err
    dist.write_text("value,tier,target\n20000,not staged,\n3000,staged,M0001\n")
    assert cli.main(replay_args(trace, tmp_path / "bad", "--cold-start-dist", str(dist))) == 2
    assert "tier 'staged' has no cold starts for M0000" in capsys.readouterr().err
