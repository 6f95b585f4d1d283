"""Which targets this replica decides: one lease per target in the shared store, with a fencing token.

Every replica campaigns for every target it knows. The first to find a target's lease free takes
it (the store gives it a new token each time), renews it every quarter of the lease, and writes
that target's decisions with the token as a fence: the store refuses a token that is no longer
the holder's, so a replica that was paused past its lease cannot overwrite a newer decision. A
standby tries each foreign lease again as it comes due to expire, so a dead decider is replaced
within the lease time. Leases live in Redis alone; no Kubernetes API is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from prewarm.service import clock
from prewarm.service.store import Lease, LeaseStore, StateUnavailable

log = logging.getLogger(__name__)

TargetCallback = Callable[[str], None]
CLAIM_CHUNK = 1024  # targets per claim: each chunk's leases count from when its own claim was sent


class TargetLeases:
    """Campaigns for the leases of `targets()`; `fence(target)` is this replica's token, if it decides.

    Time is the process's monotonic clock: a lease is believed held until `ttl` after the claim
    that took or renewed it was sent, never longer than the store keeps it.
    """

    def __init__(
        self,
        store: LeaseStore,
        *,
        holder: str,
        targets: Callable[[], Iterable[str]],
        ttl: float = 10.0,
        may_lead: Callable[[], bool] = lambda: True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the lease must last more than 0 s")
        self._store = store
        self.holder = holder
        self._targets = targets
        self.ttl = ttl
        self._renew_every = ttl / 4
        self._may_lead = may_lead
        self._monotonic = monotonic
        self._held: dict[str, tuple[str, float]] = {}  # target -> (token, believed held until)
        self._gained: list[TargetCallback] = []
        self._lost: list[TargetCallback] = []
        self._settled: list[Callable[[], None]] = []
        self.claimed = False  # every target was claimed once: until then not every target is known to be anyone's
        self._wake = asyncio.Event()
        self._failures = 0

    def follow(self, gained: TargetCallback, lost: TargetCallback, claimed: Callable[[], None] | None = None) -> None:
        """Call `gained(target)` when this replica starts deciding a target, `lost(target)` when it
        stops, and `claimed()` once the first claim is answered."""
        self._gained.append(gained)
        self._lost.append(lost)
        if claimed is not None:
            self._settled.append(claimed)

    def fence(self, target: str) -> str | None:
        """This replica's token for `target` while it holds the lease, else None."""
        held = self._held.get(target)
        if held is None or self._monotonic() >= held[1]:
            return None
        return held[0]

    @property
    def held(self) -> frozenset[str]:
        """The targets this replica decides now."""
        now = self._monotonic()
        return frozenset(target for target, (_, until) in self._held.items() if now < until)

    def refused(self, target: str) -> None:
        """A fenced write for `target` was refused: another replica decides it now."""
        if self._held.pop(target, None) is not None:
            self._notify(self._lost, target)
        self.wake()

    def targets_changed(self) -> None:
        """The targets to campaign for changed: campaign now."""
        self.wake()

    def wake(self) -> None:
        """Campaign now instead of at the next renewal (e.g. when leading becomes allowed)."""
        self._wake.set()

    async def run(self) -> None:
        """Campaign forever; cancel to stop (then `release_all` for a quick handover)."""
        while True:
            self._wake.clear()
            try:
                delay = await self.campaign()
            except Exception:  # a script refused (a bug, a store that rejects it): never stop campaigning
                self._failures += 1
                delay = min(0.05 * 2.0**self._failures, 1.0)
                log.exception("decider leases: a claim failed (attempt %d, again in %.2fs)", self._failures, delay)
                self._expire(self._monotonic())
            clock.refuse_if_cancelling()  # a client library may have swallowed our cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def campaign(self) -> float:
        """Claim once: renew what is held, take what is free; return the seconds until the next claim."""
        wanted = list(dict.fromkeys(self._targets()))
        lead = self._may_lead()
        known = set(wanted)
        letting_go = {t: token for t, (token, _) in self._held.items() if not lead or t not in known}
        if letting_go:
            await self._give_up(letting_go)
        began = self._monotonic()
        next_claim, complete = self._renew_every, True
        try:
            # what is held is renewed in bulk, all at once (the reply names only what was lost)
            renewing = {t: self._held[t][0] for t in wanted if t in self._held}
            sent = self._monotonic()
            lost = set(await self._store.renew_leases(renewing, ttl=self.ttl)) if renewing else set()
            renewed_at = self._monotonic()
            back: list[str] = []
            for target in renewing.keys() - lost:
                current = self._held.get(target)
                if current is None or current[0] != renewing[target]:
                    continue  # refused or replaced while the renewal was out: the next claim says whose it is
                if current[1] <= renewed_at < sent + self.ttl:
                    back.append(target)  # it ran out here meanwhile (`fence` said None): tell it is held again
                self._held[target] = (renewing[target], sent + self.ttl)
            for target in back:
                self._notify(self._gained, target)
            # the rest is claimed a chunk at a time, each chunk's leases counted from its own claim
            claiming = [t for t in wanted if t not in renewing or t in lost]
            for start in range(0, len(claiming), CLAIM_CHUNK):
                if start and self._monotonic() - began > self._renew_every / 2:
                    # claiming many (50,000 at start, with deciding busy on the same loop) must not
                    # outlast what it already holds: renew those first, then claim on at once
                    next_claim, complete = 0.0, False
                    break
                chunk = claiming[start : start + CLAIM_CHUNK]
                sent = self._monotonic()
                leases = await self._store.claim_leases(
                    chunk,
                    holder=self.holder,
                    held={t: renewing[t] for t in chunk if t in renewing},
                    ttl=self.ttl,
                    acquire=lead,
                )
                next_claim = min(next_claim, self._settle(leases, until=sent + self.ttl, lead=lead))
        except StateUnavailable as e:
            self._failures += 1
            if self._failures == 1:
                log.warning("cannot renew decider leases: %s", e)
            now = self._monotonic()
            self._expire(now)
            delay = min(0.05 * 2.0**self._failures, 1.0)
            deadlines = [until - now for _, until in self._held.values()]
            return max(0.0, min([delay, *deadlines]))
        if self._failures:
            log.info("decider leases renewed again after %d failed attempts", self._failures)
        self._failures = 0
        self._expire(self._monotonic())
        if complete and not self.claimed:  # every target claimed once
            self.claimed = True
            for callback in self._settled:
                callback()
        return max(0.0, next_claim - (self._monotonic() - began))

    def _settle(self, leases: Sequence[Lease], *, until: float, lead: bool) -> float:
        """Take in one claim's answers; return the seconds until a foreign lease expires (or the renewal)."""
        next_claim = self._renew_every
        gained: list[str] = []
        taken: list[str] = []
        for lease in leases:
            before = self._held.get(lease.target)
            if lease.token is not None:
                self._held[lease.target] = (lease.token, until)
                if before is not None and before[0] != lease.token:
                    self._notify(self._lost, lease.target)
                if before is None or before[0] != lease.token:
                    gained.append(lease.target)
                    self._notify(self._gained, lease.target)
                continue
            if before is not None:
                del self._held[lease.target]
                taken.append(lease.target)
                self._notify(self._lost, lease.target)
            if lead and lease.holder and lease.remaining >= 0:
                next_claim = min(next_claim, lease.remaining + 0.005)  # be there when it expires
        # a line per claim, not per target: a replica starting on 50,000 targets takes them all at once
        if gained:
            tokens = sorted({self._held[t][0] for t in gained})
            log.info("%s: %s decides it now (lease %s)", _some(gained), self.holder, _some(tokens))
        if taken:
            log.info("%s: lease taken by another replica; %s stops deciding it", _some(taken), self.holder)
        return next_claim

    async def release_all(self) -> None:
        """Give every held lease back (at shutdown), so a standby takes over at once."""
        if self._held:
            await self._give_up({t: token for t, (token, _) in self._held.items()})

    async def _give_up(self, leases: Mapping[str, str]) -> None:
        for target in leases:
            if self._held.pop(target, None) is not None:
                self._notify(self._lost, target)
        try:
            await self._store.release_leases(leases)
        except StateUnavailable as e:
            log.warning("could not release %d decider leases (they expire on their own): %s", len(leases), e)

    def _expire(self, now: float) -> None:
        expired = [target for target, (_, until) in self._held.items() if now >= until]
        if not expired:
            return
        log.warning("%s: lease not renewed in time; %s stops deciding it", _some(expired), self.holder)
        for target in expired:
            del self._held[target]
            self._notify(self._lost, target)

    @staticmethod
    def _notify(callbacks: Sequence[TargetCallback], target: str) -> None:
        for callback in callbacks:
            try:
                callback(target)
            except Exception:
                log.exception("a lease listener failed for %s", target)


def _some(targets: Sequence[str]) -> str:
    """Targets for a log line: the first three and how many more."""
    return ", ".join(targets[:3]) + (f" and {len(targets) - 3} more" if len(targets) > 3 else "")
