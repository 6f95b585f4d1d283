"""Quality on the field's load profiles: time to first token (TTFT) and warm-pool hits at warm hours.

Each profile (idle-to-burst, sawtooth, mixed-priority; default parameters, seed 1) is replayed by
`prewarm replay --profile` with `prewarm` (quantile 0.9, and 0.5 for a point at fewer warm hours;
with and without synthetic intent, lognormal:15,1) against knative-default, keepalive:600,
hybrid-histogram and the oracle, under two cold starts:

- `7b`: a fixed 4 s, the published fully cold 7B TTFT p50 (4.8 s) less the default model TTFT
  median (0.775 s): derived from published figures, not measured;
- `alibaba`: sampled from the shared measured base-model load latencies (median about 23 s).

Mixed priority is also replayed with its batch traffic removed (batch_share=0: the same interactive
requests), first with the shipped default (batch floor 0: batch never pre-warms), then with a batch
allowance (batch floor 1, budget 48 replica-h/day per target, budgetShare 5%). Batch's floor cost
is measured from the floors themselves: the prewarm policy's floor with the batch sessions less its
floor without them, in replica-hours per target per day.

Aims (issue 18): on idle-to-burst with intent, blended p95 within 1.5x of the warm-path p95; on
mixed priority, interactive blended p95 unchanged when batch is added, and batch costing at most its
budget share.

    python bench/replay_profiles.py [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from prewarm.core import targets
from prewarm.replay import evaluator, profiles, simulation, traces

ROOT = Path(__file__).resolve().parents[1]
LOADS = ROOT.parent / "shared" / "traces" / "alibaba_genai_2026" / "basemodel_load_latency_ms.csv"
SEED = 1
LEAD = "lognormal:15,1"
POLICIES = "knative-default,keepalive:600,hybrid-histogram,prewarm,prewarm:0.5,oracle"
COLD_STARTS = {"7b": ["--cold-start", "4s"], "alibaba": ["--cold-start-dist", str(LOADS)]}
ALLOWANCE = {"batch_floor": 1, "budget": 48.0, "budget_share": 0.05}
ALLOWANCE_FLAGS = ["--batch-floor", "1", "--budget", "48", "--batch-budget-share", "5%"]


def replay(out: Path, profile: str, cold: str, *extra: str) -> tuple[list[dict[str, object]], float]:
    """One `prewarm replay --profile` process; its summary rows and wall seconds."""
    command = [
        sys.executable, "-m", "prewarm.cli", "replay", "--profile", profile, "--seed", str(SEED),
        "--intent-lead", LEAD, "--policies", POLICIES, "--no-sweep", "--out", str(out), *COLD_STARTS[cold], *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - started


def rows_of(summary: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per policy and class: blended p95, hit rate, warm-path p95, warm hours (classes with requests)."""
    rows = []
    for score in summary:
        for by_class in score["ttft"]:
            if not by_class["requests"]:
                continue
            rows.append(
                {
                    "policy": score["policy"],
                    "class": by_class["priority"],
                    "requests": by_class["requests"],
                    "hit_rate": by_class["hit_rate"],
                    "warm_p95_s": by_class["warm_p95_s"],
                    "blended_p50_s": by_class["blended_p50_s"],
                    "blended_p95_s": by_class["blended_p95_s"],
                    "blended_p99_s": by_class["blended_p99_s"],
                    "warm_replica_hours_per_day": by_class["warm_replica_hours_per_day"],
                    "gpu_busy_over_warm": by_class["gpu_busy_over_warm"],
                }
            )
    return rows


def find(rows: list[dict[str, object]], policy: str, priority: str) -> dict[str, object]:
    return next(r for r in rows if r["policy"] == policy and r["class"] == priority)


def batch_floor_hours(quantile: float, allowance: targets.BatchAllowance, budget: float) -> dict[str, float]:
    """Replica-hours per day per target that batch sessions added to prewarm +intent's floor on
    mixed-priority: its floor with them less its floor without them (floors do not depend on cold starts)."""
    made = profiles.generate("mixed-priority", [], seed=SEED)
    settings = evaluator.ReplaySettings(
        cold_starts=np.asarray([4.0]),
        seed=SEED,
        score_from=made.score_from,
        intent_lead=evaluator.parse_intent_lead(LEAD),
        batch=allowance,
        budget=budget,
    )
    interactive_only = traces.Trace(
        tuple(evaluator.requests_of(t, ~t.batch_mask()) for t in made.trace.targets),
        made.trace.start,
        made.trace.end,
    )
    choice = evaluator.PolicyChoice(evaluator.PolicyKind.PREWARM, quantile)
    with_batch, without = evaluator.Replay(made.trace, settings), evaluator.Replay(interactive_only, settings)
    window = with_batch.window
    extra: dict[str, float] = {}
    for mixed, alone in zip(made.trace.targets, interactive_only.targets, strict=True):
        hours = [
            floor_hours(replay.floor(choice, request, intent=True), window)
            for replay, request in ((with_batch, mixed), (without, alone))
        ]
        extra[mixed.name] = (hours[0] - hours[1]) / with_batch.days
    return extra


def floor_hours(floor: simulation.FloorSteps, window: simulation.Window) -> float:
    """Replica-hours a floor holds inside the scored window."""
    times = [*floor.times, window.end]
    return sum(level * window.overlap(a, b) for a, b, level in zip(times, times[1:], floor.levels, strict=False)) / 3600


def compact_tables(results: dict[str, list[dict[str, object]]]) -> list[str]:
    """Per cold start: a row per policy, a column per profile (and class): blended p95 / hit rate / warm h."""
    columns = [("idle-to-burst", "interactive"), ("sawtooth", "interactive"), ("mixed-priority", "interactive"),
               ("mixed-priority", "batch")]  # fmt: skip
    lines = []
    for cold in COLD_STARTS:
        lines += [
            f"cold start {cold}: blended TTFT p95 s / warm-pool hit rate / warm replica-h/day",
            "",
            "| policy | " + " | ".join(f"{p} ({c})" for p, c in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        policies = [r["policy"] for r in results[f"idle-to-burst {cold}"] if r["class"] == "interactive"]
        for policy in policies:
            cells = []
            for profile, priority in columns:
                row = find(results[f"{profile} {cold}"], str(policy), priority)
                cells.append(
                    f"{row['blended_p95_s']:.2f} / {row['hit_rate']:.0%} / {row['warm_replica_hours_per_day']:.0f}"
                )
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    if not LOADS.exists():
        raise SystemExit(f"{LOADS} is not here: this benchmark needs the shared traces")
    work = args.out / "replay_profiles"
    results: dict[str, list[dict[str, object]]] = {}
    seconds: dict[str, float] = {}
    runs = [(p, c, p, []) for p in ("idle-to-burst", "sawtooth", "mixed-priority") for c in COLD_STARTS]
    runs += [(f"mixed-priority batch_share=0 {c}", c, "mixed-priority", ["--profile-param", "batch_share=0"])
             for c in COLD_STARTS]  # fmt: skip
    runs += [(f"mixed-priority allowance {c}", c, "mixed-priority", ALLOWANCE_FLAGS) for c in COLD_STARTS]
    runs += [
        (f"mixed-priority allowance batch_share=0 {c}", c, "mixed-priority",
         [*ALLOWANCE_FLAGS, "--profile-param", "batch_share=0"])
        for c in COLD_STARTS
    ]  # fmt: skip
    for label, cold, profile, extra in runs:
        key = label if label != profile else f"{profile} {cold}"
        summary, wall = replay(work / key.replace(" ", "_").replace("=", "-"), profile, cold, *extra)
        results[key] = rows_of(summary)
        seconds[key] = wall

    print("| run | policy | class | blended TTFT p95 s | warm-path p95 s | hit rate | warm replica-h/day |")
    print("|---|---|---|---:|---:|---:|---:|")
    for key, rows in results.items():
        for row in rows:
            print(
                f"| {key} | {row['policy']} | {row['class']} | {row['blended_p95_s']:.2f} | "
                f"{row['warm_p95_s'] if row['warm_p95_s'] is None else format(row['warm_p95_s'], '.2f')} | "
                f"{row['hit_rate']:.1%} | {row['warm_replica_hours_per_day']:.1f} |"
            )

    aims: dict[str, object] = {}
    for cold in COLD_STARTS:
        burst = results[f"idle-to-burst {cold}"]
        for policy in ("prewarm +intent", "prewarm:0.5 +intent", "prewarm", "hybrid-histogram"):
            row = find(burst, policy, "interactive")
            ratio = row["blended_p95_s"] / row["warm_p95_s"]
            aims[f"idle-to-burst {cold}: {policy} blended p95 / warm p95"] = ratio
        for allowance in ("", " allowance"):
            mixed = results[f"mixed-priority{allowance} {cold}"]
            alone = results[f"mixed-priority{allowance} batch_share=0 {cold}"]
            for policy in ("prewarm +intent", "prewarm", "prewarm:0.5 +intent", "hybrid-histogram", "keepalive:600"):
                with_batch = find(mixed, policy, "interactive")
                without = find(alone, policy, "interactive")
                aims[f"mixed-priority{allowance} {cold}: {policy} interactive p95 with / without batch"] = (
                    with_batch["blended_p95_s"],
                    without["blended_p95_s"],
                )
                aims[f"mixed-priority{allowance} {cold}: {policy} warm h/day with / without batch"] = (
                    find(mixed, policy, "all")["warm_replica_hours_per_day"],
                    without["warm_replica_hours_per_day"],
                )
    # the floor that batch adds, against its cap (share x budget): the allowance above and a tighter one
    for floor, share in ((1, 0.05), (2, 0.005)):
        allowance = targets.BatchAllowance(floor, share)
        for quantile in (0.9, 0.5):
            extra = batch_floor_hours(quantile, allowance, ALLOWANCE["budget"])
            cap = share * ALLOWANCE["budget"]
            aims[f"batch floor {floor}, share {share:.1%} (cap {cap:g} h/day): prewarm:{quantile:g} +intent adds"] = (
                extra
            )
    print()
    for line in compact_tables(results):
        print(line)
    for name, value in aims.items():
        print(f"- {name}: {value}")
    record = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''} Python {platform.python_version()}".strip(),
        "seed": SEED,
        "intent_lead": LEAD,
        "allowance": ALLOWANCE,
        "wall_seconds": seconds,
        "results": results,
        "aims": aims,
        "profiles": {name: dict(profiles.generate(name, [], seed=SEED).values) for name in profiles.profile_names()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replay_profiles.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
