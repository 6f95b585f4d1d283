"""Time to first token (TTFT) in replay: what a user feels, warm and cold apart, then blended.

A request's TTFT is its wait for a replica (0 when it found a free ready one: a warm-pool hit; the
cold start or queue it met otherwise) plus the model's own time to first token, drawn from a
per-target distribution. Each policy is scored per class (interactive, batch, all): hit rate, TTFT
p50/p95/p99 over warm requests, cold ones and all of them, warm replica-hours per day and a GPU
utilisation proxy (busy replica-time over warm replica-time). Pure but for reading the CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from prewarm.replay import simulation, traces

# Published figures for a typical 7B deployment (serverless GPU inference benchmarks), shown as a
# reference row in every report. They are not measurements of ours.
PUBLISHED_COLD_P50_S = 4.8  # fully cold path
PUBLISHED_COLD_P95_S = 8.9
PUBLISHED_WARM_P50_S = (0.65, 0.9)  # tuned: warm path p50
PUBLISHED_BLENDED_P95_S = (1.6, 2.4)  # tuned: blended p95
PUBLISHED_COLD_PATH_P95_S = (3.1, 4.0)  # tuned: cold path p95
PUBLISHED_HIT_RATE = (0.70, 0.90)  # tuned, on predictable traffic

# The default model TTFT, derived from those figures: a lognormal whose median is the middle of the
# published warm-path p50 range, with the published fully cold path's spread (p95/p50 = 8.9/4.8).
DEFAULT_MEDIAN_S = sum(PUBLISHED_WARM_P50_S) / 2.0
DEFAULT_SIGMA = math.log(PUBLISHED_COLD_P95_S / PUBLISHED_COLD_P50_S) / statistics.NormalDist().inv_cdf(0.95)
DEFAULT_POINTS = 1000
DEFAULT_LABEL = (
    f"the default: lognormal, median {DEFAULT_MEDIAN_S:.3f} s (middle of the published warm-path p50 "
    f"{PUBLISHED_WARM_P50_S[0]}-{PUBLISHED_WARM_P50_S[1]} s), sigma {DEFAULT_SIGMA:.3f} (the published fully cold "
    f"path's p95/p50 = {PUBLISHED_COLD_P95_S}/{PUBLISHED_COLD_P50_S}); derived from published figures, not measured"
)
CLASSES = ("all", "interactive", "batch")
_TTFT_STREAM = 3  # keeps the model-TTFT draws apart from the other seeded streams


@dataclasses.dataclass(frozen=True, slots=True)
class TtftDistribution:
    """The model's own time to first token, in seconds: samples drawn with replacement, per target
    where the file names it, otherwise the default samples."""

    label: str
    default: np.ndarray
    per_target: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def samples_for(self, target: str) -> np.ndarray:
        return self.per_target.get(target, self.default)


def default_distribution() -> TtftDistribution:
    """The default, derived from published warm-path figures (see DEFAULT_LABEL): evenly spaced quantiles."""
    normal = statistics.NormalDist()
    z = np.asarray([normal.inv_cdf((i + 0.5) / DEFAULT_POINTS) for i in range(DEFAULT_POINTS)])
    return TtftDistribution(DEFAULT_LABEL, DEFAULT_MEDIAN_S * np.exp(DEFAULT_SIGMA * z))


def read_distribution(path: Path) -> TtftDistribution:
    """`value` (ms) per row; an optional `target` column gives a target its own rows (empty: the default).

    Raises TraceError naming every bad line and column.
    """
    default: list[float] = []
    per_target: dict[str, list[float]] = {}
    problems: list[str] = []
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise traces.TraceError(path, [f"cannot open: {e.strerror}"]) from e
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if "value" not in header:
            found = ", ".join(header) if header else "no header"
            raise traces.TraceError(path, [f"line 1: missing column 'value' (found: {found})"])
        for row in reader:
            text = row["value"] or ""
            seconds = traces.seconds_from_ms(text)
            if seconds is None:
                problems.append(f"line {reader.line_num}, column 'value': {text!r} is not a duration > 0 (ms)")
                continue
            target = (row.get("target") or "").strip()
            (per_target.setdefault(target, []) if target else default).append(seconds)
    if problems:
        raise traces.TraceError(path, problems)
    if not default and not per_target:
        raise traces.TraceError(path, ["no values"])
    label = f"{path.name} ({'per target' if per_target else 'one distribution'})"
    fallback = np.asarray(default) if default else default_distribution().default
    if per_target and not default:
        label += "; targets it does not name use the default derived from published figures"
    return TtftDistribution(label, fallback, {t: np.asarray(v) for t, v in per_target.items()})


def unknown_targets(distribution: TtftDistribution, trace: traces.Trace) -> list[str]:
    """Targets the distribution names that the trace does not have (usually typos)."""
    known = {t.name for t in trace.targets}
    return sorted(set(distribution.per_target) - known)


@dataclasses.dataclass(frozen=True, slots=True)
class ScoredRequests:
    """The scored requests in simulation order (target after target, by arrival): their class and
    the model's own TTFT. The same draws for every policy, and for a class's i-th request of a
    target whatever the other class does."""

    batch: np.ndarray  # bool per request
    model_ttft: np.ndarray  # seconds per request


def scored_requests(
    trace: traces.Trace, window: simulation.Window, distribution: TtftDistribution, *, seed: int
) -> ScoredRequests:
    """Classes and model-TTFT draws of the requests `simulation` scores (start <= arrival < end)."""
    batches: list[np.ndarray] = []
    draws: list[np.ndarray] = []
    for request in trace.targets:
        batch = request.batch_mask()
        samples = distribution.samples_for(request.name)
        ttft = np.empty(batch.size)
        for code, members in enumerate((~batch, batch)):
            index = np.flatnonzero(members)
            rng = np.random.default_rng([seed, zlib.crc32(request.name.encode()), code, _TTFT_STREAM])
            ttft[index] = rng.choice(samples, size=index.size)
        scored = (request.arrivals >= window.start) & (request.arrivals < window.end)
        batches.append(batch[scored])
        draws.append(ttft[scored])
    return ScoredRequests(np.concatenate(batches), np.concatenate(draws))


@dataclasses.dataclass(frozen=True, slots=True)
class ClassScore:
    """TTFT and warm-pool figures of one policy for one class (`all`, `interactive`, `batch`).

    Percentiles are None where the class has no such request; warm replica-hours and GPU busy/warm
    are the policy's, all classes together (replicas are shared).
    """

    priority: str
    requests: int
    cold_starts: int
    hit_rate: float | None
    warm_p50_s: float | None
    warm_p95_s: float | None
    warm_p99_s: float | None
    cold_p50_s: float | None
    cold_p95_s: float | None
    cold_p99_s: float | None
    blended_p50_s: float | None
    blended_p95_s: float | None
    blended_p99_s: float | None
    warm_replica_hours_per_day: float
    gpu_busy_over_warm: float | None


def _percentiles(values: np.ndarray) -> tuple[float | None, float | None, float | None]:
    if values.size == 0:
        return None, None, None
    p50, p95, p99 = np.percentile(values, (50, 95, 99)).tolist()
    return float(p50), float(p95), float(p99)


def class_scores(outcome: simulation.Outcome, scored: ScoredRequests, days: float) -> tuple[ClassScore, ...]:
    """One row per class from a policy's outcome; raises ValueError if the outcome is not of these requests."""
    waits = np.asarray(outcome.request_waits, dtype=np.float64)
    if waits.size != scored.batch.size:
        raise ValueError(f"{waits.size} simulated requests but {scored.batch.size} scored ones")
    ttft = waits + scored.model_ttft
    warm = waits == 0.0
    warm_hours = outcome.warm_seconds / 3600.0 / days
    busy = outcome.busy_seconds / outcome.warm_seconds if outcome.warm_seconds > 0 else None
    rows = []
    for priority, members in zip(CLASSES, (np.ones_like(warm), ~scored.batch, scored.batch), strict=True):
        count = int(members.sum())
        hits = int((warm & members).sum())
        rows.append(
            ClassScore(
                priority,
                count,
                count - hits,
                hits / count if count else None,
                *_percentiles(ttft[warm & members]),
                *_percentiles(ttft[~warm & members]),
                *_percentiles(ttft[members]),
                warm_hours,
                busy,
            )
        )
    return tuple(rows)


# --- report.md section and ttft.png ---


class PolicyTtft(Protocol):
    """What the report needs of a policy's score: its name and its rows by class."""

    @property
    def policy(self) -> str: ...

    @property
    def ttft(self) -> tuple[ClassScore, ...]: ...


def _seconds(values: Sequence[float | None]) -> str:
    if all(v is None for v in values):
        return "-"
    return " / ".join("-" if v is None else f"{v:.2f}" for v in values)


def _range(low: float, high: float, unit: str = "") -> str:
    return f"{low:g}-{high:g}{unit}"


def reference_rows() -> list[str]:
    """The published figures, labelled as such: not our measurements."""
    warm = _range(*PUBLISHED_WARM_P50_S)
    return [
        f"| *published, 7B tuned (reference, not measured here)* | all | - | - | "
        f"{_range(PUBLISHED_HIT_RATE[0] * 100, PUBLISHED_HIT_RATE[1] * 100, '%')} | {warm} / - / - | "
        f"- / {_range(*PUBLISHED_COLD_PATH_P95_S)} / - | - / {_range(*PUBLISHED_BLENDED_P95_S)} / - | - | - |",
        f"| *published, 7B fully cold (reference, not measured here)* | all | - | - | 0% | - | "
        f"{PUBLISHED_COLD_P50_S:g} / {PUBLISHED_COLD_P95_S:g} / - | {PUBLISHED_COLD_P50_S:g} / "
        f"{PUBLISHED_COLD_P95_S:g} / - | - | - |",
    ]


def table(scores: Sequence[PolicyTtft], *, reference: bool = True) -> list[str]:
    """The TTFT table: a row per policy and class with requests (empty classes left out)."""
    lines = [
        "| policy | class | requests | cold starts | hit rate | warm TTFT p50 / p95 / p99 s "
        "| cold TTFT p50 / p95 / p99 s | blended TTFT p50 / p95 / p99 s | warm replica-h/day | GPU busy / warm |",
        "|---|---|---:|---:|---:|---|---|---|---:|---:|",
    ]
    for score in scores:
        for row in score.ttft:
            if row.requests == 0 or (row.priority == "all" and _one_class(score.ttft)):
                continue
            hit = "-" if row.hit_rate is None else f"{row.hit_rate:.1%}"
            busy = "-" if row.gpu_busy_over_warm is None else f"{row.gpu_busy_over_warm:.1%}"
            lines.append(
                f"| {score.policy} | {row.priority} | {row.requests} | {row.cold_starts} | {hit} | "
                f"{_seconds((row.warm_p50_s, row.warm_p95_s, row.warm_p99_s))} | "
                f"{_seconds((row.cold_p50_s, row.cold_p95_s, row.cold_p99_s))} | "
                f"{_seconds((row.blended_p50_s, row.blended_p95_s, row.blended_p99_s))} | "
                f"{row.warm_replica_hours_per_day:.2f} | {busy} |"
            )
    if reference:
        lines += reference_rows()
    return lines


def _one_class(rows: Sequence[ClassScore]) -> bool:
    """True when every request is of one class, so the `all` row would repeat it."""
    return sum(1 for r in rows if r.priority != "all" and r.requests) <= 1


def report_section(scores: Sequence[PolicyTtft], label: str) -> list[str]:
    """report.md's TTFT section: how it is computed, the table, and the reference rows."""
    return [
        "## Time to first token (TTFT)",
        "",
        "TTFT = the request's wait for a replica (0 when it found a free ready one: a warm-pool hit) + the model's "
        f"own time to first token, drawn per request from {label}. Warm and cold requests are reported apart, then "
        "blended; warm replica-h/day and GPU busy / warm (busy replica-time over warm replica-time) are the "
        "policy's, all classes together. The rows in italics are published figures for a typical 7B deployment, "
        "a reference only: not measurements of ours.",
        "",
        *table(scores),
        "",
    ]


def _all_row(score: PolicyTtft) -> ClassScore | None:
    return next((row for row in score.ttft if row.priority == "all"), None)


def weights_tier_table(not_staged: Sequence[PolicyTtft], staged: Sequence[PolicyTtft]) -> list[str]:
    """Each policy's TTFT with its cold starts drawn from the `not staged` tier, then from the
    `staged` one (same requests, same floors, same draws in order): what the weights tier buys."""
    lines = [
        "| policy | cold starts | cold TTFT p95 s: not staged / staged | blended TTFT p95 s: not staged / staged "
        "| blended p95 with the tier |",
        "|---|---:|---:|---:|---:|",
    ]
    staged_by_policy = {score.policy: score for score in staged}
    for score in not_staged:
        other = staged_by_policy.get(score.policy)
        without, with_tier = _all_row(score), _all_row(other) if other is not None else None
        if without is None or with_tier is None:
            continue
        change = "-"
        if without.blended_p95_s and with_tier.blended_p95_s is not None:
            change = f"{with_tier.blended_p95_s / without.blended_p95_s:.2f}x"
        lines.append(
            f"| {score.policy} | {without.cold_starts} | {_seconds((without.cold_p95_s, with_tier.cold_p95_s))} | "
            f"{_seconds((without.blended_p95_s, with_tier.blended_p95_s))} | {change} |"
        )
    return lines


def weights_tier_section(not_staged: Sequence[PolicyTtft], staged: Sequence[PolicyTtft]) -> list[str]:
    """report.md's section on the weights tier."""
    return [
        "## Weights tier: staged against not staged",
        "",
        "Every policy replayed twice on the same requests and floors: cold starts drawn from the `not staged` "
        "rows of the cold-start distribution (weights read from the model store or hub), then from the `staged` "
        "rows (weights already on the node's volume, staged when the floor left zero). The ratio is the blended "
        "TTFT p95 with the tier over without it.",
        "",
        *weights_tier_table(not_staged, staged),
        "",
    ]


def plot(scores: Sequence[PolicyTtft], path: Path) -> None:
    """ttft.png: blended TTFT p95 and warm-pool hit rate against warm replica-hours per day."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(13, 5), dpi=110)
    band = left.axhspan(*PUBLISHED_BLENDED_P95_S, color="0.85", label="published 7B tuned blended p95 (reference)")
    right.axhspan(*PUBLISHED_HIT_RATE, color="0.85", label="published 7B tuned hit rate (reference)")
    markers = {"interactive": "o", "batch": "s", "all": "D"}
    for index, score in enumerate(scores):
        color = f"C{index % 10}"
        for row in score.ttft:
            if row.requests == 0 or (row.priority == "all" and _one_class(score.ttft)):
                continue
            label = f"{score.policy} ({row.priority})"
            style = {"marker": markers[row.priority], "color": color, "linestyle": "none", "markersize": 8}
            if row.blended_p95_s is not None:
                left.plot(row.warm_replica_hours_per_day, row.blended_p95_s, label=label, **style)
            if row.hit_rate is not None:
                right.plot(row.warm_replica_hours_per_day, row.hit_rate, label=label, **style)
    left.set_yscale("log")
    left.set_ylabel("blended TTFT p95 (s, log)")
    right.set_ylabel("warm-pool hit rate")
    right.set_ylim(0, 1.02)
    for axes in (left, right):
        axes.set_xlabel("warm replica-hours per day")
        axes.grid(alpha=0.3)
    left.set_title("TTFT users feel against warm GPU time")
    right.set_title("Warm-pool hits against warm GPU time")
    handles, labels = right.get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=7, loc="center right")
    left.legend(handles=[band], fontsize=7, loc="upper right")
    figure.tight_layout(rect=(0.0, 0.0, 0.8, 1.0))
    figure.savefig(path)
    pyplot.close(figure)
