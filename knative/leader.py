"""Leader election on a coordination.k8s.io/v1 Lease: with several replicas, one patches.

The holder renews `renewTime` every `retry` seconds; another replica takes the Lease once
`renewTime + leaseDurationSeconds` has passed without a renewal, so a dead leader is replaced
within the lease duration (plus one retry). Every write carries the Lease's resourceVersion: two
replicas racing for it cannot both win.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from knative import kube_api

log = logging.getLogger(__name__)


def _micro_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Clock(Protocol):
    """What the elector needs of a clock; the service's system and manual clocks fit."""

    def now(self) -> datetime: ...

    async def wait_until(self, deadline: datetime | None, wake: asyncio.Event) -> None: ...


class LeaseElector:
    """Campaigns for one Lease; `is_leader` says whether this replica holds it now."""

    def __init__(
        self,
        api: kube_api.KubeAPI,
        *,
        namespace: str,
        name: str,
        identity: str,
        clock: Clock,
        lease_seconds: int = 15,
        retry_seconds: float = 2.0,
        on_change: Callable[[bool], None] = lambda leading: None,
    ) -> None:
        if retry_seconds >= lease_seconds:
            raise ValueError("retry_seconds must be shorter than lease_seconds")
        self._api = api
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._clock = clock
        self._lease = timedelta(seconds=lease_seconds)
        self._retry = timedelta(seconds=retry_seconds)
        self._on_change = on_change
        self._renewed: datetime | None = None  # when this replica last renewed successfully
        self.is_leader = False

    def leading(self) -> bool:
        """Whether this replica holds the Lease now."""
        return self.is_leader

    def follow(self, on_change: Callable[[bool], None]) -> None:
        """Call `on_change(leading)` whenever this replica starts or stops leading (replaces the last)."""
        self._on_change = on_change

    async def run(self) -> None:
        """Campaign forever (cancel to stop; the Lease then simply expires)."""
        never = asyncio.Event()
        while True:
            await self.try_once()
            await self._clock.wait_until(self._clock.now() + self._retry, never)

    async def try_once(self) -> bool:
        """Acquire or renew once; returns whether this replica leads now."""
        now = self._clock.now()
        try:
            leading = await self._acquire_or_renew(now)
        except kube_api.KubeAPIError as e:
            log.warning("lease %s/%s: %s", self._namespace, self._name, e)
            # Without a successful renewal for a whole lease, another replica may already lead.
            leading = self.is_leader and self._renewed is not None and now - self._renewed < self._lease
        self._set(leading)
        return leading

    async def _acquire_or_renew(self, now: datetime) -> bool:
        try:
            lease = await self._api.get_lease(self._namespace, self._name)
        except kube_api.NotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self._name, "namespace": self._namespace},
                "spec": self._spec(now, acquired=now, transitions=0),
            }
            try:
                await self._api.create_lease(self._namespace, body)
            except kube_api.Conflict:
                return False  # another replica created it first
            self._renewed = now
            return True
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse_time(spec.get("renewTime"))
        duration = timedelta(seconds=int(spec.get("leaseDurationSeconds") or self._lease.total_seconds()))
        held_by_other = holder and holder != self.identity and renewed is not None and now < renewed + duration
        if held_by_other:
            return False
        updated = copy.deepcopy(lease)
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            updated["spec"] = {**spec, **self._spec(now, acquired=None, transitions=transitions)}
        else:
            updated["spec"] = self._spec(now, acquired=now, transitions=transitions + 1)
        try:
            await self._api.replace_lease(self._namespace, self._name, updated)
        except kube_api.Conflict:
            return False  # someone else wrote it since we read it
        self._renewed = now
        return True

    def _spec(self, now: datetime, *, acquired: datetime | None, transitions: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self._lease.total_seconds()),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }
        if acquired is not None:
            spec["acquireTime"] = _micro_time(acquired)
        return spec

    def _set(self, leading: bool) -> None:
        if leading != self.is_leader:
            self.is_leader = leading
            log.info(
                "lease %s/%s: %s %s", self._namespace, self._name, self.identity, "leads" if leading else "follows"
            )
            self._on_change(leading)
