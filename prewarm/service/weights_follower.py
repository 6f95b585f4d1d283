"""`prewarm cache warm --follow`: one per node. Follows the stored decisions and, when a target's
weights are needed on this node (prewarm/core/weights.py says when and where), stages them on the
volume's weights tier, reads them into the page cache, keeps the tier within the node's byte
budget (least recently needed out first, never a model in use) and labels the node.

Deciding and acting are apart: decisions only mark a target dirty; one worker stages (the node's
disk is the bottleneck, so one model at a time) from the newest decision, retrying a failure with
per-target backoff. After any gap in the decision feed every target is read again, and every
`relist` (five minutes) too, since nodes join, leave and are cordoned without a new decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from prewarm.cache import entries, hub_layout, page_cache, s3_source, staging
from prewarm.core import policy, weights
from prewarm.service import clock

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5  # seconds before the first retry of a failed stage; doubles up to RETRY_CAP
RETRY_CAP = 300.0
NODES_FRESH = 30.0  # seconds a node list serves every target worked meanwhile (at most `relist`)


class DecisionFeed(Protocol):
    """What the follower reads from the store (RedisStore has it)."""

    async def load_decision(self, target: str) -> policy.FloorDecision | None: ...

    def add_decision_listener(self, listener: Callable[[policy.FloorDecision], None]) -> None: ...

    def add_resync_listener(self, listener: Callable[[], None]) -> None: ...


class NodeDirectory(Protocol):
    """The Kubernetes calls the follower makes (knative.kube_api.KubeAPI has them)."""

    async def list_nodes(self, label_selector: str = "") -> list[dict[str, Any]]: ...

    async def patch_node_labels(self, name: str, labels: dict[str, str | None]) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class FollowerSettings:
    """This node, its volume, and the bounds: bytes of weights it keeps, how long before a
    scheduled rise it stages (the cold-start time), and which nodes the targets' pods run on."""

    node: str
    root: Path
    budget_bytes: int
    lead: timedelta = timedelta(seconds=60)
    node_selector: str = ""  # the nodes the targets' pods may run on (the DaemonSet's selector)
    spare_nodes: int = weights.SPARE_NODES
    read_ahead: bool = True
    relist: timedelta = timedelta(minutes=5)  # every target is worked again this often: nodes come and go unannounced


@dataclasses.dataclass(slots=True)
class _Held:
    revision_id: str
    snapshot: Path


class WeightsFollower:
    """Stages the weights of the targets in `specs` on this node as their decisions need them."""

    def __init__(
        self,
        *,
        feed: DecisionFeed,
        nodes: NodeDirectory,
        specs: Mapping[str, weights.WeightsSettings],
        settings: FollowerSettings,
        now: Callable[[], datetime] | None = None,
        run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
        s3: Any = None,
    ) -> None:
        self._feed = feed
        self._s3 = s3  # a boto3 client, for targets whose weights are in an S3-compatible store
        self._nodes = nodes
        self._specs = dict(specs)
        self._settings = settings
        self._now = now or clock.SystemClock().now
        self._run_blocking = run_blocking or (lambda fn: asyncio.get_running_loop().run_in_executor(None, fn))
        self._decisions: dict[str, policy.FloorDecision] = {}
        self._held: dict[str, _Held] = {}  # targets whose weights this node holds and has read ahead
        self._dirty: dict[str, None] = {}  # insertion-ordered set
        self._wake = asyncio.Event()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._nodes_listed: tuple[float, list[str]] | None = None  # (loop time, schedulable nodes)
        self.staged: list[staging.StageResult] = []  # what this follower staged or found, newest last
        feed.add_decision_listener(self._heard)
        feed.add_resync_listener(self.resync)

    def decision(self, target: str) -> policy.FloorDecision | None:
        """The newest decision the follower has for `target` (None before it has read one)."""
        return self._decisions.get(target)

    def holds(self, target: str) -> bool:
        """Whether this node holds the target's weights, staged and read ahead, for its current need."""
        return target in self._held

    # --- what the feed tells ---

    def _heard(self, decision: policy.FloorDecision) -> None:
        if decision.target not in self._specs:
            return
        cached = self._decisions.get(decision.target)
        if cached is not None and decision.decided_at < cached.decided_at:
            return
        self._decisions[decision.target] = decision
        self._enqueue(decision.target)

    def resync(self) -> None:
        """Re-read every target's decision (after a gap in the feed, and at start)."""
        for target in self._specs:
            self._enqueue(target, reload=True)

    def _enqueue(self, target: str, *, reload: bool = False) -> None:
        if reload:
            self._decisions.pop(target, None)
        self._dirty[target] = None
        self._wake.set()

    # --- the worker ---

    async def run(self) -> None:
        """Work dirty targets one at a time until cancelled; every `relist` all of them again, since
        the nodes they may run on change without a new decision."""
        loop = asyncio.get_running_loop()
        period = max(self._settings.relist.total_seconds(), 0.001)
        next_relist = loop.time()
        while True:
            clock.refuse_if_cancelling()  # a client library may have swallowed our cancellation
            if loop.time() >= next_relist:
                self.resync()
                next_relist = loop.time() + period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=next_relist - loop.time())
            self._wake.clear()
            while self._dirty:
                clock.refuse_if_cancelling()
                target = next(iter(self._dirty))
                del self._dirty[target]
                try:
                    await self.reconcile(target)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._retry_later(target, e)
                else:
                    self._failures.pop(target, None)

    def _retry_later(self, target: str, error: BaseException) -> None:
        attempt = self._failures.get(target, 0)
        self._failures[target] = attempt + 1
        delay = min(RETRY_FIRST * 2**attempt, RETRY_CAP)
        log.warning("%s: staging weights failed (%s); retrying in %.1fs", target, error, delay)
        self._schedule(target, delay)

    def _schedule(self, target: str, delay: float) -> None:
        previous = self._timers.pop(target, None)
        if previous is not None:
            previous.cancel()
        self._timers[target] = asyncio.get_running_loop().call_later(delay, self._enqueue, target)

    async def reconcile(self, target: str) -> None:
        """Bring this node in line with the target's newest decision: stage, read ahead, evict
        over budget and label, or nothing when the weights are not needed here."""
        spec = self._specs[target]
        decision = self._decisions.get(target)
        if decision is None:
            loaded = await self._feed.load_decision(target)
            decision = self._decisions.get(target)  # one heard while the read was in flight is newer
            if loaded is not None and (decision is None or loaded.decided_at > decision.decided_at):
                decision = self._decisions[target] = loaded
            if decision is None:
                return
        now = self._now()
        lead = self._settings.lead
        if not weights.weights_needed(floor=decision.floor, next_change=decision.next_change, now=now, lead=lead):
            self._held.pop(target, None)  # read ahead again when next needed: the page cache moves on
            if decision.next_change is not None:
                self._schedule(target, max(0.0, (decision.next_change - lead - now).total_seconds()))
            return
        names = await self._schedulable_nodes()
        count = weights.nodes_wanted(decision.floor, spare=self._settings.spare_nodes)
        if self._settings.node not in weights.place_weights(target, names, count):
            return
        held = self._held.get(target)
        needed = tuple(h.snapshot.parent.parent for other, h in self._held.items() if other != target)
        evicted: list[str] = []
        try:
            result = await self._run_blocking(lambda: self._stage(spec, held, needed=needed, evicted=evicted))
        except Exception:
            if evicted:  # room was made, then staging failed: the node no longer holds those
                self._forget(evicted)
                await self._nodes.patch_node_labels(
                    self._settings.node, dict.fromkeys(map(hub_layout.node_label, evicted))
                )
            raise
        if result is None:
            return
        self._forget(evicted)
        self.staged.append(result)
        folder = result.snapshot.parent.parent
        labels: dict[str, str | None] = {hub_layout.node_label(name): None for name in evicted}
        labels[hub_layout.node_label(folder.name)] = result.revision_id
        await self._nodes.patch_node_labels(self._settings.node, labels)
        self._held[target] = _Held(revision_id=result.revision_id, snapshot=result.snapshot)
        log.info(
            "%s: %s weights %s@%s on %s (%s)",
            target,
            "found" if result.hit else f"staged {result.staged_bytes / 1e6:.0f} MB of",
            spec.model,
            spec.revision,
            self._settings.node,
            ", ".join(f"evicted {e}" for e in evicted) or "within budget",
        )

    def _forget(self, evicted: list[str]) -> None:
        """Targets whose model folder was evicted are no longer held."""
        for other, held in list(self._held.items()):
            if held.snapshot.parent.parent.name in evicted:
                del self._held[other]

    async def _schedulable_nodes(self) -> list[str]:
        """The ready, uncordoned nodes the targets' pods may run on; one list serves every target
        worked within NODES_FRESH seconds (or `relist`, if shorter), so a pass lists once."""
        now = asyncio.get_running_loop().time()
        fresh = min(NODES_FRESH, self._settings.relist.total_seconds())
        if self._nodes_listed is None or now - self._nodes_listed[0] >= fresh:
            names = [
                node["name"]
                for node in await self._nodes.list_nodes(self._settings.node_selector)
                if node["ready"] and not node["unschedulable"]
            ]
            self._nodes_listed = (now, names)
        return self._nodes_listed[1]

    def _stage(
        self, spec: weights.WeightsSettings, held: _Held | None, *, needed: tuple[Path, ...], evicted: list[str]
    ) -> staging.StageResult | None:
        """Make room, stage and read ahead (blocking: runs in a thread); None when the weights are
        held and still there. Room is made before copying (models no longer needed first, those in
        `needed` last), so the tier never holds more than the budget on the way; the folders
        evicted are added to `evicted` as they go."""
        if held is not None and held.snapshot.is_dir():
            return None
        root, budget = self._settings.root, self._settings.budget_bytes
        folder = staging.repo_entry(root, spec.model)
        source: Path | str = spec.source if s3_source.is_s3(spec.source) else Path(spec.source)
        listing = staging.list_model(source, s3=self._s3)
        missing = max(0, listing.total_bytes() - (entries.entry_bytes(folder) if folder.is_dir() else 0))
        evicted += entries.collect_weights(
            root, max_bytes=max(0, budget - missing), now=time.time(), keep=(folder,), needed=needed
        )
        result = staging.stage_weights(root, model=spec.model, revision=spec.revision, source=source, s3=self._s3)
        evicted += entries.collect_weights(root, max_bytes=budget, now=time.time(), keep=(folder,), needed=needed)
        if self._settings.read_ahead:
            page_cache.read_ahead(page_cache.snapshot_files(result.snapshot))
        return result

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


@contextlib.asynccontextmanager
async def following(follower: WeightsFollower) -> Any:
    """Run the follower's worker for the duration of the context."""
    task = asyncio.create_task(follower.run(), name="weights-follower")
    try:
        yield follower
    finally:
        task.cancel()
        follower.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task
