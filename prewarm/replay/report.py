"""What `prewarm replay` writes: summary rows, report.md and the frontier figure, from a replay's
result and a description of what was replayed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from prewarm.replay import evaluator, traces


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


def summary_rows(scores: Sequence[evaluator.PolicyScore]) -> list[dict[str, object]]:
    return [dataclasses.asdict(s) for s in scores]


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


def render_report(result: evaluator.ReplayResult, inputs: ReplayInputs, trace: traces.Trace) -> str:
    """report.md: what was replayed, every score, and prewarm against the keep-alive frontier."""
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
    return "\n".join(lines)


def plot_frontier(result: evaluator.ReplayResult, path: Path) -> None:
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
