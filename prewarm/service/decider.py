"""The decision loop: the one writer of decisions.

It re-decides a target when its signals change (the store announces it) or when the target's last
decision said something would change by itself (a window opens, a hold ends, a session expires),
and sleeps in between: no busy tick. Floors that changed go to every actuator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from opentelemetry import trace

from prewarm.core import policy, targets
from prewarm.service import actuation, clock, state, telemetry

log = logging.getLogger(__name__)

ForecastSource = Callable[[targets.TargetSpec, datetime], float | None]
ForecastStatus = Callable[[str], str | None]  # why a target's forecast is degraded, or None
ForecastView = Callable[[str], Mapping[str, Any] | None]  # a target's forecast for /targets


class Decider:
    """Owns the decision for each configured target; call `run()` once, `mark_changed()` from anywhere."""

    def __init__(
        self,
        *,
        target_specs: Sequence[targets.TargetSpec],
        store: state.Store,
        actuators: Sequence[actuation.Actuator],
        clock: clock.Clock,
        forecast: ForecastSource | None = None,
        forecast_degraded: ForecastStatus | None = None,
        forecast_view: ForecastView | None = None,
        telemetry: telemetry.Telemetry | None = None,
    ) -> None:
        self._specs: dict[str, targets.TargetSpec] = {str(spec.ref): spec for spec in target_specs}
        self._store = store
        self._actuators = tuple(actuators)
        self._clock = clock
        self._forecast = forecast
        self._forecast_degraded = forecast_degraded
        self._forecast_view = forecast_view
        self._telemetry = telemetry
        self._traces: dict[str, str] = {}  # target -> traceparent of the event that changed it
        self._decisions: dict[str, policy.FloorDecision] = {}
        self._dirty: set[str] = set(self._specs)
        self._actuated: set[str] = set()  # targets whose floor this process has applied at least once
        self._wake = asyncio.Event()
        store.add_change_listener(self.mark_changed)

    @property
    def decisions(self) -> Mapping[str, policy.FloorDecision]:
        """The current decision per target (read-only view)."""
        return self._decisions

    @property
    def specs(self) -> Mapping[str, targets.TargetSpec]:
        """The targets this decider owns, by `namespace/name`."""
        return self._specs

    def add_target(self, spec: targets.TargetSpec) -> None:
        """Own `spec` from now on (or replace the target's spec) and decide it at once."""
        target = str(spec.ref)
        if self._specs.get(target) == spec:
            return
        self._specs[target] = spec
        if self._telemetry is not None:
            self._telemetry.add_target(target)
        self.mark_changed(target)

    def remove_target(self, target: str) -> None:
        """Stop deciding `target` (its stored decision stays for a later return)."""
        self._specs.pop(target, None)
        self._decisions.pop(target, None)
        self._dirty.discard(target)
        self._actuated.discard(target)
        self._traces.pop(target, None)

    def note_trace(self, target: str, traceparent: str) -> None:
        """Remember the trace of the event that changed `target`, so its decision continues it."""
        if target in self._specs:
            self._traces[target] = traceparent

    def mark_changed(self, target: str) -> None:
        """Ask for `target` to be re-decided now; unknown targets are ignored."""
        if target in self._specs:
            self._dirty.add(target)
            self._wake.set()

    async def run(self) -> None:
        """Decide forever: at start, on every announced change, and at each decision's next change."""
        while True:
            self._wake.clear()
            now = self._clock.now()
            due = self._dirty | {
                target
                for target, decision in self._decisions.items()
                if decision.next_change is not None and decision.next_change <= now
            }
            self._dirty.clear()
            for target in sorted(due):
                try:
                    await self.decide(target, now)
                except state.StateUnavailable as e:
                    log.warning("cannot decide %s, store unavailable: %s", target, e)
                    self._dirty.add(target)
            await self._clock.wait_until(self._next_wake(), self._wake)

    async def decide(self, target: str, now: datetime) -> policy.FloorDecision:
        """Decide one target at `now`, save the decision, and actuate if its floor changed."""
        if self._telemetry is None:
            return await self._decide(target, now, None)
        span = self._telemetry.decision_span(target, self._traces.pop(target, None))
        with trace.use_span(span, end_on_exit=True):  # actuation spans nest under it
            return await self._decide(target, now, span)

    async def _decide(self, target: str, now: datetime, span: trace.Span | None) -> policy.FloorDecision:
        began = time.perf_counter()
        spec = self._specs[target]
        previous = self._decisions.get(target)
        if previous is None:
            previous = await self._store.load_decision(target)  # carry holds and budget across restarts
        sessions = await self._store.count_sessions(target, now)
        forecast = self._forecast(spec, now) if self._forecast is not None and spec.forecast.enabled else None
        degraded = self._forecast_degraded(target) if self._forecast_degraded is not None else None
        signals = policy.Signals(
            sessions=sessions.active,
            next_session_expiry=sessions.next_expiry,
            forecast=forecast,
            forecast_degraded=degraded,
        )
        decision = policy.decide_floor(spec, signals, now, previous)
        await self._store.save_decision(decision)
        self._decisions[target] = decision
        if self._telemetry is not None:
            self._telemetry.record_decision(decision, previous, sessions.active, time.perf_counter() - began)
        if span is not None:
            span.set_attributes({"prewarm.floor": decision.floor, "prewarm.source": decision.source.value})
        if target not in self._actuated or previous is None or previous.floor != decision.floor:
            self._actuated.add(target)
            for actuator in self._actuators:
                await self._actuate(actuator, decision, previous)
        return decision

    async def _actuate(
        self, actuator: actuation.Actuator, decision: policy.FloorDecision, previous: policy.FloorDecision | None
    ) -> None:
        began = time.perf_counter()
        outcome = "ok"
        try:
            if self._telemetry is None:
                await actuator.apply(decision, previous)
            else:
                with self._telemetry.tracer.start_as_current_span(
                    "actuate", attributes={"prewarm.actuator": actuator.name}
                ):
                    await actuator.apply(decision, previous)
        except Exception:
            # One failing actuator must not stop the others or the loop; it retries its own way.
            outcome = "error"
            log.exception("actuator %s failed for %s", actuator.name, decision.target)
        if self._telemetry is not None:
            self._telemetry.record_actuation(actuator.name, outcome, time.perf_counter() - began)

    async def describe(self) -> list[dict[str, Any]]:
        """What the decision core sees per target, for operators: floor, source, reason, sessions."""
        now = self._clock.now()
        view = []
        for target, spec in sorted(self._specs.items()):
            decision = self._decisions.get(target)
            sessions = await self._store.count_sessions(target, now)
            view.append(
                {
                    "target": target,
                    "kind": spec.kind.value,
                    "floor": None if decision is None else decision.floor,
                    "source": None if decision is None else decision.source.value,
                    "reason": None if decision is None else decision.reason,
                    "decided_at": None if decision is None else decision.decided_at.isoformat(),
                    "next_change": None
                    if decision is None or decision.next_change is None
                    else decision.next_change.isoformat(),
                    "sessions": sessions.active,
                    "min": spec.min,
                    "max": spec.max,
                    "forecast": None if self._forecast_view is None else self._forecast_view(target),
                }
            )
        return view

    def _next_wake(self) -> datetime | None:
        times = [d.next_change for d in self._decisions.values() if d.next_change is not None]
        return min(times) if times else None
