"""A trace's per-target request counts as OpenMetrics, under a history preset's metric and label
names, for `promtool tsdb create-blocks-from openmetrics`: load a trace into Prometheus and watch
`prewarm serve` forecast it (docs/history.md).

Each target's counter gets samples only around the minutes with requests: at the start of such a
minute (the count before it), half a second later (the same count), and at its end (the count
after it), again half a second later. `increase(...[1m])` at a minute's end then reads exactly the
minute's requests on Prometheus 2 (range windows include their start), and within about 1% on
Prometheus 3 (left-open windows see the half-second sample). An `up` series with a sample every
minute of the trace marks the minutes Prometheus "recorded", so the minutes between requests read
as zero, not unknown; the minutes before and well after the trace stay unknown. Timestamps are
whole or half seconds, exact as floats.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from prewarm.core import targets
from prewarm.forecast import request_history
from prewarm.replay import traces

COVERAGE_JOB = "prewarm-history-export"
_HALF_SECOND = 0.5


def export_name(trace_name: str) -> str:
    """The name a trace target is exported under: lowercased, as `replay` matches config names."""
    return trace_name.lower()


def _stamp(seconds: float) -> str:
    return f"{seconds:.1f}".removesuffix(".0")


def _labels(preset: targets.HistoryPreset, namespace: str, name: str) -> str:
    variant = request_history.PRESETS[preset].variants[0]
    pairs = [(variant.name_label, name)]
    if variant.namespace_label is not None:
        pairs.insert(0, (variant.namespace_label, namespace))
    if preset is targets.HistoryPreset.VLLM:
        pairs.append(("finished_reason", "stop"))
    return "{" + ",".join(f"{k}={request_history.promql_string(v)}" for k, v in pairs) + "}"


def _family(metric: str) -> tuple[str, str]:
    """The OpenMetrics family (TYPE line) of a preset's sample name."""
    if metric.endswith("_total"):
        return metric.removesuffix("_total"), "counter"
    return metric, "unknown"  # a histogram's `_count` or `_sum` alone: no buckets to declare a histogram with


def _counter_lines(
    metric: str, labels: str, target: traces.TargetRequests, shift: float, seconds: bool
) -> Iterator[str]:
    """One counter's samples: requests (or their run seconds) added in each minute they arrived in."""
    minute_of = ((target.arrivals + shift) // 60).astype(np.int64)
    minutes, where = np.unique(minute_of, return_inverse=True)
    weights = target.exec_seconds if seconds else np.ones(target.arrivals.size)
    added = np.bincount(where, weights=weights, minlength=minutes.size)
    total = 0.0
    last = -1.0
    for minute, count in zip(minutes.tolist(), added.tolist(), strict=True):
        start = minute * 60.0
        for at, value in (
            (start, total),
            (start + _HALF_SECOND, total),
            (start + 60.0, total + count),
            (start + 60.0 + _HALF_SECOND, total + count),
        ):
            if at > last:  # the next minute's start is this one's end
                shown = repr(value) if seconds else str(int(value))
                yield f"{metric}{labels} {shown} {_stamp(at)}"
                last = at
        total += count


def openmetrics_lines(
    trace: traces.Trace, *, preset: targets.HistoryPreset, namespace: str = "replay", shift_days: int = 0
) -> Iterator[str]:
    """The trace as OpenMetrics text lines (without newlines), ending with `# EOF`; every time moved
    by `shift_days` whole days (time of day kept), to place "now" inside an old trace."""
    if preset is targets.HistoryPreset.PROMQL:
        raise ValueError("promql has no metric names of its own: export under knative, keda-http or vllm")
    variant = request_history.PRESETS[preset].variants[0]
    shift = shift_days * 86_400
    columns = [(variant.metric, False)]
    if variant.seconds_metric is not None:
        columns.append((variant.seconds_metric, True))
    for metric, seconds in columns:
        family, kind = _family(metric)
        yield f"# TYPE {family} {kind}"
        what = "Request seconds (run times)" if seconds else "Requests"
        yield f"# HELP {family} {what} per target exported from a trace by prewarm history export."
        for target in trace.targets:
            yield from _counter_lines(
                metric, _labels(preset, namespace, export_name(target.name)), target, shift, seconds
            )
    # minute m counts as recorded when an `up` sample lies in [m's start, m's end] (Prometheus 2):
    # from the trace's first minute to the one after its last, the minutes `prewarm replay` sees
    first = int((trace.start + shift) // 60)
    last = int((trace.end + shift) // 60) + 1
    yield "# TYPE up gauge"
    for boundary in range(first + 1, last + 1):
        yield f'up{{job="{COVERAGE_JOB}"}} 1 {boundary * 60}'
    yield "# EOF"
