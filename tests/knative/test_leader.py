"""Leader election on a Lease: two replicas against one API server, time moved by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from kube_api_server import KubeAPIServer
from support import kube_api_at, wait_for

from knative import kube_api, leader
from prewarm.service import clock

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LEASES = "coordination.k8s.io/v1"


class Pair:
    """Two electors for one Lease on one API server, sharing a manual clock."""

    def __init__(self, fake: KubeAPIServer, api: kube_api.KubeAPI, manual: clock.ManualClock) -> None:
        self.fake, self.api, self.clock = fake, api, manual
        self.a, self.b = self.elector("replica-a"), self.elector("replica-b")

    def elector(self, identity: str, **kwargs: Any) -> leader.LeaseElector:
        return leader.LeaseElector(
            self.api,
            namespace="prewarm",
            name="prewarm-knative",
            identity=identity,
            clock=self.clock,
            lease_seconds=15,
            retry_seconds=2,
            **kwargs,
        )

    def holder(self) -> str:
        return str(self.fake.get(LEASES, "prewarm", "leases", "prewarm-knative")["spec"]["holderIdentity"])


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    fake = KubeAPIServer()
    async with TestServer(fake.app) as server:
        api_session, api = kube_api_at(str(server.make_url("")))
        try:
            yield Pair(fake, api, clock.ManualClock(T0))
        finally:
            await api_session.close()


async def test_one_leader_and_takeover_within_the_lease(pair: Pair) -> None:
    assert await pair.a.try_once() is True
    assert await pair.b.try_once() is False
    assert pair.holder() == "replica-a"
    for _ in range(5):  # a live leader keeps renewing; the other keeps following
        pair.clock.advance(timedelta(seconds=2))
        assert await pair.a.try_once() is True
        assert await pair.b.try_once() is False
    # replica-a dies (stops renewing): replica-b takes over once the lease has run out, not before
    pair.clock.advance(timedelta(seconds=14))
    assert await pair.b.try_once() is False
    pair.clock.advance(timedelta(seconds=1))
    assert await pair.b.try_once() is True
    assert pair.holder() == "replica-b"
    lease = pair.fake.get(LEASES, "prewarm", "leases", "prewarm-knative")["spec"]
    assert lease["leaseTransitions"] == 1 and lease["leaseDurationSeconds"] == 15
    # the old leader, back, sees it lost the lease and follows
    assert await pair.a.try_once() is False
    assert (pair.a.is_leader, pair.b.is_leader) == (False, True)


async def test_racing_writers_cannot_both_win(pair: Pair) -> None:
    results = await asyncio.gather(pair.a.try_once(), pair.b.try_once())
    assert sorted(results) == [False, True]
    pair.clock.advance(timedelta(seconds=16))  # the lease expired: both race to take it again
    results = await asyncio.gather(pair.a.try_once(), pair.b.try_once())
    assert sorted(results) == [False, True]


async def test_leader_steps_down_when_it_cannot_renew_for_a_whole_lease(pair: Pair) -> None:
    changes: list[bool] = []
    pair.a = pair.elector("replica-a", on_change=changes.append)
    assert await pair.a.try_once() is True
    pair.fake.faults += [("GET", 503)] * 3
    pair.clock.advance(timedelta(seconds=2))
    assert await pair.a.try_once() is True  # one failed renewal: still within the lease
    pair.clock.advance(timedelta(seconds=14))
    assert await pair.a.try_once() is False  # no renewal for 15 s: another replica may lead
    assert changes == [True, False]


async def test_run_campaigns_on_the_clock(pair: Pair) -> None:
    task = asyncio.create_task(pair.a.run())

    def renewed() -> str:
        return str(pair.fake.get(LEASES, "prewarm", "leases", "prewarm-knative")["spec"]["renewTime"])

    try:
        await wait_for(lambda: pair.a.is_leader)
        first = renewed()
        pair.clock.advance(timedelta(seconds=2))  # the next campaign round is due
        await wait_for(lambda: renewed() != first)
    finally:
        task.cancel()


async def test_only_the_leaders_actuator_patches(pair: Pair) -> None:
    from knative.actuator import KnativeActuator

    serving = "serving.knative.dev/v1"
    pair.fake.add(
        serving,
        "services",
        {
            "metadata": {"name": "chat", "namespace": "llm"},
            "status": {"traffic": [{"revisionName": "chat-1", "percent": 100}]},
        },
    )
    pair.fake.add(serving, "revisions", {"metadata": {"name": "chat-1", "namespace": "llm"}})
    actuators = {
        e.identity: KnativeActuator(pair.api, floor_object="revision", is_leader=lambda e=e: e.is_leader)
        for e in (pair.a, pair.b)
    }
    await pair.a.try_once()
    await pair.b.try_once()
    for actuator in actuators.values():
        await actuator.apply_floor("llm/chat", 2)
    assert (actuators["replica-a"].counts["patched"], actuators["replica-b"].counts["patched"]) == (1, 0)
    pair.clock.advance(timedelta(seconds=16))  # replica-a died; replica-b takes over
    await pair.b.try_once()
    await actuators["replica-b"].apply_floor("llm/chat", 3)
    annotations = pair.fake.get(serving, "llm", "revisions", "chat-1")["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "3"
