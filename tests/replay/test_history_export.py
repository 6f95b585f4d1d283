"""`history export`'s OpenMetrics text: exact lines for a small trace under each preset's names."""

from __future__ import annotations

import numpy as np
import pytest

from prewarm.core import targets
from prewarm.replay import history_export, traces

T0 = 1_700_000_040  # a minute boundary


def small_trace() -> traces.Trace:
    arrivals = np.asarray([T0 + 5.0, T0 + 30.0, T0 + 65.0, T0 + 240.0])
    request = traces.TargetRequests("M01", arrivals, np.ones(4), ("g",) * 4)
    return traces.Trace((request,), float(arrivals[0]), float(arrivals[-1]))


def test_knative_export_has_samples_around_minutes_with_requests_and_a_coverage_series() -> None:
    lines = list(history_export.openmetrics_lines(small_trace(), preset=targets.HistoryPreset.KNATIVE))
    series = 'kn_serving_invocation_duration_seconds_count{k8s_namespace_name="replay",kn_service_name="m01"}'
    seconds = series.replace("_count", "_sum")
    assert lines == [
        "# TYPE kn_serving_invocation_duration_seconds_count unknown",
        "# HELP kn_serving_invocation_duration_seconds_count Requests per target exported from a trace by "
        "prewarm history export.",
        f"{series} 0 {T0}",
        f"{series} 0 {T0}.5",
        f"{series} 2 {T0 + 60}",  # two requests in the first minute
        f"{series} 2 {T0 + 60}.5",
        f"{series} 3 {T0 + 120}",  # one in the second
        f"{series} 3 {T0 + 120}.5",
        f"{series} 3 {T0 + 240}",  # none in the third and fourth: no samples there
        f"{series} 3 {T0 + 240}.5",
        f"{series} 4 {T0 + 300}",
        f"{series} 4 {T0 + 300}.5",
        "# TYPE kn_serving_invocation_duration_seconds_sum unknown",
        "# HELP kn_serving_invocation_duration_seconds_sum Request seconds (run times) per target exported from a "
        "trace by prewarm history export.",
        *(
            f"{seconds} {value} {at}"  # each request ran 1 s: the run seconds follow the counts
            for value, at in (
                ("0.0", T0),
                ("0.0", f"{T0}.5"),
                ("2.0", T0 + 60),
                ("2.0", f"{T0 + 60}.5"),
                ("3.0", T0 + 120),
                ("3.0", f"{T0 + 120}.5"),
                ("3.0", T0 + 240),
                ("3.0", f"{T0 + 240}.5"),
                ("4.0", T0 + 300),
                ("4.0", f"{T0 + 300}.5"),
            )
        ),
        "# TYPE up gauge",
        *(f'up{{job="prewarm-history-export"}} 1 {T0 + 60 * m}' for m in range(1, 6)),  # minutes 0 to 5
        "# EOF",
    ]


@pytest.mark.parametrize(
    ("preset", "type_line", "sample"),
    [
        (
            targets.HistoryPreset.KEDA_HTTP,
            "# TYPE interceptor_request_count counter",
            'interceptor_request_count_total{route_namespace="replay",route_name="m01"} 0',
        ),
        (
            targets.HistoryPreset.VLLM,
            "# TYPE vllm:request_success counter",
            'vllm:request_success_total{namespace="replay",model_name="m01",finished_reason="stop"} 0',
        ),
    ],
    ids=["keda-http", "vllm"],
)
def test_counter_presets_declare_a_counter_family(preset: targets.HistoryPreset, type_line: str, sample: str) -> None:
    lines = list(history_export.openmetrics_lines(small_trace(), preset=preset))
    assert lines[0] == type_line
    assert lines[2] == f"{sample} {T0}"


def test_promql_has_no_names_to_export_under() -> None:
    with pytest.raises(ValueError, match="promql has no metric names"):
        list(history_export.openmetrics_lines(small_trace(), preset=targets.HistoryPreset.PROMQL))


def test_a_shift_moves_every_sample_by_whole_days() -> None:
    plain = list(history_export.openmetrics_lines(small_trace(), preset=targets.HistoryPreset.KNATIVE))
    moved = list(history_export.openmetrics_lines(small_trace(), preset=targets.HistoryPreset.KNATIVE, shift_days=3))
    assert len(plain) == len(moved)
    for before, after in zip(plain, moved, strict=True):
        if before.startswith("#"):
            assert before == after
        else:
            head, _, stamp = before.rpartition(" ")
            moved_head, _, moved_stamp = after.rpartition(" ")
            assert (moved_head, float(moved_stamp)) == (head, float(stamp) + 3 * 86_400)
