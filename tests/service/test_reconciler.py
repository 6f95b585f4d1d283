"""Reconcilers in front of the real Knative actuator, against the fake API server with faults
injected from its side (stalls, 429, 500, 503, 409), on an injected clock: backoff is waited out
by moving the clock, never by sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from kube_api_server import KubeAPIServer
from support import kube_api_at, wait_for

from knative import kube_api
from knative.actuator import KnativeActuator
from prewarm.core import policy, targets
from prewarm.service import backoff, clock, composition, decider, knative_targets, reconciler, target_registry
from prewarm.service.store import MemoryStore

SERVING = "serving.knative.dev/v1"
MIN = "autoscaling.knative.dev/min-scale"
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
FIRST, CAP = 0.05, 1.0  # the default backoff


def spec(name: str, *, floor: int = 0) -> targets.TargetSpec:
    return targets.TargetSpec(
        ref=targets.TargetRef("llm", name),
        kind=targets.TargetKind.KNATIVE,
        max=8,
        min=floor,
        sessions_per_replica=1,
        hold=timedelta(0),
    )


def decision(name: str, floor: int) -> policy.FloorDecision:
    return policy.decide_floor(spec(name), policy.Signals(sessions=floor), T0, None)


class Cluster:
    """The fake API with one Knative Service per name, each routing all traffic to `<name>-00001`."""

    def __init__(self, server: KubeAPIServer, api: kube_api.KubeAPI, url: str) -> None:
        self.server, self.api, self.url = server, api, url

    def min_scale(self, name: str) -> str | None:
        revision = self.server.get(SERVING, "llm", "revisions", f"{name}-00001")
        return (revision["metadata"].get("annotations") or {}).get(MIN)

    def patched(self, name: str) -> list[str | None]:
        """The min-scale values written to `name`'s revision and accepted, in order."""
        return [
            (obj["metadata"].get("annotations") or {}).get(MIN)
            for _, plural, kind, obj in self.server.events
            if plural == "revisions" and kind == "MODIFIED" and obj["metadata"]["name"] == f"{name}-00001"
        ]


@contextlib.asynccontextmanager
async def cluster_with(names: list[str]) -> AsyncIterator[Cluster]:
    fake = KubeAPIServer()
    for name in names:
        fake.add_routed_service("llm", name)
    async with TestServer(fake.app) as server:
        url = str(server.make_url("")).rstrip("/")
        api_session, api = kube_api_at(url, timeout=5)
        try:
            yield Cluster(fake, api, url)
        finally:
            fake.release()
            await api_session.close()


@contextlib.asynccontextmanager
async def running(*parts: Any) -> AsyncIterator[None]:
    """Run each part's `run()` until the block ends, then cancel and await them all."""
    tasks = [asyncio.create_task(part.run()) for part in parts]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


async def next_retry(manual: clock.ManualClock) -> float:
    """Wait until a retry is scheduled on `manual`, move the clock to it; return the delay it had."""
    await wait_for(lambda: any(due > manual.now() for due in manual.deadlines))
    due = min(due for due in manual.deadlines if due > manual.now())
    delay = (due - manual.now()).total_seconds()
    manual.set(max(due, manual.now()))
    return delay


async def test_a_stalled_target_holds_up_no_other_and_lands_once_the_api_answers() -> None:
    names = ["stalled", "a", "b", "c"]
    async with cluster_with(names) as cluster:
        manual = clock.ManualClock(T0)
        knative = reconciler.Reconciler(KnativeActuator(cluster.api, floor_object="revision"), clock=manual, workers=4)
        async with running(knative):
            cluster.server.stall("/stalled")
            for name in names:
                knative.submit(decision(name, 2))
            await wait_for(lambda: all(cluster.min_scale(name) == "2" for name in names[1:]), within=1)
            assert cluster.server.held == 1 and cluster.min_scale("stalled") is None
            view = knative.describe("llm/stalled")
            assert view is not None and (view["desired"], view["applied"], view["state"]) == (2, None, "pending")
            assert knative.depth() == 0 and knative.oldest_unapplied() >= 0
            cluster.server.release()
            await wait_for(lambda: cluster.min_scale("stalled") == "2", within=2)
            await wait_for(lambda: (knative.describe("llm/stalled") or {}).get("state") == "applied")
    assert knative.retries == 0


async def test_more_stalled_targets_than_the_old_client_had_threads_hold_up_no_healthy_one() -> None:
    """48 Services whose calls hang (the blocking client had 32 threads, the reconciler 28 workers):
    with the workers `prewarm serve` gives the reconciler, the healthy targets land at once."""
    stalled = [f"stalled{i}" for i in range(48)]
    healthy = ["a", "b", "c"]
    async with cluster_with(stalled + healthy) as cluster:
        knative = reconciler.Reconciler(
            KnativeActuator(cluster.api, floor_object="revision"),
            clock=clock.ManualClock(T0),
            workers=max(1, cluster.api.max_in_flight - composition.KUBE_RESERVED),
        )
        async with running(knative):
            cluster.server.stall("/stalled")
            for name in stalled:
                knative.submit(decision(name, 2))
            await wait_for(lambda: cluster.server.held == len(stalled), within=2)
            for name in healthy:
                knative.submit(decision(name, 2))
            await wait_for(lambda: all(cluster.min_scale(name) == "2" for name in healthy), within=1)
            assert cluster.server.held == len(stalled) and knative.retries == 0  # none timed out meanwhile
            cluster.server.release()
            await wait_for(lambda: all(cluster.min_scale(name) == "2" for name in stalled), within=2)


async def test_calls_that_time_out_during_a_stall_are_retried_and_the_floor_lands_once_it_answers() -> None:
    """The API stalls for longer than the client waits: each attempt times out and is retried with
    backoff; the other target lands meanwhile; once the API answers, the stalled floor lands."""
    async with cluster_with(["stalled", "other"]) as cluster:
        quick_session, quick = kube_api_at(cluster.url, timeout=0.2)
        manual = clock.ManualClock(T0)
        knative = reconciler.Reconciler(KnativeActuator(quick, floor_object="revision"), clock=manual, workers=4)
        try:
            async with running(knative):
                cluster.server.stall("/stalled")
                knative.submit(decision("stalled", 3))
                knative.submit(decision("other", 3))
                await wait_for(lambda: cluster.min_scale("other") == "3", within=1)
                for _ in range(2):  # two attempts time out, each retried after its backoff
                    await next_retry(manual)
                view = knative.describe("llm/stalled")
                assert view is not None and view["attempts"] >= 2 and view["state"] == "retrying"
                assert "Timeout" in str(view["last_error"]) or "timed out" in str(view["last_error"])
                cluster.server.release()
                while cluster.min_scale("stalled") != "3":  # the attempt under way, or the next one, lands
                    await wait_for(
                        lambda: any(d > manual.now() for d in manual.deadlines) or cluster.min_scale("stalled") == "3",
                        within=2,
                    )
                    if cluster.min_scale("stalled") != "3":
                        await next_retry(manual)
        finally:
            await quick_session.close()


async def test_a_throttled_or_failing_api_is_retried_with_backoff_until_the_floor_lands() -> None:
    async with cluster_with(["chat"]) as cluster:
        manual = clock.ManualClock(T0)
        knative = reconciler.Reconciler(
            KnativeActuator(cluster.api, floor_object="revision"),
            clock=manual,
            limiter=backoff.RateLimiter(rng=random.Random(7)),
        )
        # the Service read answers 429, 500, 503; then a patch meets three conflicts in a row (one attempt)
        cluster.server.faults += [("GET", 429), ("GET", 500), ("GET", 503)] + [("PATCH", 409)] * 3
        async with running(knative):
            knative.submit(decision("chat", 2))
            delays = [await next_retry(manual) for _ in range(4)]
            await wait_for(lambda: cluster.min_scale("chat") == "2")
            await wait_for(lambda: (knative.describe("llm/chat") or {}).get("state") == "applied")
            view = knative.describe("llm/chat")
            assert view is not None and (view["attempts"], view["last_error"], view["applied"]) == (0, None, 2)
            # exponential per target, with jitter under the doubling: 0.05, 0.1, 0.2, 0.4 s at most
            for failures, delay in enumerate(delays, start=1):
                ceiling = min(CAP, FIRST * 2 ** (failures - 1))
                assert ceiling / 2 <= delay <= ceiling, (failures, delays)
            assert knative.retries == 4
            assert cluster.patched("chat") == ["2"]
            # once applied, the same floor again and a recheck read the revision but write nothing
            knative.submit(decision("chat", 2))
            knative.recheck(["llm/chat"])
            reads = len(cluster.server.requests)
            await wait_for(lambda: len(cluster.server.requests) >= reads + 2)  # Service and Revision read
            await wait_for(lambda: (knative.describe("llm/chat") or {}).get("state") == "applied")
            assert cluster.patched("chat") == ["2"]


async def test_the_newest_floor_wins_when_floors_change_during_an_outage() -> None:
    async with cluster_with(["chat"]) as cluster:
        manual = clock.ManualClock(T0)
        knative = reconciler.Reconciler(
            KnativeActuator(cluster.api, floor_object="revision"),
            clock=manual,
            limiter=backoff.RateLimiter(rng=random.Random(3)),
        )
        cluster.server.faults += [("GET", 500)] * 4
        async with running(knative):
            for floor in (3, 4, 5):
                knative.submit(decision("chat", floor))
                await wait_for(lambda floor=floor: (knative.describe("llm/chat") or {}).get("desired") == floor)
            view = knative.describe("llm/chat")
            assert view is not None and view["state"] in ("pending", "retrying")
            while cluster.min_scale("chat") != "5":
                await next_retry(manual)
                await wait_for(
                    lambda: any(d > manual.now() for d in manual.deadlines) or cluster.min_scale("chat") == "5"
                )
    assert cluster.patched("chat") == ["5"]  # 3 and 4 were never written: only the newest floor lands


async def test_a_refused_floor_is_counted_as_refused_and_not_shown_as_applied() -> None:
    async with cluster_with(["chat"]) as cluster:
        cluster.server.namespaces["knative-serving"] = {"metadata": {"name": "knative-serving"}}  # no version label
        manual = clock.ManualClock(T0)
        knative = reconciler.Reconciler(KnativeActuator(cluster.api), clock=manual, refused_retry=30)
        async with running(knative):
            knative.submit(decision("chat", 2))
            await wait_for(lambda: (knative.describe("llm/chat") or {}).get("state") == "refused")
            view = knative.describe("llm/chat")
            assert view is not None and (view["desired"], view["applied"], view["attempts"]) == (2, None, 1)
            assert str(view["reason"]).startswith("min-scale not written: Knative Serving version unknown")
            await wait_for(lambda: manual.deadlines == [T0 + timedelta(seconds=30)])  # again later, not in a loop
            labels = {"app.kubernetes.io/version": "1.23.0"}
            cluster.server.namespaces["knative-serving"]["metadata"]["labels"] = labels  # e.g. RBAC fixed
            manual.advance(timedelta(seconds=30))
            await wait_for(lambda: cluster.min_scale("chat") == "2")
            await wait_for(lambda: (knative.describe("llm/chat") or {}).get("state") == "applied")


async def test_a_leader_change_mid_outage_applies_every_floor_it_decides() -> None:
    names = ["a", "b", "c"]
    async with cluster_with(names) as cluster:
        manual = clock.ManualClock(T0)
        leading = False
        actuator = KnativeActuator(cluster.api, floor_object="revision", is_leader=lambda: leading)
        knative = reconciler.Reconciler(actuator, clock=manual)
        registry = target_registry.TargetRegistry([spec(name, floor=1) for name in names])
        loop = decider.Decider(
            registry=registry, store=MemoryStore(), reconcilers=reconciler.Reconcilers([knative]), clock=manual
        )
        async with running(loop, knative):
            await wait_for(lambda: all((knative.describe(f"llm/{n}") or {}).get("state") == "skipped" for n in names))
            assert cluster.server.patches() == []  # another replica leads: nothing written here
            cluster.server.faults += [("GET", 503)] * 5  # the API is failing as the Lease changes hands
            leading = True
            knative_targets.on_leadership_change(True, loop, knative, None)
            while not all(cluster.min_scale(name) == "1" for name in names):
                await next_retry(manual)
                await wait_for(
                    lambda: (
                        any(d > manual.now() for d in manual.deadlines)
                        or all(cluster.min_scale(name) == "1" for name in names)
                    )
                )
    assert [cluster.patched(name) for name in names] == [["1"], ["1"], ["1"]]


@pytest.mark.parametrize("bad", [{"first": 0.0}, {"first": 2.0, "cap": 1.0}, {"qps": 0.0}, {"burst": 0}])
def test_backoff_settings_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        backoff.BackoffSettings(**bad)  # type: ignore[arg-type]


def test_the_token_bucket_bounds_retries_of_all_targets_together() -> None:
    limiter = backoff.RateLimiter(backoff.BackoffSettings(first=0.01, cap=0.01, qps=10, burst=2), rng=random.Random(1))
    delays = [limiter.when(f"t{i}", 100.0) for i in range(4)]
    assert delays[:2] == [pytest.approx(d) for d in delays[:2]] and max(delays[:2]) <= 0.01  # within the burst
    assert delays[2:] == [pytest.approx(0.1), pytest.approx(0.2)]  # then 10 per second
    assert limiter.failures("t0") == 1
    limiter.forget("t0")
    assert limiter.failures("t0") == 0
