"""Every OpenTelemetry instrument of kube-prewarm, in one class; providers are passed in.

Label values come from configuration (target names, actuator names, fixed enums), never from raw
event fields, so cardinality is bounded by the number of configured targets.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable
from datetime import datetime

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import Link, SpanContext, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from prewarm.core import policy

POD_PHASES = ("container_started", "cache_restored", "weights_loaded", "runtime_ready", "first_token")
_PROPAGATOR = TraceContextTextMapPropagator()
_MAX_PODS = 1000  # pod starts followed at once; the oldest is dropped beyond that
# Bucket boundaries in seconds (the SDK's defaults suit milliseconds).
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
COLD_START_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0)
FORECAST_ERROR_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1e9)


def parse_traceparent(traceparent: str | None) -> SpanContext | None:
    """The span context a W3C `traceparent` (CloudEvents distributed-tracing extension) names."""
    if not traceparent:
        return None
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


@dataclasses.dataclass(slots=True)
class _PodStart:
    target: str
    started: datetime
    last: datetime
    span: trace.Span


@dataclasses.dataclass(slots=True)
class _Raise:
    floor: int
    used: bool = False


class Telemetry:
    """Owns the instruments; each `record_*` method translates one fact into metrics or spans."""

    def __init__(
        self, *, meter_provider: MeterProvider, tracer_provider: TracerProvider, targets: Iterable[str]
    ) -> None:
        meter = meter_provider.get_meter("kube-prewarm")
        self.tracer = tracer_provider.get_tracer("kube-prewarm")
        self._targets = set(targets)
        # Set per decision (a relist decides every target): plain dicts here, read by OpenTelemetry
        # only when it collects, instead of three instrument calls per decision.
        self._floors: dict[str, dict[str, int]] = {}  # target -> source -> floor (0 for superseded sources)
        self._session_counts: dict[str, int] = {}
        self._budgets: dict[str, float] = {}
        meter.create_observable_gauge(
            "prewarm.floor", callbacks=[self._observe_floors], unit="{replica}", description="Decided replica floor"
        )
        meter.create_observable_gauge(
            "prewarm.sessions.active", callbacks=[self._observe_sessions], unit="{session}", description="Live sessions"
        )
        meter.create_observable_gauge(
            "prewarm.budget.used",
            callbacks=[self._observe_budgets],
            unit="h",
            description="Pre-warm replica-hours spent today (UTC)",
        )
        # Counted per event on the ingest hot path: plain integers here, read by OpenTelemetry only
        # when it collects (a scrape or an export), instead of an instrument call per event.
        self._event_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        meter.create_observable_counter(
            "prewarm.events", callbacks=[self._observe_events], unit="{event}", description="CloudEvents received"
        )
        self._dropped_sessions: collections.Counter[str] = collections.Counter()
        meter.create_observable_counter(
            "prewarm.sessions.dropped",
            callbacks=[self._observe_dropped],
            unit="{session}",
            description="Live sessions dropped because the target's ledger was full (the first to expire go first)",
        )
        # One sample per batch of targets decided together, no target label: a relist of 50,000
        # targets makes neither 50,000 histogram series nor 50,000 instrument calls.
        self._decision_duration = meter.create_histogram(
            "prewarm.decision.duration",
            unit="s",
            description="Time to decide one target (the mean over each batch decided together)",
            explicit_bucket_boundaries_advisory=FAST_BUCKETS,
        )
        self._actuation_duration = meter.create_histogram(
            "prewarm.actuation.duration",
            unit="s",
            description="Time to apply one floor",
            explicit_bucket_boundaries_advisory=FAST_BUCKETS,
        )
        self._actuation_counts: collections.Counter[tuple[str, str]] = collections.Counter()  # read at collection
        meter.create_observable_counter(
            "prewarm.actuations",
            callbacks=[self._observe_actuations],
            unit="{actuation}",
            description="Attempts to apply a floor, by outcome: applied, skipped, refused or error",
        )
        self._actuation_retries = meter.create_counter(
            "prewarm.actuation.retries", unit="{actuation}", description="Failed attempts queued again with backoff"
        )
        self._queues: dict[str, tuple[Callable[[], int], Callable[[], float]]] = {}
        meter.create_observable_gauge(
            "prewarm.actuation.queue.depth",
            callbacks=[self._observe_queue_depth],
            unit="{target}",
            description="Targets waiting for an actuator's worker or for their backoff",
        )
        meter.create_observable_gauge(
            "prewarm.actuation.unapplied.age",
            callbacks=[self._observe_unapplied_age],
            unit="s",
            description="How long the oldest decided floor has not been applied",
        )
        self._knative_refusals = meter.create_counter(
            "prewarm.knative.refusals",
            unit="{actuation}",
            description="Knative floors not written because the installed Knative Serving version is unknown",
        )
        meter.create_observable_counter(
            "prewarm.cold_starts",
            callbacks=[self._observe_cold],
            unit="{session}",
            description="Sessions that opened with no warm replica",
        )
        meter.create_observable_counter(
            "prewarm.warm_starts",
            callbacks=[self._observe_warm],
            unit="{session}",
            description="Sessions that opened with a warm replica",
        )
        self._phase_duration = meter.create_histogram(
            "prewarm.cold_start.duration",
            unit="s",
            description="Pod start: container start to each phase",
            explicit_bucket_boundaries_advisory=COLD_START_BUCKETS,
        )
        self._forecast_error = meter.create_histogram(
            "prewarm.forecast.error",
            unit="1",
            description="|P(arrival in the horizon) - observed| per prediction, once its horizon has passed",
            explicit_bucket_boundaries_advisory=FORECAST_ERROR_BUCKETS,
        )
        self._forecast_degraded = meter.create_gauge(
            "prewarm.forecast.degraded",
            unit="1",
            description="1 while a target's forecast history cannot be read (the last model is kept)",
        )
        self._history_unknown = meter.create_gauge(
            "prewarm.history.unknown_minutes",
            unit="min",
            description="Minutes of a target's loaded request history that are unknown",
        )
        self._history_queries = meter.create_counter(
            "prewarm.history.queries", unit="{query}", description="Prometheus query_range calls for request history"
        )
        meter.create_observable_gauge(
            "prewarm.pool.hit_ratio",
            callbacks=[self._observe_hit_ratio],
            unit="1",
            description="Share of sessions that found a warm replica",
        )
        meter.create_observable_gauge(
            "prewarm.intent.prediction_accuracy",
            callbacks=[self._observe_accuracy],
            unit="1",
            description="Share of intent-driven raises used before the floor fell",
        )
        self._objective = meter.create_gauge(
            "prewarm.objective.cold_starts", unit="1", description="Requested share of cold starts (objective)"
        )
        self._objective_observed = meter.create_gauge(
            "prewarm.objective.observed", unit="1", description="Cold-start share of session starts in the last hour"
        )
        self._objective_predicted = meter.create_gauge(
            "prewarm.objective.predicted", unit="1", description="Cold-start share the tuned setting had on history"
        )
        self._objective_hours = meter.create_gauge(
            "prewarm.objective.warm_hours",
            unit="h",
            description="Warm replica-hours per day the tuned setting had on history",
        )
        self._objective_quantile = meter.create_gauge(
            "prewarm.objective.quantile", unit="1", description="The tuned forecast quantile (0: forecast off)"
        )
        self._starts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])  # target -> [warm, cold]
        self._raises: dict[str, _Raise] = {}
        self._raise_outcomes: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])  # [used, total]
        self._pods: collections.OrderedDict[tuple[str, str], _PodStart] = collections.OrderedDict()

    def _target(self, target: str) -> str:
        return target if target in self._targets else "other"

    def add_target(self, target: str) -> None:
        """A target configured after start (inline scalerMetadata) gets its own label value."""
        self._targets.add(target)

    # --- events and sessions ---

    def record_events(self, kind: str, outcome: str, count: int = 1) -> None:
        """`kind`: opened/heartbeat/closed/phase or `unknown`; `outcome`: accepted, duplicate, rejected.<code>."""
        self._event_counts[(kind, outcome)] += count

    def _observe_events(self, options: CallbackOptions) -> Iterable[Observation]:
        for (kind, outcome), count in sorted(self._event_counts.items()):
            yield Observation(count, {"type": kind, "outcome": outcome})

    def record_sessions_dropped(self, target: str, count: int) -> None:
        """The store dropped `count` live sessions of `target`: its ledger was full."""
        self._dropped_sessions[self._target(target)] += count

    def _observe_dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        for target, count in sorted(self._dropped_sessions.items()):
            yield Observation(count, {"target": target})

    def record_session_opened(self, target: str, floor_before: int | None) -> None:
        """A session opened: warm if the target's floor already kept a replica, cold otherwise."""
        self._starts[self._target(target)][0 if floor_before else 1] += 1

    def starts(self, target: str) -> tuple[int, int]:
        """Session starts of `target` counted so far: (warm, cold)."""
        warm, cold = self._starts.get(self._target(target), (0, 0))
        return warm, cold

    def record_tuning(
        self,
        target: str,
        *,
        objective: float | None,
        quantile: float | None,
        predicted_cold_share: float,
        predicted_warm_hours: float,
    ) -> None:
        """The tuner chose a setting for `target` (`prewarm.objective.*`)."""
        attributes = {"target": self._target(target)}
        if objective is not None:
            self._objective.set(objective, attributes)
        self._objective_predicted.set(predicted_cold_share, attributes)
        self._objective_hours.set(predicted_warm_hours, attributes)
        self._objective_quantile.set(0.0 if quantile is None else quantile, attributes)

    def record_observed_cold_share(self, target: str, share: float) -> None:
        """The cold-start share of `target`'s session starts over the last hour."""
        self._objective_observed.set(share, {"target": self._target(target)})

    def _observe_warm(self, options: CallbackOptions) -> Iterable[Observation]:
        for target, (warm, _) in sorted(self._starts.items()):
            yield Observation(warm, {"target": target})

    def _observe_cold(self, options: CallbackOptions) -> Iterable[Observation]:
        for target, (_, cold) in sorted(self._starts.items()):
            yield Observation(cold, {"target": target})

    def _observe_hit_ratio(self, options: CallbackOptions) -> Iterable[Observation]:
        for target, (warm, cold) in sorted(self._starts.items()):
            if warm + cold:
                yield Observation(warm / (warm + cold), {"target": target})

    # --- decisions and actuation ---

    def _observe_floors(self, options: CallbackOptions) -> Iterable[Observation]:
        for target, floors in sorted(self._floors.items()):
            for source, floor in sorted(floors.items()):
                yield Observation(floor, {"target": target, "source": source})

    def _observe_sessions(self, options: CallbackOptions) -> Iterable[Observation]:
        for target, count in sorted(self._session_counts.items()):
            yield Observation(count, {"target": target})

    def _observe_budgets(self, options: CallbackOptions) -> Iterable[Observation]:
        for target, hours in sorted(self._budgets.items()):
            yield Observation(hours, {"target": target})

    def record_decision_batch(self, decided: int, seconds: float) -> None:
        """`decided` targets were decided together in `seconds` (store reads, policy, save)."""
        if decided:
            self._decision_duration.record(seconds / decided)

    def record_decision(
        self, decision: policy.FloorDecision, previous: policy.FloorDecision | None, sessions: int
    ) -> None:
        """A stored decision: the per-target gauges (read at collection) and intent raise outcomes."""
        target = self._target(decision.target)
        # One non-zero series per target: the current source's. Summed over sources, it is the floor.
        floors = self._floors.get(target)
        if floors is None:
            self._floors[target] = {decision.source.value: decision.floor}
        else:
            for source in floors:
                floors[source] = 0
            floors[decision.source.value] = decision.floor
        self._session_counts[target] = sessions
        self._budgets[target] = decision.budget_used
        before = 0 if previous is None else previous.floor
        if decision.floor > before and decision.source is policy.Source.INTENT:
            self._raises.setdefault(decision.target, _Raise(floor=decision.floor))
        elif decision.floor < before and decision.target in self._raises:
            outcome = self._raise_outcomes[target]
            outcome[0] += int(self._raises.pop(decision.target).used)
            outcome[1] += 1

    def _observe_accuracy(self, options: CallbackOptions) -> Iterable[Observation]:
        for target, (used, total) in sorted(self._raise_outcomes.items()):
            if total:
                yield Observation(used / total, {"target": target})

    def record_forecast_error(self, target: str, error: float) -> None:
        """One scored prediction: 0 is a confident hit, 1 a confident miss."""
        self._forecast_error.record(error, {"target": self._target(target)})

    def record_forecast_degraded(self, target: str, degraded: bool) -> None:
        """Whether `target`'s forecast runs on a history that could not be read this minute."""
        self._forecast_degraded.set(1 if degraded else 0, {"target": self._target(target)})

    def record_history_unknown(self, target: str, minutes: int) -> None:
        """How many minutes of `target`'s loaded history are unknown."""
        self._history_unknown.set(minutes, {"target": self._target(target)})

    def record_history_query(self, preset: str, outcome: str) -> None:
        """One query_range call: `preset` (knative, keda-http, vllm, promql); `outcome` ok, rejected,
        unavailable or bad_result."""
        self._history_queries.add(1, {"preset": preset, "outcome": outcome})

    def record_actuation(self, actuator: str, outcome: str, seconds: float) -> None:
        """One attempt to apply a floor: `outcome` applied, skipped, refused or error."""
        self._actuation_counts[(actuator, outcome)] += 1
        self._actuation_duration.record(seconds, {"actuator": actuator})

    def _observe_actuations(self, options: CallbackOptions) -> Iterable[Observation]:
        for (actuator, outcome), count in sorted(self._actuation_counts.items()):
            yield Observation(count, {"actuator": actuator, "outcome": outcome})

    def record_actuation_retry(self, actuator: str) -> None:
        """A failed attempt was queued again with backoff."""
        self._actuation_retries.add(1, {"actuator": actuator})

    def watch_actuation(
        self, actuator: str, *, depth: Callable[[], int], oldest_unapplied: Callable[[], float]
    ) -> None:
        """Report an actuator's queue depth and the age of its oldest unapplied floor at each collection."""
        self._queues[actuator] = (depth, oldest_unapplied)

    def _observe_queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        for actuator, (depth, _) in sorted(self._queues.items()):
            yield Observation(depth(), {"actuator": actuator})

    def _observe_unapplied_age(self, options: CallbackOptions) -> Iterable[Observation]:
        for actuator, (_, oldest) in sorted(self._queues.items()):
            yield Observation(oldest(), {"actuator": actuator})

    def record_knative_refusal(self, target: str) -> None:
        """A Knative target's floor was not written: which object carries min-scale is unknown."""
        self._knative_refusals.add(1, {"target": self._target(target)})

    # --- pod start phases: one trace per pod start, a span per phase ---

    def record_pod_phase(self, *, target: str, pod: str, phase: str, at: datetime) -> None:
        """Turn the phases of one pod start into spans and `prewarm.cold_start.duration` samples."""
        key = (target, pod)
        start = self._pods.get(key)
        if phase == "container_started" or start is None:
            if start is not None:
                start.span.end(end_time=_ns(start.last))
            span = self.tracer.start_span(
                "pod start", start_time=_ns(at), attributes={"prewarm.target": target, "k8s.pod.name": pod}
            )
            start = self._pods[key] = _PodStart(target=target, started=at, last=at, span=span)
            while len(self._pods) > _MAX_PODS:
                _, dropped = self._pods.popitem(last=False)
                dropped.span.end(end_time=_ns(dropped.last))
            if phase == "container_started":
                return
        context = trace.set_span_in_context(start.span)
        child = self.tracer.start_span(phase, context=context, start_time=_ns(start.last))
        child.end(end_time=_ns(at))
        self._phase_duration.record(
            max(0.0, (at - start.started).total_seconds()), {"target": self._target(target), "phase": phase}
        )
        start.last = max(start.last, at)
        if phase == "first_token":
            raised = self._raises.get(target)
            if raised is not None:
                raised.used = True
            start.span.end(end_time=_ns(at))
            del self._pods[key]

    def decision_span(self, target: str, traceparent: str | None) -> trace.Span:
        """A span for deciding `target`, continuing the trace of the event that changed it."""
        parent = parse_traceparent(traceparent)
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
        span_links = [Link(parent)] if parent is not None else []
        return self.tracer.start_span(
            "decide floor", context=context, links=span_links, attributes={"prewarm.target": self._target(target)}
        )
