"""Replay evaluator: drive every policy over a request trace and score cold starts against GPU time.

Each policy turns a target's trace into a floor over time (the `prewarm` policy through the live
`policy.decide_floor` and forecaster); `simulation.simulate` then runs the target's requests under
the reactive autoscaler with that floor. Deterministic for a seed; no I/O (the CLI reads and writes).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from prewarm.core import policy, targets
from prewarm.forecast import arrival_model, idle_histogram, pooled_forecast
from prewarm.replay import simulation, traces, ttft

SESSION_GAP = timedelta(minutes=10)
KEEPALIVE_SWEEP = (60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
QUANTILE_SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
REPLAY_NAMESPACE = "replay"
UNLIMITED_MAX = 1000


class PolicyKind(enum.Enum):
    """The policies replay knows."""

    KNATIVE_DEFAULT = "knative-default"
    KEEPALIVE = "keepalive"
    CRON = "cron"
    HYBRID_HISTOGRAM = "hybrid-histogram"
    PREWARM = "prewarm"
    ORACLE = "oracle"


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyChoice:
    """One policy to replay: `keepalive` takes seconds, `prewarm` optionally a quantile."""

    kind: PolicyKind
    value: float | None = None

    @property
    def name(self) -> str:
        if self.value is None:
            return self.kind.value
        return f"{self.kind.value}:{self.value:g}"


def parse_policies(text: str) -> tuple[PolicyChoice, ...]:
    """`knative-default,keepalive:600,cron,hybrid-histogram,prewarm[:QUANTILE],oracle`; every problem in one error."""
    chosen: list[PolicyChoice] = []
    problems: list[str] = []
    for raw in (part.strip() for part in text.split(",")):
        name, _, argument = raw.partition(":")
        try:
            kind = PolicyKind(name)
        except ValueError:
            known = ", ".join(k.value for k in PolicyKind)
            problems.append(f"{raw!r} is not a policy (known: {known})")
            continue
        if kind is PolicyKind.KEEPALIVE:
            try:
                seconds = targets.parse_duration(argument).total_seconds()
            except ValueError:
                problems.append(f"{raw!r}: keepalive needs a duration, e.g. keepalive:600 or keepalive:10m")
                continue
            chosen.append(PolicyChoice(kind, seconds))
        elif kind is PolicyKind.PREWARM and argument:
            try:
                quantile = float(argument)
            except ValueError:
                quantile = math.nan
            if not 0.0 < quantile < 1.0:
                problems.append(f"{raw!r}: prewarm's quantile must be a number in (0, 1)")
                continue
            chosen.append(PolicyChoice(kind, quantile))
        elif argument:
            problems.append(f"{raw!r}: {kind.value} takes no argument")
        else:
            chosen.append(PolicyChoice(kind))
    if not chosen and not problems:
        problems.append("no policies given")
    if problems:
        raise ValueError("--policies: " + "; ".join(problems))
    return tuple(chosen)


@dataclasses.dataclass(frozen=True, slots=True)
class IntentLead:
    """Synthetic intent: `session.opened` arrives a lognormal lead before a session's first request."""

    median_seconds: float
    sigma: float

    def __post_init__(self) -> None:
        if not (self.median_seconds > 0 and self.sigma >= 0 and math.isfinite(self.median_seconds + self.sigma)):
            raise ValueError("intent lead needs a median > 0 and a sigma >= 0")


def parse_intent_lead(text: str) -> IntentLead:
    """`lognormal:MEDIAN_S,SIGMA` into an IntentLead."""
    family, _, args = text.partition(":")
    parts = args.split(",")
    if family != "lognormal" or len(parts) != 2:
        raise ValueError(f"--intent-lead: {text!r} is not lognormal:MEDIAN_S,SIGMA")
    try:
        return IntentLead(float(parts[0]), float(parts[1]))
    except ValueError as e:
        raise ValueError(f"--intent-lead: {text!r}: {e}") from e


@dataclasses.dataclass(frozen=True, slots=True)
class ReplaySettings:
    """Everything a replay depends on besides the trace."""

    cold_starts: np.ndarray  # seconds; one value is fixed, more are sampled
    cold_starts_by_target: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # by trace target
    seed: int = 0
    concurrency: int = 1
    score_from: float | None = None  # seconds since the epoch
    intent_lead: IntentLead | None = None
    quantile: float = targets.DEFAULT_FORECAST_QUANTILE
    forecast: arrival_model.ForecastConfig = dataclasses.field(default_factory=arrival_model.ForecastConfig)
    refit_minutes: int = 360
    hold: timedelta = targets.DEFAULT_HOLD  # the prewarm policy's scale-down hold
    cron_specs: Mapping[str, targets.TargetSpec] = dataclasses.field(default_factory=dict)  # by trace target name
    tune_days: float = 0.0  # history before the scored window that objectives and fleet budgets are tuned on
    model_ttft: ttft.TtftDistribution = dataclasses.field(default_factory=ttft.default_distribution)
    batch: targets.BatchAllowance = dataclasses.field(default_factory=targets.BatchAllowance)  # prewarm policy's
    budget: float | None = None  # the prewarm policy's daily pre-warm budget per target (replica-hours)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        for samples in (self.cold_starts, *self.cold_starts_by_target.values()):
            if samples.size == 0 or not np.all(samples > 0):
                raise ValueError("cold starts must be > 0 seconds")
        if self.refit_minutes < 1:
            raise ValueError("refit interval must be >= 1 minute")
        if not (math.isfinite(self.tune_days) and self.tune_days >= 0):
            raise ValueError("tune days must be >= 0")


_ClassScores = tuple[ttft.ClassScore, ...]  # PolicyScore.ttft shadows the module inside the class
_ScoredRequests = ttft.ScoredRequests


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyScore:
    """One policy's score over the scored window (the fields of summary.json)."""

    policy: str
    requests: int
    cold_starts: int
    cold_start_fraction: float
    wait_p50_s: float
    wait_p99_s: float
    warm_replica_hours_per_day: float
    idle_replica_hours_per_day: float
    synthetic_intent: bool = False
    ttft: _ClassScores = ()  # by class: all, interactive, batch

    @classmethod
    def from_outcome(
        cls,
        name: str,
        outcome: simulation.Outcome,
        days: float,
        *,
        synthetic: bool,
        scored: _ScoredRequests | None = None,
    ) -> PolicyScore:
        waits = np.asarray(outcome.waits) if outcome.waits else np.zeros(1)
        return cls(
            policy=name,
            requests=outcome.requests,
            cold_starts=outcome.cold_starts,
            cold_start_fraction=outcome.cold_starts / outcome.requests if outcome.requests else 0.0,
            wait_p50_s=float(np.percentile(waits, 50)),
            wait_p99_s=float(np.percentile(waits, 99)),
            warm_replica_hours_per_day=outcome.warm_seconds / 3600.0 / days,
            idle_replica_hours_per_day=outcome.idle_seconds / 3600.0 / days,
            synthetic_intent=synthetic,
            ttft=() if scored is None else ttft.class_scores(outcome, scored, days),
        )


def default_spec(
    name: str, quantile: float, horizon_seconds: float, concurrency: int, hold: timedelta = targets.DEFAULT_HOLD
) -> targets.TargetSpec:
    """The spec a trace target gets without a config: no ceiling to speak of, forecast on, and one
    session per replica slot (a session's requests come one after another)."""
    return targets.TargetSpec(
        ref=targets.TargetRef(REPLAY_NAMESPACE, name),
        kind=targets.TargetKind.KEDA,
        max=UNLIMITED_MAX,
        sessions_per_replica=concurrency,
        hold=hold,
        forecast=targets.ForecastSettings(True, quantile, timedelta(seconds=horizon_seconds)),
    )


def keepalive_floor(arrivals: np.ndarray, exec_seconds: np.ndarray, keepalive: float) -> simulation.FloorSteps:
    """One replica from each arrival until `keepalive` after the last running request finishes."""
    changes: list[tuple[float, int]] = []
    until = -math.inf
    for at, done in zip(arrivals.tolist(), (arrivals + exec_seconds).tolist(), strict=True):
        if at > until:
            if changes:
                changes.append((until, 0))
            changes.append((at, 1))
        until = max(until, done + keepalive)
    if changes:
        changes.append((until, 0))
    return simulation.FloorSteps.from_changes(changes)


def hybrid_histogram_floor(arrivals: np.ndarray, exec_seconds: np.ndarray) -> simulation.FloorSteps:
    """The hybrid-histogram policy: after each execution, warm during the learned window until the next arrival."""
    histogram = idle_histogram.IdleHistogram()
    changes: list[tuple[float, int]] = []
    finished = -math.inf
    arrival_list = arrivals.tolist()
    for j, (at, run) in enumerate(zip(arrival_list, exec_seconds.tolist(), strict=True)):
        if finished > -math.inf and at > finished:
            histogram.add(at - finished)
        finished = max(finished, at + run)
        if j + 1 < len(arrival_list) and arrival_list[j + 1] <= finished:
            continue  # still running when the next request comes
        windows = histogram.windows()
        next_at = arrival_list[j + 1] if j + 1 < len(arrival_list) else math.inf
        warm_from, warm_until = finished + windows.prewarm, min(finished + windows.prewarm + windows.keepalive, next_at)
        if warm_from < warm_until:
            changes.append((warm_from, 1))
            changes.append((warm_until, 0))
    return simulation.FloorSteps.from_changes(sorted(changes, key=lambda c: c[0]))


def utc_datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def decision_floor(
    spec: targets.TargetSpec,
    *,
    start: float,
    end: float,
    forecast_replicas: np.ndarray | None = None,
    first_minute: int = 0,
    sessions: Sequence[tuple[float, float]] = (),
    batch_sessions: Sequence[tuple[float, float]] = (),
) -> simulation.FloorSteps:
    """The floor `policy.decide_floor` sets over [start, end) from a per-minute forecast and
    (interactive and batch) sessions.

    Decides at every signal change (a forecast minute that differs, a session opening or closing)
    and at each decision's own next change, exactly as the live decider does.
    """
    changes, _ = decision_changes(
        spec,
        start=start,
        end=end,
        forecast_replicas=forecast_replicas,
        first_minute=first_minute,
        sessions=sessions,
        batch_sessions=batch_sessions,
    )
    return simulation.FloorSteps.from_changes(changes)


def decision_changes(
    spec: targets.TargetSpec,
    *,
    start: float,
    end: float,
    forecast_replicas: np.ndarray | None = None,
    first_minute: int = 0,
    sessions: Sequence[tuple[float, float]] = (),
    batch_sessions: Sequence[tuple[float, float]] = (),
    previous: policy.FloorDecision | None = None,
) -> tuple[list[tuple[float, int]], policy.FloorDecision | None]:
    """`decision_floor`'s (time, floor) changes over [start, end), going on from `previous`, and
    the last decision (to go on from in the next span)."""
    events: set[float] = {start}
    if forecast_replicas is not None and forecast_replicas.size:
        known = np.nan_to_num(forecast_replicas, nan=-1.0)
        changed = np.flatnonzero(np.diff(known, prepend=-2.0) != 0)
        events.update(((changed + first_minute) * 60.0).tolist())
    opens = sorted(s[0] for s in sessions)
    closes = sorted(s[1] for s in sessions)
    batch_opens = sorted(s[0] for s in batch_sessions)
    batch_closes = sorted(s[1] for s in batch_sessions)
    for times in (opens, closes, batch_opens, batch_closes):
        events.update(times)
    timeline = sorted(t for t in events if start <= t < end)
    changes: list[tuple[float, int]] = []
    k = 0
    at = timeline[0] if timeline else math.inf
    while at < end:
        active = bisect.bisect_right(opens, at) - bisect.bisect_right(closes, at)
        batch_active = bisect.bisect_right(batch_opens, at) - bisect.bisect_right(batch_closes, at)
        expiries = [
            ends[i]
            for live, ends in ((active, closes), (batch_active, batch_closes))
            if live and (i := bisect.bisect_right(ends, at)) < len(ends)
        ]
        value: float | None = None
        if forecast_replicas is not None:
            minute = int(at // 60) - first_minute
            value = float(forecast_replicas[minute]) if 0 <= minute < forecast_replicas.size else None
        signals = policy.Signals(
            sessions=active,
            next_session_expiry=utc_datetime(min(expiries)) if expiries else None,
            forecast=None if value is None or math.isnan(value) else value,
            batch_sessions=batch_active,
        )
        previous = policy.decide_floor(spec, signals, utc_datetime(at), previous)
        changes.append((at, previous.floor))
        while k < len(timeline) and timeline[k] <= at:
            k += 1
        following = timeline[k] if k < len(timeline) else math.inf
        if previous.next_change is not None and previous.next_change.timestamp() > at:
            following = min(following, previous.next_change.timestamp())
        at = following
    return changes, previous


def requests_of(request: traces.TargetRequests, members: np.ndarray) -> traces.TargetRequests:
    """The requests of `request` that `members` selects (itself when it selects all)."""
    if members.all():
        return request
    groups = tuple(g for g, keep in zip(request.groups, members.tolist(), strict=True) if keep)
    return traces.TargetRequests(request.name, request.arrivals[members], request.exec_seconds[members], groups)


def synthetic_sessions(
    request: traces.TargetRequests, lead: IntentLead, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Sessions of `request` opened a sampled lead before their first request, closed after their last."""
    runs = traces.sessions_of(request.groups, request.arrivals, request.arrivals + request.exec_seconds, SESSION_GAP)
    leads = lead.median_seconds * np.exp(lead.sigma * rng.standard_normal(len(runs)))
    return [(first - float(d), last) for (first, last), d in zip(runs, leads.tolist(), strict=True)]


@dataclasses.dataclass(frozen=True, slots=True)
class TraceForecast:
    """P(arrival in the horizon) per target and minute from periodic refits; NaN where the fallback rules.

    `tails[target][i]` is the demand tail known at the start of block `i` (minute index `blocks[i]`).
    """

    first_minute: int
    probability: Mapping[str, np.ndarray]
    fallback: Mapping[str, np.ndarray]  # the hybrid-histogram rule's floor where probability is NaN
    blocks: np.ndarray  # minute index each refit block starts at
    tails: Mapping[str, np.ndarray]  # (blocks, MAX_LEVEL) per target
    counts: Mapping[str, np.ndarray]  # interactive arrivals per minute, from `first_minute`

    def replicas(
        self,
        target: str,
        quantile: float,
        concurrency: int,
        *,
        keep_alive_minutes: int = 0,
        keep_alive_replicas: int = 1,
        span: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Replicas per minute for `target`: the learned floor with each block's demand tail (the
        fallback where the model does not speak), and at least `keep_alive_replicas` for
        `keep_alive_minutes` after a minute with arrivals.

        With `span` (minute indexes [lo, hi)) only those minutes are computed; the others read 0.
        """
        p = self.probability[target]
        lo, hi = (0, p.size) if span is None else (max(0, span[0]), min(p.size, span[1]))
        floor = np.zeros(p.size)
        bounds = [*self.blocks.tolist(), p.size]
        for i, (start, end) in enumerate(itertools.pairwise(bounds)):
            start, end = max(start, lo), min(end, hi)
            if start < end:
                floor[start:end] = arrival_model.replicas_for(
                    np.nan_to_num(p[start:end]), self.tails[target][i], quantile, concurrency
                )
        floor[lo:hi] = np.where(np.isnan(p[lo:hi]), self.fallback[target][lo:hi], floor[lo:hi])
        if keep_alive_minutes > 0:
            recent = arrival_model.keep_alive_replicas(
                self.counts[target],
                np.arange(lo, hi),
                keep_alive_minutes=keep_alive_minutes,
                replicas=keep_alive_replicas,
            )
            floor[lo:hi] = np.maximum(floor[lo:hi], recent)
        return floor


def minute_grid(trace: traces.Trace) -> tuple[int, int]:
    """The trace's first absolute minute and how many minutes the forecasts cover (one spare)."""
    first_minute = int(trace.start // 60)
    return first_minute, int(trace.end // 60) - first_minute + 2


def trace_histories(trace: traces.Trace) -> dict[str, pooled_forecast.TargetHistory]:
    """Each target's interactive arrivals per minute over the trace's minute grid (every minute
    known): batch sessions raise floors through the batch allowance alone, never the forecast."""
    first_minute, n_minutes = minute_grid(trace)
    return {
        t.name: pooled_forecast.TargetHistory(
            first_minute,
            np.bincount(
                (t.arrivals[~t.batch_mask()] // 60).astype(np.int64) - first_minute, minlength=n_minutes
            ).astype(np.float64),
        )
        for t in trace.targets
    }


@dataclasses.dataclass(frozen=True, slots=True)
class RunTimes:
    """A target's interactive run times by arrival: the service time its history gives (a history
    export writes each request's seconds in its arrival minute, and serve reads them back)."""

    arrivals: np.ndarray  # sorted arrival times, seconds since the epoch
    total: np.ndarray  # cumulative run seconds, aligned

    @classmethod
    def of(cls, request: traces.TargetRequests) -> RunTimes:
        interactive = ~request.batch_mask()
        return cls(request.arrivals[interactive], np.cumsum(request.exec_seconds[interactive]))

    def mean_before(self, at: float) -> float | None:
        """The mean run time of the requests that arrived before `at` (a minute start); None before the first."""
        n = int(np.searchsorted(self.arrivals, at, side="left"))
        return float(self.total[n - 1] / n) if n else None


def forecast_trace(
    trace: traces.Trace,
    config: arrival_model.ForecastConfig,
    *,
    predict_from: float,
    refit_minutes: int,
    lead_seconds: float | None = None,
    on_refit: Callable[[], None] | None = None,
) -> TraceForecast:
    """Refit every `refit_minutes` of trace time on the bounded past of all targets; predict the next block.

    Each refit and the prediction at its first minute are `pooled_forecast`'s, as in `prewarm serve`;
    within a block the same model and rule answer every minute.
    """
    first_minute, n_minutes = minute_grid(trace)
    minutes = np.arange(n_minutes)
    histories = trace_histories(trace)
    lead_seconds = config.horizon * 60.0 if lead_seconds is None else lead_seconds
    features = {name: h.features(minutes, config.horizon, config.dropped_features) for name, h in histories.items()}
    probability = {name: np.full(n_minutes, np.nan) for name in histories}
    fallback = {name: np.zeros(n_minutes) for name in histories}
    begin = max(0, int(predict_from // 60) - first_minute)
    blocks = np.arange(begin, n_minutes, refit_minutes)
    tails = {name: np.zeros((blocks.size, arrival_model.MAX_LEVEL)) for name in histories}
    service = {t.name: RunTimes.of(t) for t in trace.targets}
    for i, block in enumerate(blocks.tolist()):
        block_end = min(block + refit_minutes, n_minutes)
        model = pooled_forecast.fit_at(histories, minute=first_minute + block, config=config, features=features)
        services = {name: runs.mean_before((first_minute + block) * 60.0) for name, runs in service.items()}
        block_tails = pooled_forecast.demand_tails(
            histories,
            minute=first_minute + block,
            horizon=config.horizon,
            service_seconds=services,
            lead_seconds=dict.fromkeys(histories, lead_seconds),
        )
        for name, history in histories.items():
            tails[name][i] = block_tails[name]
            if model.estimator is not None and history.learned(block):
                probability[name][block:block_end] = model.probability(features[name][block:block_end])
            else:
                fallback[name][block:block_end] = idle_histogram.fallback_replicas(
                    history.requests, minutes[block:block_end], learned_until=block
                )
        if on_refit is not None:
            on_refit()
    counts = {name: h.requests for name, h in histories.items()}
    return TraceForecast(first_minute, probability, fallback, blocks, tails, counts)


def refit_count(trace: traces.Trace, predict_from: float, refit_minutes: int) -> int:
    """How many refits `forecast_trace` makes (for progress reporting)."""
    first_minute, n_minutes = minute_grid(trace)
    begin = max(0, int(predict_from // 60) - first_minute)
    return max(0, math.ceil((n_minutes - begin) / refit_minutes))


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayResult:
    """Scores of the requested policies and of the frontier sweeps."""

    scores: tuple[PolicyScore, ...]
    keepalive_frontier: tuple[PolicyScore, ...]
    prewarm_frontier: tuple[PolicyScore, ...]
    prewarm_intent_frontier: tuple[PolicyScore, ...]
    window: simulation.Window
    targets: int


class Replay:
    """Replays one trace under any policy; forecasts are computed once and shared by all quantiles."""

    def __init__(self, trace: traces.Trace, settings: ReplaySettings) -> None:
        self.trace = trace
        self.settings = settings
        start = settings.score_from if settings.score_from is not None else trace.start
        self.window = simulation.Window(start, trace.end + 1.0)
        self.days = (self.window.end - self.window.start) / 86400.0
        self._forecast: TraceForecast | None = None
        self._sessions: dict[str, list[tuple[float, float]]] | None = None
        self._batch_sessions: dict[str, list[tuple[float, float]]] = {}
        self._scored: ttft.ScoredRequests | None = None

    @property
    def forecast_predict_from(self) -> float:
        """An hour of warm-up before scoring, or before the tuning history when there is one."""
        return max(self.trace.start, self.window.start - self.settings.tune_days * 86400.0 - 3600.0)

    def with_cold_starts(self, cold_starts: np.ndarray, by_target: Mapping[str, np.ndarray]) -> Replay:
        """The same replay with other cold-start samples (another weights tier), sharing the
        forecast, sessions and scored requests already computed: only the simulation differs."""
        other = Replay(
            self.trace,
            dataclasses.replace(self.settings, cold_starts=cold_starts, cold_starts_by_target=dict(by_target)),
        )
        other._forecast, other._scored = self._forecast, self._scored
        if self._sessions is not None:
            other._sessions, other._batch_sessions = self._sessions, self._batch_sessions
        return other

    def cold_starts_of(self, index: int) -> simulation.ColdStarts:
        """Target `index`'s cold-start draws (its own samples, else the shared ones)."""
        name = self.trace.targets[index].name
        samples = self.settings.cold_starts_by_target.get(name, self.settings.cold_starts)
        return simulation.ColdStarts(samples, self.settings.seed, index)

    def prepare_forecast(self, on_refit: Callable[[], None] | None = None) -> TraceForecast:
        if self._forecast is None:
            self._forecast = forecast_trace(
                self.trace,
                self.settings.forecast,
                predict_from=self.forecast_predict_from,
                refit_minutes=self.settings.refit_minutes,
                lead_seconds=float(np.median(self.settings.cold_starts)),
                on_refit=on_refit,
            )
        return self._forecast

    def sessions(self) -> dict[str, list[tuple[float, float]]]:
        """Synthetic interactive sessions per target (`batch_sessions` has the batch ones)."""
        if self._sessions is None:
            lead = self.settings.intent_lead
            self._sessions = {}
            for index, request in enumerate(self.trace.targets):
                batch = request.batch_mask()
                for stream, members, into in ((1, ~batch, self._sessions), (2, batch, self._batch_sessions)):
                    if lead is None or not members.any():
                        into[request.name] = []
                    else:
                        rng = np.random.default_rng([self.settings.seed, index, stream])
                        into[request.name] = synthetic_sessions(requests_of(request, members), lead, rng)
        return self._sessions

    def batch_sessions(self) -> dict[str, list[tuple[float, float]]]:
        self.sessions()
        return self._batch_sessions

    def scored_requests(self) -> ttft.ScoredRequests:
        """Class and model TTFT of each scored request, shared by every policy."""
        if self._scored is None:
            self._scored = ttft.scored_requests(
                self.trace, self.window, self.settings.model_ttft, seed=self.settings.seed
            )
        return self._scored

    def floor(self, choice: PolicyChoice, request: traces.TargetRequests, *, intent: bool) -> simulation.FloorSteps:
        kind = choice.kind
        if kind is PolicyKind.KNATIVE_DEFAULT:
            return simulation.FloorSteps()
        if kind is PolicyKind.KEEPALIVE:
            return keepalive_floor(request.arrivals, request.exec_seconds, choice.value or 0.0)
        if kind is PolicyKind.HYBRID_HISTOGRAM:
            return hybrid_histogram_floor(request.arrivals, request.exec_seconds)
        start, end = self.trace.start, self.window.end
        if kind is PolicyKind.CRON:
            spec = self.settings.cron_specs.get(request.name)
            if spec is None or not spec.cron:
                return simulation.FloorSteps()
            cron_only = dataclasses.replace(spec, forecast=targets.ForecastSettings(enabled=False))
            return decision_floor(cron_only, start=start, end=end)
        quantile = choice.value if choice.value is not None else self.settings.quantile
        return self.prewarm_floor(self.spec_for(request.name, quantile), request, intent=intent, start=start, end=end)

    def spec_for(self, target: str, quantile: float) -> targets.TargetSpec:
        """The spec the `prewarm` policy replays `target` with at `quantile`."""
        horizon_seconds = self.settings.forecast.horizon * 60.0  # what the forecaster predicts for
        spec = default_spec(target, quantile, horizon_seconds, self.settings.concurrency, self.settings.hold)
        return dataclasses.replace(spec, batch=self.settings.batch, budget=self.settings.budget)

    def prewarm_floor(
        self, spec: targets.TargetSpec, request: traces.TargetRequests, *, intent: bool, start: float, end: float
    ) -> simulation.FloorSteps:
        """The floor `decide_floor` sets for `spec` over [start, end) from the trace's forecast (and
        synthetic sessions with `intent`); none from the forecast when `spec` turns it off, as live."""
        return decision_floor(
            spec,
            start=start,
            end=end,
            forecast_replicas=self.forecast_replicas(spec, request.name) if spec.forecast.enabled else None,
            first_minute=self.prepare_forecast().first_minute,
            sessions=self.sessions()[request.name] if intent else (),
            batch_sessions=self.batch_sessions()[request.name] if intent else (),
        )

    def forecast_replicas(self, spec: targets.TargetSpec, target: str) -> np.ndarray:
        """The replicas per minute the trace's forecast asks for under `spec`'s forecast settings."""
        return self.prepare_forecast().replicas(
            target,
            spec.forecast.quantile,
            self.settings.concurrency,
            keep_alive_minutes=spec.forecast.keep_alive_minutes,
            keep_alive_replicas=spec.forecast.keep_alive_replicas,
        )

    def simulate(
        self, index: int, floor: simulation.FloorSteps, window: simulation.Window | None = None
    ) -> simulation.Outcome:
        """Target `index`'s requests under the reactive autoscaler over `floor`, scored in `window`."""
        request = self.trace.targets[index]
        return simulation.simulate(
            request.arrivals,
            request.exec_seconds,
            floor,
            self.cold_starts_of(index),
            concurrency=self.settings.concurrency,
            window=self.window if window is None else window,
        )

    def run_policy(self, choice: PolicyChoice, *, intent: bool = False) -> simulation.Outcome:
        total = simulation.Outcome()
        for index, request in enumerate(self.trace.targets):
            if choice.kind is PolicyKind.ORACLE:
                cold = self.cold_starts_of(index)
                outcome = simulation.simulate_oracle(
                    request.arrivals,
                    request.exec_seconds,
                    cold,
                    concurrency=self.settings.concurrency,
                    window=self.window,
                )
            else:
                outcome = self.simulate(index, self.floor(choice, request, intent=intent))
            total.add(outcome)
        return total

    def score(self, choice: PolicyChoice, *, intent: bool = False) -> PolicyScore:
        name = choice.name + (" +intent" if intent else "")
        outcome = self.run_policy(choice, intent=intent)
        return PolicyScore.from_outcome(name, outcome, self.days, synthetic=intent, scored=self.scored_requests())


class ProgressSteps:
    """Counts finished steps of a known total and reports each to `on_progress` (label, done, total)."""

    def __init__(self, total: int, on_progress: Callable[[str, int, int], None] | None) -> None:
        self._total = total
        self._done = 0
        self._on_progress = on_progress

    def __call__(self, label: str) -> None:
        self._done += 1
        if self._on_progress is not None:
            self._on_progress(label, self._done, self._total)


def run_replay(
    trace: traces.Trace,
    settings: ReplaySettings,
    choices: Sequence[PolicyChoice],
    *,
    sweep: bool = True,
    on_progress: Callable[[str, int, int], None] | None = None,
    replay: Replay | None = None,
) -> ReplayResult:
    """Score `choices` (with synthetic intent added to `prewarm` when a lead is set) and the frontier
    sweeps; `replay` (of this trace and settings) lets a caller reuse its forecast afterwards."""
    replay = replay or Replay(trace, settings)
    intent = settings.intent_lead is not None
    jobs: list[tuple[PolicyChoice, bool, str]] = []
    for choice in choices:
        jobs.append((choice, False, "summary"))
        if intent and choice.kind is PolicyKind.PREWARM:
            jobs.append((choice, True, "summary"))
    if sweep:
        jobs += [(PolicyChoice(PolicyKind.KEEPALIVE, s), False, "keepalive") for s in KEEPALIVE_SWEEP]
        jobs += [(PolicyChoice(PolicyKind.PREWARM, q), False, "prewarm") for q in QUANTILE_SWEEP]
        if intent:
            jobs += [(PolicyChoice(PolicyKind.PREWARM, q), True, "prewarm+intent") for q in QUANTILE_SWEEP]
    needs_forecast = any(choice.kind is PolicyKind.PREWARM for choice, _, _ in jobs)
    refits = refit_count(trace, replay.forecast_predict_from, settings.refit_minutes) if needs_forecast else 0
    step = ProgressSteps(refits + len(jobs), on_progress)
    if needs_forecast:
        replay.prepare_forecast(on_refit=lambda: step("forecast refit"))
    groups: dict[str, list[PolicyScore]] = {"summary": [], "keepalive": [], "prewarm": [], "prewarm+intent": []}
    for choice, with_intent, group in jobs:
        groups[group].append(replay.score(choice, intent=with_intent))
        step(choice.name)
    return ReplayResult(
        scores=tuple(groups["summary"]),
        keepalive_frontier=tuple(groups["keepalive"]),
        prewarm_frontier=tuple(groups["prewarm"]),
        prewarm_intent_frontier=tuple(groups["prewarm+intent"]),
        window=replay.window,
        targets=len(trace.targets),
    )


def frontier_cold_starts(frontier: Iterable[PolicyScore], warm_hours: float) -> float | None:
    """Cold starts on the piecewise-linear frontier at `warm_hours` (None outside its span)."""
    points = sorted((s.warm_replica_hours_per_day, s.cold_starts) for s in frontier)
    if not points or not points[0][0] <= warm_hours <= points[-1][0]:
        return None
    hours = [p[0] for p in points]
    return float(np.interp(warm_hours, hours, [p[1] for p in points]))
