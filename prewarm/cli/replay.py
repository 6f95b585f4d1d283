"""`prewarm replay`: read a trace or generate a profile, replay the policies, write summary.json,
report.md, frontier.png and ttft.png."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import typing
from datetime import timedelta
from pathlib import Path
from typing import TextIO

import numpy as np

from prewarm.cli import arguments
from prewarm.core import targets
from prewarm.forecast import arrival_model, minute_features
from prewarm.replay import evaluator, profiles, report, traces, ttft, tuned_runs
from prewarm.service import config_file

DEFAULT_POLICIES = "knative-default,keepalive:600,hybrid-histogram,prewarm,oracle"
EXIT_USAGE = 2


HELP = "score pre-warming policies on a request trace or a synthetic load profile"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm replay`'s flags."""
    parser.description = (
        "Score pre-warming policies on a request trace or a synthetic load profile: cold starts and time to "
        "first token against warm replica-hours."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", type=Path, help="trace file (with --format)")
    source.add_argument("--profile", choices=profiles.profile_names(), help="generate a seeded load profile instead")
    parser.add_argument("--format", choices=[f.value for f in traces.TraceFormat], help="the trace's format")
    parser.add_argument(
        "--profile-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a profile parameter (repeatable; see docs/replay.md)",
    )
    parser.add_argument("--ttft-dist", type=Path, help="CSV of the model's own TTFT: `value` (ms), optional `target`")
    parser.add_argument("--policies", default=DEFAULT_POLICIES, help=f"comma-separated (default {DEFAULT_POLICIES})")
    cold = parser.add_mutually_exclusive_group()
    cold.add_argument("--cold-start", default="23s", help="fixed cold-start duration (default 23s)")
    cold.add_argument(
        "--cold-start-dist",
        type=Path,
        help="CSV with a `value` column (ms) to sample cold starts from; optional `target`, and `tier` "
        "(staged / not staged) to score the weights tier (docs/semi-warm.md)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=1, help="requests one replica serves at once")
    parser.add_argument("--score-from", help='"YYYY-MM-DD HH:MM:SS" (UTC): earlier requests train and warm up only')
    parser.add_argument("--intent-lead", help="synthetic intent, lognormal:MEDIAN_S,SIGMA")
    parser.add_argument(
        "--cron-config", type=Path, help="targets YAML whose cron windows the cron policy uses (name = trace target)"
    )
    parser.add_argument("--quantile", type=float, default=targets.DEFAULT_FORECAST_QUANTILE, help="prewarm's quantile")
    parser.add_argument("--forecast-model", choices=[k.value for k in arrival_model.ModelKind], default="boosting")
    parser.add_argument("--forecast-horizon", default="60s", help="how far ahead P(arrival) looks (default 60s)")
    parser.add_argument("--refit", default="6h", help="trace time between forecaster refits (default 6h)")
    parser.add_argument("--hold", default="120s", help="prewarm's scale-down hold (default 120s, as serve's)")
    parser.add_argument("--batch-floor", default="0", help="prewarm's batch allowance: replicas batch may keep warm")
    parser.add_argument("--batch-budget-share", help="prewarm's batch share of --budget, e.g. 20%% (needs --budget)")
    parser.add_argument("--budget", help="prewarm's daily pre-warm budget per target, replica-hours")
    parser.add_argument("--no-sweep", action="store_true", help="skip the keepalive and quantile sweeps")
    parser.add_argument(
        "--objective",
        action="append",
        default=[],
        help="tune every target for at most this share of cold starts, e.g. cold=5%% (repeat for several)",
    )
    parser.add_argument(
        "--fleet-budget",
        help="tune the fleet for this many warm replica-hours per day, e.g. 150h/day; a comma list sweeps",
    )
    parser.add_argument(
        "--tune-days",
        type=float,
        default=tuned_runs.DEFAULT_TUNE_DAYS,
        help="days of history before --score-from that objectives and budgets are tuned on "
        f"(default {tuned_runs.DEFAULT_TUNE_DAYS:g})",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.set_defaults(run=run, generated=None)  # `generated`: the profile `_settings` made, if any


def _batch_allowance(args: argparse.Namespace, problems: list[str]) -> tuple[targets.BatchAllowance, float | None]:
    """--batch-floor, --batch-budget-share and --budget, each problem named by its flag."""
    floor, share, budget = 0, None, None
    checks: list[tuple[str, str | None, typing.Callable[[object], typing.Any]]] = [
        ("--batch-floor", args.batch_floor, targets.parse_int),
        ("--batch-budget-share", args.batch_budget_share, targets.parse_share),
        ("--budget", args.budget, targets.parse_float),
    ]
    values: dict[str, typing.Any] = {}
    for flag, text, parse in checks:
        if text is None:
            continue
        try:
            values[flag] = parse(text)
        except ValueError as e:
            problems.append(f"{flag}: {text!r} {e}")
    floor = values.get("--batch-floor", floor)
    share = values.get("--batch-budget-share", share)
    budget = values.get("--budget", budget)
    if args.batch_budget_share is not None and args.budget is None:
        problems.append(f"--batch-budget-share: {args.batch_budget_share!r} needs a --budget to share")
    return targets.BatchAllowance(floor=floor, budget_share=share), budget


def _settings(
    args: argparse.Namespace,
) -> tuple[traces.Trace, evaluator.ReplaySettings, tuple[evaluator.PolicyChoice, ...]]:
    """Parse every argument and input file; ValueError (incl. TraceError, ConfigError) on any problem.

    With --profile, the generated profile is left in `args.generated` for the report.
    """
    problems: list[str] = []
    if args.trace is not None and args.format is None:
        problems.append("--format: required with --trace")
    if args.profile is not None and args.format is not None:
        problems.append(f"--format: {args.format!r} applies to --trace only")
    if args.profile is None and args.profile_param:
        problems.append(f"--profile-param: {args.profile_param[0]!r} needs --profile")
    if args.profile is not None:
        try:
            profiles.parse_parameters(args.profile, args.profile_param)
        except profiles.ProfileError as e:
            problems.append(str(e))
    batch, budget = _batch_allowance(args, problems)
    choices: tuple[evaluator.PolicyChoice, ...] = ()
    try:
        choices = evaluator.parse_policies(args.policies)
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
            lead = evaluator.parse_intent_lead(args.intent_lead)
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
    objectives, budgets = _tuning_requests(args, problems)
    if (objectives or budgets) and score_from is None and args.profile is None:  # a profile's `warmup` sets it
        problems.append("--objective and --fleet-budget need --score-from: they are tuned on the history before it")
    if not (args.tune_days > 0 and math.isfinite(args.tune_days)):
        problems.append(f"--tune-days: {args.tune_days} must be > 0")
    if problems:
        raise ValueError("invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    specs: dict[str, targets.TargetSpec] = {}
    if args.cron_config is not None:
        parsed = config_file.load_config_file(args.cron_config)
        specs = {spec.ref.name: spec for spec in parsed.targets}
    if args.profile is not None:
        args.generated = profiles.generate(args.profile, args.profile_param, seed=args.seed)
        trace = args.generated.trace
        if score_from is None:
            score_from = args.generated.score_from
    else:
        trace = traces.read_trace(args.trace, traces.TraceFormat(args.format), seed=args.seed)
    by_target: dict[str, np.ndarray] = {}
    args.cold_tiers = None
    if args.cold_start_dist is not None:
        tiers = traces.read_cold_start_tiers(args.cold_start_dist)
        args.cold_tiers = tiers if tiers.tiered else None
        try:
            names = [t.name for t in trace.targets]
            cold_starts, by_target = tiers.for_targets(traces.NOT_STAGED if tiers.tiered else "", names)
            if tiers.tiered:
                tiers.for_targets(traces.STAGED, names)
        except KeyError as e:
            raise ValueError(f"--cold-start-dist: {args.cold_start_dist}: {e.args[0]}") from None
    else:
        cold_starts = np.asarray([cold_fixed], dtype=np.float64)
    model_ttft = ttft.default_distribution() if args.ttft_dist is None else ttft.read_distribution(args.ttft_dist)
    unknown = ttft.unknown_targets(model_ttft, trace)
    if unknown:
        raise ValueError(f"--ttft-dist: {args.ttft_dist}: targets not in the trace: {', '.join(unknown)}")
    by_trace_name = {t.name: specs[t.name.lower()] for t in trace.targets if t.name.lower() in specs}
    settings = evaluator.ReplaySettings(
        cold_starts=cold_starts,
        cold_starts_by_target=by_target,
        seed=args.seed,
        concurrency=args.concurrency,
        score_from=score_from,
        intent_lead=lead,
        quantile=args.quantile,
        forecast=arrival_model.ForecastConfig(
            # a replica must be started a cold start ahead: the horizon covers the median one
            horizon=minute_features.horizon_minutes(
                max(durations["--forecast-horizon"], float(np.median(cold_starts)))
            ),
            model=arrival_model.ModelKind(args.forecast_model),
            seed=args.seed,
        ),
        refit_minutes=max(1, round(durations["--refit"] / 60)),
        hold=timedelta(seconds=durations["--hold"]),
        cron_specs=by_trace_name,
        tune_days=args.tune_days if objectives or budgets else 0.0,
        model_ttft=model_ttft,
        batch=batch,
        budget=budget,
    )
    return trace, settings, choices


def _tuning_requests(args: argparse.Namespace, problems: list[str]) -> tuple[list[float], list[float]]:
    """`--objective cold=5%` (repeatable) and `--fleet-budget 150h/day[,250h/day...]`."""
    objectives: list[float] = []
    for text in args.objective:
        try:
            objectives.append(arguments.parse_objective(text))
        except ValueError as e:
            problems.append(f"--objective: {text!r} {e}")
    budgets: list[float] = []
    for text in (args.fleet_budget or "").split(","):
        if not text.strip():
            continue
        try:
            budgets.append(targets.parse_daily_hours(text))
        except ValueError as e:
            problems.append(f"--fleet-budget: {text.strip()!r} {e}")
    if args.fleet_budget is not None and not budgets and not any("--fleet-budget" in p for p in problems):
        problems.append(f"--fleet-budget: {args.fleet_budget!r} names no budget (e.g. 150h/day)")
    return objectives, budgets


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


def describe_inputs(args: argparse.Namespace, settings: evaluator.ReplaySettings) -> report.ReplayInputs:
    """What the report says was replayed."""
    if args.cold_start_dist is not None:
        cold = f"sampled from {args.cold_start_dist.name} (seed {args.seed})"
        if args.cold_tiers is not None:
            cold += ", its `not staged` rows (the `staged` ones in the weights tier section)"
    else:
        cold = f"fixed {args.cold_start}"
    generated: profiles.GeneratedProfile | None = args.generated
    return report.ReplayInputs(
        trace_name=args.trace.name if generated is None else generated.describe(),
        trace_format=args.format if generated is None else f"synthetic profile, seed {args.seed}",
        cold_start=cold,
        concurrency=args.concurrency,
        forecast_model=args.forecast_model,
        forecast_horizon=args.forecast_horizon,
        refit=args.refit,
        intent_lead=args.intent_lead,
        model_ttft=settings.model_ttft.label,
    )


def run(args: argparse.Namespace) -> int:
    """Replay, write the outputs and print the policy table; 2 when an argument or input is bad."""
    try:
        trace, settings, choices = _settings(args)
    except (ValueError, targets.ConfigError) as e:
        print(f"prewarm replay: {e}", file=sys.stderr)
        return EXIT_USAGE
    if trace.skipped:
        print(f"prewarm replay: {trace.skipped} rows name no target and were left out", file=sys.stderr)
    objectives, budgets = _tuning_requests(args, [])
    replay = evaluator.Replay(trace, settings)
    result = evaluator.run_replay(
        trace, settings, choices, sweep=not args.no_sweep, on_progress=ProgressBar(sys.stderr), replay=replay
    )
    tuned = None
    if objectives or budgets:
        tuned = tuned_runs.run_tuning(
            replay,
            objectives=objectives,
            fleet_budgets=budgets,
            tune_days=settings.tune_days,
            on_progress=ProgressBar(sys.stderr),
        )
    staged: list[evaluator.PolicyScore] = []
    if args.cold_tiers is not None:  # the same policies, cold starts from the weights tier's staged rows
        tier = replay.with_cold_starts(*args.cold_tiers.for_targets(traces.STAGED, [t.name for t in trace.targets]))
        staged = [tier.score(choice) for choice in choices]
    args.out.mkdir(parents=True, exist_ok=True)
    summary = report.summary_rows(result.scores) + ([] if tuned is None else report.tuned_rows(tuned))
    summary += [{**row, "weights_tier": traces.STAGED} for row in report.summary_rows(staged)]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    frontier = {
        "keepalive": report.summary_rows(result.keepalive_frontier),
        "prewarm": report.summary_rows(result.prewarm_frontier),
        "prewarm_intent": report.summary_rows(result.prewarm_intent_frontier),
    }
    if tuned is not None and tuned.fleet:
        frontier["prewarm_fleet"] = report.summary_rows([run.score for run in tuned.fleet])
    (args.out / "frontier.json").write_text(json.dumps(frontier, indent=2) + "\n")
    (args.out / "report.md").write_text(
        report.render_report(result, describe_inputs(args, settings), trace, tuned, staged) + "\n"
    )
    report.plot_frontier(result, args.out / "frontier.png", tuned)
    ttft.plot(result.scores, args.out / "ttft.png")
    for line in [*report.policy_table(result.scores), "", *ttft.table(result.scores)]:
        print(line)
    if staged:
        for line in ["", *ttft.weights_tier_table(result.scores, staged)]:
            print(line)
    if tuned is not None:
        for line in report.achieved_table(tuned, result):
            print(line)
    return 0
