"""Benchmark and quality report for `prewarm replay` on the shared Alibaba GenAI trace.

Speed and memory: the whole shared file with all six policies, the keep-alive and quantile sweeps
and synthetic intent, as one `prewarm replay` process (wall time and peak RSS), against a
baseline measured in the same run: the same command replaying `knative-default` alone (trace
parsing, process start and imports). Targets: <= 60 s and <= 1 GB.

Quality: prewarm against the keep-alive frontier at equal warm replica-hours, for each forecaster
variant (model kind, refit interval, horizon). The cron policy gets daily windows derived from the
training days (each busy model's hours with at least one request per hour on average).

    python bench/replay.py [--out bench/out] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from prewarm.replay import evaluator

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces" / "alibaba_genai_2026"
TRACE = TRACES / "requests_until_2024-11-27.csv"
LOADS = TRACES / "basemodel_load_latency_ms.csv"
SCORE_FROM = "2024-11-23 00:00:00"
ALL_POLICIES = "knative-default,keepalive:600,cron,hybrid-histogram,prewarm,oracle"


def cron_config(path: Path) -> int:
    """Daily windows for models with >= 200 training requests: hours averaging >= 1 request."""
    per_model: dict[str, np.ndarray] = {}
    days: set[str] = set()
    with TRACE.open(newline="") as handle:
        for row in csv.DictReader(handle):
            stamp, model = row["gmt_create"], row["checkpoint_model_version_id"]
            if not model or stamp >= SCORE_FROM:
                continue
            days.add(stamp[:10])
            per_model.setdefault(model, np.zeros(24))[int(stamp[11:13])] += 1
    lines = ["targets:"]
    written = 0
    for model, hours in sorted(per_model.items()):
        if hours.sum() < 200:
            continue
        busy = hours / max(len(days), 1) >= 1.0
        runs: list[tuple[int, int]] = []
        for hour in range(24):
            if busy[hour] and (not runs or runs[-1][1] != hour):
                runs.append((hour, hour + 1))
            elif busy[hour]:
                runs[-1] = (runs[-1][0], hour + 1)
        if not runs:
            continue
        lines += [f"  - name: replay/{model.lower()}", "    kind: keda", "    max: 1000", "    cron:"]
        for start, end in runs:
            lines += [f'      - schedule: "0 {start} * * *"', f"        duration: {end - start}h", "        floor: 1"]
        written += 1
    path.write_text("\n".join(lines) + "\n")
    return written


def run_replay(out: Path, *extra: str) -> dict[str, float]:
    """One `prewarm replay` process; wall seconds and its peak RSS in MiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    command = [
        sys.executable, "-m", "prewarm.cli", "replay", "--trace", str(TRACE), "--format", "alibaba-genai",
        "--cold-start-dist", str(LOADS), "--score-from", SCORE_FROM, "--seed", "1", "--out", str(out), *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": wall, "peak_rss_mib": max(peak, before) / 1024}


def frontier_ratio(frontier: list[dict[str, float]], point: dict[str, float]) -> float | None:
    """Cold starts of `point` against the keep-alive frontier's at its warm hours (None outside it)."""
    scores = [evaluator.PolicyScore(**row) for row in frontier]
    reference = evaluator.frontier_cold_starts(scores, point["warm_replica_hours_per_day"])
    return None if not reference else point["cold_starts"] / reference


def quality(out: Path) -> dict[str, object]:
    summary = {r["policy"]: r for r in json.loads((out / "summary.json").read_text())}
    frontier = json.loads((out / "frontier.json").read_text())
    keepalive = frontier["keepalive"]
    rows = []
    for group in ("prewarm", "prewarm_intent"):
        for point in frontier[group]:
            rows.append({**point, "vs_keepalive": frontier_ratio(keepalive, point)})
    histogram = summary.get("hybrid-histogram")
    return {"summary": list(summary.values()), "keepalive": keepalive, "prewarm": rows, "hybrid_histogram": histogram}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--quick", action="store_true", help="speed and memory only")
    args = parser.parse_args()
    if not TRACE.exists():
        raise SystemExit(f"{TRACE} is not here: this benchmark needs the shared traces")
    work = args.out / "replay"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "cron.yaml"
    cron_targets = cron_config(config)

    baseline = run_replay(work / "baseline", "--policies", "knative-default", "--no-sweep")
    full = run_replay(
        work / "full", "--policies", ALL_POLICIES, "--cron-config", str(config), "--intent-lead", "lognormal:15,1"
    )
    speed = {
        "baseline_knative_default_only": baseline,
        "six_policies_sweeps_intent": full,
        "ratio_full_to_baseline": full["seconds"] / baseline["seconds"],
        "cron_targets": cron_targets,
    }
    print("| run | seconds | peak RSS MiB |\n|---|---:|---:|")
    print(f"| baseline: knative-default only | {baseline['seconds']:.1f} | {baseline['peak_rss_mib']:.0f} |")
    print(f"| six policies + sweeps + intent | {full['seconds']:.1f} | {full['peak_rss_mib']:.0f} |")
    print(f"ratio full/baseline: {speed['ratio_full_to_baseline']:.1f}")

    variants: dict[str, dict[str, object]] = {"boosting, refit 6h, horizon 60s": quality(work / "full")}
    if not args.quick:
        for name, extra in (
            ("logistic, refit 6h, horizon 60s", ["--forecast-model", "logistic"]),
            ("boosting, refit 1h, horizon 60s", ["--refit", "1h"]),
            ("boosting, refit 6h, horizon 120s", ["--forecast-horizon", "120s"]),
        ):
            folder = work / name.replace(", ", "_").replace(" ", "-")
            run_replay(folder, "--policies", "prewarm", "--intent-lead", "lognormal:15,1", *extra)
            variants[name] = quality(folder)
    print("\n| forecaster | quantile | intent | warm h/day | cold starts | vs keep-alive frontier |")
    print("|---|---:|---|---:|---:|---:|")
    for name, result in variants.items():
        for row in result["prewarm"]:  # type: ignore[index]
            ratio = f"{row['vs_keepalive']:.2f}" if row["vs_keepalive"] is not None else "outside"
            intent = "synthetic" if row["synthetic_intent"] else "no"
            print(
                f"| {name} | {row['policy'].split(':')[1].split()[0]} | {intent} | "
                f"{row['warm_replica_hours_per_day']:.1f} | {row['cold_starts']} | {ratio} |"
            )
    record = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''} Python {platform.python_version()}".strip(),
        "speed": speed,
        "variants": variants,
    }
    (args.out / "replay.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
