"""The target schema from its three sources: same object, same validation, one error naming every problem."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from prewarm.core import schedule, targets, weights
from prewarm.core.targets import BatchAllowance, ConfigError, ForecastSettings, TargetKind, TargetRef, TargetSpec

REPO = Path(__file__).resolve().parents[2]

FULL_YAML = """
targets:
  - name: ml/chat
    kind: knative
    min: 1
    max: 6
    sessionsPerReplica: 8
    sessionTTL: 90s
    hold: 5m
    cron:
      - schedule: "55 8 * * 1-5"
        duration: 13h
        floor: 2
        timezone: America/New_York
      - {schedule: "0 22 * * *", duration: 4h, floor: 1}
    forecast: {enabled: true, quantile: 0.95, horizon: 2m}
    budget: 12.5
    batch: {floor: 1, budgetShare: 20%}
"""
EXPECTED = TargetSpec(
    ref=TargetRef("ml", "chat"),
    kind=TargetKind.KNATIVE,
    min=1,
    max=6,
    sessions_per_replica=8,
    session_ttl=timedelta(seconds=90),
    hold=timedelta(minutes=5),
    cron=(
        schedule.CronWindow("55 8 * * 1-5", timedelta(hours=13), 2, "America/New_York"),
        schedule.CronWindow("0 22 * * *", timedelta(hours=4), 1, "UTC"),
    ),
    forecast=ForecastSettings(enabled=True, quantile=0.95, horizon=timedelta(minutes=2)),
    budget=12.5,
    batch=BatchAllowance(floor=1, budget_share=0.2),
)
COMPACT_CRON = "55 8 * * 1-5 for 13h = 2 in America/New_York; 0 22 * * * for 4h = 1"


def test_yaml_annotations_and_scaler_metadata_give_the_same_target() -> None:
    from_yaml = targets.parse_config_document(FULL_YAML, source="t.yaml").targets[0]
    from_annotations, warnings = targets.parse_annotations(
        {
            "prewarm.dev/enabled": "true",
            "prewarm.dev/min": "1",
            "prewarm.dev/sessions-per-replica": "8",
            "prewarm.dev/session-ttl": "90s",
            "prewarm.dev/hold": "5m",
            "prewarm.dev/cron": COMPACT_CRON,
            "prewarm.dev/forecast-enabled": "true",
            "prewarm.dev/forecast-quantile": "0.95",
            "prewarm.dev/forecast-horizon": "2m",
            "prewarm.dev/budget": "12.5",
            "prewarm.dev/batch-floor": "1",
            "prewarm.dev/batch-budget-share": "20%",
            "autoscaling.knative.dev/max-scale": "6",  # max taken from the platform
        },
        ref=TargetRef("ml", "chat"),
    )
    from_metadata, _ = targets.parse_scaler_metadata(
        {
            "min": "1",
            "max": "6",
            "sessionsPerReplica": "8",
            "sessionTTL": "90s",
            "hold": "5m",
            "cron": COMPACT_CRON,
            "forecastEnabled": "true",
            "forecastQuantile": "0.95",
            "forecastHorizon": "2m",
            "budget": "12.5",
            "batchFloor": "1",
            "batchBudgetShare": "0.2",
        },
        scaled_object=TargetRef("ml", "chat"),
    )
    assert from_yaml == EXPECTED
    assert from_annotations == EXPECTED
    assert from_metadata == dataclass_replace(EXPECTED, kind=TargetKind.KEDA)
    assert warnings == ()


def dataclass_replace(spec: TargetSpec, **changes: object) -> TargetSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def test_defaults() -> None:
    parsed = targets.parse_config_document("targets: [{name: a/b, kind: keda, max: 3}]", source="t.yaml")
    assert parsed.targets == (TargetSpec(ref=TargetRef("a", "b"), kind=TargetKind.KEDA, max=3),)
    spec = parsed.targets[0]
    assert (spec.min, spec.sessions_per_replica, spec.session_ttl, spec.hold, spec.budget, spec.batch) == (
        0,
        4,
        timedelta(seconds=300),
        timedelta(seconds=120),
        None,
        BatchAllowance(floor=0, budget_share=None),  # batch sessions raise no floor unless allowed
    )


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("90s", 90), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("300", 300), (45, 45), ("1.5s", 1.5), ("1d", 86400)],
    ids=["seconds", "minutes", "hours", "compound", "bare-string", "int", "fraction", "days"],
)
def test_parse_duration(raw: object, seconds: float) -> None:
    assert targets.parse_duration(raw) == timedelta(seconds=seconds)


@pytest.mark.parametrize("raw", ["5 minutes", "m5", "-5s", "", True, None, "1h 30m", 10**20, "400d", 1e300])
def test_parse_duration_rejects(raw: object) -> None:
    with pytest.raises(ValueError):
        targets.parse_duration(raw)


def test_scaler_metadata_target_defaults_to_the_scaled_object_and_inline_keys_override_a_base() -> None:
    base = targets.parse_config_document(
        "targets: [{name: ml/chat, kind: keda, max: 4, hold: 1m}]", source="t"
    ).targets[0]
    spec, _ = targets.parse_scaler_metadata(
        {"target": "ml/chat", "hold": "3m"}, scaled_object=TargetRef("ml", "so"), base=base
    )
    assert (spec.ref, spec.max, spec.hold) == (TargetRef("ml", "chat"), 4, timedelta(minutes=3))
    own, _ = targets.parse_scaler_metadata({"max": "2"}, scaled_object=TargetRef("ml", "so"))
    assert own.ref == TargetRef("ml", "so")


def test_unknown_keys_warn() -> None:
    parsed = targets.parse_config_document(
        "targets: [{name: a/b, kind: keda, max: 3, sesionTTL: 5m, forecast: {quantil: 0.5}}]\nextra: 1",
        source="t.yaml",
    )
    assert parsed.warnings == (
        "t.yaml: unknown top-level key 'extra' ignored",
        "t.yaml: unknown key targets[0].sesionTTL ignored",
        "t.yaml: unknown key targets[0].forecast.quantil ignored",
    )
    _, warnings = targets.parse_annotations(
        {"prewarm.dev/mx": "3", "prewarm.dev/max": "3", "other/key": "x"}, ref=TargetRef("a", "b")
    )
    assert warnings == ("a/b: unknown annotation prewarm.dev/mx ignored",)
    _, warnings = targets.parse_scaler_metadata({"max": "3", "sesionTTL": "1m"}, scaled_object=TargetRef("a", "b"))
    assert warnings == ("a/b: unknown scalerMetadata key 'sesionTTL' ignored",)


THREE_MISTAKES = """
targets:
  - name: ml/chat
    kind: knative
    max: ten
    sessionTTL: 5 minutes
    cron: "55 8 * * 1-5 for 13h = 2 in Mars/Olympus"
"""


def test_every_problem_in_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        targets.parse_config_document(THREE_MISTAKES, source="bad.yaml")
    assert str(caught.value) == (
        "invalid configuration in bad.yaml (3 problems):\n"
        "  - targets[0].max: 'ten' is not an integer\n"
        "  - targets[0].sessionTTL: '5 minutes' is not a duration (use 90s, 5m or 2h)\n"
        "  - targets[0].cron[0].timezone: 'Mars/Olympus' is not an IANA timezone name"
    )


@pytest.mark.parametrize(
    ("document", "problems"),
    [
        ("targets: [{kind: keda, max: 1}]", ["targets[0].name: None is required (namespace/name)"]),
        (
            "targets: [{name: a/b, kind: lambda, max: 1}]",
            ["targets[0].kind: 'lambda' is not a target kind (knative or keda)"],
        ),
        (
            "targets: [{name: A_B, kind: keda, max: 1}]",
            ["targets[0].name: 'A_B' is not namespace/name (lowercase DNS names)"],
        ),
        (
            "targets: [{name: a/b, kind: keda}]",
            ["targets[0].max: None is required (no platform max-scale to fall back on)"],
        ),
        ("targets: [{name: a/b, kind: keda, max: 2, min: 3}]", ["targets[0].min: 3 is above max (2)"]),
        (
            "targets: [{name: a/b, kind: keda, max: 2, sessionsPerReplica: 0}]",
            ["targets[0].sessionsPerReplica: 0 must be >= 1"],
        ),
        ("targets: [{name: a/b, kind: keda, max: 2, budget: -1}]", ["targets[0].budget: -1 must be >= 0"]),
        (
            "targets: [{name: a/b, kind: keda, max: 2, forecast: {quantile: 1.5}}]",
            ["targets[0].forecast.quantile: 1.5 must be between 0 and 1 (exclusive)"],
        ),
        (
            "targets: [{name: a/b, kind: keda, max: 2, budget: 4, batch: {floor: -1, budgetShare: 150%}}]",
            [
                "targets[0].batch.floor: -1 must be >= 0",
                "targets[0].batch.budgetShare: '150%' must be between 0% and 100%",
            ],
        ),
        (
            "targets: [{name: a/b, kind: keda, max: 2, batch: {floor: 3}}]",
            ["targets[0].batch.floor: 3 is above max (2)"],
        ),
        (
            "targets: [{name: a/b, kind: keda, max: 2, batch: {budgetShare: 0.2}}]",
            ["targets[0].batch.budgetShare: 0.2 needs a targets[0].budget to share"],
        ),
        (
            "targets: [{name: a/b, kind: keda, max: 2, batch: 20%}]",
            ["targets[0].batch: '20%' is not a mapping (budgetShare, floor)"],
        ),
        (
            "targets: [{name: a/b, kind: keda, max: 2, cron: 'every day = 1'}]",
            [
                "targets[0].cron[0]: 'every day = 1' is not a cron window "
                "(MIN HOUR DOM MON DOW for DURATION = FLOOR [in TIMEZONE]; ...)"
            ],
        ),
        (
            "targets: [{name: a/b, kind: keda, max: 2}, {name: a/b, kind: keda, max: 2}]",
            ["targets[1].name: 'a/b' is listed twice"],
        ),
        (
            "targets: [{name: a/b, kind: keda, max: 2, objective: {coldStarts: 150%}}]",
            ["targets[0].objective.coldStarts: '150%' must be between 0% and 100%"],
        ),
        (
            "targets: [{name: a/b, kind: keda, max: 2, objective: {coldStarts: many}}]",
            ["targets[0].objective.coldStarts: 'many' is not a share (use 5% or 0.05)"],
        ),
        (
            "{fleet: {budget: -3h}, targets: [{name: a/b, kind: keda, max: 2}]}",
            ["fleet.budget: '-3h' must be >= 0 replica-hours per day"],
        ),
        (
            "{fleets: {A100: {budget: 10h/day}, b: {hours: 3}}, targets: []}",
            [
                "fleets.A100: 'A100' is not a fleet name (a lowercase DNS label)",
                "fleets.b: {'hours': 3} is not a mapping with one key, budget (e.g. {budget: 400h/day})",
            ],
        ),
        (
            "targets: [{name: a/b, kind: keda, max: 2, fleet: GPU, forecast: {keepAlive: soon}}]",
            [
                "targets[0].forecast.keepAlive: 'soon' is not a duration (use 90s, 5m or 2h)",
                "targets[0].fleet: 'GPU' is not a fleet name (a lowercase DNS label)",
            ],
        ),
        ("targets: 3", ["targets: None is required: a list of targets"]),
        ("targets: [", None),
    ],
    ids=[
        "no-name",
        "bad-kind",
        "bad-name",
        "no-max",
        "min-above-max",
        "zero-spr",
        "negative-budget",
        "quantile-range",
        "batch-floor-and-share-range",
        "batch-floor-above-max",
        "batch-share-without-budget",
        "batch-not-a-mapping",
        "compact-garbage",
        "duplicate",
        "objective-over-100",
        "objective-not-a-share",
        "negative-fleet-budget",
        "bad-fleets",
        "bad-fleet-and-keep-alive",
        "not-a-list",
        "not-yaml",
    ],
)
def test_config_errors(document: str, problems: list[str] | None) -> None:
    with pytest.raises(ConfigError) as caught:
        targets.parse_config_document(document, source="t.yaml")
    if problems is None:
        assert caught.value.problems[0].message.startswith("is not valid YAML")
    else:
        assert [str(p) for p in caught.value.problems] == problems


def test_cron_window_problems_are_all_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        targets.parse_config_document(
            "targets: [{name: a/b, kind: keda, max: 2, cron: [{schedule: '* * * *', duration: 0s, floor: 3}]}]",
            source="t.yaml",
        )
    # floor-vs-max needs a whole window, so it is checked only once the window itself is valid
    assert [str(p) for p in caught.value.problems] == [
        "targets[0].cron[0].schedule: '* * * *' is not a 5-field cron expression (has 4 fields)",
        "targets[0].cron[0].duration: '0s' must be longer than 0s",
    ]
    with pytest.raises(ConfigError) as caught:
        targets.parse_config_document(
            "targets: [{name: a/b, kind: keda, max: 2, cron: [{schedule: '0 1 * * *', duration: 1h, floor: 3}]}]",
            source="t.yaml",
        )
    assert [str(p) for p in caught.value.problems] == ["targets[0].cron[0].floor: 3 is above max (2)"]


def test_annotation_errors_use_annotation_spelling() -> None:
    with pytest.raises(ConfigError) as caught:
        targets.parse_annotations(
            {"prewarm.dev/session-ttl": "soon", "prewarm.dev/cron": "0 9 * * * for 1h = x"}, ref=TargetRef("a", "b")
        )
    assert str(caught.value) == (
        "invalid configuration in annotations of a/b (3 problems):\n"
        "  - prewarm.dev/session-ttl: 'soon' is not a duration (use 90s, 5m or 2h)\n"
        "  - prewarm.dev/cron[0].floor: 'x' is not an integer\n"
        "  - prewarm.dev/max: None is required (no platform max-scale to fall back on)"
    )


def test_batch_allowance_errors_use_each_source_spelling() -> None:
    with pytest.raises(ConfigError) as caught:
        targets.parse_annotations(
            {"prewarm.dev/max": "2", "prewarm.dev/batch-floor": "many", "prewarm.dev/batch-budget-share": "10%"},
            ref=TargetRef("a", "b"),
        )
    assert [str(p) for p in caught.value.problems] == [
        "prewarm.dev/batch-floor: 'many' is not an integer",
        "prewarm.dev/batch-budget-share: '10%' needs a prewarm.dev/budget to share",
    ]
    with pytest.raises(ConfigError) as caught:
        targets.parse_scaler_metadata(
            {"max": "2", "budget": "3", "batchFloor": "5", "batchBudgetShare": "1.5"}, scaled_object=TargetRef("a", "b")
        )
    assert [str(p) for p in caught.value.problems] == [
        "batchBudgetShare: '1.5' must be between 0% and 100%",
        "batchFloor: '5' is above max (2)",
    ]


@pytest.mark.parametrize(
    ("raw", "share"),
    [("20%", 0.2), ("0%", 0.0), ("100%", 1.0), (0.25, 0.25), ("0.5", 0.5), (1, 1.0), (" 7.5 % ", 0.075)],
    ids=["percent", "zero", "all", "fraction", "fraction-text", "one", "spaces"],
)
def test_parse_share(raw: object, share: float) -> None:
    assert targets.parse_share(raw) == pytest.approx(share)


def test_inline_scaler_metadata_keeps_the_base_batch_allowance() -> None:
    base = targets.parse_config_document(
        "targets: [{name: ml/chat, kind: keda, max: 4, budget: 2, batch: {floor: 1, budgetShare: 25%}}]", source="t"
    ).targets[0]
    spec, _ = targets.parse_scaler_metadata({"hold": "1m"}, scaled_object=TargetRef("ml", "chat"), base=base)
    assert spec.batch == BatchAllowance(floor=1, budget_share=0.25)


def test_scaler_metadata_errors_use_metadata_spelling() -> None:
    with pytest.raises(ConfigError) as caught:
        targets.parse_scaler_metadata(
            {"target": "nope", "max": "2", "forecastQuantile": "x"}, scaled_object=TargetRef("a", "b")
        )
    assert [str(p) for p in caught.value.problems] == [
        "target: 'nope' is not namespace/name (lowercase DNS names)",
        "forecastQuantile: 'x' is not a number",
    ]


def run_prewarm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prewarm", *args], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )


def test_cli_exits_2_with_one_message_naming_all_three_mistakes(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(THREE_MISTAKES)
    result = run_prewarm("serve", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.count("invalid configuration") == 1
    for fragment in ("targets[0].max: 'ten'", "targets[0].sessionTTL: '5 minutes'", "'Mars/Olympus'"):
        assert fragment in result.stderr
    assert result.stdout == ""


def test_cli_missing_config_exits_2(tmp_path: Path) -> None:
    result = run_prewarm("serve", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "--config" in result.stderr and "cannot be read" in result.stderr


def test_example_config_parses() -> None:
    parsed = targets.parse_config_document((REPO / "examples" / "targets.yaml").read_text(), source="example")
    assert [str(t.ref) for t in parsed.targets] == ["llm/chat-8b", "vision/sdxl"]
    assert parsed.warnings == ()


def test_serve_without_config_needs_the_knative_actuator() -> None:
    result = run_prewarm("serve")
    assert result.returncode == 2
    assert "--config is required" in result.stderr


def test_objectives_fleets_and_keep_alive_in_every_form() -> None:
    parsed = targets.parse_config_document(
        """
fleet: {budget: 400h/day}
fleets: {a100: {budget: 120}}
targets:
  - name: llm/chat
    kind: knative
    max: 4
    fleet: a100
    objective: {coldStarts: 5%}
    forecast: {enabled: true, keepAlive: 10m, keepAliveReplicas: 2}
""",
        source="t.yaml",
    )
    assert parsed.fleets == (targets.FleetBudget("default", 400.0), targets.FleetBudget("a100", 120.0))
    (from_yaml,) = parsed.targets
    from_annotations, _ = targets.parse_annotations(
        {
            "prewarm.dev/max": "4",
            "prewarm.dev/fleet": "a100",
            "prewarm.dev/objective-cold-starts": "0.05",
            "prewarm.dev/forecast-enabled": "true",
            "prewarm.dev/forecast-keep-alive": "600",
            "prewarm.dev/forecast-keep-alive-replicas": "2",
        },
        ref=targets.TargetRef("llm", "chat"),
    )
    from_metadata, _ = targets.parse_scaler_metadata(
        {
            "target": "llm/chat",
            "max": "4",
            "fleet": "a100",
            "objectiveColdStarts": "5%",
            "forecastEnabled": "true",
            "forecastKeepAlive": "10m",
            "forecastKeepAliveReplicas": "2",
        },
        scaled_object=targets.TargetRef("llm", "so"),
    )
    assert from_yaml == from_annotations == dataclasses.replace(from_metadata, kind=targets.TargetKind.KNATIVE)
    assert from_yaml.objective == targets.ObjectiveSettings(0.05)
    assert from_yaml.forecast.keep_alive == timedelta(minutes=10) and from_yaml.forecast.keep_alive_replicas == 2
    # inline keys override a base without losing its objective and fleet
    inline, _ = targets.parse_scaler_metadata({"max": "3"}, scaled_object=from_yaml.ref, base=from_yaml)
    assert (inline.max, inline.objective, inline.fleet) == (3, from_yaml.objective, "a100")


HISTORY = targets.HistorySettings(preset=targets.HistoryPreset.KEDA_HTTP, name="chat.example.com", days=7)


def test_history_is_the_same_from_every_source() -> None:
    from_yaml = targets.parse_config_document(
        "targets: [{name: ml/chat, kind: keda, max: 3, forecast: "
        "{enabled: true, history: keda-http, historyName: chat.example.com, historyDays: 7}}]",
        source="t",
    ).targets[0]
    from_annotations, _ = targets.parse_annotations(
        {
            "prewarm.dev/max": "3",
            "prewarm.dev/forecast-enabled": "true",
            "prewarm.dev/forecast-history": "keda-http",
            "prewarm.dev/forecast-history-name": "chat.example.com",
            "prewarm.dev/forecast-history-days": "7",
        },
        ref=TargetRef("ml", "chat"),
        kind=TargetKind.KEDA,
    )
    from_metadata, warnings = targets.parse_scaler_metadata(
        {
            "max": "3",
            "forecastEnabled": "true",
            "forecastHistory": "keda-http",
            "forecastHistoryName": "chat.example.com",
            "forecastHistoryDays": "7",
        },
        scaled_object=TargetRef("ml", "chat"),
    )
    assert warnings == ()
    assert from_yaml.forecast.history == HISTORY
    assert from_yaml == from_annotations == from_metadata
    # an inline override keeps the base's history unless it names its own
    again, _ = targets.parse_scaler_metadata({"hold": "1m"}, scaled_object=TargetRef("ml", "chat"), base=from_yaml)
    assert again.forecast.history == HISTORY


def test_promql_history_keeps_its_template() -> None:
    query = 'sum(increase(http_requests_total{namespace="$namespace", app="${name}"}[1m]))'
    spec = targets.parse_config_document(
        f"targets: [{{name: ml/chat, kind: keda, max: 3, forecast: {{history: promql, historyQuery: '{query}'}}}}]",
        source="t",
    ).targets[0]
    assert spec.forecast.history == targets.HistorySettings(targets.HistoryPreset.PROMQL, query=query, days=14)
    label_replace = 'label_replace(up{job="$name"}, "x", "$1", "instance", "(.*)")'  # $1 is PromQL's own
    assert targets.parse_promql_template(label_replace) == label_replace


@pytest.mark.parametrize(
    ("forecast", "problems"),
    [
        ("{history: prometheus}", ["targets[0].forecast.history: 'prometheus' is not a history preset "
                                   "(knative, keda-http, vllm, promql)"]),
        ("{history: promql}", ["targets[0].forecast.historyQuery: None is required with the promql history"]),
        ("{history: knative, historyQuery: up}",
         ["targets[0].forecast.historyQuery: 'up' is only read with the promql history"]),
        ("{history: promql, historyQuery: 'sum($job)'}",
         ["targets[0].forecast.historyQuery: 'sum($job)' uses $job: only $namespace and $name are filled in"]),
        ("{history: promql, historyQuery: up, historyName: x}",
         ["targets[0].forecast.historyName: 'x' is only read by presets (a promql template names its own labels)"]),
        ("{historyDays: 3}", ["targets[0].forecast.historyDays: 3 needs targets[0].forecast.history"]),
        ("{history: vllm, historyDays: 91}", ["targets[0].forecast.historyDays: 91 must be <= 90"]),
        ("{history: vllm, historyName: ''}", None),  # empty is unset
    ],
    ids=["unknown-preset", "promql-without-query", "query-without-promql", "unknown-placeholder",
         "name-with-promql", "days-without-history", "too-many-days", "empty-name"],
)  # fmt: skip
def test_history_errors(forecast: str, problems: list[str] | None) -> None:
    document = f"targets: [{{name: a/b, kind: keda, max: 2, forecast: {forecast}}}]"
    if problems is None:
        assert targets.parse_config_document(document, source="t.yaml").targets[0].forecast.history is not None
        return
    with pytest.raises(ConfigError) as caught:
        targets.parse_config_document(document, source="t.yaml")
    assert [str(p) for p in caught.value.problems] == problems


def test_history_errors_use_each_sources_spelling() -> None:
    with pytest.raises(ConfigError) as caught:
        targets.parse_annotations(
            {"prewarm.dev/max": "2", "prewarm.dev/forecast-history": "graphite"}, ref=TargetRef("a", "b")
        )
    assert [p.key for p in caught.value.problems] == ["prewarm.dev/forecast-history"]
    with pytest.raises(ConfigError) as caught:
        targets.parse_scaler_metadata({"max": "2", "forecastHistory": "promql"}, scaled_object=TargetRef("a", "b"))
    assert [p.key for p in caught.value.problems] == ["forecastHistoryQuery"]


def test_a_fleet_without_a_budget_is_warned_about() -> None:
    parsed = targets.parse_config_document(
        "fleets: {a100: {budget: 10}}\n"
        "targets:\n"
        "  - {name: ml/a, kind: keda, max: 2, fleet: a100}\n"
        "  - {name: ml/b, kind: keda, max: 2, fleet: a10o}\n"
        "  - {name: ml/c, kind: keda, max: 2}\n",
        source="t.yaml",
    )
    assert parsed.warnings == ("t.yaml: ml/b names fleet 'a10o', which has no budget (fleet: or fleets:)",)


# Every setting's spellings, pinned: the table derives them from the canonical key.
SPELLINGS = [
    ("min", "min", "min"),
    ("max", "max", "max"),
    ("sessionsPerReplica", "sessions-per-replica", "sessionsPerReplica"),
    ("sessionTTL", "session-ttl", "sessionTTL"),
    ("hold", "hold", "hold"),
    ("cron", "cron", "cron"),
    ("forecast.enabled", "forecast-enabled", "forecastEnabled"),
    ("forecast.quantile", "forecast-quantile", "forecastQuantile"),
    ("forecast.horizon", "forecast-horizon", "forecastHorizon"),
    ("forecast.keepAlive", "forecast-keep-alive", "forecastKeepAlive"),
    ("forecast.keepAliveReplicas", "forecast-keep-alive-replicas", "forecastKeepAliveReplicas"),
    ("forecast.history", "forecast-history", "forecastHistory"),
    ("forecast.historyQuery", "forecast-history-query", "forecastHistoryQuery"),
    ("forecast.historyName", "forecast-history-name", "forecastHistoryName"),
    ("forecast.historyDays", "forecast-history-days", "forecastHistoryDays"),
    ("budget", "budget", "budget"),
    ("objective.coldStarts", "objective-cold-starts", "objectiveColdStarts"),
    ("fleet", "fleet", "fleet"),
    ("batch.floor", "batch-floor", "batchFloor"),
    ("batch.budgetShare", "batch-budget-share", "batchBudgetShare"),
    ("weights.model", "weights-model", "weightsModel"),
    ("weights.revision", "weights-revision", "weightsRevision"),
    ("weights.source", "weights-source", "weightsSource"),
]


def test_each_setting_is_one_row_spelled_for_every_source() -> None:
    assert [(s.key, s.annotation, s.metadata) for s in targets.SETTINGS] == SPELLINGS


# One value per setting, as a flat string map can hold it (cron in its compact form).
EVERY_SETTING = {
    "min": "1",
    "max": "6",
    "sessionsPerReplica": "8",
    "sessionTTL": "90s",
    "hold": "5m",
    "cron": COMPACT_CRON,
    "forecast.enabled": "true",
    "forecast.quantile": "0.95",
    "forecast.horizon": "2m",
    "forecast.keepAlive": "10m",
    "forecast.keepAliveReplicas": "2",
    "forecast.history": "vllm",
    "forecast.historyName": "llama",
    "forecast.historyDays": "7",
    "budget": "12.5",
    "objective.coldStarts": "5%",
    "fleet": "gpu",
    "batch.floor": "1",
    "batch.budgetShare": "20%",
    "weights.model": "acme/tiny-llm",
    "weights.revision": "v1.2",
    "weights.source": "/models/acme/tiny-llm",
}


def test_every_setting_reads_the_same_from_every_source_and_survives_a_base() -> None:
    assert set(EVERY_SETTING) == {s.key for s in targets.SETTINGS} - {"forecast.historyQuery"}
    by_key = {s.key: s for s in targets.SETTINGS}
    ref = TargetRef("ml", "chat")
    from_annotations, warnings = targets.parse_annotations(
        {targets.ANNOTATION_PREFIX + by_key[k].annotation: v for k, v in EVERY_SETTING.items()}, ref=ref
    )
    from_metadata, metadata_warnings = targets.parse_scaler_metadata(
        {by_key[k].metadata: v for k, v in EVERY_SETTING.items()}, scaled_object=ref
    )
    assert warnings == metadata_warnings == ()
    assert from_metadata == dataclasses.replace(from_annotations, kind=TargetKind.KEDA)
    assert from_annotations.forecast.keep_alive == timedelta(minutes=10)
    assert from_annotations.forecast.history == targets.HistorySettings(
        targets.HistoryPreset.VLLM, name="llama", days=7
    )
    assert (from_annotations.objective.cold_starts, from_annotations.fleet) == (0.05, "gpu")
    assert from_annotations.weights == weights.WeightsSettings(
        model="acme/tiny-llm", revision="v1.2", source="/models/acme/tiny-llm"
    )
    again, _ = targets.parse_scaler_metadata({}, scaled_object=ref, base=from_metadata)
    assert again == from_metadata


def test_weights_name_the_model_in_yaml_and_need_model_and_source() -> None:
    parsed = targets.parse_config_document(
        "targets:\n"
        "  - {name: ml/a, kind: knative, max: 2, weights: {model: acme/tiny-llm, source: /models/acme/tiny-llm}}\n"
        "  - {name: ml/b, kind: knative, max: 2}\n"
        "  - {name: ml/c, kind: knative, max: 2, weights: {model: m, revision: v2, source: 's3://models/m'}}\n",
        source="t.yaml",
    )
    assert [spec.weights for spec in parsed.targets] == [
        weights.WeightsSettings(model="acme/tiny-llm", source="/models/acme/tiny-llm", revision="main"),
        None,
        weights.WeightsSettings(model="m", source="s3://models/m", revision="v2"),
    ]
    with pytest.raises(targets.ConfigError) as raised:
        targets.parse_config_document(
            "targets:\n  - {name: ml/a, kind: knative, max: 2, weights: {model: a--b, revision: x, source: models}}\n"
            "  - {name: ml/b, kind: knative, max: 2, weights: {revision: v1}}\n",
            source="t.yaml",
        )
    assert [str(p) for p in raised.value.problems] == [
        "targets[0].weights.model: 'a--b' is not a model id (ORG/NAME: letters, digits, '.', '_', '-'; "
        "no '--' or '..')",
        "targets[0].weights.source: 'models' is not an absolute folder path or an s3://BUCKET/PREFIX URL",
        "targets[1].weights.model: None is required with targets[1].weights.revision",
        "targets[1].weights.source: None is required with targets[1].weights.revision",
    ]


def test_targets_with_the_same_settings_share_one_validation_yet_keep_their_own_names() -> None:
    document = """
targets:
  - {name: a/one, kind: keda, max: 4, hold: 30s}
  - {name: a/two, kind: keda, max: 4, hold: 30s}
  - {name: a/three, kind: keda, max: 4, hold: 31s}
  - {name: b/four, kind: knative, max: 4, hold: 30s}
"""
    one, two, three, four = targets.parse_config_document(document, source="t.yaml").targets
    assert [str(spec.ref) for spec in (one, two, three, four)] == ["a/one", "a/two", "a/three", "b/four"]
    assert three.hold == timedelta(seconds=31)
    assert dataclasses.replace(two, ref=one.ref) == one
    assert four.kind is TargetKind.KNATIVE and one.kind is TargetKind.KEDA
    assert one.hold == timedelta(seconds=30)
    # equal values of other types are not taken for the settings seen before (`true` is no integer)
    with pytest.raises(ConfigError) as raised:
        targets.parse_config_document(
            "targets: [{name: a/one, kind: keda, max: 1}, {name: a/two, kind: keda, max: true}]", source="t.yaml"
        )
    assert "targets[1].max" in str(raised.value) and "targets[0]" not in str(raised.value)
