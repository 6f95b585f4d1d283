"""Discovery of annotated Knative Services over list + bounded watches, against an API server with
Kubernetes' watch semantics (resume from resourceVersion, 410 Gone)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from kube_api_server import KubeAPIServer
from support import kube_api_at, wait_for

from knative import discovery
from prewarm.core import targets

SERVING = "serving.knative.dev/v1"


def knative_service(name: str, *, enabled: bool = True, traffic: str = "r1", **annotations: str) -> dict[str, Any]:
    own = {"prewarm.dev/enabled": "true"} if enabled else {}
    own.update({f"prewarm.dev/{k.replace('_', '-')}": v for k, v in annotations.items()})
    return {
        "metadata": {"name": name, "namespace": "llm", "annotations": own},
        "spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/max-scale": "6"}}}},
        "status": {"traffic": [{"revisionName": f"{name}-{traffic}", "percent": 100}]},
    }


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def listeners(self) -> discovery.Listeners:
        return discovery.Listeners(
            target_seen=lambda spec: self.events.append(("seen", (str(spec.ref), spec.max, spec.min))),
            traffic_changed=lambda target: self.events.append(("traffic", target)),
            target_gone=lambda target: self.events.append(("gone", target)),
        )


class World:
    def __init__(self, fake: KubeAPIServer, seen: Seen, finder: discovery.ServiceDiscovery) -> None:
        self.fake, self.seen, self.finder = fake, seen, finder


@pytest.fixture
async def world() -> AsyncIterator[World]:
    fake = KubeAPIServer()
    fake.add(SERVING, "services", knative_service("chat", min="1"))
    fake.add(SERVING, "services", knative_service("plain", enabled=False))
    async with TestServer(fake.app) as server:
        api_session, api = kube_api_at(str(server.make_url("")))
        seen = Seen()

        async def no_wait(seconds: float) -> None:
            await asyncio.sleep(0)

        finder = discovery.ServiceDiscovery(api, seen.listeners(), timeout_seconds=1, sleep=no_wait)
        task = asyncio.create_task(finder.run())
        try:
            await wait_for(lambda: bool(seen.events))
            yield World(fake, seen, finder)
        finally:
            task.cancel()
            await api_session.close()


async def test_lists_then_follows_changes(world: World) -> None:
    assert world.seen.events == [("seen", ("llm/chat", 6, 1))]  # max from the template's max-scale
    world.fake.add(SERVING, "services", knative_service("chat", min="2"))
    await wait_for(lambda: ("seen", ("llm/chat", 6, 2)) in world.seen.events)
    world.fake.add(SERVING, "services", knative_service("chat", min="2", traffic="r2"))  # a new revision routed
    await wait_for(lambda: ("traffic", "llm/chat") in world.seen.events)
    world.fake.add(SERVING, "services", knative_service("plain", min="1"))  # enabled later
    await wait_for(lambda: ("seen", ("llm/plain", 6, 1)) in world.seen.events)
    world.fake.add(SERVING, "services", knative_service("plain", enabled=False))  # disabled again
    await wait_for(lambda: ("gone", "llm/plain") in world.seen.events)
    world.fake.delete(SERVING, "llm", "services", "chat")
    await wait_for(lambda: ("gone", "llm/chat") in world.seen.events)


async def test_bounded_watches_resume_without_listing_again(world: World) -> None:
    await wait_for(lambda: sum(1 for m, *_ in world.fake.requests if m == "WATCH") >= 3, within=10)
    assert world.finder.lists == {"services": 1, "revisions": 1}
    watches = [query for method, _, _, query in world.fake.requests if method == "WATCH"]
    assert all(q["timeoutSeconds"] == "1" for q in watches)
    world.fake.add(SERVING, "services", knative_service("chat", min="3"))
    await wait_for(lambda: ("seen", ("llm/chat", 6, 3)) in world.seen.events)
    assert world.finder.lists == {"services": 1, "revisions": 1}


async def test_gone_lists_again_and_reconciles(world: World) -> None:
    # The next watch is told its version was compacted (410), as the API server does after
    # compaction; a Service added meanwhile must still be found, by the fresh list if not sooner.
    world.fake.faults.append(("WATCH", 410))
    world.fake.add(SERVING, "services", knative_service("late", min="1"))
    await wait_for(lambda: sum(world.finder.lists.values()) >= 3, within=10)  # either watch may get the 410
    await wait_for(lambda: ("seen", ("llm/late", 6, 1)) in world.seen.events)


async def test_a_failed_watch_lists_again(world: World) -> None:
    # A watch refused by the server (500) is a gap: discovery reads the whole state again rather
    # than resuming, so a Service removed meanwhile (history compacted) is still reported gone.
    world.fake.faults.append(("WATCH", 500))
    world.fake.delete(SERVING, "llm", "services", "chat")
    world.fake.compact()
    await wait_for(lambda: sum(world.finder.lists.values()) >= 3, within=10)
    await wait_for(lambda: ("gone", "llm/chat") in world.seen.events)


async def test_invalid_annotations_are_logged_once_and_keep_the_last_valid_target(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        world.fake.add(SERVING, "services", knative_service("chat", min="many"))
        await wait_for(
            lambda: any("prewarm.dev/min: 'many' is not an integer" in r.getMessage() for r in caplog.records),
            within=10,
        )
    assert ("gone", "llm/chat") not in world.seen.events


def test_spec_of_reads_own_annotations_and_template_max_scale() -> None:
    spec = discovery.spec_of(knative_service("chat", min="1", hold="5m"))
    assert spec is not None
    assert (str(spec.ref), spec.kind, spec.max, spec.min, spec.hold.total_seconds()) == (
        "llm/chat",
        targets.TargetKind.KNATIVE,
        6,
        1,
        300.0,
    )
    assert discovery.spec_of(knative_service("chat", enabled=False)) is None


def test_namespace_filter() -> None:
    seen = Seen()
    finder = discovery.ServiceDiscovery(api=None, listeners=seen.listeners(), namespaces=frozenset({"other"}))  # type: ignore[arg-type]
    finder._sync([knative_service("chat", min="1")])
    assert seen.events == []
    everywhere = discovery.ServiceDiscovery(api=None, listeners=seen.listeners())  # type: ignore[arg-type]
    everywhere._sync([knative_service("chat", min="1")])
    assert seen.events == [("seen", ("llm/chat", 6, 1))]
