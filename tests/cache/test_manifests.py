"""manifests/cache: every object round-trips through the kubernetes client's models unchanged,
so field names and types are the API's; the Knative patch names the features Knative checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

CACHE = Path(__file__).resolve().parents[2] / "manifests" / "cache"
MODELS = {
    "StorageClass": "V1StorageClass",
    "PersistentVolume": "V1PersistentVolume",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
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
