"""The decision loop: the one writer of each target's decisions.

It re-decides a target when its signals change (the store announces it) or when the target's last
decision said something would change by itself (a window opens, a hold ends, a session expires),
and sleeps in between: no busy tick. A floor that changed is submitted to the reconcilers
(prewarm/service/reconciler.py), which queue it for the actuators: deciding never waits for acting.

Like an informer, it re-reads everything after any gap in what the store announces (each
(re)subscription, each recovery of the store), and a decision that failed is tried again with
backoff until it succeeds. With several replicas on one store, an `Ownership` (leases with
fencing tokens) says which targets this replica decides; the others' decisions are followed from
the store, so every replica knows every current floor but only one decides and actuates each.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from opentelemetry import trace

from prewarm.core import ledger, policy, targets
from prewarm.service import clock, reconciler, target_registry, telemetry
from prewarm.service.store import LeaseLost, StateUnavailable, Store

log = logging.getLogger(__name__)

ForecastSource = Callable[[targets.TargetSpec, datetime], float | None]
# A target's spec as tuned for its objective or fleet budget, and a note on how (empty: untuned).
TunedSpec = Callable[[targets.TargetSpec], tuple[targets.TargetSpec, str]]
ForecastStatus = Callable[[str], str | None]  # why a target's forecast is degraded, or None
ForecastView = Callable[[str], Mapping[str, Any] | None]  # a target's forecast for /targets
RETRY_FIRST = timedelta(milliseconds=100)  # after a failed decision; doubled per failure
RETRY_CAP = timedelta(seconds=2)
BATCH = 256  # targets decided per store round trip
IN_FLIGHT = 4  # batches decided at once
# A target that changed again while it was being decided (events arrive faster than decisions are
# made) is decided again this many seconds after, not at once: a stream of events makes a decision
# per target 20 times a second, not one per event. A change to a target decided before it came is
# decided at once.
HOT_GAP = 0.05


class Ownership(Protocol):
    """Which targets this replica decides, among replicas sharing a store (see leadership)."""

    def fence(self, target: str) -> str | None:
        """The token to write `target`'s decisions with while this replica decides it, else None."""
        ...

    def refused(self, target: str) -> None:
        """A write fenced with this replica's token was refused: it decides `target` no more."""
        ...

    @property
    def claimed(self) -> bool:
        """Whether the first claim was answered: before it, no target is known to be anyone's."""
        ...

    def follow(
        self, gained: Callable[[str], None], lost: Callable[[str], None], claimed: Callable[[], None] | None = None
    ) -> None:
        """Be told when this replica starts and stops deciding a target, and once the first claim is answered."""
        ...

    def targets_changed(self) -> None:
        """The set of targets changed."""
        ...


class Decider:
    """Decides each configured target it owns; call `run()` once, `mark_changed()` from anywhere.

    Without an `ownership`, this process decides every target (one replica, or the memory store).
    """

    def __init__(
        self,
        *,
        registry: target_registry.TargetRegistry,
        store: Store,
        reconcilers: reconciler.Reconcilers | None = None,
        clock: clock.Clock,
        forecast: ForecastSource | None = None,
        forecast_degraded: ForecastStatus | None = None,
        forecast_view: ForecastView | None = None,
        telemetry: telemetry.Telemetry | None = None,
        ownership: Ownership | None = None,
        tuned: TunedSpec | None = None,
        explain_tuning: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> None:
        self._specs = registry.specs  # read-only here: targets come and go through the registry
        self._store = store
        self._reconcilers = reconcilers
        self._clock = clock
        self._forecast = forecast
        self._forecast_degraded = forecast_degraded
        self._forecast_view = forecast_view
        self._telemetry = telemetry
        self._ownership = ownership
        self._tuned = tuned
        self._explain_tuning = explain_tuning
        self._traces: dict[str, str] = {}  # target -> traceparent of the event that changed it
        self._decisions: dict[str, policy.FloorDecision] = {}
        self._dirty: set[str] = set(self._specs)  # to decide first (when this replica decides them)
        self._relist: set[str] = set()  # to decide behind them: a resync's slow lane
        self._stale: set[str] = set(self._specs)  # to re-read from the store (when another replica decides them)
        self._fresh: set[str] = set()  # just taken over: the previous decision comes from the store
        self._retry: dict[str, tuple[int, datetime]] = {}  # target -> (failures in a row, when to try again)
        self._actuated: set[str] = set()  # targets whose floor this process has submitted at least once
        self._wake = asyncio.Event()
        # (next_change, target) of the decisions made here, earliest first; an entry whose decision
        # was replaced since is skipped when it comes up (a wake looks at what is due, not at all)
        self._changes: list[tuple[datetime, str]] = []
        self._hot: dict[str, float] = {}  # target -> loop time it is decided again (see HOT_GAP)
        self._hot_timer: asyncio.TimerHandle | None = None
        registry.follow(added=self._added, removed=self._removed, changed=self.mark_changed)
        store.add_change_listener(self.mark_changed)
        store.add_resync_listener(self.resync)
        if ownership is not None:
            store.add_decision_listener(self._heard)
            ownership.follow(self._gained, self._lost, self._wake.set)

    @property
    def decisions(self) -> Mapping[str, policy.FloorDecision]:
        """The current decision per target, made here or followed from its decider (read-only view)."""
        return self._decisions

    def decides(self, target: str) -> bool:
        """Whether this replica decides (and actuates) `target` now."""
        return target in self._specs and (self._ownership is None or self._ownership.fence(target) is not None)

    @property
    def specs(self) -> Mapping[str, targets.TargetSpec]:
        """The targets it decides among (the registry's view), by `namespace/name`."""
        return self._specs

    def _added(self, spec: targets.TargetSpec) -> None:
        """A target appeared (or its spec changed): decide it at once."""
        target = str(spec.ref)
        if self._telemetry is not None:
            self._telemetry.add_target(target)
        self._stale.add(target)
        self._hot.pop(target, None)  # a new spec is decided at once
        self.mark_changed(target)
        if self._ownership is not None:
            self._ownership.targets_changed()

    def _removed(self, target: str) -> None:
        """A target went away: stop deciding it (its stored decision stays for a later return)."""
        self._decisions.pop(target, None)
        for pending in (self._dirty, self._relist, self._stale, self._fresh, self._actuated):
            pending.discard(target)
        self._retry.pop(target, None)
        self._hot.pop(target, None)
        self._traces.pop(target, None)
        if self._reconcilers is not None:
            self._reconcilers.drop(target)
        if self._ownership is not None:
            self._ownership.targets_changed()

    def note_trace(self, target: str, traceparent: str) -> None:
        """Remember the trace of the event that changed `target`, so its decision continues it."""
        if target in self._specs:
            self._traces[target] = traceparent

    def mark_changed(self, target: str) -> None:
        """Ask for `target` to be re-decided now (a hot one: when its gap is over); unknown targets
        are ignored."""
        if target in self._specs and target not in self._hot:
            self._dirty.add(target)
            self._wake.set()

    def resync(self) -> None:
        """Re-decide every target (in the slow lane) and re-read the others' decisions:
        announcements may have been missed (a pub/sub gap, a store outage)."""
        self._relist.update(target for target in self._specs if target not in self._dirty)
        self._stale.update(self._specs)
        self._wake.set()

    def _gained(self, target: str) -> None:
        """This replica decides `target` from now on: from the stored decision, re-applying its floor."""
        self._fresh.add(target)
        self._actuated.discard(target)
        self.mark_changed(target)

    def _lost(self, target: str) -> None:
        """Another replica decides `target` now: follow its decisions."""
        self._actuated.discard(target)
        self._retry.pop(target, None)
        if self._reconcilers is not None:
            self._reconcilers.drop(target)  # its decider applies its floors now
        self._stale.add(target)
        self._wake.set()

    def _heard(self, decision: policy.FloorDecision) -> None:
        """A decision saved by any replica: kept when another replica decides its target."""
        target = decision.target
        if target not in self._specs or self.decides(target):
            return
        cached = self._decisions.get(target)
        if cached is None or decision.decided_at >= cached.decided_at:
            self._decisions[target] = decision

    async def run(self) -> None:
        """Decide forever: at start, on every announced change, at each decision's next change, and
        again after a failure (with backoff) until the decision is stored.

        Two lanes (Knative's two-lane queue): targets that just changed, came due or failed go
        first; a relist of every target (a resync) is worked a slice at a time behind them, so a
        user's session never waits behind a resync. Both are decided in batches, one store round
        trip to read a batch and one to write it, several batches in flight."""
        while True:
            self._wake.clear()
            self._cool_down()
            now = self._clock.now()
            due = self._dirty | {target for target, (_, at) in self._retry.items() if at <= now}
            due |= self._due_changes(now)
            for target in [t for t in self._retry if t in due and not self.decides(t)]:
                del self._retry[target]  # not decided here (any more): when gained, it is decided afresh
            self._dirty = set()
            self._relist -= due
            if self._ownership is not None and not self._ownership.claimed:
                # at start, until every lease was claimed once: a target this replica takes is
                # marked changed (due); re-reading the others' decisions waits (claimed wakes us),
                # or most would be read as another replica's and thrown away as the leases come in
                fast = sorted(t for t in due if self.decides(t))
                await self._decide_all(fast, now)
                self._hold_hot(fast)
            else:
                stale, self._stale = self._stale, set()
                fast = sorted(t for t in due | {t for t in stale if t not in self._decisions} if self.decides(t))
                await self._decide_all(fast, now)
                self._hold_hot(fast)
                followed = sorted(t for t in stale if t in self._specs and not self.decides(t))
                await self._follow_all(followed)
            if self._relist:  # the slow lane: one slice, then look at the fast lane again
                chunk = [self._relist.pop() for _ in range(min(len(self._relist), BATCH * IN_FLIGHT))]
                await self._decide_all(sorted(t for t in chunk if self.decides(t)), self._clock.now())
                if self._relist:
                    continue
            await self._clock.wait_until(self._next_wake(), self._wake)

    def _hold_hot(self, decided: Sequence[str]) -> None:
        """Those of `decided` that changed again meanwhile wait HOT_GAP before they are decided again."""
        again = [target for target in decided if target in self._dirty]
        if not again:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + HOT_GAP
        for target in again:
            self._dirty.discard(target)
            self._hot[target] = until
        if self._hot_timer is None:
            self._hot_timer = loop.call_at(until, self._hot_over)

    def _hot_over(self) -> None:
        self._hot_timer = None
        self._wake.set()

    def _cool_down(self) -> None:
        """Hot targets whose gap is over are due again; the timer is set for the next gap to end."""
        if not self._hot:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for target in [target for target, until in self._hot.items() if until <= now]:
            del self._hot[target]
            self._dirty.add(target)
        if self._hot and self._hot_timer is None:
            self._hot_timer = loop.call_at(min(self._hot.values()), self._hot_over)

    async def _decide_all(self, due: Sequence[str], now: datetime) -> None:
        """Decide `due` in batches of BATCH targets, IN_FLIGHT batches at a time."""
        for start in range(0, len(due), BATCH * IN_FLIGHT):
            group = due[start : start + BATCH * IN_FLIGHT]
            await asyncio.gather(*(self._attempt(group[i : i + BATCH], now) for i in range(0, len(group), BATCH)))

    async def _attempt(self, batch: Sequence[str], now: datetime) -> None:
        try:
            await self.decide_many(batch, now)
        except Exception as e:
            failures = 0
            for target in batch:
                if target not in self._specs:
                    continue  # removed meanwhile: nothing to retry
                failures = self._retry.get(target, (0, now))[0] + 1
                delay = min(RETRY_FIRST * 2 ** (failures - 1), RETRY_CAP)
                self._retry[target] = (failures, now + delay)
            delay = min(RETRY_FIRST * 2 ** (failures - 1), RETRY_CAP)
            what = batch[0] if len(batch) == 1 else f"{len(batch)} targets ({batch[0]} ...)"
            if isinstance(e, StateUnavailable):
                log.warning("cannot decide %s (attempt %d, again in %s): %s", what, failures, delay, e)
            else:
                log.exception("deciding %s failed (attempt %d, again in %s)", what, failures, delay)
        else:
            for target in batch:
                self._retry.pop(target, None)

    async def _follow_all(self, targets: Sequence[str]) -> None:
        """Re-read the decisions other replicas stored for `targets` (after a gap or a handover)."""
        for start in range(0, len(targets), BATCH):
            batch = targets[start : start + BATCH]
            try:
                stored = await self._store.load_decisions(batch)
            except StateUnavailable as e:
                log.debug("cannot re-read %d decisions: %s", len(batch), e)  # the store's recovery resyncs
                return
            for decision in stored:
                if decision is not None and not self.decides(decision.target):
                    self._heard(decision)

    async def decide(self, target: str, now: datetime) -> policy.FloorDecision:
        """Decide one target at `now`, save the decision, and queue it for the actuators if its floor
        changed. Raises LeaseLost when this replica does not decide it (any more)."""
        decided = await self.decide_many([target], now)
        if target not in decided:
            raise LeaseLost(f"{target}: this replica no longer decides it")
        return decided[target]

    async def decide_many(self, batch: Sequence[str], now: datetime) -> dict[str, policy.FloorDecision]:
        """Decide `batch` at `now` with one store read and one store write; save the decisions and
        queue those whose floor changed for the actuators. A target whose lease was lost is left
        out (and handed back to the ownership); StateUnavailable leaves every one undecided."""
        began = time.perf_counter()
        fences: dict[str, str] = {}
        for target in batch:
            fence = "" if self._ownership is None else self._ownership.fence(target)
            if fence is None:
                log.info("%s: this replica no longer decides it", target)
                if self._ownership is not None:
                    self._ownership.refused(target)
            elif target in self._specs:
                fences[target] = fence
        owned = list(fences)
        if not owned:
            return {}
        # the stored decision is only decoded where none is held here (or it must be re-read)
        held = {target for target in owned if target not in self._fresh and target in self._decisions}
        inputs = await self._store.decision_inputs(owned, now, cached=held)
        gone = [t for t in owned if t in held and (t in self._fresh or t not in self._decisions)]
        if gone:  # gained or forgotten while the inputs were read: it is the stored decision after all
            reread = dict(zip(gone, await self._store.load_decisions(gone), strict=True))
            inputs = [(s, reread[t]) if t in reread else (s, d) for t, (s, d) in zip(owned, inputs, strict=True)]
        made: list[tuple[policy.FloorDecision, policy.FloorDecision | None, int]] = []
        for target, (sessions, stored) in zip(owned, inputs, strict=True):
            found = self._specs.get(target)
            if found is None:  # removed while the inputs were read
                continue
            spec, note = found, ""
            if self._tuned is not None:
                spec, note = self._tuned(spec)
            previous = None if target in self._fresh else self._decisions.get(target)
            if previous is None:
                previous = stored  # carry holds and budget across restarts
            forecast = self._forecast(spec, now) if self._forecast is not None and spec.forecast.enabled else None
            degraded = self._forecast_degraded(target) if self._forecast_degraded is not None else None
            signals = policy.Signals(
                sessions=sessions.active - sessions.batch,
                next_session_expiry=sessions.next_expiry,
                forecast=forecast,
                forecast_note=note,
                batch_sessions=sessions.batch,
                forecast_degraded=degraded,
            )
            made.append((policy.decide_floor(spec, signals, now, previous), previous, sessions.active))
        stored_ok = await self._store.save_decisions([(d, fences[d.target]) for d, _, _ in made])
        if self._telemetry is not None:
            self._telemetry.record_decision_batch(len(made), time.perf_counter() - began)
        decided: dict[str, policy.FloorDecision] = {}
        for (decision, previous, active), ok in zip(made, stored_ok, strict=True):
            target = decision.target
            if not ok:  # refused: another replica took the lease over
                log.info("%s: lease token %r is no longer the holder's", target, fences[target])
                if self._ownership is not None:
                    self._ownership.refused(target)
                continue
            self._decisions[target] = decision
            self._remember_change(decision)
            self._fresh.discard(target)
            decided[target] = decision
            self._decided(decision, previous, active)
        return decided

    def _decided(self, decision: policy.FloorDecision, previous: policy.FloorDecision | None, active: int) -> None:
        """Record a stored decision and queue it for the actuators if its floor changed; when an
        event with a trace changed the target, in a span that continues that trace (a relist of
        50,000 targets makes no 50,000 spans)."""
        target = decision.target
        if self._telemetry is not None:
            self._telemetry.record_decision(decision, previous, active)
        traceparent = self._traces.pop(target, None)
        if self._telemetry is None or traceparent is None:  # a span only where an event's trace goes on
            self._submit(decision, previous)
            return
        span = self._telemetry.decision_span(target, traceparent)
        span.set_attributes({"prewarm.floor": decision.floor, "prewarm.source": decision.source.value})
        with trace.use_span(span, end_on_exit=True):  # actuation spans are its children
            self._submit(decision, previous)

    def _submit(self, decision: policy.FloorDecision, previous: policy.FloorDecision | None) -> None:
        target = decision.target
        if target not in self._actuated or previous is None or previous.floor != decision.floor:
            self._actuated.add(target)
            if self._reconcilers is not None:
                self._reconcilers.submit(decision)  # queued: deciding never waits for an actuator

    async def describe(self) -> list[dict[str, Any]]:
        """What the decision core sees per target, for operators: floor, source, reason, sessions."""
        now = self._clock.now()
        view: list[dict[str, Any]] = []
        names = sorted(self._specs)
        counts: list[ledger.SessionCount] = []
        for start in range(0, len(names), BATCH):  # a batch of targets per store round trip
            batch = names[start : start + BATCH]
            counts += [sessions for sessions, _ in await self._store.decision_inputs(batch, now, cached=batch)]
        for target, sessions in zip(names, counts, strict=True):
            spec = self._specs.get(target)
            if spec is None:  # removed while the sessions were read
                continue
            decision = self._decisions.get(target)
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
                    "batch_sessions": sessions.batch,
                    "min": spec.min,
                    "max": spec.max,
                    "forecast": None if self._forecast_view is None else self._forecast_view(target),
                }
            )
            if self._explain_tuning is not None and (tuning := self._explain_tuning(target)) is not None:
                view[-1]["tuning"] = tuning
        return view

    def _next_wake(self) -> datetime | None:
        times = [at for _, at in self._retry.values()]
        upcoming = self._next_change()
        if upcoming is not None:
            times.append(upcoming)
        return min(times) if times else None

    def _remember_change(self, decision: policy.FloorDecision) -> None:
        """Keep `decision`'s next change (when it has one) for the wake that re-decides it."""
        if decision.next_change is None:
            return
        if len(self._changes) > 2 * len(self._decisions) + 1024:  # mostly replaced entries: start over
            self._changes = [(d.next_change, t) for t, d in self._decisions.items() if d.next_change is not None]
            heapq.heapify(self._changes)
        heapq.heappush(self._changes, (decision.next_change, decision.target))

    def _current_change(self, at: datetime, target: str) -> bool:
        """Whether `at` is the next change of the decision held for `target`, which this replica decides."""
        decision = self._decisions.get(target)
        return decision is not None and decision.next_change == at and self.decides(target)

    def _due_changes(self, now: datetime) -> set[str]:
        """The targets whose decision said it would change by `now`, taken off the schedule."""
        due: set[str] = set()
        while self._changes and self._changes[0][0] <= now:
            at, target = heapq.heappop(self._changes)
            if self._current_change(at, target):
                due.add(target)
        return due

    def _next_change(self) -> datetime | None:
        """The earliest next change of a decision made here (replaced entries dropped on the way)."""
        while self._changes:
            at, target = self._changes[0]
            if self._current_change(at, target):
                return at
            heapq.heappop(self._changes)
        return None
