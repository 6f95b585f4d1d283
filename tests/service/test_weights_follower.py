"""The node follower against a real Redis and the fake Kubernetes API: weights land on the chosen
nodes within a second of a floor leaving zero, nowhere else, within the node's byte budget, and
the node says so with a label."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from kube_api_server import MERGE_PATCH, KubeAPIServer
from model_files import write_model
from support import RedisServer, kube_api_at, wait_for

from knative import kube_api
from prewarm.cache import entries, hub_layout, staging
from prewarm.core import policy, targets, weights
from prewarm.service import store, weights_follower

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
TARGET = "llm/chat"
NODES = ("gpu-a", "gpu-b", "gpu-c")


def decision(target: str, floor: int, at: datetime, *, next_change: datetime | None = None) -> policy.FloorDecision:
    ref = targets.TargetRef(*target.split("/"))
    spec = targets.TargetSpec(
        ref=ref, kind=targets.TargetKind.KNATIVE, max=8, sessions_per_replica=1, hold=timedelta(0)
    )
    made = policy.decide_floor(spec, policy.Signals(sessions=floor), at, None)
    return made if next_change is None else policy.FloorDecision(**{**_fields(made), "next_change": next_change})


def _fields(made: policy.FloorDecision) -> dict[str, object]:
    return {name: getattr(made, name) for name in made.__dataclass_fields__}


class Cluster:
    """The fake API server with three GPU nodes and a CPU node, and a KubeAPI talking to it."""

    def __init__(self, fake: KubeAPIServer, api: kube_api.KubeAPI) -> None:
        self.fake, self.api = fake, api

    def label(self, node: str, model: str) -> str | None:
        labels: dict[str, str] = self.fake.nodes[node]["metadata"]["labels"]
        return labels.get(hub_layout.node_label(hub_layout.repo_folder(model)))


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    fake = KubeAPIServer()
    for node in NODES:
        fake.add_node(node, labels={"pool": "gpu"})
    fake.add_node("cpu-a", labels={"pool": "cpu"})
    fake.add_node("gpu-down", labels={"pool": "gpu"}, ready=False)
    async with TestServer(fake.app) as server:
        api_session, api = kube_api_at(str(server.make_url("")), timeout=5)
        try:
            yield Cluster(fake, api)
        finally:
            await api_session.close()


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("models")
    write_model(store / "acme" / "chat", shards=2, shard_bytes=8 * 1024**2, seed=1)
    write_model(store / "acme" / "other", shards=1, shard_bytes=8 * 1024**2, seed=2)
    write_model(store / "acme" / "third", shards=1, shard_bytes=8 * 1024**2, seed=3)
    return store


def _follower(
    feed: store.RedisStore, cluster: Cluster, node: str, root: Path, specs: dict[str, weights.WeightsSettings]
) -> weights_follower.WeightsFollower:
    settings = weights_follower.FollowerSettings(node=node, root=root, budget_bytes=10**12, node_selector="pool=gpu")
    return weights_follower.WeightsFollower(
        feed=feed, nodes=cluster.api, specs=specs, settings=settings, now=lambda: T0
    )


async def test_weights_land_within_a_second_of_the_floor_leaving_zero(
    redis_server: RedisServer, cluster: Cluster, model_store: Path, tmp_path: Path
) -> None:
    specs = {TARGET: weights.WeightsSettings(model="acme/chat", source=str(model_store / "acme" / "chat"))}
    chosen = weights.place_weights(TARGET, NODES, weights.nodes_wanted(1))  # floor 1: two of the three GPU nodes
    left_out = next(node for node in NODES if node not in chosen)
    writer = store.RedisStore.from_url(redis_server.url)
    feeds = [store.RedisStore.from_url(redis_server.url) for _ in NODES]
    followers = {
        node: _follower(feed, cluster, node, tmp_path / node, specs) for node, feed in zip(NODES, feeds, strict=True)
    }
    try:
        await writer.save_decision(decision(TARGET, 0, T0))
        async with (
            weights_follower.following(followers[NODES[0]]),
            weights_follower.following(followers[NODES[1]]),
            weights_follower.following(followers[NODES[2]]),
        ):
            for feed in feeds:
                await feed.start()
            await wait_for(lambda: all(f.decision(TARGET) is not None for f in followers.values()))
            assert not any(f.staged for f in followers.values())  # floor 0: nothing staged anywhere

            started = time.monotonic()
            await writer.save_decision(decision(TARGET, 1, T0 + timedelta(seconds=1)))
            await wait_for(lambda: all(cluster.label(node, "acme/chat") for node in chosen), within=10)
            elapsed = time.monotonic() - started
            assert elapsed < 1.0, f"staged {elapsed:.2f}s after the floor left zero"
        for node in chosen:
            result = followers[node].staged[-1]
            assert not result.hit and result.staged_bytes > 16 * 1024**2
            assert cluster.label(node, "acme/chat") == result.revision_id
            assert (
                staging.repo_entry(tmp_path / node, "acme/chat") / "refs" / "main"
            ).read_text() == result.revision_id
        assert followers[left_out].staged == [] and not (tmp_path / left_out).exists()
        assert cluster.label(left_out, "acme/chat") is None
        patches = [(path, ctype) for path, ctype, _ in cluster.fake.patches()]
        assert sorted(patches) == sorted((f"/api/v1/nodes/{node}", MERGE_PATCH) for node in chosen)
    finally:
        for feed in (writer, *feeds):
            await feed.close()


async def test_a_follower_started_late_relists_and_stages(
    redis_server: RedisServer, cluster: Cluster, model_store: Path, tmp_path: Path
) -> None:
    specs = {TARGET: weights.WeightsSettings(model="acme/chat", source=str(model_store / "acme" / "chat"))}
    node = weights.place_weights(TARGET, NODES, 2)[0]
    writer = store.RedisStore.from_url(redis_server.url)
    feed = store.RedisStore.from_url(redis_server.url)
    try:
        await writer.save_decision(decision(TARGET, 2, T0))  # published while nobody listened
        follower = _follower(feed, cluster, node, tmp_path / node, specs)
        async with weights_follower.following(follower):
            await feed.start()
            await wait_for(lambda: cluster.label(node, "acme/chat") is not None, within=10)
    finally:
        await writer.close()
        await feed.close()


async def test_a_scheduled_rise_within_the_lead_stages_ahead(
    redis_server: RedisServer, cluster: Cluster, model_store: Path, tmp_path: Path
) -> None:
    specs = {TARGET: weights.WeightsSettings(model="acme/chat", source=str(model_store / "acme" / "chat"))}
    node = weights.place_weights(TARGET, NODES, 2)[0]
    feed = store.RedisStore.from_url(redis_server.url)
    try:
        await feed.save_decision(decision(TARGET, 0, T0, next_change=T0 + timedelta(seconds=30)))
        follower = _follower(feed, cluster, node, tmp_path / node, specs)  # lead 60 s > 30 s
        async with weights_follower.following(follower):
            await feed.start()
            await wait_for(lambda: bool(follower.staged), within=10)
    finally:
        await feed.close()


async def test_the_byte_budget_evicts_the_least_recently_needed_model_not_in_use(
    redis_server: RedisServer, cluster: Cluster, model_store: Path, tmp_path: Path
) -> None:
    other = "llm/other"
    specs = {
        TARGET: weights.WeightsSettings(model="acme/chat", source=str(model_store / "acme" / "chat")),
        other: weights.WeightsSettings(model="acme/other", source=str(model_store / "acme" / "other")),
    }
    node = "solo"
    cluster.fake.add_node(node, labels={"pool": "solo"})
    feed = store.RedisStore.from_url(redis_server.url)
    root = tmp_path / node
    settings = weights_follower.FollowerSettings(
        node=node, root=root, budget_bytes=20 * 1024**2, node_selector="pool=solo"
    )
    follower = weights_follower.WeightsFollower(feed=feed, nodes=cluster.api, specs=specs, settings=settings)
    try:
        async with weights_follower.following(follower):
            await feed.start()
            await feed.save_decision(decision(TARGET, 1, T0))
            await wait_for(lambda: cluster.label(node, "acme/chat") is not None, within=10)
            # A model server uses acme/chat: over budget, it stays, and both are kept.
            chat = staging.repo_entry(root, "acme/chat")
            entries.write_lease(chat, host="pod", pid=1, now=time.time())
            await feed.save_decision(decision(other, 1, T0))
            await wait_for(lambda: cluster.label(node, "acme/other") is not None, within=10)
            assert chat.is_dir() and cluster.label(node, "acme/chat") is not None
            # The server is gone; the floor of llm/chat rises again after llm/other's: acme/other
            # is now the least recently needed and makes room.
            entries.lease_path(chat, "pod", 1).unlink()
            await feed.save_decision(decision(TARGET, 0, T0 + timedelta(seconds=1)))
            await wait_for(lambda: not follower.holds(TARGET))
            await feed.save_decision(decision(TARGET, 2, T0 + timedelta(seconds=2)))
            await wait_for(lambda: cluster.label(node, "acme/other") is None, within=10)
        assert chat.is_dir() and not staging.repo_entry(root, "acme/other").exists()
        assert cluster.label(node, "acme/chat") is not None
    finally:
        await feed.close()


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


class _DecidedDuringRead(store.MemoryStore):
    """A store whose decider writes a newer decision while the follower's re-read is in flight
    (the reply the follower gets was read before that write)."""

    def __init__(self, newer: policy.FloorDecision) -> None:
        super().__init__()
        self._newer: policy.FloorDecision | None = newer

    async def load_decision(self, target: str) -> policy.FloorDecision | None:
        read = await super().load_decision(target)
        if self._newer is not None:
            newer, self._newer = self._newer, None
            await self.save_decision(newer)
        return read


async def test_a_re_read_does_not_replace_a_newer_decision_heard_meanwhile(
    cluster: Cluster, model_store: Path, tmp_path: Path
) -> None:
    specs = {TARGET: weights.WeightsSettings(model="acme/chat", source=str(model_store / "acme" / "chat"))}
    newer = decision(TARGET, 0, T0 + timedelta(seconds=5))
    feed = _DecidedDuringRead(newer)
    await feed.save_decision(decision(TARGET, 0, T0))
    settings = weights_follower.FollowerSettings(node="gpu-a", root=tmp_path, budget_bytes=10**12)
    follower = weights_follower.WeightsFollower(
        feed=feed, nodes=cluster.api, specs=specs, settings=settings, now=lambda: T0
    )
    follower.resync()  # a gap in the feed: the follower forgets what it had and reads again
    await follower.reconcile(TARGET)
    assert follower.decision(TARGET) == newer


async def test_the_byte_budget_evicts_a_model_no_longer_needed_before_one_still_needed(
    cluster: Cluster, model_store: Path, tmp_path: Path
) -> None:
    """acme/other is staged first and still needed; acme/third was staged later but its floor went
    back to zero: over budget, acme/third goes, though acme/other was staged longer ago."""
    specs = {
        f"llm/{name}": weights.WeightsSettings(model=f"acme/{name}", source=str(model_store / "acme" / name))
        for name in ("other", "third", "chat")
    }
    node = "solo"
    cluster.fake.add_node(node, labels={"pool": "solo"})
    feed = store.MemoryStore()
    root = tmp_path / node
    sizes = {target: _folder_bytes(Path(spec.source)) for target, spec in specs.items()}
    budget = sizes["llm/other"] + sizes["llm/chat"] + 1024**2  # not all three
    settings = weights_follower.FollowerSettings(node=node, root=root, budget_bytes=budget, node_selector="pool=solo")
    follower = weights_follower.WeightsFollower(feed=feed, nodes=cluster.api, specs=specs, settings=settings)
    for target, floor, seconds in (("llm/other", 1, 0), ("llm/third", 1, 1), ("llm/third", 0, 2), ("llm/chat", 1, 3)):
        await feed.save_decision(decision(target, floor, T0 + timedelta(seconds=seconds)))
        await follower.reconcile(target)
    assert follower.holds("llm/other") and follower.holds("llm/chat")
    assert staging.repo_entry(root, "acme/other").is_dir()
    assert not staging.repo_entry(root, "acme/third").exists()
    assert cluster.label(node, "acme/other") is not None and cluster.label(node, "acme/third") is None


async def test_a_node_leaving_moves_its_weights_to_the_next_node_without_a_new_decision(
    cluster: Cluster, model_store: Path, tmp_path: Path
) -> None:
    """The floor stays at 1 while one of the two chosen nodes is cordoned: the follower of the node
    ranked next relists on its own and stages, though no decision changed."""
    specs = {TARGET: weights.WeightsSettings(model="acme/chat", source=str(model_store / "acme" / "chat"))}
    chosen = weights.place_weights(TARGET, NODES, weights.nodes_wanted(1))
    left_out = next(node for node in NODES if node not in chosen)
    feed = store.MemoryStore()
    await feed.save_decision(decision(TARGET, 1, T0))
    settings = weights_follower.FollowerSettings(
        node=left_out, root=tmp_path, budget_bytes=10**12, node_selector="pool=gpu", relist=timedelta(seconds=0.05)
    )
    follower = weights_follower.WeightsFollower(
        feed=feed, nodes=cluster.api, specs=specs, settings=settings, now=lambda: T0
    )
    async with weights_follower.following(follower):
        await wait_for(lambda: any(r[0] == "LIST" and r[1] == "/api/v1/nodes" for r in cluster.fake.requests))
        assert not follower.staged  # the nodes listed: this one is not among the chosen
        cluster.fake.nodes[chosen[0]]["spec"]["unschedulable"] = True
        await wait_for(lambda: follower.holds(TARGET), within=10)
    assert cluster.label(left_out, "acme/chat") == follower.staged[-1].revision_id


async def test_one_pass_over_many_targets_lists_the_nodes_once(
    cluster: Cluster, model_store: Path, tmp_path: Path
) -> None:
    """Every follower works every target each relist: the node list is read once for all of them,
    not once per target per node (a fleet's followers would flood the API server)."""
    specs = {
        f"llm/{name}": weights.WeightsSettings(model=f"acme/{name}", source=str(model_store / "acme" / name))
        for name in ("other", "third", "chat")
    }
    feed = store.MemoryStore()
    for target in specs:
        await feed.save_decision(decision(target, 1, T0))
    settings = weights_follower.FollowerSettings(
        node="gpu-a", root=tmp_path, budget_bytes=10**12, node_selector="pool=gpu", read_ahead=False
    )
    follower = weights_follower.WeightsFollower(
        feed=feed, nodes=cluster.api, specs=specs, settings=settings, now=lambda: T0
    )
    for target in specs:
        await follower.reconcile(target)
    assert [r[1] for r in cluster.fake.requests if r[0] == "LIST"] == ["/api/v1/nodes"]


def _tier_bytes(root: Path) -> int:
    """Bytes of the regular files under the weights tier now (what the node's disk holds)."""
    total = 0
    for folder, _, names in os.walk(hub_layout.weights_root(root)):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(os.path.join(folder, name))
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


async def test_room_is_made_before_copying_so_the_tier_never_passes_its_budget(
    cluster: Cluster, model_store: Path, tmp_path: Path
) -> None:
    """acme/other is staged and then no longer needed; acme/chat does not fit beside it. The
    follower evicts acme/other before it copies acme/chat: the disk never holds both."""
    specs = {
        f"llm/{name}": weights.WeightsSettings(model=f"acme/{name}", source=str(model_store / "acme" / name))
        for name in ("other", "chat")
    }
    node = "solo"
    cluster.fake.add_node(node, labels={"pool": "solo"})
    root = tmp_path / node
    budget = _folder_bytes(model_store / "acme" / "chat") + 1024**2  # chat fits; chat and other do not
    peak = 0

    async def run_blocking(fn: Callable[[], Any]) -> Any:
        """Run in a thread, sampling the tier's bytes while it runs and after."""
        nonlocal peak
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tier_bytes(root))
                done.wait(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn)
        finally:
            done.set()
            await asyncio.get_running_loop().run_in_executor(None, sampler.join)
            peak = max(peak, _tier_bytes(root))

    feed = store.MemoryStore()
    settings = weights_follower.FollowerSettings(node=node, root=root, budget_bytes=budget, node_selector="pool=solo")
    follower = weights_follower.WeightsFollower(
        feed=feed, nodes=cluster.api, specs=specs, settings=settings, run_blocking=run_blocking
    )
    for target, floor, seconds in (("llm/other", 1, 0), ("llm/other", 0, 1), ("llm/chat", 1, 2)):
        await feed.save_decision(decision(target, floor, T0 + timedelta(seconds=seconds)))
        await follower.reconcile(target)
    assert follower.holds("llm/chat") and not staging.repo_entry(root, "acme/other").exists()
    assert cluster.label(node, "acme/other") is None and cluster.label(node, "acme/chat") is not None
    assert peak <= budget, f"the tier held {peak} bytes, over its budget of {budget}"
