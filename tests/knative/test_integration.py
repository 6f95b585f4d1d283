"""Against a real API server, when PREWARM_TEST_KUBECONFIG points at one with Knative Serving's CRDs
installed (no controllers needed). Skipped otherwise.

Creates a Service and a Revision in a fresh namespace, sets the Service's status.traffic through
the status subresource as Knative's controller would, runs the actuator, and asserts with the API
that the Revision's min-scale changed, no Revision appeared, nothing else on it changed, and the
write is ours in managedFields; then floors changed while queued land, the newest one, through
the reconciler.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from support import wait_for

from knative import kube_api, kube_connection
from knative.actuator import KnativeActuator
from prewarm.core import actuation, policy, targets
from prewarm.service import clock, reconciler

KUBECONFIG = os.environ.get("PREWARM_TEST_KUBECONFIG")
pytestmark = pytest.mark.skipif(not KUBECONFIG, reason="PREWARM_TEST_KUBECONFIG is not set")
GROUP, VERSION = "serving.knative.dev", "v1"
MIN = "autoscaling.knative.dev/min-scale"


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[k8s.ApiClient, str]]:
    api_client = k8s_config.new_client_from_config(config_file=KUBECONFIG)
    namespace = f"prewarm-it-{secrets.token_hex(4)}"
    k8s.CoreV1Api(api_client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    try:
        yield api_client, namespace
    finally:
        k8s.CoreV1Api(api_client).delete_namespace(namespace)


def create(custom: k8s.CustomObjectsApi, namespace: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)  # type: ignore[no-any-return]


async def test_actuator_patches_only_the_routed_revisions_min_scale(cluster: tuple[k8s.ApiClient, str]) -> None:
    api_client, namespace = cluster
    custom = k8s.CustomObjectsApi(api_client)
    container = {"image": "registry.example.com/model-server:1", "name": "server"}
    create(
        custom,
        namespace,
        "services",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Service",
            "metadata": {"name": "chat", "annotations": {"prewarm.dev/enabled": "true"}},
            "spec": {"template": {"spec": {"containers": [container]}}},
        },
    )
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "services",
        "chat",
        {"status": {"traffic": [{"revisionName": "chat-00001", "percent": 100, "latestRevision": True}]}},
        _content_type="application/merge-patch+json",
    )
    before = create(
        custom,
        namespace,
        "revisions",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Revision",
            "metadata": {
                "name": "chat-00001",
                "labels": {"serving.knative.dev/service": "chat"},
                "annotations": {"autoscaling.knative.dev/max-scale": "4"},
            },
            "spec": {"containers": [container]},
        },
    )

    session = kube_connection.open_session(api_client.configuration)
    api = kube_api.KubeAPI(api_client.configuration, session)
    try:
        spec = targets.TargetSpec(
            ref=targets.TargetRef(namespace, "chat"), kind=targets.TargetKind.KNATIVE, max=8, sessions_per_replica=1
        )
        decision = policy.decide_floor(spec, policy.Signals(sessions=2), datetime.now(UTC), None)
        assert await KnativeActuator(api, floor_object="revision").apply(decision, None) == actuation.APPLIED
    finally:
        await session.close()

    after = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "revisions", "chat-00001")
    assert after["metadata"]["annotations"] == {**before["metadata"]["annotations"], MIN: "2"}
    assert after["metadata"]["labels"] == before["metadata"]["labels"]
    assert after["spec"] == before["spec"]
    revisions = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "revisions")["items"]
    assert [r["metadata"]["name"] for r in revisions] == ["chat-00001"]
    # our write is ours in managedFields, not the client library's default (OpenAPI-Generator)
    managers = {entry["manager"]: entry for entry in after["metadata"].get("managedFields") or []}
    assert MIN[len("autoscaling.knative.dev/") :] in str(managers[kube_api.FIELD_MANAGER]["fieldsV1"])


async def test_a_reconciler_lands_every_floor_through_the_real_api(cluster: tuple[k8s.ApiClient, str]) -> None:
    """Several Services, floors changed twice while queued: each routed Revision ends at the
    newest floor, through the reconciler as `prewarm serve` runs it."""
    api_client, namespace = cluster
    custom = k8s.CustomObjectsApi(api_client)
    container = {"image": "registry.example.com/model-server:1", "name": "server"}
    names = [f"svc{i}" for i in range(5)]
    for name in names:
        create(
            custom,
            namespace,
            "services",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {"template": {"spec": {"containers": [container]}}},
            },
        )
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            "services",
            name,
            {"status": {"traffic": [{"revisionName": f"{name}-00001", "percent": 100}]}},
            _content_type="application/merge-patch+json",
        )
        create(
            custom,
            namespace,
            "revisions",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Revision",
                "metadata": {"name": f"{name}-00001", "labels": {"serving.knative.dev/service": name}},
                "spec": {"containers": [container]},
            },
        )
    session = kube_connection.open_session(api_client.configuration)
    api = kube_api.KubeAPI(api_client.configuration, session)
    knative = reconciler.Reconciler(KnativeActuator(api, floor_object="revision"), clock=clock.SystemClock())
    running = asyncio.create_task(knative.run())
    try:
        for floor in (1, 3, 2):
            for name in names:
                spec = targets.TargetSpec(
                    ref=targets.TargetRef(namespace, name),
                    kind=targets.TargetKind.KNATIVE,
                    max=8,
                    sessions_per_replica=1,
                )
                knative.submit(policy.decide_floor(spec, policy.Signals(sessions=floor), datetime.now(UTC), None))

        def min_scale(name: str) -> str | None:
            revision = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "revisions", f"{name}-00001")
            return (revision["metadata"].get("annotations") or {}).get(MIN)

        await wait_for(
            lambda: all((knative.describe(f"{namespace}/{n}") or {}).get("state") == "applied" for n in names),
            within=30,
        )
        assert [min_scale(name) for name in names] == ["2"] * len(names)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await session.close()
