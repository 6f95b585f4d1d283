"""Benchmark and quality report for objectives and fleet budgets on the shared Alibaba GenAI trace.

Speed and memory: `prewarm tune` of every target of the shared file (the last `--tune-days` before
2024-11-23, an objective for every target and a fleet budget) as one process: wall time and peak
RSS, against a baseline measured in the same run: `prewarm replay` of `knative-default` alone
(trace parsing, process start and imports). Targets: <= 30 s and <= 1 GB.

Quality: `prewarm replay` tuned on the days before `--score-from` and scored after it, for a fleet
budget sweep (from about the reactive floor to 250 h/day) and cold-start objectives: each point
against the keep-alive frontier at the warm hours it used, and each objective's achieved share
against the one asked, beside the cheapest keep-alive reaching the same share.

    python bench/objectives.py [--out bench/out] [--tune-days 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from prewarm.replay import evaluator, report

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces" / "alibaba_genai_2026"
TRACE = TRACES / "requests_until_2024-11-27.csv"
LOADS = TRACES / "basemodel_load_latency_ms.csv"
SCORE_FROM = "2024-11-23 00:00:00"
BUDGETS = (45, 60, 80, 120, 160, 250)
OBJECTIVES = ("5%", "10%", "20%")


def timed(command: list[str]) -> dict[str, float]:
    """Run one `prewarm` process; its wall seconds and the children's peak RSS in MiB so far."""
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return {"seconds": wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--tune-days", default="4")
    args = parser.parse_args()
    if not TRACE.exists():
        raise SystemExit(f"{TRACE} is not here: this benchmark needs the shared traces")
    work = args.out / "objectives"
    work.mkdir(parents=True, exist_ok=True)
    prewarm = [sys.executable, "-m", "prewarm.cli"]
    trace = ["--trace", str(TRACE), "--format", "alibaba-genai"]

    baseline = timed(
        [*prewarm, "replay", *trace, "--policies", "knative-default", "--no-sweep", "--out", str(work / "baseline")]
    )
    tune = timed(
        [
            *prewarm, "tune", *trace, "--at", SCORE_FROM, "--tune-days", args.tune_days, "--tune-cold-start", "23s",
            "--objective", "cold=5%", "--fleet-budget", "150h/day", "--json",
        ]
    )  # fmt: skip
    replay_out = work / "replay"
    objectives = [flag for share in OBJECTIVES for flag in ("--objective", f"cold={share}")]
    budgets = ",".join(f"{b}h/day" for b in BUDGETS)
    quality_run = timed(
        [
            *prewarm, "replay", *trace, "--cold-start-dist", str(LOADS), "--score-from", SCORE_FROM, "--seed", "1",
            "--policies", "knative-default,keepalive:600,prewarm", "--tune-days", args.tune_days,
            *objectives, "--fleet-budget", budgets, "--out", str(replay_out),
        ]
    )  # fmt: skip

    summary = json.loads((replay_out / "summary.json").read_text())
    keepalive = [
        evaluator.PolicyScore(**row) for row in json.loads((replay_out / "frontier.json").read_text())["keepalive"]
    ]
    fields = {f for f in evaluator.PolicyScore.__dataclass_fields__}
    rows = []
    for row in summary:
        if "requested" not in row:
            continue
        score = evaluator.PolicyScore(**{k: v for k, v in row.items() if k in fields})
        reference = evaluator.frontier_cold_starts(keepalive, score.warm_replica_hours_per_day)
        same = report.keepalive_for_fraction(keepalive, score.cold_start_fraction)
        rows.append(
            {
                "policy": score.policy,
                "requested": row["requested"],
                "over_budget": row["over_budget"],
                "predicted": row["predicted"],
                "cold_starts": score.cold_starts,
                "cold_start_fraction": score.cold_start_fraction,
                "warm_replica_hours_per_day": score.warm_replica_hours_per_day,
                "keepalive_frontier_cold_starts": reference,
                "vs_keepalive": None if not reference else score.cold_starts / reference,
                "keepalive_for_same_share": None if same is None else same.policy,
                "keepalive_for_same_share_hours": None if same is None else same.warm_replica_hours_per_day,
                "daily_spend": row.get("daily_spend", []),
            }
        )

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpus()},
        "tune_days": float(args.tune_days),
        "speed": {
            "baseline_replay_knative_default": baseline,
            "tune_all_targets": tune,
            "ratio": tune["seconds"] / baseline["seconds"],
        },
        "quality_run_seconds": quality_run["seconds"],
        "tuned": rows,
    }
    (args.out / "objectives.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| run | seconds | peak RSS MiB |\n|---|---:|---:|")
    print(f"| baseline: replay knative-default | {baseline['seconds']:.1f} | {baseline['peak_rss_mib']:.0f} |")
    print(f"| prewarm tune, every target | {tune['seconds']:.1f} | {tune['peak_rss_mib']:.0f} |")
    print()
    print(
        "| tuned | predicted on history | achieved | warm h/day | vs keep-alive frontier | keep-alive for same share |"
    )
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        ratio = "outside" if r["vs_keepalive"] is None else f"{r['vs_keepalive']:.2f}"
        same = (
            "none up to 2 h"
            if r["keepalive_for_same_share"] is None
            else (f"{r['keepalive_for_same_share']} at {r['keepalive_for_same_share_hours']:.1f} h")
        )
        predicted = (
            f"{r['predicted']['cold_start_fraction']:.1%} at {r['predicted']['warm_replica_hours_per_day']:.1f} h"
        )
        print(
            f"| {r['policy']} | {predicted} | {r['cold_start_fraction']:.1%} | {r['warm_replica_hours_per_day']:.1f} "
            f"| {ratio} | {same} |"
        )

    print()
    print("| fleet budget | pre-warm replica-hours per scored day | most of budget |\n|---:|---|---:|")
    for r in rows:
        spend = [d["pre_warm_replica_hours"] for d in r["daily_spend"]]
        if spend:
            budget = r["requested"]["warm_replica_hours_per_day"]
            days = ", ".join(f"{h:.1f}" for h in spend)
            print(f"| {budget:g} h/day | {days} | {max(spend) / budget:.1%} |")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
