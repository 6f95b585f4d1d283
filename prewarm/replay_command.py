"""`prewarm replay`: read a trace, replay the policies, write summary.json, report.md and frontier.png."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TextIO

import numpy as np

from prewarm import config_file, forecast, replay, targets, traces

DEFAULT_POLICIES = "knative-default,keepalive:600,hybrid-histogram,prewarm,oracle"
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prewarm replay",
        description="Score pre-warming policies on a request trace: cold starts against warm replica-hours.",
    )
    parser.add_argument("--trace", type=Path, required=True, help="trace file")
    parser.add_argument("--format", choices=[f.value for f in traces.TraceFormat], required=True)
    parser.add_argument("--policies", default=DEFAULT_POLICIES, help=f"comma-separated (default {DEFAULT_POLICIES})")
    cold = parser.add_mutually_exclusive_group()
    cold.add_argument("--cold-start", default="23s", help="fixed cold-start duration (default 23s)")
    cold.add_argument("--cold-start-dist", type=Path, help="CSV with a `value` column (ms) to sample cold starts from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=1, help="requests one replica serves at once")
    parser.add_argument("--score-from", help='"YYYY-MM-DD HH:MM:SS" (UTC): earlier requests train and warm up only')
    parser.add_argument("--intent-lead", help="synthetic intent, lognormal:MEDIAN_S,SIGMA")
    parser.add_argument(
        "--cron-config", type=Path, help="targets YAML whose cron windows the cron policy uses (name = trace target)"
    )
    parser.add_argument("--quantile", type=float, default=targets.DEFAULT_FORECAST_QUANTILE, help="prewarm's quantile")
    parser.add_argument("--forecast-model", choices=[k.value for k in forecast.ModelKind], default="boosting")
    parser.add_argument("--forecast-horizon", default="60s", help="how far ahead P(arrival) looks (default 60s)")
    parser.add_argument("--refit", default="6h", help="trace time between forecaster refits (default 6h)")
    parser.add_argument("--hold", default="120s", help="prewarm's scale-down hold (default 120s, as serve's)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the keepalive and quantile sweeps")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    return parser


def _settings(args: argparse.Namespace) -> tuple[traces.Trace, replay.ReplaySettings, tuple[replay.PolicyChoice, ...]]:
    """Parse every argument and input file; ValueError (incl. TraceError, ConfigError) on any problem."""
    problems: list[str] = []
    choices: tuple[replay.PolicyChoice, ...] = ()
    try:
        choices = replay.parse_policies(args.policies)
    except ValueError as e:
        problems.append(str(e))
    durations: dict[str, float] = {}
    for flag, text in (("--forecast-horizon", args.forecast_horizon), ("--refit", args.refit), ("--hold", args.hold)):
        try:
            durations[flag] = targets.parse_duration(text).total_seconds()
        except ValueError as e:
            problems.append(f"{flag}: {text!r} {e}")
    score_from = None
    if args.score_from is not None:
        try:
            score_from = traces.parse_timestamp(args.score_from)
        except ValueError:
            problems.append(f"--score-from: {args.score_from!r} is not YYYY-MM-DD HH:MM:SS")
    lead = None
    if args.intent_lead is not None:
        try:
            lead = replay.parse_intent_lead(args.intent_lead)
        except ValueError as e:
            problems.append(str(e))
    cold_fixed = None
    if args.cold_start_dist is None:
        try:
            cold_fixed = targets.parse_duration(args.cold_start).total_seconds()
            if cold_fixed <= 0:
                problems.append(f"--cold-start: {args.cold_start!r} must be > 0")
        except ValueError as e:
            problems.append(f"--cold-start: {args.cold_start!r} {e}")
    if args.concurrency < 1:
        problems.append(f"--concurrency: {args.concurrency} must be >= 1")
    if not 0.0 < args.quantile < 1.0:
        problems.append(f"--quantile: {args.quantile} must be in (0, 1)")
    if problems:
        raise ValueError("invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    specs: dict[str, targets.TargetSpec] = {}
    if args.cron_config is not None:
        parsed = config_file.load_config_file(args.cron_config)
        specs = {spec.ref.name: spec for spec in parsed.targets}
    trace = traces.read_trace(args.trace, traces.TraceFormat(args.format), seed=args.seed)
    if args.cold_start_dist is not None:
        cold_starts = traces.read_cold_start_distribution(args.cold_start_dist)
    else:
        cold_starts = np.asarray([cold_fixed], dtype=np.float64)
    by_trace_name = {t.name: specs[t.name.lower()] for t in trace.targets if t.name.lower() in specs}
    settings = replay.ReplaySettings(
        cold_starts=cold_starts,
        seed=args.seed,
        concurrency=args.concurrency,
        score_from=score_from,
        intent_lead=lead,
        quantile=args.quantile,
        forecast=forecast.ForecastConfig(
            horizon=forecast.horizon_minutes(durations["--forecast-horizon"]),
            model=forecast.ModelKind(args.forecast_model),
            seed=args.seed,
        ),
        refit_minutes=max(1, round(durations["--refit"] / 60)),
        hold=timedelta(seconds=durations["--hold"]),
        cron_specs=by_trace_name,
    )
    return trace, settings, choices


class ProgressBar:
    """One redrawn line on a stream: a bar, the count and what just finished."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        self._width = width
        self._started = time.monotonic()

    def __call__(self, label: str, done: int, total: int) -> None:
        filled = self._width * done // max(total, 1)
        elapsed = time.monotonic() - self._started
        bar = "#" * filled + "." * (self._width - filled)
        self._stream.write(f"\r[{bar}] {done}/{total} {elapsed:5.1f}s {label:<24}")
        if done >= total:
            self._stream.write("\n")
        self._stream.flush()


def summary_rows(scores: Sequence[replay.PolicyScore]) -> list[dict[str, object]]:
    return [dataclasses.asdict(s) for s in scores]


def _table(scores: Sequence[replay.PolicyScore]) -> list[str]:
    lines = [
        "| policy | requests | cold starts | fraction | wait p50 s | wait p99 s "
        "| warm replica-h/day | idle replica-h/day |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(
            f"| {s.policy} | {s.requests} | {s.cold_starts} | {s.cold_start_fraction:.3f} | {s.wait_p50_s:.1f} | "
            f"{s.wait_p99_s:.1f} | {s.warm_replica_hours_per_day:.2f} | {s.idle_replica_hours_per_day:.2f} |"
        )
    return lines


def _versus_keepalive(result: replay.ReplayResult, scores: Sequence[replay.PolicyScore]) -> list[str]:
    lines = []
    for s in scores:
        reference = replay.frontier_cold_starts(result.keepalive_frontier, s.warm_replica_hours_per_day)
        if reference:
            lines.append(
                f"| {s.policy} | {s.warm_replica_hours_per_day:.1f} | {s.cold_starts} | {reference:.0f} | "
                f"{s.cold_starts / reference:.2f} |"
            )
        else:
            lines.append(
                f"| {s.policy} | {s.warm_replica_hours_per_day:.1f} | {s.cold_starts} | outside the sweep | - |"
            )
    return lines


def _versus_histogram(histogram: replay.PolicyScore, result: replay.ReplayResult) -> list[str]:
    """Each prewarm sweep point that spends no more warm hours than the hybrid histogram."""
    lines = []
    for sweep in (result.prewarm_frontier, result.prewarm_intent_frontier):
        cheaper = [s for s in sweep if s.warm_replica_hours_per_day <= histogram.warm_replica_hours_per_day]
        if cheaper:
            best = min(cheaper, key=lambda s: s.cold_starts)
            lines.append(
                f"- {best.policy}: {best.cold_starts} cold starts at {best.warm_replica_hours_per_day:.1f} warm "
                f"replica-h/day; hybrid-histogram: {histogram.cold_starts} at "
                f"{histogram.warm_replica_hours_per_day:.1f} ({best.cold_starts / max(histogram.cold_starts, 1):.2f}x)"
            )
    return lines or ["- no prewarm sweep point spends as little as the hybrid histogram"]


def render_report(result: replay.ReplayResult, args: argparse.Namespace, trace: traces.Trace) -> str:
    """report.md: what was replayed, every score, and prewarm against the keep-alive frontier."""
    window = result.window
    scored_from = replay.utc_datetime(window.start)
    scored_to = replay.utc_datetime(window.end)
    if args.cold_start_dist is not None:
        cold = f"sampled from {args.cold_start_dist.name} (seed {args.seed})"
    else:
        cold = f"fixed {args.cold_start}"
    skipped = f", {trace.skipped} rows without a target left out" if trace.skipped else ""
    lines = [
        "# Replay report",
        "",
        f"- trace: `{args.trace.name}` ({args.format}), {trace.requests} requests to {result.targets} targets{skipped}",
        f"- scored from {scored_from:%Y-%m-%d %H:%M:%S} to {scored_to:%Y-%m-%d %H:%M:%S} UTC"
        f" ({(window.end - window.start) / 86400:.2f} days)",
        f"- cold start {cold}; concurrency per replica {args.concurrency}",
        f"- forecaster {args.forecast_model}, horizon {args.forecast_horizon}, refit every {args.refit} of trace time",
        "- reactive autoscaler under every policy: Knative KPA defaults (60 s stable window, 30 s scale-to-zero grace)",
        "- a cold start is a request that found no free ready replica; waits are over cold starts only",
    ]
    if args.format == traces.TraceFormat.AZURE_FUNCTIONS.value:
        lines.append("- Azure Functions counts are per minute: arrivals were spread uniformly in each minute (seeded)")
    if args.intent_lead:
        lines.append(
            f"- **synthetic intent** ({args.intent_lead}): no public trace records intent; rows marked +intent use it"
        )
    lines += ["", "## Policies", "", *_table(result.scores), ""]
    compared = [s for s in result.scores if s.policy.startswith(("prewarm", "hybrid-histogram"))]
    compared += list(result.prewarm_frontier) + list(result.prewarm_intent_frontier)
    if result.keepalive_frontier:
        lines += [
            "## Against the keep-alive frontier at equal warm hours",
            "",
            "| policy | warm replica-h/day | cold starts | keep-alive frontier there | ratio |",
            "|---|---:|---:|---:|---:|",
            *_versus_keepalive(result, compared),
            "",
            "## Keep-alive sweep",
            "",
            *_table(result.keepalive_frontier),
            "",
        ]
    histogram = next((s for s in result.scores if s.policy == "hybrid-histogram"), None)
    if histogram is not None and result.prewarm_frontier:
        lines += ["## Against the hybrid histogram", "", *_versus_histogram(histogram, result), ""]
    if result.prewarm_frontier:
        lines += ["## prewarm quantile sweep", "", *_table(result.prewarm_frontier), ""]
    if result.prewarm_intent_frontier:
        lines += ["## prewarm quantile sweep with synthetic intent", "", *_table(result.prewarm_intent_frontier), ""]
    return "\n".join(lines)


def plot_frontier(result: replay.ReplayResult, path: Path) -> None:
    """frontier.png: cold-start fraction against warm replica-hours per day."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5.5), dpi=110)
    sweeps = (
        (result.keepalive_frontier, "keep-alive 60 s .. 2 h", "o-"),
        (result.prewarm_frontier, "prewarm, quantile 0.5 .. 0.99", "s-"),
        (result.prewarm_intent_frontier, "prewarm + synthetic intent", "^--"),
    )
    for scores, label, style in sweeps:
        if scores:
            points = sorted((s.warm_replica_hours_per_day, s.cold_start_fraction) for s in scores)
            axes.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
    for s in result.scores:
        if s.policy.startswith(("knative-default", "hybrid-histogram", "oracle", "cron")):
            axes.plot(s.warm_replica_hours_per_day, s.cold_start_fraction, "x", markersize=9, label=s.policy)
    axes.set_xlabel("warm replica-hours per day")
    axes.set_ylabel("cold-start fraction")
    axes.set_title("Cold starts against warm GPU time")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        trace, settings, choices = _settings(args)
    except (ValueError, targets.ConfigError) as e:
        print(f"prewarm replay: {e}", file=sys.stderr)
        return EXIT_USAGE
    if trace.skipped:
        print(f"prewarm replay: {trace.skipped} rows name no target and were left out", file=sys.stderr)
    result = replay.run_replay(trace, settings, choices, sweep=not args.no_sweep, on_progress=ProgressBar(sys.stderr))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary_rows(result.scores), indent=2) + "\n")
    frontier = {
        "keepalive": summary_rows(result.keepalive_frontier),
        "prewarm": summary_rows(result.prewarm_frontier),
        "prewarm_intent": summary_rows(result.prewarm_intent_frontier),
    }
    (args.out / "frontier.json").write_text(json.dumps(frontier, indent=2) + "\n")
    (args.out / "report.md").write_text(render_report(result, args, trace) + "\n")
    plot_frontier(result, args.out / "frontier.png")
    for line in _table(result.scores):
        print(line)
    return 0
