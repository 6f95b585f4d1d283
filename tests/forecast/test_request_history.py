"""Request history without the I/O: preset PromQL, templates, ranges, and matrix -> per-minute counts."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from prewarm.core import targets
from prewarm.forecast import request_history

NAN = math.nan
COVERAGE = {"metric": {request_history.COVERAGE_LABEL: "up"}}


def spec(
    name: str, preset: targets.HistoryPreset, *, label: str | None = None, query: str | None = None
) -> targets.TargetSpec:
    history = targets.HistorySettings(preset=preset, query=query, name=label)
    return targets.TargetSpec(
        ref=targets.TargetRef("ml", name),
        kind=targets.TargetKind.KEDA,
        max=3,
        forecast=targets.ForecastSettings(True, 0.9, timedelta(seconds=60), history),
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('sum(increase(x{ns="$namespace", app="$name"}[1m]))', 'sum(increase(x{ns="ml", app="chat"}[1m]))'),
        ('x{a="${namespace}-${name}"}', 'x{a="ml-chat"}'),
        (
            'label_replace(x{job="$name"}, "b", "$1", "c", "(.*)")',
            'label_replace(x{job="chat"}, "b", "$1", "c", "(.*)")',
        ),
        ('x{a="$names"}', 'x{a="$names"}'),  # not a placeholder: the parser rejects it before this
    ],
    ids=["plain", "braced", "dollar-digit-is-promql", "longer-identifier"],
)
def test_render_template(template: str, expected: str) -> None:
    assert request_history.render_template(template, targets.TargetRef("ml", "chat")) == expected


def test_label_values_are_escaped_for_regex_and_string_literals() -> None:
    assert request_history.regex_literal("a.b+c") == r"a\.b\+c"
    assert request_history.promql_string('say "hi" \\') == '"say \\"hi\\" \\\\"'


KNATIVE_TWO = (
    "sum by (k8s_namespace_name, kn_service_name) (increase(kn_serving_invocation_duration_seconds_count"
    '{k8s_namespace_name="ml", kn_service_name=~"chat|embed"}[1m]))'
    " or sum by (k8s_namespace_name, kn_service_name) (increase(kn_queueproxy_app_duration_seconds_count"
    '{k8s_namespace_name="ml", kn_service_name=~"chat|embed"}[1m]))'
    " or sum by (k8s_namespace_name, kn_service_name) (label_replace(label_replace(increase(revision_app_request_count"
    '{namespace_name="ml", service_name=~"chat|embed"}[1m]), "k8s_namespace_name", "$1", "namespace_name", "(.*)"),'
    ' "kn_service_name", "$1", "service_name", "(.*)"))'
)
KEDA_ONE = (
    "sum by (route_namespace, route_name) (increase(interceptor_request_count_total"
    '{route_namespace="ml", route_name="chat.example.com"}[1m]))'
    " or sum by (route_namespace, route_name) (label_replace(label_replace(increase(interceptor_request_count_total"
    '{host="chat.example.com"}[1m]), "route_namespace", "ml", "route_namespace", ".*"),'
    ' "route_name", "$1", "host", "(.*)"))'
)
VLLM_ONE = (
    'sum by (namespace, model_name) (increase(vllm:request_success_total{namespace="ml", model_name="chat"}[1m]))'
)
KNATIVE_TWO_SECONDS = (
    "label_replace(sum by (k8s_namespace_name, kn_service_name) (increase(kn_serving_invocation_duration_seconds_sum"
    '{k8s_namespace_name="ml", kn_service_name=~"chat|embed"}[1m]))'
    " or sum by (k8s_namespace_name, kn_service_name) (increase(kn_queueproxy_app_duration_seconds_sum"
    '{k8s_namespace_name="ml", kn_service_name=~"chat|embed"}[1m])), "prewarm_series", "seconds", "__name__", ".*")'
)
VLLM_ONE_SECONDS = (
    "label_replace(sum by (namespace, model_name) (increase(vllm:e2e_request_latency_seconds_sum"
    '{namespace="ml", model_name="chat"}[1m])), "prewarm_series", "seconds", "__name__", ".*")'
)


@pytest.mark.parametrize(
    ("specs", "expression", "label", "members"),
    [
        (
            [spec("embed", targets.HistoryPreset.KNATIVE), spec("chat", targets.HistoryPreset.KNATIVE)],
            f"({KNATIVE_TWO}) or {KNATIVE_TWO_SECONDS}",
            "kn_service_name",
            {"chat": ("ml/chat",), "embed": ("ml/embed",)},
        ),
        (
            [spec("chat", targets.HistoryPreset.KEDA_HTTP, label="chat.example.com")],
            f"({KEDA_ONE})",  # the interceptor has no request-duration histogram
            "route_name",
            {"chat.example.com": ("ml/chat",)},
        ),
        (
            [spec("chat", targets.HistoryPreset.VLLM)],
            f"({VLLM_ONE}) or {VLLM_ONE_SECONDS}",
            "model_name",
            {"chat": ("ml/chat",)},
        ),
    ],
    ids=["knative-group-of-two", "keda-http-with-host-for-old-add-ons", "vllm"],
)
def test_one_query_per_preset_and_namespace(
    specs: list[targets.TargetSpec], expression: str, label: str, members: dict[str, tuple[str, ...]]
) -> None:
    preset = specs[0].forecast.history.preset  # type: ignore[union-attr]
    query = request_history.group_query(preset, "ml", specs)
    assert query.expression == f"{expression} or {request_history.coverage_query()}"
    assert (query.label, dict(query.members)) == (label, members)


def test_a_promql_target_reads_its_own_template() -> None:
    query = request_history.target_query(
        spec("chat", targets.HistoryPreset.PROMQL, query='sum(increase(http_requests_total{app="$name"}[1m]))')
    )
    assert query.expression == (
        f'(sum(increase(http_requests_total{{app="chat"}}[1m]))) or {request_history.coverage_query()}'
    )
    assert (query.label, dict(query.members)) == (None, {"": ("ml/chat",)})


@pytest.mark.parametrize(
    ("first", "end", "expected"),
    [
        (0, 10, [(0, 10)]),
        (0, 11_000, [(0, 11_000)]),
        (0, 11_001, [(0, 11_000), (11_000, 11_001)]),
        (100, 20_260, [(100, 11_100), (11_100, 20_260)]),  # 14 days at one minute
    ],
    ids=["short", "exactly-the-limit", "one-over", "fourteen-days"],
)
def test_ranges_split_at_11000_points(first: int, end: int, expected: list[tuple[int, int]]) -> None:
    spans = list(request_history.chunks(first, end))
    assert spans == expected
    for a, b in spans:
        start, stop = request_history.evaluation_range(a, b)
        assert (stop - start) / request_history.STEP_SECONDS + 1 == b - a <= request_history.MAX_POINTS


def matrix_points(first_minute: int, values: dict[int, str]) -> list[list[object]]:
    """[timestamp, "value"] pairs at the end of minute first + i."""
    return [[(first_minute + i + 1) * 60, v] for i, v in sorted(values.items())]


@pytest.mark.parametrize(
    ("own", "covered", "expected"),
    [
        ({0: "2", 1: "0", 2: "1.5", 3: "4"}, [0, 1, 2, 3], [2.0, 0.0, 1.5, 4.0]),
        ({0: "2", 3: "1"}, [0, 1, 2, 3], [2.0, 0.0, 0.0, 1.0]),  # no series while recorded: scaled to zero
        ({0: "2", 3: "1"}, [0, 3], [2.0, NAN, NAN, 1.0]),  # Prometheus recorded nothing: unknown
        ({0: "NaN", 1: "+Inf", 2: "-1", 3: "3"}, [0, 1, 2, 3], [NAN, NAN, NAN, 3.0]),  # not a count: unknown
        ({}, [], [NAN, NAN, NAN, NAN]),
    ],
    ids=["all-present", "absent-but-covered", "absent-and-uncovered", "nan-inf-negative", "nothing"],
)
def test_minute_counts_tell_unknown_from_zero(own: dict[int, str], covered: list[int], expected: list[float]) -> None:
    first = 29_000_000
    query = request_history.group_query(
        targets.HistoryPreset.KNATIVE, "ml", [spec("chat", targets.HistoryPreset.KNATIVE)]
    )
    series = [
        {"metric": {"k8s_namespace_name": "ml", "kn_service_name": "chat"}, "values": matrix_points(first, own)},
        {"metric": {"k8s_namespace_name": "ml", "kn_service_name": "other"}, "values": matrix_points(first, {0: "9"})},
        {**COVERAGE, "values": matrix_points(first, dict.fromkeys(covered, "1"))},
    ]
    counts = request_history.minute_counts(query, series, first_minute=first, end_minute=first + 4)
    assert set(counts) == {"ml/chat"}
    np.testing.assert_array_equal(counts["ml/chat"], np.asarray(expected))


def test_targets_sharing_a_label_value_share_its_series() -> None:
    specs = [
        spec("a", targets.HistoryPreset.VLLM, label="llama"),
        spec("b", targets.HistoryPreset.VLLM, label="llama"),
    ]
    query = request_history.group_query(targets.HistoryPreset.VLLM, "ml", specs)
    series = [{"metric": {"namespace": "ml", "model_name": "llama"}, "values": matrix_points(0, {0: "1"})}]
    counts = request_history.minute_counts(query, series, first_minute=0, end_minute=1)
    assert {k: v.tolist() for k, v in counts.items()} == {"ml/a": [1.0], "ml/b": [1.0]}


def test_several_series_where_one_is_expected_is_an_error() -> None:
    query = request_history.target_query(
        spec("chat", targets.HistoryPreset.PROMQL, query='increase(http_requests_total{app="$name"}[1m])')
    )
    series = [
        {"metric": {"pod": "a"}, "values": matrix_points(0, {0: "1"})},
        {"metric": {"pod": "b"}, "values": matrix_points(0, {0: "2"})},
        {**COVERAGE, "values": matrix_points(0, {0: "1"})},
    ]
    with pytest.raises(request_history.HistoryResultError) as caught:
        request_history.minute_counts(query, series, first_minute=0, end_minute=1)
    assert str(caught.value) == ("the query returned 2 series where one is expected: {pod='a'}; {pod='b'}")


def test_request_seconds_are_read_beside_the_counts() -> None:
    query = request_history.group_query(
        targets.HistoryPreset.KNATIVE, "ml", [spec("chat", targets.HistoryPreset.KNATIVE)]
    )
    seconds = {"prewarm_series": "seconds", "kn_service_name": "chat", "k8s_namespace_name": "ml"}
    series = [
        {"metric": {"kn_service_name": "chat", "k8s_namespace_name": "ml"}, "values": [[60, "2"], [120, "4"]]},
        {"metric": seconds, "values": [[60, "9"], [180, "NaN"]]},
        {**COVERAGE, "values": [[60, "1"], [120, "1"], [180, "1"]]},
    ]
    counts = request_history.minute_counts(query, series, first_minute=0, end_minute=3)["ml/chat"]
    spent = request_history.minute_seconds(query, series, first_minute=0, end_minute=3)["ml/chat"]
    assert counts.tolist() == [2.0, 4.0, 0.0]  # the seconds series is not a count
    assert spent[0] == 9.0 and np.isnan(spent[1:]).all()
    assert request_history.mean_service_seconds(counts, spent) == 4.5  # minute 1's requests have no seconds
    assert request_history.mean_service_seconds(counts, np.full(3, NAN)) is None
