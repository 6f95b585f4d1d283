"""`prewarm cache warm`, the node follower's entry point, as a real process: a real Redis, the fake
Kubernetes API through a kubeconfig, a generated model on disk."""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from aiohttp.test_utils import TestServer
from kube_api_server import KubeAPIServer
from model_files import write_model
from support import RedisServer, wait_for

from prewarm.cache import hub_layout
from prewarm.core import policy, targets
from prewarm.service import store

LABEL = hub_layout.node_label(hub_layout.repo_folder("acme/chat"))


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: fake, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: fake, user: u}}]\ncurrent-context: c\n"
    )
    return path


def _config(path: Path, source: Path) -> Path:
    path.write_text(
        "targets:\n"
        f"  - {{name: llm/chat, kind: knative, max: 4, weights: {{model: acme/chat, source: '{source}'}}}}\n"
        "  - {name: llm/plain, kind: knative, max: 4}\n"
    )
    return path


async def test_warm_follows_the_store_and_labels_the_node(redis_server: RedisServer, tmp_path: Path) -> None:
    source = tmp_path / "models" / "acme" / "chat"
    write_model(source, shards=1, shard_bytes=4 * 1024**2)
    fake = KubeAPIServer()
    fake.add_node("gpu-a", labels={"pool": "gpu"})
    async with TestServer(fake.app) as server:
        kubeconfig = _kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")).rstrip("/"))
        command = [
            sys.executable, "-m", "prewarm.cli", "cache", "warm", "--follow",
            "--store", redis_server.url, "--config", str(_config(tmp_path / "targets.yaml", source)),
            "--node", "gpu-a", "--root", str(tmp_path / "volume"), "--budget", "1G",
            "--node-selector", "pool=gpu", "--kubeconfig", str(kubeconfig),
        ]  # fmt: skip
        follower = await asyncio.create_subprocess_exec(*command)
        writer = store.RedisStore.from_url(redis_server.url)
        try:
            spec = targets.TargetSpec(
                ref=targets.TargetRef("llm", "chat"), kind=targets.TargetKind.KNATIVE, max=4, sessions_per_replica=1
            )
            now = datetime.now(UTC)
            await writer.save_decision(policy.decide_floor(spec, policy.Signals(sessions=1), now, None))
            await wait_for(lambda: LABEL in fake.nodes["gpu-a"]["metadata"]["labels"], within=30)
            snapshot = tmp_path / "volume" / "weights" / "models--acme--chat" / "snapshots"
            revision = fake.nodes["gpu-a"]["metadata"]["labels"][LABEL]
            assert (snapshot / revision / "config.json").is_file()
        finally:
            follower.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(follower.wait(), 30)
            await writer.close()
        assert code == 0


async def test_warm_without_targets_with_weights_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text("targets:\n  - {name: llm/plain, kind: knative, max: 4}\n")
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "prewarm.cli", "cache", "warm", "--store", "redis://127.0.0.1:1/0",
        "--config", str(config), "--budget", "1G",
        stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    _, err = await done.communicate()
    assert done.returncode == 2
    assert "--node: None is required (or NODE_NAME from the downward API)" in err.decode()
    assert f"--config: '{config}' names no target with weights" in err.decode()


async def test_one_pass_stages_every_target_it_can_and_names_the_one_it_cannot(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Without --follow: a target whose source is missing fails alone (exit 1, named with its
    source), and the targets after it are still staged."""
    source = tmp_path / "models" / "acme" / "chat"
    write_model(source, shards=1, shard_bytes=4 * 1024**2)
    missing = tmp_path / "models" / "acme" / "gone"
    config = tmp_path / "targets.yaml"
    config.write_text(
        "targets:\n"
        f"  - {{name: llm/broken, kind: knative, max: 4, weights: {{model: acme/gone, source: '{missing}'}}}}\n"
        f"  - {{name: llm/chat, kind: knative, max: 4, weights: {{model: acme/chat, source: '{source}'}}}}\n"
    )
    fake = KubeAPIServer()
    fake.add_node("gpu-a", labels={"pool": "gpu"})
    writer = store.RedisStore.from_url(redis_server.url)
    try:
        now = datetime.now(UTC)
        for name in ("broken", "chat"):
            spec = targets.TargetSpec(
                ref=targets.TargetRef("llm", name), kind=targets.TargetKind.KNATIVE, max=4, sessions_per_replica=1
            )
            await writer.save_decision(policy.decide_floor(spec, policy.Signals(sessions=1), now, None))
    finally:
        await writer.close()
    async with TestServer(fake.app) as server:
        kubeconfig = _kubeconfig(tmp_path / "kubeconfig", str(server.make_url("")).rstrip("/"))
        done = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "prewarm.cli", "cache", "warm",
            "--store", redis_server.url, "--config", str(config),
            "--node", "gpu-a", "--root", str(tmp_path / "volume"), "--budget", "1G",
            "--node-selector", "pool=gpu", "--kubeconfig", str(kubeconfig),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 1, err.decode()
    assert f"llm/broken: {missing}: not a folder" in err.decode()
    assert "Traceback" not in err.decode()
    assert LABEL in fake.nodes["gpu-a"]["metadata"]["labels"]
