"""What the calendar features earn: time-of-day and day-of-week features against recency alone.

`prewarm replay` of the shared Alibaba GenAI file (scored from 2024-11-23, cold starts sampled from
the measured loads, seed 1), the `prewarm` quantile sweep with the forecaster's full feature set,
then with the time-of-day and day-of-week columns left out, then with those and the "same time
yesterday / last week" look-backs left out (recency alone: trailing windows, EWMA, idle time). Each
point against the keep-alive frontier of the same run at the warm hours it used.

    python bench/features.py [--out bench/out]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from prewarm.forecast import arrival_model
from prewarm.replay import evaluator, traces

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces" / "alibaba_genai_2026"
TRACE = TRACES / "requests_until_2024-11-27.csv"
LOADS = TRACES / "basemodel_load_latency_ms.csv"
SCORE_FROM = "2024-11-23 00:00:00"
SEED = 1
CALENDAR = ("time_of_day_sin", "time_of_day_cos", "day_of_week_sin", "day_of_week_cos")
LOOK_BACKS = ("same_window_yesterday", "around_this_time_yesterday", "around_this_time_last_week")
VARIANTS = {"all features": (), "no time of day / day of week": CALENDAR, "recency alone": CALENDAR + LOOK_BACKS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    if not TRACE.exists():
        raise SystemExit(f"{TRACE} is not here: this benchmark needs the shared traces")
    trace = traces.read_trace(TRACE, traces.TraceFormat.ALIBABA_GENAI, seed=SEED)
    cold_starts = traces.read_cold_start_distribution(LOADS)
    settings = evaluator.ReplaySettings(  # `prewarm replay`'s defaults otherwise
        cold_starts=cold_starts,
        seed=SEED,
        score_from=traces.parse_timestamp(SCORE_FROM),
        forecast=arrival_model.ForecastConfig(horizon=1, seed=SEED),
    )
    rows = []
    for label, dropped in VARIANTS.items():
        config = dataclasses.replace(settings.forecast, dropped_features=dropped)
        started = time.perf_counter()
        result = evaluator.run_replay(trace, dataclasses.replace(settings, forecast=config), [])
        for score in result.prewarm_frontier:
            reference = evaluator.frontier_cold_starts(result.keepalive_frontier, score.warm_replica_hours_per_day)
            rows.append(
                {
                    "features": label,
                    "policy": score.policy,
                    "cold_starts": score.cold_starts,
                    "warm_replica_hours_per_day": score.warm_replica_hours_per_day,
                    "vs_keepalive": None if not reference else score.cold_starts / reference,
                }
            )
        print(f"{label}: {time.perf_counter() - started:.1f} s", flush=True)
    result_json = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "features.json").write_text(json.dumps(result_json, indent=2) + "\n")
    print("| features | policy | cold starts | warm h/day | vs keep-alive frontier |\n|---|---|---:|---:|---:|")
    for r in rows:
        ratio = "beyond" if r["vs_keepalive"] is None else f"{r['vs_keepalive']:.2f}"
        print(
            f"| {r['features']} | {r['policy']} | {r['cold_starts']} | {r['warm_replica_hours_per_day']:.1f} "
            f"| {ratio} |"
        )


if __name__ == "__main__":
    main()
