"""The Knative actuator against an API server with Kubernetes' semantics: exact patches, version
detection, no-op skips, and 404/409/422/5xx handling."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from kube_api_server import MERGE_PATCH, KubeAPIServer
from kubernetes import client as k8s
from support import wait_for

from knative import floors, kube_api, leader
from knative.actuator import KnativeActuator
from prewarm.core import policy, targets
from prewarm.service import clock

SERVING, AUTOSCALING = "serving.knative.dev/v1", "autoscaling.internal.knative.dev/v1alpha1"
MIN = "autoscaling.knative.dev/min-scale"
RBAC = (Path(__file__).resolve().parents[2] / "manifests" / "overlays" / "knative" / "rbac.yaml").read_text()
SPEC = targets.TargetSpec(
    ref=targets.TargetRef("llm", "chat"), kind=targets.TargetKind.KNATIVE, max=8, sessions_per_replica=1
)


def decision(floor: int) -> policy.FloorDecision:
    return policy.decide_floor(SPEC, policy.Signals(sessions=floor), datetime(2026, 5, 1, tzinfo=UTC), None)


def service(template_min: str | None = None, traffic: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    annotations = {} if template_min is None else {MIN: template_min}
    return {
        "apiVersion": SERVING,
        "kind": "Service",
        "metadata": {"name": "chat", "namespace": "llm", "annotations": {"prewarm.dev/enabled": "true"}},
        "spec": {"template": {"metadata": {"annotations": annotations}, "spec": {"containers": [{"image": "x"}]}}},
        "status": {
            "traffic": traffic
            if traffic is not None
            else [
                {"revisionName": "chat-00002", "percent": 90, "latestRevision": True},
                {"revisionName": "chat-00001", "percent": 10},
                {"revisionName": "chat-00000", "percent": 0, "tag": "old"},
            ]
        },
    }


def revision(name: str, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": SERVING,
        "kind": "Revision",
        "metadata": {
            "name": name,
            "namespace": "llm",
            "labels": {"serving.knative.dev/service": "chat"},
            "annotations": dict(annotations),
        },
        "spec": {"containers": [{"image": "x"}]},
    }


class Cluster:
    def __init__(
        self, server: KubeAPIServer, api: kube_api.KubeAPI, actuator: KnativeActuator, delays: list[float]
    ) -> None:
        self.server, self.api, self.actuator, self.delays = server, api, actuator, delays

    def annotations(self, name: str, plural: str = "revisions") -> dict[str, str]:
        group = SERVING if plural == "revisions" else AUTOSCALING
        return dict(self.server.get(group, "llm", plural, name)["metadata"].get("annotations") or {})


async def make_cluster(version: str, *, template_min: str | None = None) -> AsyncIterator[Cluster]:
    fake = KubeAPIServer()
    fake.namespaces["knative-serving"] = {
        "metadata": {"name": "knative-serving", "labels": {"app.kubernetes.io/version": version}}
    }
    fake.add(SERVING, "services", service(template_min))
    for name in ("chat-00000", "chat-00001", "chat-00002"):
        fake.add(SERVING, "revisions", revision(name, **{"autoscaling.knative.dev/max-scale": "4"}))
        pa = revision(name)
        pa["apiVersion"], pa["kind"] = AUTOSCALING, "PodAutoscaler"
        fake.add(AUTOSCALING, "podautoscalers", pa)
    async with TestServer(fake.app) as server:
        api = kube_api.KubeAPI(k8s.ApiClient(k8s.Configuration(host=str(server.make_url("")).rstrip("/"))), timeout=5)
        delays: list[float] = []

        async def record(seconds: float) -> None:
            delays.append(seconds)

        try:
            yield Cluster(fake, api, KnativeActuator(api, sleep=record), delays)
        finally:
            api.close()


@pytest.fixture
async def current() -> AsyncIterator[Cluster]:
    async for cluster in make_cluster("1.23.0"):
        yield cluster


async def test_patches_routed_revisions_with_exact_merge_patches(current: Cluster) -> None:
    before = {
        name: current.server.get(SERVING, "llm", "revisions", name)["metadata"]["resourceVersion"]
        for name in ("chat-00001", "chat-00002")
    }
    await current.actuator.apply(decision(3), None)
    assert current.server.patches() == [
        (
            "/apis/serving.knative.dev/v1/namespaces/llm/revisions/chat-00002",
            MERGE_PATCH,
            {"metadata": {"annotations": {MIN: "3"}, "resourceVersion": before["chat-00002"]}},
        ),
        (
            "/apis/serving.knative.dev/v1/namespaces/llm/revisions/chat-00001",
            MERGE_PATCH,
            {"metadata": {"annotations": {MIN: "3"}, "resourceVersion": before["chat-00001"]}},
        ),
    ]
    assert current.annotations("chat-00002")[MIN] == "3"
    assert MIN not in current.annotations("chat-00000")  # 0% traffic: min-scale would be ignored
    # nothing else on the revision changed
    assert current.annotations("chat-00002") == {"autoscaling.knative.dev/max-scale": "4", MIN: "3"}
    assert current.server.get(SERVING, "llm", "revisions", "chat-00002")["spec"] == {"containers": [{"image": "x"}]}


async def test_no_patch_when_the_value_is_unchanged(current: Cluster) -> None:
    await current.actuator.apply(decision(2), None)
    patched = len(current.server.patches())
    await current.actuator.apply(decision(2), None)
    assert len(current.server.patches()) == patched
    assert current.actuator.counts["unchanged"] == 2


async def test_clamps_to_the_revisions_max_scale_instead_of_a_422(current: Cluster) -> None:
    await current.actuator.apply(decision(8), None)
    assert current.annotations("chat-00002")[MIN] == "4"
    assert current.actuator.counts["invalid"] == 0


async def test_floor_zero_removes_our_annotation(current: Cluster) -> None:
    await current.actuator.apply(decision(2), None)
    await current.actuator.apply(decision(0), None)
    assert MIN not in current.annotations("chat-00002")
    assert current.server.patches()[-1][2]["metadata"]["annotations"] == {MIN: None}


async def test_users_template_min_scale_is_a_lower_bound_and_restored() -> None:
    async for cluster in make_cluster("1.23.0", template_min="1"):
        await cluster.actuator.apply(decision(3), None)
        assert cluster.annotations("chat-00002")[MIN] == "3"
        await cluster.actuator.apply(decision(0), None)
        assert cluster.annotations("chat-00002")[MIN] == "1"


async def test_knative_before_1_21_patches_the_podautoscaler() -> None:
    async for cluster in make_cluster("v1.20.3"):
        await cluster.actuator.apply(decision(2), None)
        assert {path.rsplit("/", 2)[1] for path, _, _ in cluster.server.patches()} == {"podautoscalers"}
        assert cluster.annotations("chat-00002", "podautoscalers")[MIN] == "2"
        assert MIN not in cluster.annotations("chat-00002")


async def test_conflict_rereads_and_retries(current: Cluster) -> None:
    current.server.faults.append(("PATCH", 409))
    await current.actuator.apply(decision(2), None)
    assert current.annotations("chat-00002")[MIN] == "2"
    assert current.delays == []  # a conflict is retried at once, after reading again


async def test_server_errors_back_off_then_succeed(current: Cluster) -> None:
    current.server.faults += [("PATCH", 500), ("PATCH", 503)]
    await current.actuator.apply(decision(2), None)
    assert current.annotations("chat-00002")[MIN] == "2"
    assert len(current.delays) == 2 and current.delays[1] > current.delays[0] * 0.6


async def test_invalid_is_logged_once_and_not_retried(current: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    current.server.get(SERVING, "llm", "revisions", "chat-00002")["metadata"]["annotations"][
        "autoscaling.knative.dev/activation-scale"
    ] = "1"  # invalid as set: every min-scale write is refused
    with caplog.at_level(logging.ERROR):
        await current.actuator.apply(decision(2), None)
        await current.actuator.apply(decision(3), None)
    refused = [r for r in caplog.records if "refused min-scale" in r.getMessage()]
    assert len(refused) == 1 and "activation-scale=1 must be > 1" in refused[0].getMessage()
    assert current.actuator.counts["invalid"] == 2
    assert current.delays == []


async def test_missing_service_or_revision_is_forgotten(current: Cluster) -> None:
    del current.server.objects[(SERVING, "llm", "revisions", "chat-00001")]
    await current.actuator.apply(decision(2), None)
    assert current.actuator.counts["gone"] == 1
    assert current.annotations("chat-00002")[MIN] == "2"
    del current.server.objects[(SERVING, "llm", "services", "chat")]
    await current.actuator.apply(decision(3), None)
    assert current.actuator.counts["gone"] == 2


@pytest.mark.parametrize(
    ("floor", "user_min", "annotations", "expected"),
    [
        (3, None, {}, 3),
        (0, None, {}, None),
        (0, 2, {}, 2),
        (1, 2, {}, 2),
        (9, None, {"autoscaling.knative.dev/max-scale": "4"}, 4),
        (9, None, {"autoscaling.knative.dev/maxScale": "5"}, 5),
        (9, None, {"autoscaling.knative.dev/max-scale": "0"}, 9),
        (9, None, {"autoscaling.knative.dev/activation-scale": "3"}, 3),
    ],
    ids=["floor", "none", "restore-user", "user-bound", "max-clamp", "legacy-max", "max-zero-unbounded", "activation"],
)
def test_desired_min_scale(floor: int, user_min: int | None, annotations: dict[str, str], expected: int | None) -> None:
    assert floors.desired_min_scale(floor, user_min=user_min, revision_annotations=annotations) == expected


@pytest.mark.parametrize(
    ("version", "kind"),
    [
        ("1.23.0", "revision"),
        ("v1.21.0", "revision"),
        ("v1.20.3", "podautoscaler"),
        ("1.9", "podautoscaler"),
        (None, "revision"),
        ("devel", "revision"),
    ],
)
def test_floor_object_for_version(version: str | None, kind: str) -> None:
    assert floors.floor_object_for(floors.parse_version(version)) == kind


def rules_used(server: KubeAPIServer) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every request the server saw."""
    used = set()
    for method, path, _, _ in server.requests:
        parts = path.strip("/").split("/")
        verb = {"GET": "get", "PATCH": "patch", "LIST": "list", "WATCH": "watch", "POST": "create", "PUT": "update"}[
            method
        ]
        if parts[0] == "api":  # /api/v1/namespaces/{name}
            used.add(("", "namespaces", verb))
        elif len(parts) == 4:  # /apis/{group}/{version}/{plural}: list or watch, cluster-wide
            used.add((parts[1], parts[3], verb))
        elif len(parts) == 6:  # /apis/{group}/{version}/namespaces/{ns}/{plural}: create
            used.add((parts[1], parts[5], verb))
        else:  # /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}
            used.add((parts[1], parts[5], verb))
    return used


async def test_rbac_grants_exactly_what_the_actuator_calls() -> None:
    import asyncio

    import yaml

    from knative import discovery

    used: set[tuple[str, str, str]] = set()
    for version in ("1.23.0", "1.20.0"):
        async for cluster in make_cluster(version):
            await cluster.actuator.apply(decision(2), None)
            finder = discovery.ServiceDiscovery(
                cluster.api,
                discovery.Listeners(
                    target_seen=lambda spec: None, traffic_changed=lambda t: None, target_gone=lambda t: None
                ),
                timeout_seconds=1,
            )
            task = asyncio.create_task(finder.run())
            await wait_for(
                lambda c=cluster: (
                    {p.rsplit("/", 1)[-1] for m, p, *_ in c.server.requests if m == "WATCH"}  # type: ignore[misc]
                    == {"services", "revisions"}
                )
            )
            task.cancel()
            manual = clock.ManualClock(datetime(2026, 5, 1, tzinfo=UTC))
            electors = [
                leader.LeaseElector(cluster.api, namespace="prewarm", name="prewarm-knative", identity=i, clock=manual)
                for i in ("a", "b")
            ]
            await electors[0].try_once()  # create
            manual.advance(timedelta(seconds=2))
            await electors[0].try_once()  # get + update
            used |= rules_used(cluster.server)
    roles = [d for d in yaml.safe_load_all(RBAC) if d["kind"] in ("ClusterRole", "Role")]
    granted = {
        (group, resource, verb)
        for role in roles
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == used


async def test_wake_request_is_sent_once_when_the_floor_leaves_zero(current: Cluster) -> None:
    from aiohttp import web

    from prewarm.service.knative_targets import send_wake

    hits: list[str] = []

    async def healthz(request: web.Request) -> web.Response:
        hits.append(request.method + " " + request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    async with TestServer(app) as model:
        chat = current.server.get(SERVING, "llm", "services", "chat")
        chat["metadata"]["annotations"]["prewarm.dev/wake"] = "GET /healthz"
        chat["status"]["url"] = str(model.make_url("")).rstrip("/")
        actuator = KnativeActuator(current.api, wake=send_wake)
        first = decision(2)
        await actuator.apply(first, None)
        assert hits == ["GET /healthz"]
        await actuator.apply(decision(3), first)  # still above zero: no wake
        assert hits == ["GET /healthz"]
        await actuator.apply(decision(0), decision(3))
        await actuator.apply(decision(1), decision(0))  # leaves zero again
        assert hits == ["GET /healthz", "GET /healthz"]
        chat["metadata"]["annotations"]["prewarm.dev/wake"] = "ping please"
        await actuator.apply(decision(1), decision(0))
        assert len(hits) == 2
    assert actuator.counts["woken"] == 2
