"""`prewarm tune`: what the tuner would choose for each target, from a trace or from the store's history.

Prints, per target: its objective and fleet, the chosen setting, the predicted cold-start share and
warm hours per day on the history, and the keep-alive that would reach the same share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from prewarm.cli import arguments, history_source
from prewarm.core import targets
from prewarm.replay import evaluator, traces, tuned_runs, tuning
from prewarm.service import clock, config_file, forecast_loop, history, tuner
from prewarm.service.store import StateUnavailable, build_store

EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm tune`'s flags."""
    parser.description = "Show the forecast settings the tuner chooses for each target's objective or fleet budget."
    parser.add_argument("--config", type=Path, help="targets YAML (objectives, fleet groups and budgets)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", type=Path, help="a request trace to tune on (with --format)")
    source.add_argument("--store", help="redis://host:port/db: tune on the arrival history prewarm serve stored")
    parser.add_argument("--format", choices=[f.value for f in traces.TraceFormat], help="the trace's format")
    parser.add_argument("--at", help='"YYYY-MM-DD HH:MM:SS" (UTC): tune on the history before it (default: its end)')
    parser.add_argument("--objective", help="cold=SHARE for targets without their own, e.g. cold=5%%")
    parser.add_argument("--fleet-budget", help="warm replica-hours per day for the default fleet, e.g. 150h/day")
    arguments.add_tuning_arguments(parser)
    history_source.add_prometheus_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Tune and print; 2 with every problem named when an argument or input is bad."""
    try:
        options = arguments.history_options(args)
        specs, fleets, trace, counts, now = _inputs(args)
    except (ValueError, targets.ConfigError) as e:
        print(f"prewarm tune: {e}", file=sys.stderr)
        return EXIT_USAGE
    if trace is not None:
        result, curves = tuned_runs.tune_trace(trace, specs, fleets, now=now, options=options)
    else:
        result, curves = tuned_runs.tune_history(counts, specs, fleets, now=now, options=options)
    if args.json:
        print(json.dumps(_as_json(result, curves), indent=2))
    else:
        for line in render_table(result, curves):
            print(line)
    return 0


def _inputs(
    args: argparse.Namespace,
) -> tuple[dict[str, targets.TargetSpec], dict[str, float], traces.Trace | None, dict[str, dict[int, int]], float]:
    """Specs by history name, fleet budgets, and the history (a trace, or per-minute counts) with `now`."""
    problems: list[str] = []
    objective = fleet_budget = None
    if args.objective is not None:
        try:
            objective = arguments.parse_objective(args.objective)
        except ValueError as e:
            problems.append(f"--objective: {args.objective!r} {e}")
    if args.fleet_budget is not None:
        try:
            fleet_budget = targets.parse_daily_hours(args.fleet_budget)
        except ValueError as e:
            problems.append(f"--fleet-budget: {args.fleet_budget!r} {e}")
    at = None
    if args.at is not None:
        try:
            at = traces.parse_timestamp(args.at)
        except ValueError:
            problems.append(f"--at: {args.at!r} is not YYYY-MM-DD HH:MM:SS")
    if args.trace is not None and args.format is None:
        problems.append("--trace needs --format")
    if args.store is not None and args.config is None:
        problems.append("--store needs --config: the targets to tune")
    if problems:
        raise ValueError("invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    parsed = config_file.load_config_file(args.config) if args.config is not None else targets.ParsedTargets(())
    fleets = {fleet.name: fleet.hours_per_day for fleet in parsed.fleets}
    if fleet_budget is not None:
        fleets.setdefault(targets.DEFAULT_FLEET, fleet_budget)
    configured = {str(spec.ref): spec for spec in parsed.targets if spec.forecast.enabled}
    if args.trace is not None:
        trace = traces.read_trace(args.trace, traces.TraceFormat(args.format), seed=0)
        by_name = {spec.ref.name.lower(): spec for spec in configured.values()}
        specs = {}
        for request in trace.targets:
            # as `prewarm replay --objective` tunes a trace target without a configured spec
            spec = by_name.get(request.name.lower()) or evaluator.default_spec(
                request.name, targets.DEFAULT_FORECAST_QUANTILE, targets.DEFAULT_FORECAST_HORIZON.total_seconds(), 1
            )
            specs[request.name] = _with_objective(spec, objective)
        now = at if at is not None else trace.end + 1.0
        return specs, fleets, trace, {}, now
    specs = {name: _with_objective(spec, objective) for name, spec in configured.items()}
    now = at if at is not None else time.time()
    counts = asyncio.run(_store_counts(args, specs, now))
    return specs, fleets, None, counts, now


def _with_objective(spec: targets.TargetSpec, objective: float | None) -> targets.TargetSpec:
    if objective is None or spec.objective.cold_starts is not None:
        return spec
    return dataclasses.replace(spec, objective=targets.ObjectiveSettings(cold_starts=objective))


async def _store_counts(
    args: argparse.Namespace, specs: Mapping[str, targets.TargetSpec], now: float
) -> dict[str, dict[int, int]]:
    """Per-minute arrivals of every target as `prewarm serve` would tune on them: the requests read
    from Prometheus for a `forecast.history` target, else the store's session openings."""
    settings = history_source.prometheus_settings(args, os.environ)
    history.require_prometheus(list(specs.values()), settings, source="prewarm tune")
    store = build_store(args.store)
    at = datetime.fromtimestamp(now, UTC)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        reader = None
        if settings is not None:
            session = history.open_session(settings)
            stack.push_async_callback(session.close)
            reader = history.HistoryReader(history.PrometheusClient(session=session, settings=settings))
        forecaster = forecast_loop.ForecastLoop(
            store=store, clock=clock.ManualClock(at), specs=lambda: specs, on_change=lambda target: None,
            history_reader=reader,
        )  # fmt: skip
        try:
            await forecaster.prepare()
            return await tuner.read_history(forecaster.arrivals, specs, now=at, tune_days=args.tune_days)
        except StateUnavailable as e:
            raise ValueError(f"the history cannot be read: {e}") from e


def render_table(result: tuning.TuningResult, curves: Mapping[str, tuning.TargetCurve]) -> list[str]:
    """One row per tuned target, then one line per fleet budget."""
    lines = [
        "| target | requests | objective | fleet | setting | predicted cold | warm h/day "
        "| keep-alive for the same share |",
        "|---|---:|---:|---|---|---:|---:|---|",
    ]
    for name, choice in sorted(result.choices.items()):
        objective = (
            "-" if choice.objective is None else f"{choice.objective:.1%}" + ("" if choice.met else " (not met)")
        )
        if choice.keepalive_seconds is None:
            reference = "none up to 2 h"
        else:
            reference = f"{choice.keepalive_seconds:g} s at {choice.keepalive_hours_per_day:.1f} h/day"
        fleet = choice.fleet + (" (pooled)" if choice.pooled else "")
        lines.append(
            f"| {name} | {curves[name].requests} | {objective} | {fleet} | "
            f"{choice.setting.describe()} | {choice.predicted.cold_share:.1%} | "
            f"{choice.predicted.warm_hours_per_day:.2f} | {reference} |"
        )
    for allocation in result.fleets.values():
        verdict = "over budget" if allocation.over_budget else "within budget"
        lines.append(
            f"fleet {allocation.name}: {allocation.allocated_hours_per_day:.1f} of "
            f"{allocation.budget_hours_per_day:g} warm h/day ({allocation.objective_hours_per_day:.1f} for "
            f"objectives), {verdict}"
        )
    if not result.choices:
        lines.append("no target has an objective or a fleet budget: nothing to tune")
    return lines


def _as_json(result: tuning.TuningResult, curves: Mapping[str, tuning.TargetCurve]) -> dict[str, object]:
    return {
        "targets": [
            {
                "target": name,
                "requests": curves[name].requests,
                "objective": choice.objective,
                "met": choice.met,
                "fleet": choice.fleet,
                "pooled": choice.pooled,
                "setting": choice.setting.describe(),
                "quantile": choice.setting.quantile,
                "keep_alive_minutes": choice.setting.keep_alive_minutes,
                "keep_alive_replicas": choice.setting.keep_alive_replicas,
                "predicted_cold_start_fraction": choice.predicted.cold_share,
                "predicted_warm_replica_hours_per_day": choice.predicted.warm_hours_per_day,
                "keepalive_seconds_for_same_share": choice.keepalive_seconds,
                "keepalive_warm_replica_hours_per_day": choice.keepalive_hours_per_day,
                "reason": choice.reason,
            }
            for name, choice in sorted(result.choices.items())
        ],
        "fleets": [dataclasses.asdict(f) | {"over_budget": f.over_budget} for f in result.fleets.values()],
    }
