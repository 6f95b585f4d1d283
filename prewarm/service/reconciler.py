"""Reconcilers apply decided floors through actuators, apart from deciding (Knative's controller).

The decider stores a decision and `submit`s it: that only records the target's newest desired
floor and queues the target (prewarm/service/work_queue.py). A bounded set of workers takes
targets from the queue, one worker per target at a time, and hands the actuator the newest
decision; whatever the actuator raises is retried with per-target backoff until the floor is
observed applied, so a slow or failing API call holds up that target alone. Each target's
desired and applied floor, attempts and last error are kept for `/targets` and metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import trace

from prewarm.core import actuation as outcomes
from prewarm.core import policy
from prewarm.service import actuation, backoff, clock, telemetry, work_queue

log = logging.getLogger(__name__)

REFUSED_RETRY = 30.0  # seconds before a refused floor is tried again (the cause may be fixed meanwhile)
RETRY_SHARE = 0.25  # at most this share of the workers retry failing targets at once: the rest take fresh work
RETRY_LATER = 0.25  # seconds a retry waits when that share is busy (a stalled API holds its workers)


@dataclasses.dataclass(slots=True)
class TargetActuation:
    """One target as one actuator sees it."""

    desired: policy.FloorDecision | None = None
    applied: policy.FloorDecision | None = None  # the decision last observed applied here
    releasing: bool = False  # pre-warming ended: undo the floor, then forget the target
    recheck: bool = False  # look at the world again even when `applied` matches (drift, new leader)
    pending_since: float | None = None  # when `desired` stopped matching `applied` (clock seconds)
    attempts: int = 0  # failed or refused attempts since the floor was last applied
    last_error: str | None = None
    state: str = "pending"  # pending | applied | retrying | refused | skipped
    reason: str = ""  # why refused or skipped
    context: trace.SpanContext | None = None  # the decision's span: the attempt is its child


class Reconciler:
    """One actuator's queue and workers; `run()` until cancelled, which cancels every worker."""

    def __init__(
        self,
        actuator: actuation.Actuator,
        *,
        clock: clock.Clock,
        workers: int = 8,
        limiter: backoff.RateLimiter | None = None,
        telemetry: telemetry.Telemetry | None = None,
        refused_retry: float = REFUSED_RETRY,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a reconciler needs at least one worker, got {workers}")
        self.actuator = actuator
        self.name = actuator.name
        self._clock = clock
        self._workers = workers
        self._queue = work_queue.WorkQueue(clock=clock, limiter=limiter)
        self._telemetry = telemetry
        self._refused_retry = refused_retry
        self._states: dict[str, TargetActuation] = {}
        self._retry_slots = max(1, int(workers * RETRY_SHARE))
        self._retrying = 0  # workers on a target that failed before
        self.retries = 0
        if telemetry is not None:
            telemetry.watch_actuation(self.name, depth=self.depth, oldest_unapplied=self.oldest_unapplied)

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def submit(self, decision: policy.FloorDecision, *, recheck: bool = False, slow: bool = False) -> None:
        """Make `decision` the floor to apply for its target (the newest wins) and queue the target.

        With `recheck`, apply it even when this actuator applied that floor before (the world may
        have drifted, or another replica led meanwhile); `slow` queues it behind fresh changes."""
        target = decision.target
        entry = self._states.get(target)
        if entry is None:
            entry = self._states[target] = TargetActuation()
        entry.desired, entry.releasing = decision, False
        entry.recheck = entry.recheck or recheck
        current = trace.get_current_span().get_span_context()
        entry.context = current if current.is_valid else None
        if not entry.recheck and entry.applied is not None and entry.applied.floor == decision.floor:
            self._settle(target, entry)
            return
        if entry.pending_since is None:
            entry.pending_since = self._now()
        if entry.state in ("applied", "skipped"):
            entry.state = "pending"
        self._queue.add(target, slow=slow)

    def recheck(self, targets: Iterable[str]) -> None:
        """Apply these targets' desired floors again (a new leader, a routed revision changed)."""
        for target in targets:
            entry = self._states.get(target)
            if entry is not None and entry.desired is not None:
                self.submit(entry.desired, recheck=True)

    def release(self, target: str) -> None:
        """Pre-warming ended for `target`: undo its floor (retried like any floor), then forget it."""
        entry = self._states.setdefault(target, TargetActuation())
        entry.desired, entry.releasing, entry.state = None, True, "pending"
        entry.pending_since = entry.pending_since or self._now()
        self._queue.add(target)

    def drop(self, target: str) -> None:
        """Stop applying floors to `target` here (another replica decides it now, or it is gone)."""
        self._states.pop(target, None)
        self._queue.forget(target)

    def describe(self, target: str) -> dict[str, Any] | None:
        """For `/targets`: desired vs applied floor, state, attempts and the last error."""
        entry = self._states.get(target)
        if entry is None:
            return None
        return {
            "desired": None if entry.desired is None else entry.desired.floor,
            "applied": None if entry.applied is None else entry.applied.floor,
            "state": "releasing" if entry.releasing and entry.state != "retrying" else entry.state,
            "attempts": entry.attempts,
            "last_error": entry.last_error,
            "reason": entry.reason or None,
            "unapplied_for": None if entry.pending_since is None else round(self._now() - entry.pending_since, 3),
        }

    def depth(self) -> int:
        """Targets waiting for a worker or for their backoff."""
        return len(self._queue)

    def oldest_unapplied(self) -> float:
        """Seconds the longest-waiting desired floor has not been applied (0 when all are)."""
        oldest = min(
            (e.pending_since for e in self._states.values() if e.pending_since is not None),
            default=None,
        )
        return 0.0 if oldest is None else max(0.0, self._now() - oldest)

    async def run(self) -> None:
        """Work the queue with the configured number of workers until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._queue.run_timers(), name=f"{self.name}-timers")
                for index in range(self._workers):
                    group.create_task(self._work(), name=f"{self.name}-worker-{index}")
        finally:
            self._queue.shut_down()

    async def _work(self) -> None:
        while True:
            try:
                target = await self._queue.get()
            except work_queue.ShutDown:
                return
            entry = self._states.get(target)
            retry = entry is not None and entry.attempts > 0
            if retry and self._retrying >= self._retry_slots:
                # many targets failing at once (calls that hang until their timeout) would take
                # every worker: their retries wait for a retry slot, fresh floors go ahead
                self._queue.done(target)
                self._queue.add_after(target, RETRY_LATER)
                continue
            self._retrying += retry
            try:
                await self._reconcile(target)
            finally:
                self._retrying -= retry
                self._queue.done(target)

    async def _reconcile(self, target: str) -> None:
        entry = self._states.get(target)
        if entry is None or (entry.desired is None and not entry.releasing):
            self._queue.forget(target)
            return
        decision = entry.desired
        if (
            decision is not None
            and not entry.recheck
            and entry.applied is not None
            and entry.applied.floor == decision.floor
        ):
            self._settle(target, entry)
            return
        recheck, entry.recheck = entry.recheck, False
        began = time.perf_counter()
        try:
            result = await self._attempt(target, decision, entry)
        except Exception as e:
            seconds = time.perf_counter() - began
            if self._states.get(target) is not entry:
                return  # dropped meanwhile
            entry.recheck = entry.recheck or recheck
            entry.attempts += 1
            entry.last_error = f"{type(e).__name__}: {e}"
            entry.state = "retrying"
            delay = self._queue.add_rate_limited(target)
            self.retries += 1
            floor = "release" if decision is None else f"floor {decision.floor}"
            log.warning(
                "%s: %s %s not applied (attempt %d, again in %.2fs): %s",
                target,
                self.name,
                floor,
                entry.attempts,
                delay,
                entry.last_error,
            )
            if self._telemetry is not None:
                self._telemetry.record_actuation(self.name, "error", seconds)
                self._telemetry.record_actuation_retry(self.name)
            return
        if self._telemetry is not None:
            self._telemetry.record_actuation(self.name, result.outcome.value, time.perf_counter() - began)
        if self._states.get(target) is not entry:
            return
        if result.outcome is outcomes.Outcome.REFUSED:
            entry.attempts += 1
            entry.state, entry.reason = "refused", result.reason
            entry.recheck = entry.recheck or recheck
            self._queue.add_after(target, self._refused_retry)
            return
        if decision is None:  # released
            if entry.desired is None and entry.releasing:
                del self._states[target]
            self._queue.forget(target)
            return
        if result.outcome is outcomes.Outcome.SKIPPED:
            entry.state, entry.reason = "skipped", result.reason
            entry.applied, entry.pending_since, entry.attempts = None, None, 0
            self._queue.forget(target)
            return
        entry.applied = decision
        if entry.desired is decision:
            self._settle(target, entry)

    async def _attempt(
        self, target: str, decision: policy.FloorDecision | None, entry: TargetActuation
    ) -> outcomes.Result:
        if self._telemetry is None or entry.context is None:  # a span only as a decision span's child
            return await self._call(target, decision, entry.applied)
        parent = trace.set_span_in_context(trace.NonRecordingSpan(entry.context))
        with self._telemetry.tracer.start_as_current_span(
            "actuate", context=parent, attributes={"prewarm.actuator": self.name, "prewarm.target": target}
        ):
            return await self._call(target, decision, entry.applied)

    async def _call(
        self, target: str, decision: policy.FloorDecision | None, applied: policy.FloorDecision | None
    ) -> outcomes.Result:
        if decision is None:
            return await self.actuator.release(target)
        return await self.actuator.apply(decision, applied)

    def _settle(self, target: str, entry: TargetActuation) -> None:
        entry.state, entry.reason = "applied", ""
        entry.pending_since, entry.attempts, entry.last_error = None, 0, None
        self._queue.forget(target)


class Reconcilers:
    """Every actuator's reconciler: the decider submits to all of them at once."""

    def __init__(self, reconcilers: Sequence[Reconciler]) -> None:
        self.all = tuple(reconcilers)

    def submit(self, decision: policy.FloorDecision) -> None:
        for reconciler in self.all:
            reconciler.submit(decision)

    def drop(self, target: str) -> None:
        for reconciler in self.all:
            reconciler.drop(target)

    def describe(self, target: str) -> dict[str, Any]:
        """Per actuator name, what `Reconciler.describe` says (actuators that never saw it left out)."""
        view = {}
        for reconciler in self.all:
            row = reconciler.describe(target)
            if row is not None:
                view[reconciler.name] = row
        return view

    async def run(self) -> None:
        """Run every reconciler until cancelled."""
        async with asyncio.TaskGroup() as group:
            for reconciler in self.all:
                group.create_task(reconciler.run(), name=f"reconciler-{reconciler.name}")
