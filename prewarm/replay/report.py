"""What `prewarm replay` writes: summary rows, report.md and the frontier figure, from a replay's
result and a description of what was replayed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from prewarm.replay import evaluator, traces, ttft, tuned_runs


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayInputs:
    """What was replayed, as the report states it: the trace, the cold starts and the forecaster."""

    trace_name: str
    trace_format: str
    cold_start: str  # "fixed 23s" or "sampled from FILE (seed N)"
    concurrency: int
    forecast_model: str
    forecast_horizon: str
    refit: str
    intent_lead: str | None
    model_ttft: str = ttft.DEFAULT_LABEL  # where each request's model TTFT is drawn from


def summary_rows(scores: Sequence[evaluator.PolicyScore]) -> list[dict[str, object]]:
    return [dataclasses.asdict(s) for s in scores]


def tuned_rows(report: tuned_runs.TuningReport) -> list[dict[str, object]]:
    """summary.json rows of tuned runs: the score, what was requested, what the history predicted,
    and each target's setting, prediction and achievement."""
    rows = []
    for run in (*report.objectives, *report.fleet):
        requested: dict[str, float] = {}
        if run.objective is not None:
            requested["cold_start_fraction"] = run.objective
        if run.fleet_budget is not None:
            requested["warm_replica_hours_per_day"] = run.fleet_budget
        rows.append(
            {
                **dataclasses.asdict(run.score),
                "requested": requested,
                "over_budget": run.over_budget,
                "daily_spend": [
                    {"day": day, "pre_warm_replica_hours": hours, "budget": run.fleet_budget}
                    for day, hours in run.daily_spend
                ],
                "predicted": {
                    "cold_start_fraction": run.predicted.cold_share,
                    "warm_replica_hours_per_day": run.predicted.warm_hours_per_day,
                },
                "targets": [
                    {
                        "target": t.target,
                        "setting": t.setting,
                        "reason": t.reason,
                        "predicted_cold_start_fraction": t.predicted_cold_share,
                        "predicted_warm_replica_hours_per_day": t.predicted_warm_hours_per_day,
                        "requests": t.requests,
                        "cold_starts": t.cold_starts,
                        "cold_start_fraction": t.cold_share,
                        "warm_replica_hours_per_day": t.warm_hours_per_day,
                    }
                    for t in run.targets
                ],
            }
        )
    return rows


def keepalive_for_fraction(frontier: Sequence[evaluator.PolicyScore], fraction: float) -> evaluator.PolicyScore | None:
    """The cheapest keep-alive of the sweep whose cold-start fraction is at most `fraction`."""
    reaching = [s for s in frontier if s.cold_start_fraction <= fraction + 1e-12]
    return min(reaching, key=lambda s: s.warm_replica_hours_per_day) if reaching else None


def achieved_table(report: tuned_runs.TuningReport, result: evaluator.ReplayResult) -> list[str]:
    """Requested against predicted (on the tuning history) and achieved (scored window), beside the
    keep-alive frontier at the achieved hours and the keep-alive that reaches the achieved share."""
    lines = [
        "| tuned | requested | predicted on history | achieved | keep-alive frontier there | ratio "
        "| keep-alive for the same share |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for run in (*report.objectives, *report.fleet):
        s = run.score
        requested = (
            f"{run.objective:.1%} cold" if run.objective is not None else f"{run.fleet_budget or 0:g} warm h/day"
        )
        if run.over_budget:
            requested += " (below what the cheapest settings need)"
        predicted = f"{run.predicted.cold_share:.1%} at {run.predicted.warm_hours_per_day:.1f} h"
        achieved = f"{s.cold_start_fraction:.1%} ({s.cold_starts}) at {s.warm_replica_hours_per_day:.1f} h"
        reference = evaluator.frontier_cold_starts(result.keepalive_frontier, s.warm_replica_hours_per_day)
        there, ratio = (
            ("outside the sweep", "-") if not reference else (f"{reference:.0f}", f"{s.cold_starts / reference:.2f}")
        )
        same = keepalive_for_fraction(result.keepalive_frontier, s.cold_start_fraction)
        needed = "none up to 2 h" if same is None else f"{same.policy} at {same.warm_replica_hours_per_day:.1f} h"
        lines.append(f"| {s.policy} | {requested} | {predicted} | {achieved} | {there} | {ratio} | {needed} |")
    return lines


def spend_table(report: tuned_runs.TuningReport) -> list[str]:
    """Each fleet budget's pre-warm spend per scored UTC day, against the budget (the cap)."""
    runs = [run for run in report.fleet if run.daily_spend]
    if not runs:
        return []
    days = [day for day, _ in runs[0].daily_spend]
    lines = ["| fleet budget | " + " | ".join(days) + " | most of budget |", "|---:|" + "---:|" * (len(days) + 1)]
    for run in runs:
        budget = run.fleet_budget or 0.0
        spent = [hours for _, hours in run.daily_spend]
        most = max(spent) / budget if budget > 0 else 0.0
        lines.append(f"| {budget:g} h/day | " + " | ".join(f"{h:.1f}" for h in spent) + f" | {most:.1%} |")
    return lines


def _per_target_table(run: tuned_runs.TunedRun) -> list[str]:
    lines = [
        "| target | requests | setting | predicted cold | achieved cold | achieved warm h/day |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for t in sorted(run.targets, key=lambda t: (-t.requests, t.target)):
        lines.append(
            f"| {t.target} | {t.requests} | {t.setting} | {t.predicted_cold_share:.1%} | {t.cold_share:.1%} | "
            f"{t.warm_hours_per_day:.2f} |"
        )
    return lines


def policy_table(scores: Sequence[evaluator.PolicyScore]) -> list[str]:
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


def _versus_keepalive(result: evaluator.ReplayResult, scores: Sequence[evaluator.PolicyScore]) -> list[str]:
    lines = []
    for s in scores:
        reference = evaluator.frontier_cold_starts(result.keepalive_frontier, s.warm_replica_hours_per_day)
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


def _versus_histogram(histogram: evaluator.PolicyScore, result: evaluator.ReplayResult) -> list[str]:
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


def render_report(
    result: evaluator.ReplayResult,
    inputs: ReplayInputs,
    trace: traces.Trace,
    tuned: tuned_runs.TuningReport | None = None,
    staged: Sequence[evaluator.PolicyScore] = (),
) -> str:
    """report.md: what was replayed, every score, and prewarm against the keep-alive frontier
    (with `staged`, the same policies with their cold starts from the weights tier's `staged` rows)."""
    window = result.window
    scored_from = evaluator.utc_datetime(window.start)
    scored_to = evaluator.utc_datetime(window.end)
    skipped = f", {trace.skipped} rows without a target left out" if trace.skipped else ""
    lines = [
        "# Replay report",
        "",
        f"- trace: `{inputs.trace_name}` ({inputs.trace_format}), {trace.requests} requests to {result.targets} "
        f"targets{skipped}",
        f"- scored from {scored_from:%Y-%m-%d %H:%M:%S} to {scored_to:%Y-%m-%d %H:%M:%S} UTC"
        f" ({(window.end - window.start) / 86400:.2f} days)",
        f"- cold start {inputs.cold_start}; concurrency per replica {inputs.concurrency}",
        f"- forecaster {inputs.forecast_model}, horizon {inputs.forecast_horizon}, "
        f"refit every {inputs.refit} of trace time",
        "- reactive autoscaler under every policy: Knative KPA defaults (60 s stable window, 30 s scale-to-zero grace)",
        "- a cold start is a request that found no free ready replica; waits are over cold starts only",
    ]
    if inputs.trace_format == traces.TraceFormat.AZURE_FUNCTIONS.value:
        lines.append("- Azure Functions counts are per minute: arrivals were spread uniformly in each minute (seeded)")
    if inputs.intent_lead:
        lines.append(
            f"- **synthetic intent** ({inputs.intent_lead}): no public trace records intent; rows marked +intent use it"
        )
    lines += ["", "## Policies", "", *policy_table(result.scores), ""]
    runs = () if tuned is None else (*tuned.objectives, *tuned.fleet)
    lines += ttft.report_section([*result.scores, *(run.score for run in runs)], inputs.model_ttft)
    if staged:
        lines += ttft.weights_tier_section(result.scores, staged)
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
            *policy_table(result.keepalive_frontier),
            "",
        ]
    histogram = next((s for s in result.scores if s.policy == "hybrid-histogram"), None)
    if histogram is not None and result.prewarm_frontier:
        lines += ["## Against the hybrid histogram", "", *_versus_histogram(histogram, result), ""]
    if result.prewarm_frontier:
        lines += ["## prewarm quantile sweep", "", *policy_table(result.prewarm_frontier), ""]
    if result.prewarm_intent_frontier:
        lines += [
            "## prewarm quantile sweep with synthetic intent",
            "",
            *policy_table(result.prewarm_intent_frontier),
            "",
        ]
    if tuned is not None:
        lines += _tuned_sections(tuned, result)
    return "\n".join(lines)


def _tuned_sections(tuned: tuned_runs.TuningReport, result: evaluator.ReplayResult) -> list[str]:
    start = evaluator.utc_datetime(tuned.tune_window.start)
    end = evaluator.utc_datetime(tuned.tune_window.end)
    lines = [
        "## Objectives and fleet budgets",
        "",
        f"Tuned on the history from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC (before the scored "
        "window, which the tuner never sees), scored after it. Predicted: the chosen settings replayed on that "
        "history; achieved: the scored window.",
        "",
        *achieved_table(tuned, result),
        "",
    ]
    spend = spend_table(tuned)
    if spend:
        lines += [
            "Fleet budgets are caps on pre-warm replica-hours (the floors' own hours) per UTC day; each scored "
            "day's spend against its budget:",
            "",
            *spend,
            "",
        ]
    for run in tuned.objectives:
        lines += [f"### {run.score.policy}: per target", "", *_per_target_table(run), ""]
    return lines


def plot_frontier(result: evaluator.ReplayResult, path: Path, tuned: tuned_runs.TuningReport | None = None) -> None:
    """frontier.png: cold-start fraction against warm replica-hours per day."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5.5), dpi=110)
    sweeps: tuple[tuple[Sequence[evaluator.PolicyScore], str, str], ...] = (
        (result.keepalive_frontier, "keep-alive 60 s .. 2 h", "o-"),
        (result.prewarm_frontier, "prewarm, quantile 0.5 .. 0.99", "s-"),
        (result.prewarm_intent_frontier, "prewarm + synthetic intent", "^--"),
    )
    if tuned is not None and tuned.fleet:
        sweeps += (([run.score for run in tuned.fleet], "prewarm (fleet), tuned per budget", "D-"),)
    for scores, label, style in sweeps:
        if scores:
            points = sorted((s.warm_replica_hours_per_day, s.cold_start_fraction) for s in scores)
            axes.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
    for s in result.scores:
        if s.policy.startswith(("knative-default", "hybrid-histogram", "oracle", "cron")):
            axes.plot(s.warm_replica_hours_per_day, s.cold_start_fraction, "x", markersize=9, label=s.policy)
    for run in () if tuned is None else tuned.objectives:
        s = run.score
        axes.plot(s.warm_replica_hours_per_day, s.cold_start_fraction, "*", markersize=11, label=s.policy)
    axes.set_xlabel("warm replica-hours per day")
    axes.set_ylabel("cold-start fraction")
    axes.set_title("Cold starts against warm GPU time")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
