"""Request history in Prometheus, without the I/O: each preset's metric and label names, the PromQL
that reads per-minute request counts for a group of targets, and the translation of a
`query_range` matrix into per-minute counts (docs/history.md).

A minute's count is `sum(increase(COUNTER[1m]))` evaluated at the minute's end, at a 60 s step.
A minute is *unknown* (NaN) when Prometheus recorded nothing at all then (no `up` sample: it was
down, or the minute is older than its data) or when the value is NaN; a target's series missing
from a minute Prometheus did record reads as no requests, since a service scaled to zero has no
pods to report. Every query carries that coverage series (by default from `up`) beside the
targets' own.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from prewarm.core import targets

STEP_SECONDS = 60
MAX_POINTS = 11_000  # Prometheus refuses a range of more than 11,000 steps per series
COVERAGE_LABEL = "prewarm_coverage"
SERIES_LABEL = "prewarm_series"  # marks the request-seconds series beside a query's counts
SECONDS_SERIES = "seconds"
DEFAULT_COVERAGE = "up"  # a series Prometheus writes whenever it scrapes


def coverage_query(selector: str = DEFAULT_COVERAGE) -> str:
    """A series present at the end of every minute in which `selector` had a sample: the minutes
    Prometheus recorded. Labelled `COVERAGE_LABEL` so that no target's series can be taken for it."""
    return f'label_replace(count(count_over_time({selector}[1m])), "{COVERAGE_LABEL}", "up", "{COVERAGE_LABEL}", ".*")'


@dataclasses.dataclass(frozen=True, slots=True)
class MetricVariant:
    """One exporter version's request counter and the labels that name a target's namespace and name."""

    metric: str
    namespace_label: str | None  # None: the metric has no namespace label (matched by name only)
    name_label: str
    versions: str
    seconds_metric: str | None = None  # the request-duration histogram's `_sum` (seconds), if it has one


@dataclasses.dataclass(frozen=True, slots=True)
class Preset:
    """A preset's counters, newest first: an older one is read for a minute only where no newer one has it.

    Results are labelled with the newest variant's labels.
    """

    variants: tuple[MetricVariant, ...]
    counts: str  # what one count is

    @property
    def namespace_label(self) -> str:
        label = self.variants[0].namespace_label
        assert label is not None
        return label

    @property
    def name_label(self) -> str:
        return self.variants[0].name_label


PRESETS: Mapping[targets.HistoryPreset, Preset] = {
    targets.HistoryPreset.KNATIVE: Preset(
        (
            MetricVariant(
                "kn_serving_invocation_duration_seconds_count",
                "k8s_namespace_name",
                "kn_service_name",
                "Knative >= 1.19.8 / 1.20.1",
                "kn_serving_invocation_duration_seconds_sum",
            ),
            MetricVariant(
                "kn_queueproxy_app_duration_seconds_count",
                "k8s_namespace_name",
                "kn_service_name",
                "Knative 1.19.0-1.19.7, 1.20.0",
                "kn_queueproxy_app_duration_seconds_sum",
            ),
            MetricVariant("revision_app_request_count", "namespace_name", "service_name", "Knative <= 1.18"),
        ),
        counts="requests the queue-proxy passed to the user container, counted as they finish",
    ),
    targets.HistoryPreset.KEDA_HTTP: Preset(
        (
            MetricVariant(
                "interceptor_request_count_total", "route_namespace", "route_name", "KEDA HTTP add-on >= 0.14"
            ),
            MetricVariant("interceptor_request_count_total", None, "host", "KEDA HTTP add-on 0.8-0.13"),
        ),
        counts="requests the interceptor forwarded",
    ),
    targets.HistoryPreset.VLLM: Preset(
        (
            MetricVariant(
                "vllm:request_success_total",
                "namespace",
                "model_name",
                "vLLM (V0 and V1 engines)",
                "vllm:e2e_request_latency_seconds_sum",
            ),
        ),
        counts="finished requests (completions, not arrivals: a request is counted when it ends)",
    ),
}


def promql_string(value: str) -> str:
    """`value` as a PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_REGEX_SPECIAL = re.compile(r"([.+*?()|\[\]{}^$\\])")


def regex_literal(value: str) -> str:
    """`value` as an RE2 pattern matching exactly it (escapes only what RE2 treats as special)."""
    return _REGEX_SPECIAL.sub(r"\\\1", value)


_PLACEHOLDER = re.compile(r"\$(?:\{(namespace|name)\}|(namespace|name)(?![A-Za-z0-9_]))")


def render_template(template: str, ref: targets.TargetRef) -> str:
    """A PromQL template with `$namespace`/`${namespace}` and `$name`/`${name}` filled in for `ref`."""
    values = {"namespace": ref.namespace, "name": ref.name}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1) or m.group(2)], template)


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryQuery:
    """One `query_range` expression and how its result series map to targets.

    With `label` set, each result series names its target by that label's value (several targets
    may share a value); without it, the expression reads one target and must return one series.
    The coverage series carries `COVERAGE_LABEL`.
    """

    expression: str
    label: str | None
    members: Mapping[str, tuple[str, ...]]  # label value -> targets ("" for a one-series query)
    preset: targets.HistoryPreset


def preset_name(spec: targets.TargetSpec) -> str:
    """The value the preset's name label holds for `spec`: `historyName`, or the target's own name."""
    history = spec.forecast.history
    return history.name if history is not None and history.name is not None else spec.ref.name


def _matcher(label: str, values: Sequence[str]) -> str:
    if len(values) == 1:
        return f"{label}={promql_string(values[0])}"
    return f"{label}=~{promql_string('|'.join(regex_literal(v) for v in values))}"


def _variant_branch(table: Preset, variant: MetricVariant, metric: str, namespace: str, names: Sequence[str]) -> str:
    """`sum by` the preset's newest labels of `metric`'s per-minute increase for `names` in `namespace`."""
    by = f"sum by ({table.namespace_label}, {table.name_label})"
    matchers = [_matcher(variant.name_label, names)]
    if variant.namespace_label is not None:
        matchers.insert(0, f"{variant.namespace_label}={promql_string(namespace)}")
    inner = f"increase({metric}{{{', '.join(matchers)}}}[1m])"
    if variant.namespace_label != table.namespace_label:
        source = variant.namespace_label
        if source is None:  # no namespace label: the group's namespace is written in
            label = table.namespace_label
            inner = f'label_replace({inner}, "{label}", {promql_string(namespace)}, "{label}", ".*")'
        else:
            inner = f'label_replace({inner}, "{table.namespace_label}", "$1", "{source}", "(.*)")'
    if variant.name_label != table.name_label:
        inner = f'label_replace({inner}, "{table.name_label}", "$1", "{variant.name_label}", "(.*)")'
    return f"{by} ({inner})"


def preset_expression(preset: targets.HistoryPreset, namespace: str, names: Sequence[str]) -> str:
    """Per-minute counts of every name in `names` (sorted, distinct) in `namespace`, one series each,
    labelled with the preset's newest labels, newer counters first (`or`)."""
    table = PRESETS[preset]
    return " or ".join(_variant_branch(table, v, v.metric, namespace, names) for v in table.variants)


def seconds_expression(preset: targets.HistoryPreset, namespace: str, names: Sequence[str]) -> str | None:
    """Per-minute request seconds (the increase of each request-duration histogram's `_sum`) of
    `names`, one series each labelled `SERIES_LABEL="seconds"`; None when the preset has none."""
    table = PRESETS[preset]
    branches = [
        _variant_branch(table, v, v.seconds_metric, namespace, names)
        for v in table.variants
        if v.seconds_metric is not None
    ]
    if not branches:
        return None
    return f'label_replace({" or ".join(branches)}, "{SERIES_LABEL}", "{SECONDS_SERIES}", "__name__", ".*")'


def group_query(
    preset: targets.HistoryPreset,
    namespace: str,
    specs: Sequence[targets.TargetSpec],
    *,
    coverage: str = DEFAULT_COVERAGE,
) -> HistoryQuery:
    """One query for every target of `preset` in `namespace` (one series per target), with coverage."""
    members: dict[str, list[str]] = {}
    for spec in specs:
        members.setdefault(preset_name(spec), []).append(str(spec.ref))
    names = sorted(members)
    seconds = seconds_expression(preset, namespace, names)
    expression = f"({preset_expression(preset, namespace, names)})"
    if seconds is not None:
        expression += f" or {seconds}"
    expression += f" or {coverage_query(coverage)}"
    return HistoryQuery(expression, PRESETS[preset].name_label, {n: tuple(sorted(members[n])) for n in names}, preset)


def target_query(spec: targets.TargetSpec, *, coverage: str = DEFAULT_COVERAGE) -> HistoryQuery:
    """The query that reads `spec` alone: its promql template, or its preset for one name."""
    history = spec.forecast.history
    if history is None:
        raise ValueError(f"{spec.ref} has no forecast.history")
    if history.preset is targets.HistoryPreset.PROMQL:
        assert history.query is not None
        expression = f"({render_template(history.query, spec.ref)}) or {coverage_query(coverage)}"
        return HistoryQuery(expression, None, {"": (str(spec.ref),)}, history.preset)
    return group_query(history.preset, spec.ref.namespace, [spec], coverage=coverage)


def chunks(first_minute: int, end_minute: int) -> Iterator[tuple[int, int]]:
    """[first, end) in spans of at most MAX_POINTS minutes: each is one query_range call."""
    for start in range(first_minute, end_minute, MAX_POINTS):
        yield start, min(start + MAX_POINTS, end_minute)


def evaluation_range(first_minute: int, end_minute: int) -> tuple[int, int]:
    """`start` and `end` (unix seconds) of the query_range call whose points are minutes [first, end):
    the count of minute m is evaluated at the end of m."""
    return (first_minute + 1) * STEP_SECONDS, end_minute * STEP_SECONDS


class HistoryResultError(ValueError):
    """A query's result cannot be read as one target's counts; the message says why."""


def _fill(counts: np.ndarray, values: Sequence[Sequence[Any]], first_minute: int) -> np.ndarray:
    """Write [timestamp, "value"] pairs into `counts`; return a mask of the minutes written."""
    written = np.zeros(counts.size, dtype=bool)
    for stamp, text in values:
        index = round(float(stamp) / STEP_SECONDS) - 1 - first_minute
        if not 0 <= index < counts.size:
            continue
        value = float(text)  # "NaN", "+Inf" and "-Inf" parse; they are unknown, like a negative count
        counts[index] = value if math.isfinite(value) and value >= 0 else math.nan
        written[index] = True
    return written


def _describe(metric: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in sorted(metric.items())) + "}"


def minute_counts(
    query: HistoryQuery, series: Sequence[Mapping[str, Any]], *, first_minute: int, end_minute: int
) -> dict[str, np.ndarray]:
    """Per-target counts for minutes [first, end) from a `query_range` matrix (`data.result`).

    Raises HistoryResultError when a one-target query returned several series.
    """
    size = end_minute - first_minute
    covered = np.zeros(size, dtype=bool)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seen: list[Mapping[str, str]] = []
    for item in series:
        metric = item.get("metric", {})
        values = item.get("values", [])
        if COVERAGE_LABEL in metric:
            covered |= _fill(np.zeros(size), values, first_minute)
            continue
        if metric.get(SERIES_LABEL) == SECONDS_SERIES:
            continue  # `minute_seconds` reads these
        key = "" if query.label is None else metric.get(query.label)
        if key is None or key not in query.members:
            continue  # a label value no target asked for
        seen.append(metric)
        if key not in found:
            counts = np.full(size, np.nan)
            found[key] = (counts, _fill(counts, values, first_minute))
    if query.label is None and len(seen) > 1:
        shown = "; ".join(_describe(m) for m in seen)
        raise HistoryResultError(f"the query returned {len(seen)} series where one is expected: {shown}")
    result: dict[str, np.ndarray] = {}
    missing = np.where(covered, 0.0, np.nan)  # no point: no requests if Prometheus recorded the minute
    for key, names in query.members.items():
        counts, written = found.get(key, (missing, np.zeros(size, dtype=bool)))
        merged = np.where(written, counts, missing)
        for name in names:
            result[name] = merged
    return result


def minute_seconds(
    query: HistoryQuery, series: Sequence[Mapping[str, Any]], *, first_minute: int, end_minute: int
) -> dict[str, np.ndarray]:
    """Per-target request seconds for minutes [first, end) from the `SECONDS_SERIES` series of a
    `query_range` matrix: NaN where none was written (unknown: the service time is read only from
    minutes that have both), for targets whose preset has a request-duration histogram."""
    size = end_minute - first_minute
    found: dict[str, np.ndarray] = {}
    for item in series:
        metric = item.get("metric", {})
        if metric.get(SERIES_LABEL) != SECONDS_SERIES or query.label is None:
            continue
        key = metric.get(query.label)
        if key is None or key not in query.members or key in found:
            continue
        seconds = np.full(size, np.nan)
        _fill(seconds, item.get("values", []), first_minute)
        found[key] = seconds
    return {name: found.get(key, np.full(size, np.nan)) for key, names in query.members.items() for name in names}


def mean_service_seconds(counts: np.ndarray, seconds: np.ndarray) -> float | None:
    """The mean request duration over the minutes where both the count and the seconds are known
    and requests were counted; None when there are none."""
    counts, seconds = np.asarray(counts, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    known = np.isfinite(counts) & np.isfinite(seconds) & (counts > 0)
    total = float(counts[known].sum())
    return float(seconds[known].sum()) / total if total > 0 else None
