"""One target schema, parsed from YAML, Kubernetes annotations or KEDA scalerMetadata.

Every source is flattened to canonical keys, then validated by the same code, so a value means the
same thing wherever it is written. Parsing collects every problem and raises one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import yaml

from prewarm.core import schedule, yaml_document
from prewarm.core import weights as weights_settings

T = TypeVar("T")

ANNOTATION_PREFIX = "prewarm.dev/"
# Annotations that belong to prewarm.dev/ but are not part of the target schema itself.
ANNOTATION_CONTROL_KEYS = frozenset({"enabled", "wake"})
# Knative's own ceiling, read when `max` is not given (canonical spelling first).
KNATIVE_MAX_SCALE_KEYS = ("autoscaling.knative.dev/max-scale", "autoscaling.knative.dev/maxScale")

DEFAULT_SESSIONS_PER_REPLICA = 4
DEFAULT_SESSION_TTL = timedelta(seconds=300)
DEFAULT_HOLD = timedelta(seconds=120)
DEFAULT_FORECAST_QUANTILE = 0.9
DEFAULT_FORECAST_HORIZON = timedelta(seconds=60)
DEFAULT_FLEET = "default"
DEFAULT_HISTORY_DAYS = 14
MAX_HISTORY_DAYS = 90  # bounds the per-target history a forecaster keeps in memory
HISTORY_TEMPLATE_NAMES = ("namespace", "name")  # what `$namespace` / `$name` stand for in PromQL


class TargetKind(enum.Enum):
    """The platform object a floor is applied to."""

    KNATIVE = "knative"
    KEDA = "keda"


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class TargetRef:
    """A target's identity, `namespace/name`, the same string everywhere (events, store, logs)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class HistoryPreset(enum.Enum):
    """Where a target's request history is read from in Prometheus (docs/history.md)."""

    KNATIVE = "knative"  # queue-proxy request counts
    KEDA_HTTP = "keda-http"  # the KEDA HTTP add-on interceptor's request counts
    VLLM = "vllm"  # vLLM's finished requests (completions, not arrivals)
    PROMQL = "promql"  # the user's own expression


@dataclasses.dataclass(frozen=True, slots=True)
class HistorySettings:
    """A target's request history in Prometheus: a preset, or a PromQL template (`$namespace`, `$name`).

    `name` is the value the preset's name label holds for this target when it is not the target's
    own name (a vLLM served model name, a host for the KEDA HTTP add-on before 0.14).
    """

    preset: HistoryPreset
    query: str | None = None  # the PromQL template, for `promql` only
    name: str | None = None
    days: int = DEFAULT_HISTORY_DAYS


@dataclasses.dataclass(frozen=True, slots=True)
class ForecastSettings:
    """Whether a learned forecast feeds the floor, which quantile it keeps warm, how far ahead, and
    where its request history comes from (None: the session openings the listener counts)."""

    enabled: bool = False
    quantile: float = DEFAULT_FORECAST_QUANTILE
    horizon: timedelta = DEFAULT_FORECAST_HORIZON
    history: HistorySettings | None = None
    keep_alive: timedelta = timedelta(0)  # keep `keep_alive_replicas` warm this long after a minute with arrivals
    keep_alive_replicas: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile < 1.0:
            raise ValueError("ForecastSettings.quantile must be in (0, 1)")
        if self.keep_alive < timedelta(0) or self.keep_alive_replicas < 1:
            raise ValueError("ForecastSettings needs keep_alive >= 0 and keep_alive_replicas >= 1")

    @property
    def keep_alive_minutes(self) -> int:
        """The keep-alive in whole minutes (rounded up), as forecasts count time."""
        return math.ceil(self.keep_alive.total_seconds() / 60.0 - 1e-9)


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectiveSettings:
    """What the user asks of a forecast target instead of knobs: the share of requests that may meet
    a cold start (None: no objective, the configured quantile stands)."""

    cold_starts: float | None = None

    def __post_init__(self) -> None:
        if self.cold_starts is not None and not 0.0 <= self.cold_starts <= 1.0:
            raise ValueError("ObjectiveSettings.cold_starts must be in [0, 1]")


@dataclasses.dataclass(frozen=True, slots=True)
class FleetBudget:
    """Warm replica-hours per day that the forecast targets of one fleet group may keep in total."""

    name: str
    hours_per_day: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.hours_per_day) and self.hours_per_day >= 0):
            raise ValueError("FleetBudget.hours_per_day must be a finite number >= 0")


@dataclasses.dataclass(frozen=True, slots=True)
class BatchAllowance:
    """How far batch sessions may raise the floor: at most `floor` replicas, and (with a daily
    `budget`) at most `budget_share` of it in replica-hours; None leaves only the target's budget."""

    floor: int = 0
    budget_share: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TargetSpec:
    """Everything the decision core needs to know about one target; built only by the parsers here."""

    ref: TargetRef
    kind: TargetKind
    max: int
    min: int = 0
    sessions_per_replica: int = DEFAULT_SESSIONS_PER_REPLICA
    session_ttl: timedelta = DEFAULT_SESSION_TTL
    hold: timedelta = DEFAULT_HOLD
    cron: tuple[schedule.CronWindow, ...] = ()
    forecast: ForecastSettings = ForecastSettings()
    budget: float | None = None  # pre-warm replica-hours per UTC day; None is unlimited
    objective: ObjectiveSettings = ObjectiveSettings()
    fleet: str = DEFAULT_FLEET  # the fleet group whose budget this target shares
    batch: BatchAllowance = BatchAllowance()
    weights: weights_settings.WeightsSettings | None = None  # the model its pods load, for the weights tier

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max:
            raise ValueError(f"{self.ref}: need 0 <= min ({self.min}) <= max ({self.max})")
        if self.sessions_per_replica < 1:
            raise ValueError(f"{self.ref}: sessions_per_replica must be >= 1")


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """One invalid value: where it was written, what was written, and what is wrong with it."""

    key: str
    value: object
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.value!r} {self.message}"


class ConfigError(ValueError):
    """Raised once per parse with every problem found, each naming its key and bad value."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"invalid configuration in {source} ({count} {noun}):\n{lines}")


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedTargets:
    """Targets parsed from one source, with warnings (unknown keys) for the caller to log."""

    targets: tuple[TargetSpec, ...]
    warnings: tuple[str, ...] = ()
    fleets: tuple[FleetBudget, ...] = ()


# --- scalar parsers: each returns a value or raises ValueError with a message about the value ---

MAX_DURATION = timedelta(days=366)  # no setting needs more; far longer ones overflow timedelta
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(raw: object) -> timedelta:
    """Parse `90s`, `5m`, `2h`, `1h30m`, or a bare number of seconds, into a non-negative timedelta."""
    if isinstance(raw, bool):
        raise ValueError("is not a duration (use 90s, 5m or 2h)")
    if isinstance(raw, int | float):
        seconds = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_RE.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError("is not a duration (use 90s, 5m or 2h)")
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError("is not a duration (use 90s, 5m or 2h)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("is not a non-negative duration")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def parse_int(raw: object, *, minimum: int = 0) -> int:
    """Parse an integer (int or decimal string) that is at least `minimum`."""
    if isinstance(raw, bool):
        raise ValueError("is not an integer")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
        value = int(raw)
    else:
        raise ValueError("is not an integer")
    if value < minimum:
        raise ValueError(f"must be >= {minimum}")
    return value


def parse_float(raw: object, *, minimum: float = 0.0) -> float:
    """Parse a finite number that is at least `minimum`."""
    if isinstance(raw, bool):
        raise ValueError("is not a number")
    try:
        value = float(raw) if isinstance(raw, int | float | str) else math.nan
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    if value < minimum:
        raise ValueError(f"must be >= {minimum:g}")
    return value


def parse_bool(raw: object) -> bool:
    """Parse a YAML boolean or the strings true/false/yes/no/1/0."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError("is not a boolean (true or false)")


def parse_quantile(raw: object) -> float:
    """Parse a quantile strictly between 0 and 1."""
    value = parse_float(raw)
    if not 0.0 < value < 1.0:
        raise ValueError("must be between 0 and 1 (exclusive)")
    return value


_SHARE_RE = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*%\s*")


def parse_share(raw: object) -> float:
    """Parse a share of requests: `5%`, or a fraction such as 0.05; between 0% and 100%."""
    if isinstance(raw, str) and (match := _SHARE_RE.fullmatch(raw)):
        value = float(match.group(1)) / 100.0
    else:
        try:
            value = parse_float(raw, minimum=-math.inf)
        except ValueError:
            raise ValueError("is not a share (use 5% or 0.05)") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0% and 100%")
    return value


_DAILY_HOURS_RE = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*(?:h\s*(?:/\s*(?:day|d))?)?\s*")


def parse_daily_hours(raw: object) -> float:
    """Parse replica-hours per day: `400h/day`, `400h`, or a bare number of hours; at least 0."""
    if isinstance(raw, bool):
        raise ValueError("is not replica-hours per day (use 400h/day)")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str) and (match := _DAILY_HOURS_RE.fullmatch(raw)):
        value = float(match.group(1))
    else:
        raise ValueError("is not replica-hours per day (use 400h/day)")
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be >= 0 replica-hours per day")
    return value


def parse_fleet_name(raw: object) -> str:
    """Parse a fleet group name: a lowercase DNS label."""
    if not isinstance(raw, str) or not _DNS_LABEL.fullmatch(raw):
        raise ValueError("is not a fleet name (a lowercase DNS label)")
    return raw


def parse_ref(raw: object) -> TargetRef:
    """Parse `namespace/name` (both DNS-1123 labels or subdomains)."""
    if not isinstance(raw, str):
        raise ValueError("is not a namespace/name string")
    namespace, sep, name = raw.partition("/")
    if not sep or not _DNS_NAME.fullmatch(namespace) or not _DNS_NAME.fullmatch(name):
        raise ValueError("is not namespace/name (lowercase DNS names)")
    return TargetRef(namespace=namespace, name=name)


_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def parse_history_preset(raw: object) -> HistoryPreset:
    """`knative`, `keda-http`, `vllm` or `promql`."""
    try:
        return HistoryPreset(raw)
    except ValueError:
        known = ", ".join(p.value for p in HistoryPreset)
        raise ValueError(f"is not a history preset ({known})") from None


_TEMPLATE_PLACEHOLDER = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def parse_promql_template(raw: object) -> str:
    """A PromQL expression whose only placeholders are `$namespace` and `$name` (`$1` etc. pass)."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("is not a PromQL expression")
    unknown = sorted({m for m in _TEMPLATE_PLACEHOLDER.findall(raw) if m not in HISTORY_TEMPLATE_NAMES})
    if unknown:
        names = ", ".join(f"${u}" for u in unknown)
        raise ValueError(f"uses {names}: only $namespace and $name are filled in")
    return raw.strip()


def parse_label_value(raw: object) -> str:
    """A non-empty label value."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("is not a non-empty string")
    return raw.strip()


_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_REVISION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def parse_model_id(raw: object) -> str:
    """A hub model id, `ORG/NAME` or `NAME`."""
    if not isinstance(raw, str) or not _MODEL_ID.fullmatch(raw.strip()) or ".." in raw or "--" in raw:
        raise ValueError("is not a model id (ORG/NAME: letters, digits, '.', '_', '-'; no '--' or '..')")
    return raw.strip()


def parse_revision_name(raw: object) -> str:
    """A branch, tag or commit name."""
    text = str(raw).strip() if isinstance(raw, str | int) else ""
    if not _REVISION_NAME.fullmatch(text) or ".." in text.split("/") or text.endswith("/"):
        raise ValueError("is not a branch, tag or commit name")
    return text


_S3_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?")


def parse_model_source(raw: object) -> str:
    """Where weights are staged from: an absolute folder path (a mounted model store) or an
    `s3://BUCKET/PREFIX` URL (an S3-compatible store)."""
    text = raw.strip() if isinstance(raw, str) else ""
    if not (text.startswith("/") or _S3_URL.fullmatch(text)):
        raise ValueError("is not an absolute folder path or an s3://BUCKET/PREFIX URL")
    return text


def parse_history_days(raw: object) -> int:
    """Days of history to load, 1 to MAX_HISTORY_DAYS."""
    days = parse_int(raw, minimum=1)
    if days > MAX_HISTORY_DAYS:
        raise ValueError(f"must be <= {MAX_HISTORY_DAYS}")
    return days


# --- cron windows: a YAML list of mappings, or the compact text form for flat string maps ---

_COMPACT_WINDOW_RE = re.compile(
    r"^(?P<schedule>\S+(?:\s+\S+){4})\s+for\s+(?P<duration>\S+)\s*=\s*(?P<floor>\S+)"
    r"(?:\s+in\s+(?P<timezone>\S+))?$"
)
COMPACT_CRON_FORM = "MIN HOUR DOM MON DOW for DURATION = FLOOR [in TIMEZONE]; ..."


def _parse_window_duration(raw: object) -> timedelta:
    duration = parse_duration(raw)
    if duration <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return duration


def _parse_window_fields(
    key: str, schedule_text: object, duration: object, floor: object, timezone: object
) -> tuple[schedule.CronWindow | None, list[Problem]]:
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    checks: list[tuple[str, object, Callable[[object], Any]]] = [
        ("schedule", schedule_text, schedule.parse_schedule),
        ("duration", duration, _parse_window_duration),
        ("floor", floor, parse_int),
        ("timezone", timezone, schedule.parse_timezone),
    ]
    for field, raw, parse in checks:
        try:
            values[field] = parse(raw)
        except ValueError as e:
            problems.append(Problem(f"{key}.{field}", raw, str(e)))
    if problems:
        return None, problems
    return schedule.CronWindow(
        schedule=values["schedule"],
        duration=values["duration"],
        floor=values["floor"],
        timezone=values["timezone"],
    ), []


def parse_compact_cron(key: str, text: str) -> tuple[tuple[schedule.CronWindow, ...], list[Problem]]:
    """Parse `55 8 * * 1-5 for 13h = 2 in America/New_York; 0 22 * * * for 4h = 1` (UTC default)."""
    windows: list[schedule.CronWindow] = []
    problems: list[Problem] = []
    for index, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        match = _COMPACT_WINDOW_RE.fullmatch(part)
        item_key = f"{key}[{index}]"
        if match is None:
            problems.append(Problem(item_key, part, f"is not a cron window ({COMPACT_CRON_FORM})"))
            continue
        window, window_problems = _parse_window_fields(
            item_key,
            match["schedule"],
            match["duration"],
            match["floor"],
            match["timezone"] or "UTC",
        )
        problems.extend(window_problems)
        if window is not None:
            windows.append(window)
    return tuple(windows), problems


def _parse_cron_value(key: str, raw: object) -> tuple[tuple[schedule.CronWindow, ...], list[Problem]]:
    if isinstance(raw, str):
        return parse_compact_cron(key, raw)
    if not isinstance(raw, list):
        return (), [Problem(key, raw, f"is not a list of windows or '{COMPACT_CRON_FORM}'")]
    windows: list[schedule.CronWindow] = []
    problems: list[Problem] = []
    for index, item in enumerate(raw):
        item_key = f"{key}[{index}]"
        if not isinstance(item, Mapping):
            problems.append(Problem(item_key, item, "is not a mapping with schedule/duration/floor"))
            continue
        unknown = sorted(set(item) - {"schedule", "duration", "floor", "timezone"})
        problems.extend(Problem(f"{item_key}.{k}", item[k], "is not a cron window key") for k in unknown)
        missing = [k for k in ("schedule", "duration", "floor") if k not in item]
        problems.extend(Problem(f"{item_key}.{k}", None, "is required") for k in missing)
        if missing:
            continue
        window, window_problems = _parse_window_fields(
            item_key, item["schedule"], item["duration"], item["floor"], item.get("timezone", "UTC")
        )
        problems.extend(window_problems)
        if window is not None:
            windows.append(window)
    return tuple(windows), problems


# --- the settings table: one row per setting, read by every source ---


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One target setting: its canonical key, the `TargetSpec` attribute it sets, and its parser.

    YAML nests the canonical key (`forecast.quantile` is `forecast: {quantile: ...}`); annotations
    spell it in kebab case after `prewarm.dev/` (`forecast-quantile`), scalerMetadata in camel case
    (`forecastQuantile`).
    """

    key: str
    field: str  # dotted attribute path in TargetSpec
    parse: Callable[[object], Any]

    @property
    def annotation(self) -> str:
        """The key after `prewarm.dev/`: `sessionTTL` is `session-ttl`, `forecast.keepAlive` `forecast-keep-alive`."""
        return re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", self.key.replace(".", "-")).lower()

    @property
    def metadata(self) -> str:
        """The scalerMetadata key: `forecast.keepAlive` is `forecastKeepAlive`."""
        first, *rest = self.key.split(".")
        return first + "".join(part[:1].upper() + part[1:] for part in rest)


class _SettingProblems(ValueError):
    """Several problems inside one setting's value (cron windows), keyed relative to the setting."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = tuple(problems)


def _parse_cron_setting(raw: object) -> tuple[schedule.CronWindow, ...]:
    if raw == []:
        return ()
    windows, problems = _parse_cron_value("", raw)
    if problems:
        raise _SettingProblems(problems)
    return windows


def _parse_replicas_at_least_one(raw: object) -> int:
    return parse_int(raw, minimum=1)


# Every target setting, in the order problems are reported. A new setting is one row here (and its
# attribute in TargetSpec); every source reads it from this table.
SETTINGS: tuple[Setting, ...] = (
    Setting("min", "min", parse_int),
    Setting("max", "max", parse_int),
    Setting("sessionsPerReplica", "sessions_per_replica", _parse_replicas_at_least_one),
    Setting("sessionTTL", "session_ttl", parse_duration),
    Setting("hold", "hold", parse_duration),
    Setting("cron", "cron", _parse_cron_setting),
    Setting("forecast.enabled", "forecast.enabled", parse_bool),
    Setting("forecast.quantile", "forecast.quantile", parse_quantile),
    Setting("forecast.horizon", "forecast.horizon", parse_duration),
    Setting("forecast.keepAlive", "forecast.keep_alive", parse_duration),
    Setting("forecast.keepAliveReplicas", "forecast.keep_alive_replicas", _parse_replicas_at_least_one),
    Setting("forecast.history", "forecast.history.preset", parse_history_preset),
    Setting("forecast.historyQuery", "forecast.history.query", parse_promql_template),
    Setting("forecast.historyName", "forecast.history.name", parse_label_value),
    Setting("forecast.historyDays", "forecast.history.days", parse_history_days),
    Setting("budget", "budget", parse_float),
    Setting("objective.coldStarts", "objective.cold_starts", parse_share),
    Setting("fleet", "fleet", parse_fleet_name),
    Setting("batch.floor", "batch.floor", parse_int),
    Setting("batch.budgetShare", "batch.budget_share", parse_share),
    Setting("weights.model", "weights.model", parse_model_id),
    Setting("weights.revision", "weights.revision", parse_revision_name),
    Setting("weights.source", "weights.source", parse_model_source),
)
SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
# The nested settings a dotted `field` reaches into (history is built with its cross-field rules).
_NESTED_SETTINGS: dict[str, Callable[..., Any]] = {
    "forecast": ForecastSettings,
    "objective": ObjectiveSettings,
    "batch": BatchAllowance,
}
_HISTORY_FIELD = "forecast.history"
_WEIGHTS_FIELD = "weights"  # optional as a whole: built only when a weights setting is given


def _parse_settings(
    raw: Mapping[str, object], spelled: Callable[[str], str], problems: list[Problem]
) -> dict[str, Any]:
    """Parse every setting given in canonical-keyed `raw`; blank values are not given."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        value = raw.get(setting.key)
        if value is None or value == "":
            continue
        try:
            values[setting.key] = setting.parse(value)
        except _SettingProblems as e:
            problems.extend(Problem(spelled(setting.key) + p.key, p.value, p.message) for p in e.problems)
        except ValueError as e:
            problems.append(Problem(spelled(setting.key), value, str(e)))
    return values


def _assemble_spec(
    *, ref: TargetRef, kind: TargetKind, values: Mapping[str, Any], history: HistorySettings | None
) -> TargetSpec:
    """A TargetSpec from parsed values (canonical keys); what is not given keeps its dataclass default."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {group: {} for group in _NESTED_SETTINGS}
    model_weights: dict[str, Any] = {}
    for key, value in values.items():
        field = SETTINGS_BY_KEY[key].field
        group, _, attribute = field.partition(".")
        if field.startswith(_HISTORY_FIELD + "."):
            continue
        if group == _WEIGHTS_FIELD:
            model_weights[attribute] = value
        elif attribute:
            nested[group][attribute] = value
        else:
            top[field] = value
    nested["forecast"]["history"] = history
    built = {group: make(**nested[group]) for group, make in _NESTED_SETTINGS.items()}
    weights = weights_settings.WeightsSettings(**model_weights) if model_weights else None
    return TargetSpec(ref=ref, kind=kind, **top, **built, weights=weights)


def _raw_form(value: object) -> object:
    """A parsed value written back in a form its parser accepts."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, schedule.CronWindow):
        return {
            "schedule": value.schedule,
            "duration": value.duration.total_seconds(),
            "floor": value.floor,
            "timezone": value.timezone,
        }
    if isinstance(value, tuple):
        return [_raw_form(item) for item in value]
    return value


def _canonical_values(spec: TargetSpec) -> dict[str, object]:
    """The canonical-key view of an already-valid spec, so inline keys can override it."""
    values: dict[str, object] = {}
    for setting in SETTINGS:
        value: object = spec
        for attribute in setting.field.split("."):
            value = getattr(value, attribute) if value is not None else None
        if value is not None and value != ():
            values[setting.key] = _raw_form(value)
    return values


# --- the shared builder: canonical keys in, TargetSpec out ---


def _build_target(
    *,
    ref: TargetRef | None,
    kind: TargetKind | None,
    raw: Mapping[str, object],
    spelled: Callable[[str], str],
    platform_max: int | None,
    problems: list[Problem],
) -> TargetSpec | None:
    """Validate canonical-keyed `raw` into a TargetSpec, appending problems named by `spelled(key)`."""
    values = _parse_settings(raw, spelled, problems)
    cron: tuple[schedule.CronWindow, ...] = values.get("cron", ())

    ceiling = values.get("max", platform_max)
    if ceiling is None and "max" not in raw:
        problems.append(Problem(spelled("max"), None, "is required (no platform max-scale to fall back on)"))
    floor_min = values.get("min", 0)
    if ceiling is not None and "min" in values and floor_min > ceiling:
        problems.append(Problem(spelled("min"), raw["min"], f"is above max ({ceiling})"))
    if ceiling is not None and values.get("batch.floor", 0) > ceiling:
        problems.append(Problem(spelled("batch.floor"), raw["batch.floor"], f"is above max ({ceiling})"))
    if "batch.budgetShare" in values and "budget" not in values:
        problems.append(
            Problem(spelled("batch.budgetShare"), raw["batch.budgetShare"], f"needs a {spelled('budget')} to share")
        )
    if ceiling is not None:
        for index, window in enumerate(cron):
            if window.floor > ceiling:
                problems.append(Problem(f"{spelled('cron')}[{index}].floor", window.floor, f"is above max ({ceiling})"))
    given_weights = [key for key in raw if key.startswith(_WEIGHTS_FIELD + ".") and raw[key] not in (None, "")]
    for required in ("weights.model", "weights.source"):
        if given_weights and required not in raw:
            problems.append(Problem(spelled(required), None, f"is required with {spelled(given_weights[0])}"))
    history = _build_history(values, raw, spelled, problems)
    if problems or ref is None or kind is None or ceiling is None:
        return None
    return _assemble_spec(ref=ref, kind=kind, values={**values, "max": ceiling}, history=history)


def _build_history(
    values: Mapping[str, Any], raw: Mapping[str, object], spelled: Callable[[str], str], problems: list[Problem]
) -> HistorySettings | None:
    """The history settings from parsed `values`; cross-field problems go to `problems`."""
    preset = values.get("forecast.history")
    query = values.get("forecast.historyQuery")
    if preset is None:
        if "forecast.history" not in raw or raw["forecast.history"] in (None, ""):
            for key in ("forecast.historyQuery", "forecast.historyName", "forecast.historyDays"):
                if key in values:
                    problems.append(Problem(spelled(key), raw[key], f"needs {spelled('forecast.history')}"))
        return None
    if preset is HistoryPreset.PROMQL and query is None and "forecast.historyQuery" not in raw:
        problems.append(Problem(spelled("forecast.historyQuery"), None, "is required with the promql history"))
    if preset is not HistoryPreset.PROMQL and query is not None:
        problems.append(
            Problem(
                spelled("forecast.historyQuery"), raw["forecast.historyQuery"], "is only read with the promql history"
            )
        )
    if preset is HistoryPreset.PROMQL and "forecast.historyName" in values:
        problems.append(
            Problem(
                spelled("forecast.historyName"),
                raw["forecast.historyName"],
                "is only read by presets (a promql template names its own labels)",
            )
        )
    if query is None and preset is HistoryPreset.PROMQL:
        return None
    return HistorySettings(
        preset=preset,
        query=query,
        name=values.get("forecast.historyName"),
        days=values.get("forecast.historyDays", DEFAULT_HISTORY_DAYS),
    )


def _parse_field(raw: object, parse: Callable[[object], T], key: str, problems: list[Problem]) -> T | None:
    try:
        return parse(raw)
    except ValueError as e:
        problems.append(Problem(key, raw, str(e)))
        return None


def _parse_required(
    item: Mapping[str, object],
    key: str,
    parse: Callable[[object], T],
    prefix: str,
    missing: str,
    problems: list[Problem],
) -> T | None:
    if key not in item:
        problems.append(Problem(f"{prefix}.{key}", None, missing))
        return None
    return _parse_field(item[key], parse, f"{prefix}.{key}", problems)


def _parse_kind(raw: object) -> TargetKind:
    try:
        return TargetKind(raw)
    except ValueError:
        raise ValueError("is not a target kind (knative or keda)") from None


# --- source 1: the YAML file ---

# Nested YAML mappings and the canonical keys they hold: `forecast: {quantile: 0.9}` is `forecast.quantile`.
_YAML_GROUPS: dict[str, frozenset[str]] = {
    group: frozenset(k.partition(".")[2] for k in SETTINGS_BY_KEY if k.startswith(group + "."))
    for group in sorted({k.partition(".")[0] for k in SETTINGS_BY_KEY if "." in k})
}
_YAML_TARGET_KEYS = frozenset({"name", "kind"} | set(_YAML_GROUPS)) | {k for k in SETTINGS_BY_KEY if "." not in k}
_YAML_TOP_LEVEL_KEYS = frozenset({"targets", "fleet", "fleets"})


def _parse_fleets(document: Mapping[str, object], problems: list[Problem]) -> tuple[FleetBudget, ...]:
    """`fleet: {budget: 400h/day}` (the default group) and `fleets: {NAME: {budget: ...}}`."""
    raw: dict[str, tuple[str, object]] = {}
    if "fleet" in document:
        raw[DEFAULT_FLEET] = ("fleet", document["fleet"])
    named = document.get("fleets")
    if isinstance(named, Mapping):
        for name, value in named.items():
            raw[str(name)] = (f"fleets.{name}", value)
            _parse_field(name, parse_fleet_name, f"fleets.{name}", problems)
    elif named is not None:
        problems.append(Problem("fleets", named, "is not a mapping of fleet names to {budget: ...}"))
    fleets: list[FleetBudget] = []
    for name, (key, value) in raw.items():
        if not isinstance(value, Mapping) or set(value) != {"budget"}:
            problems.append(Problem(key, value, "is not a mapping with one key, budget (e.g. {budget: 400h/day})"))
            continue
        hours = _parse_field(value["budget"], parse_daily_hours, f"{key}.budget", problems)
        if hours is not None:
            fleets.append(FleetBudget(name, hours))
    return tuple(fleets)


def _settings_shape(kind: TargetKind | None, raw: Mapping[str, object]) -> tuple[object, ...] | None:
    """A hashable key for a target's settings (types included: `1`, `1.0` and `true` differ), or
    None when a value is not a plain scalar (cron windows, mappings): those are built each time."""
    shape: list[object] = [kind]
    for key, value in raw.items():
        if not isinstance(value, str | int | float | bool | None):
            return None
        shape += (key, type(value), value)
    return tuple(shape)


def parse_config_document(text: str, *, source: str) -> ParsedTargets:
    """Parse a YAML config document (`targets:` list, optional `fleet:`/`fleets:` budgets); raise
    ConfigError listing every problem."""
    try:
        document = yaml_document.load(text)
    except yaml.YAMLError as e:
        raise ConfigError(source, [Problem("(document)", source, f"is not valid YAML: {e}")]) from e
    if not isinstance(document, Mapping) or not isinstance(document.get("targets"), list):
        raise ConfigError(source, [Problem("targets", None, "is required: a list of targets")])
    problems: list[Problem] = []
    warnings = [f"{source}: unknown top-level key {k!r} ignored" for k in document if k not in _YAML_TOP_LEVEL_KEYS]
    fleets = _parse_fleets(document, problems)
    targets: list[TargetSpec] = []
    seen: set[TargetRef] = set()
    built: dict[tuple[object, ...], TargetSpec] = {}  # settings shape -> a spec built from it
    for index, item in enumerate(document["targets"]):
        prefix = f"targets[{index}]"
        if not isinstance(item, Mapping):
            problems.append(Problem(prefix, item, "is not a mapping"))
            continue
        warnings.extend(f"{source}: unknown key {prefix}.{k} ignored" for k in item if k not in _YAML_TARGET_KEYS)
        ref = _parse_required(item, "name", parse_ref, prefix, "is required (namespace/name)", problems)
        kind = _parse_required(item, "kind", _parse_kind, prefix, "is required (knative or keda)", problems)
        if ref is not None and ref in seen:
            problems.append(Problem(f"{prefix}.name", str(ref), "is listed twice"))
        raw: dict[str, object] = {k: v for k, v in item.items() if k in SETTINGS_BY_KEY}
        for group, keys in _YAML_GROUPS.items():
            nested = item.get(group)
            if isinstance(nested, Mapping):
                warnings.extend(f"{source}: unknown key {prefix}.{group}.{k} ignored" for k in nested if k not in keys)
                raw.update({f"{group}.{k}": v for k, v in nested.items() if k in keys})
            elif nested is not None:
                problems.append(Problem(f"{prefix}.{group}", nested, f"is not a mapping ({', '.join(sorted(keys))})"))
        shape = _settings_shape(kind, raw)
        template = None if shape is None else built.get(shape)
        if template is not None and ref is not None:  # the same settings as a target before: validated once
            spec: TargetSpec | None = dataclasses.replace(template, ref=ref)
        else:
            spec = _build_target(
                ref=ref,
                kind=kind,
                raw=raw,
                spelled=functools.partial("{}.{}".format, prefix),
                platform_max=None,
                problems=problems,
            )
            if spec is not None and shape is not None:
                built[shape] = spec
        if spec is not None:
            seen.add(spec.ref)
            targets.append(spec)
    if problems:
        raise ConfigError(source, problems)
    budgeted = {fleet.name for fleet in fleets}
    warnings.extend(
        f"{source}: {spec.ref} names fleet {spec.fleet!r}, which has no budget (fleet: or fleets:)"
        for spec in targets
        if spec.fleet != DEFAULT_FLEET and spec.fleet not in budgeted
    )
    return ParsedTargets(targets=tuple(targets), warnings=tuple(warnings), fleets=fleets)


# --- source 2: Kubernetes annotations (prewarm.dev/kebab-case) ---

_ANNOTATION_TO_CANONICAL = {s.annotation: s.key for s in SETTINGS}


def parse_annotations(
    annotations: Mapping[str, str], *, ref: TargetRef, kind: TargetKind = TargetKind.KNATIVE
) -> tuple[TargetSpec, tuple[str, ...]]:
    """Parse a Knative Service's `prewarm.dev/*` annotations; `max` falls back to its max-scale."""
    problems: list[Problem] = []
    warnings: list[str] = []
    raw: dict[str, object] = {}
    for key, value in annotations.items():
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        suffix = key.removeprefix(ANNOTATION_PREFIX)
        if suffix in _ANNOTATION_TO_CANONICAL:
            raw[_ANNOTATION_TO_CANONICAL[suffix]] = value
        elif suffix not in ANNOTATION_CONTROL_KEYS:
            warnings.append(f"{ref}: unknown annotation {key} ignored")
    platform_max = None
    for key in KNATIVE_MAX_SCALE_KEYS:
        if key in annotations:
            platform_max = _parse_field(annotations[key], parse_int, key, problems)
            break
    spec = _build_target(
        ref=ref,
        kind=kind,
        raw=raw,
        spelled=lambda canonical: ANNOTATION_PREFIX + SETTINGS_BY_KEY[canonical].annotation,
        platform_max=platform_max,
        problems=problems,
    )
    if spec is None:
        raise ConfigError(f"annotations of {ref}", problems)
    return spec, tuple(warnings)


# --- source 3: KEDA trigger scalerMetadata (camelCase, no prefix) ---

_METADATA_TO_CANONICAL = {s.metadata: s.key for s in SETTINGS}
# `target` is ours; KEDA passes the trigger's whole metadata map, so its own external-scaler
# connection keys arrive too and are neither target settings nor typos.
SCALER_METADATA_CONTROL_KEYS = frozenset(
    {"target", "scalerAddress", "caCert", "tlsCertFile", "tlsClientCert", "tlsClientKey", "unsafeSsl"}
)


def parse_scaler_metadata(
    metadata: Mapping[str, str],
    *,
    scaled_object: TargetRef,
    platform_max: int | None = None,
    base: TargetSpec | None = None,
) -> tuple[TargetSpec, tuple[str, ...]]:
    """Parse a trigger's metadata map; `target` defaults to the ScaledObject's own namespace/name.

    Keys given inline override `base` (a target configured elsewhere, e.g. the YAML file).
    """
    problems: list[Problem] = []
    warnings: list[str] = []
    ref = scaled_object
    if metadata.get("target"):
        ref = _parse_field(metadata["target"], parse_ref, "target", problems) or scaled_object
    raw: dict[str, object] = {} if base is None else _canonical_values(base)
    for key, value in metadata.items():
        if key in _METADATA_TO_CANONICAL:
            raw[_METADATA_TO_CANONICAL[key]] = value
        elif key not in SCALER_METADATA_CONTROL_KEYS:
            warnings.append(f"{scaled_object}: unknown scalerMetadata key {key!r} ignored")
    spec = _build_target(
        ref=ref,
        kind=TargetKind.KEDA if base is None else base.kind,
        raw=raw,
        spelled=lambda canonical: SETTINGS_BY_KEY[canonical].metadata,
        platform_max=platform_max,
        problems=problems,
    )
    if spec is None:
        raise ConfigError(f"scalerMetadata of {scaled_object}", problems)
    return spec, tuple(warnings)
