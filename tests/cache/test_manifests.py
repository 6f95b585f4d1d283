"""manifests/cache: every object round-trips through the kubernetes client's models unchanged,
so field names and types are the API's; the Knative patch names the features Knative checks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer
from kube_api_server import RBAC, KubeAPIServer
from kubernetes import client
from model_files import write_model
from support import kube_api_at

from prewarm import cli
from prewarm.cache import hub_layout
from prewarm.core import policy, targets, weights
from prewarm.service import weights_follower

CACHE = Path(__file__).resolve().parents[2] / "manifests" / "cache"
FOLLOWER = CACHE / "follower"
MODELS = {
    "StorageClass": "V1StorageClass",
    "PersistentVolume": "V1PersistentVolume",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "DaemonSet": "V1DaemonSet",
    "ServiceAccount": "V1ServiceAccount",
    "ClusterRole": "V1ClusterRole",
    "ClusterRoleBinding": "V1ClusterRoleBinding",
}


def round_trip(obj: dict[str, Any]) -> Any:
    api = client.ApiClient()
    model = api.deserialize(json.dumps(obj), MODELS[obj["kind"]], "application/json")
    return api.sanitize_for_serialization(model)


OBJECTS = [
    (path.name, document)
    for path in sorted(CACHE.glob("*.yaml"))
    if path.name not in ("kustomization.yaml", "knative-config-features-patch.yaml")
    for document in yaml.safe_load_all(path.read_text())
]


@pytest.mark.parametrize(("name", "obj"), OBJECTS, ids=[name for name, _ in OBJECTS])
def test_objects_match_the_api_models(name: str, obj: dict[str, Any]) -> None:
    assert round_trip(obj) == obj


def test_local_volume_binds_when_the_pod_is_scheduled() -> None:
    objects = {obj["kind"]: obj for name, obj in OBJECTS if name != "pvc-rwx.yaml"}
    assert objects["StorageClass"]["volumeBindingMode"] == "WaitForFirstConsumer"
    assert objects["PersistentVolume"]["spec"]["storageClassName"] == objects["StorageClass"]["metadata"]["name"]
    assert objects["PersistentVolumeClaim"]["spec"]["storageClassName"] == objects["StorageClass"]["metadata"]["name"]
    kustomization = yaml.safe_load((CACHE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == ["pv-local-nvme.yaml", "pvc.yaml", "storageclass-local.yaml"]


def test_knative_features_patch() -> None:
    patch = yaml.safe_load((CACHE / "knative-config-features-patch.yaml").read_text())
    assert patch == {
        "data": {
            "kubernetes.podspec-persistent-volume-claim": "enabled",
            "kubernetes.podspec-persistent-volume-write": "enabled",
            "kubernetes.podspec-affinity": "enabled",
        }
    }


FOLLOWER_OBJECTS = [
    (path.name, document)
    for path in sorted(FOLLOWER.glob("*.yaml"))
    if path.name != "kustomization.yaml"
    for document in yaml.safe_load_all(path.read_text())
]


@pytest.mark.parametrize(("name", "obj"), FOLLOWER_OBJECTS, ids=[n for n, _ in FOLLOWER_OBJECTS])
def test_follower_objects_match_the_api_models(name: str, obj: dict[str, Any]) -> None:
    assert round_trip(obj) == obj


def test_the_follower_daemonset_runs_a_valid_prewarm_cache_warm() -> None:
    objects = {obj["kind"]: obj for _, obj in FOLLOWER_OBJECTS}
    pod = objects["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = cli.build_parser("cache", "warm").parse_args(container["args"])
    assert (args.command, args.verb, args.follow) == ("cache", "warm", True)
    assert args.budget == 400 * 1024**3 and args.lead == 60.0
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[str(args.root)]]["hostPath"]["path"] == "/mnt/nvme0/prewarm-cache"
    local_pv = yaml.safe_load((CACHE / "pv-local-nvme.yaml").read_text())
    assert local_pv["spec"]["local"]["path"] == "/mnt/nvme0/prewarm-cache"  # the pods' volume: the same folder
    assert volumes[mounts[str(args.config.parent)]]["configMap"]["name"] == "prewarm-targets"
    key, _, value = args.node_selector.partition("=")
    assert pod["nodeSelector"] == {key: value}
    assert pod["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    kustomization = yaml.safe_load((FOLLOWER / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == ["daemonset.yaml", "rbac.yaml", "serviceaccount.yaml"]


async def test_the_follower_needs_only_the_rules_it_is_granted(tmp_path: Path) -> None:
    """The follower's Kubernetes calls against an API server enforcing the shipped RBAC."""
    source = tmp_path / "models" / "m"
    write_model(source, shards=1, shard_bytes=1024**2)
    fake = KubeAPIServer()
    fake.rbac = RBAC((FOLLOWER / "rbac.yaml").read_text(), account=("prewarm", "prewarm-weights-follower"))
    fake.add_node("gpu-a", labels={"pool": "gpu"})
    async with TestServer(fake.app) as server:
        api_session, api = kube_api_at(str(server.make_url("")))
        try:
            at = datetime(2026, 12, 7, tzinfo=UTC)
            spec = targets.TargetSpec(
                ref=targets.TargetRef("llm", "chat"), kind=targets.TargetKind.KNATIVE, max=2, hold=timedelta(0)
            )
            decision = policy.decide_floor(spec, policy.Signals(sessions=4), at, None)

            class Feed:
                async def load_decision(self, target: str) -> policy.FloorDecision | None:
                    return decision

                def add_decision_listener(self, listener: object) -> None: ...

                def add_resync_listener(self, listener: object) -> None: ...

            follower = weights_follower.WeightsFollower(
                feed=Feed(),
                nodes=api,
                specs={"llm/chat": weights.WeightsSettings(model="org/m", source=str(source))},
                settings=weights_follower.FollowerSettings(
                    node="gpu-a", root=tmp_path / "volume", budget_bytes=10**9, node_selector="pool=gpu"
                ),
                now=lambda: at,
            )
            await follower.reconcile("llm/chat")
        finally:
            await api_session.close()
    assert fake.denied == []
    assert hub_layout.node_label("models--org--m") in fake.nodes["gpu-a"]["metadata"]["labels"]
