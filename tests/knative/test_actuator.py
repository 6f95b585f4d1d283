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
from kube_api_server import MERGE_PATCH, RBAC, KubeAPIServer
from support import kube_api_at, wait_for

from knative import floors, kube_api, leader
from knative.actuator import KnativeActuator
from prewarm.core import actuation, policy, targets
from prewarm.service import clock

SERVING, AUTOSCALING = "serving.knative.dev/v1", "autoscaling.internal.knative.dev/v1alpha1"
MIN = "autoscaling.knative.dev/min-scale"
RBAC_TEXT = (Path(__file__).resolve().parents[2] / "manifests" / "overlays" / "knative" / "rbac.yaml").read_text()
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
    def __init__(self, server: KubeAPIServer, api: kube_api.KubeAPI, actuator: KnativeActuator) -> None:
        self.server, self.api, self.actuator = server, api, actuator

    def annotations(self, name: str, plural: str = "revisions") -> dict[str, str]:
        group = SERVING if plural == "revisions" else AUTOSCALING
        return dict(self.server.get(group, "llm", plural, name)["metadata"].get("annotations") or {})


def controller(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    """Knative Serving's controller Deployment as a release installs it (labels on its metadata)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "controller", "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "selector": {"matchLabels": {"app": "controller"}},
            "template": {
                "metadata": {"labels": {"app": "controller", **labels}},
                "spec": {
                    "containers": [
                        {
                            "name": "controller",
                            "image": "gcr.io/knative-releases/knative.dev/serving/cmd/controller@sha256:" + "0" * 64,
                        }
                    ]
                },
            },
        },
    }


async def make_cluster(
    version: str | None,
    *,
    template_min: str | None = None,
    controller_version: str | None = None,
    rbac: str | None = None,
) -> AsyncIterator[Cluster]:
    """Knative Serving in `knative-serving`, its namespace labelled with `version` (unlabelled when
    None) and its controller with `controller_version` (no controller when None); with `rbac`,
    the fake authorizes every request by that manifest's rules."""
    fake = KubeAPIServer()
    labels = {} if version is None else {"app.kubernetes.io/version": version}
    fake.namespaces["knative-serving"] = {"metadata": {"name": "knative-serving", "labels": labels}}
    if controller_version is not None:
        fake.add(
            "apps/v1", "deployments", controller("knative-serving", {"app.kubernetes.io/version": controller_version})
        )
    if rbac is not None:
        fake.rbac = RBAC(rbac)
    fake.add(SERVING, "services", service(template_min))
    for name in ("chat-00000", "chat-00001", "chat-00002"):
        fake.add(SERVING, "revisions", revision(name, **{"autoscaling.knative.dev/max-scale": "4"}))
        pa = revision(name)
        pa["apiVersion"], pa["kind"] = AUTOSCALING, "PodAutoscaler"
        fake.add(AUTOSCALING, "podautoscalers", pa)
    async with TestServer(fake.app) as server:
        api_session, api = kube_api_at(str(server.make_url("")), timeout=5)
        try:
            yield Cluster(fake, api, KnativeActuator(api))
        finally:
            await api_session.close()


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
    assert await current.actuator.apply(decision(2), None) == actuation.APPLIED  # read again, retried at once
    assert current.annotations("chat-00002")[MIN] == "2"


async def test_server_errors_are_raised_for_the_reconciler_to_retry(current: Cluster) -> None:
    current.server.faults += [("PATCH", 500), ("PATCH", 429)]
    for status in (500, 429):  # one attempt per call: backoff is the reconciler's (prewarm/service/reconciler.py)
        with pytest.raises(kube_api.KubeAPIError) as raised:
            await current.actuator.apply(decision(2), None)
        assert raised.value.status == status and raised.value.transient
    assert await current.actuator.apply(decision(2), None) == actuation.APPLIED
    assert current.annotations("chat-00002")[MIN] == "2"


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
    ("labels", "expected"),
    [
        ({"app.kubernetes.io/version": "1.23.0"}, ((1, 23), "app.kubernetes.io/version=1.23.0")),
        ({"app.kubernetes.io/version": "v1.21.0"}, ((1, 21), "app.kubernetes.io/version=v1.21.0")),
        ({"serving.knative.dev/release": "v1.3.2"}, ((1, 3), "serving.knative.dev/release=v1.3.2")),
        (
            {"app.kubernetes.io/version": "devel", "serving.knative.dev/release": "v0.26.0"},
            ((0, 26), "serving.knative.dev/release=v0.26.0"),
        ),
        ({"app.kubernetes.io/version": "devel"}, "app.kubernetes.io/version=devel is not a version"),
        ({"app.kubernetes.io/version": ""}, "no app.kubernetes.io/version or serving.knative.dev/release label"),
        (
            {"app.kubernetes.io/name": "knative-serving"},
            "no app.kubernetes.io/version or serving.knative.dev/release label",
        ),
    ],
    ids=["current", "leading-v", "before-1.4", "devel-then-release", "devel", "empty", "none"],
)
def test_version_from_labels(labels: dict[str, str], expected: tuple[tuple[int, int], str] | str) -> None:
    assert floors.version_from_labels(labels) == expected


@pytest.mark.parametrize(
    ("version", "kind"),
    [((1, 23), "revision"), ((1, 21), "revision"), ((1, 20), "podautoscaler"), ((0, 26), "podautoscaler")],
)
def test_floor_object_for_version(version: tuple[int, int], kind: str) -> None:
    assert floors.floor_object_for(version) == kind


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
    # the namespace's label; then none there, so the version comes from the controller Deployment
    for version, controller_version in (("1.23.0", None), ("1.20.0", None), (None, "1.23.0")):
        async for cluster in make_cluster(version, controller_version=controller_version, rbac=RBAC_TEXT):
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
            assert electors[0].is_leader
            assert cluster.actuator.counts["patched"] == 2  # what was read let it patch
            assert cluster.server.denied == []  # the shipped RBAC allowed every call
            used |= rules_used(cluster.server)
    roles = [d for d in yaml.safe_load_all(RBAC_TEXT) if d["kind"] in ("ClusterRole", "Role")]
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

    from prewarm.service.knative_targets import Waker

    hits: list[str] = []
    peers: set[object] = set()

    async def healthz(request: web.Request) -> web.Response:
        hits.append(request.method + " " + request.path)
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    async with TestServer(app) as model:
        chat = current.server.get(SERVING, "llm", "services", "chat")
        chat["metadata"]["annotations"]["prewarm.dev/wake"] = "GET /healthz"
        chat["status"]["url"] = str(model.make_url("")).rstrip("/")
        waker = Waker()
        actuator = KnativeActuator(current.api, wake=waker.send_wake)
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
        await waker.close()
    assert actuator.counts["woken"] == 2
    assert len(peers) == 1  # both wakes went over one kept-alive connection of one session


# --- which Knative Serving: read, never guessed ---

V = "app.kubernetes.io/version"
NO_LABEL = "no app.kubernetes.io/version or serving.knative.dev/release label"
USER = "system:serviceaccount:prewarm:prewarm"
NAMESPACE_FORBIDDEN = (
    f'forbidden by RBAC (namespaces "knative-serving" is forbidden: User "{USER}" cannot get resource '
    '"namespaces" in API group "" at the cluster scope)'
)


def controller_forbidden(namespace: str) -> str:
    return (
        f'forbidden by RBAC (deployments.apps "controller" is forbidden: User "{USER}" cannot get resource '
        f'"deployments" in API group "apps" in the namespace "{namespace}")'
    )


def refusal(source: str) -> str:
    return (
        f"min-scale not written: Knative Serving version unknown ({source}); set --knative-system-namespace to "
        "where Knative Serving runs, let this service account read it (manifests/overlays/knative/rbac.yaml), "
        "or choose with --knative-floor-object"
    )


def rbac_variant(variant: str | None) -> str | None:
    """The shipped RBAC, as is or with rules taken away, or edited for Knative in `serving-system`."""
    if variant in (None, "shipped"):
        return None if variant is None else RBAC_TEXT
    if variant == "renamed":
        return RBAC_TEXT.replace("knative-serving", "serving-system")
    import yaml

    documents = [d for d in yaml.safe_load_all(RBAC_TEXT) if d]
    for document in documents:
        if document["kind"] == "ClusterRole":
            document["rules"] = [r for r in document["rules"] if r["resources"] != ["namespaces"]]
        if variant == "neither" and document["metadata"]["name"] == "prewarm-knative-version":
            document["rules"] = []
    return yaml.safe_dump_all(documents)


VERSION_CASES = [
    # id, namespaces (name -> labels), controllers (namespace -> labels), --knative-system-namespace,
    # RBAC, then the object that gets min-scale (None: refused) and where the version came from (or why not)
    (
        "namespace-label",
        {"knative-serving": {V: "1.23.0"}},
        {},
        "knative-serving",
        None,
        "revision",
        f"label {V}=1.23.0 of namespace knative-serving",
    ),
    (
        "release-label-before-1.4",
        {"knative-serving": {"serving.knative.dev/release": "v1.3.2"}},
        {},
        "knative-serving",
        None,
        "podautoscaler",
        "label serving.knative.dev/release=v1.3.2 of namespace knative-serving",
    ),
    (
        "no-namespace-label-controller-has-it",
        {"knative-serving": {}},
        {"knative-serving": {V: "1.20.3"}},
        "knative-serving",
        None,
        "podautoscaler",
        f"label {V}=1.20.3 of deployment knative-serving/controller",
    ),
    (
        "devel-namespace-label",
        {"knative-serving": {V: "devel"}},
        {"knative-serving": {V: "1.21.0"}},
        "knative-serving",
        None,
        "revision",
        f"label {V}=1.21.0 of deployment knative-serving/controller",
    ),
    (
        "no-label-anywhere",
        {"knative-serving": {}},
        {"knative-serving": {"app.kubernetes.io/name": "knative-serving"}},
        "knative-serving",
        None,
        None,
        f"namespace knative-serving: {NO_LABEL}; deployment knative-serving/controller: {NO_LABEL}",
    ),
    (
        "namespace-renamed",
        {"serving-system": {V: "1.23.0"}},
        {"serving-system": {V: "1.23.0"}},
        "knative-serving",
        None,
        None,
        "namespace knative-serving: not found; deployment knative-serving/controller: not found",
    ),
    (
        "namespace-renamed-and-named",
        {"serving-system": {V: "1.20.3"}},
        {"serving-system": {V: "1.20.3"}},
        "serving-system",
        None,
        "podautoscaler",
        f"label {V}=1.20.3 of namespace serving-system",
    ),
    (
        "rbac-denies-the-namespace",
        {"knative-serving": {V: "1.23.0"}},
        {"knative-serving": {V: "1.23.0"}},
        "knative-serving",
        "no-namespace-rule",
        "revision",
        f"label {V}=1.23.0 of deployment knative-serving/controller",
    ),
    (
        "rbac-denies-both",
        {"knative-serving": {V: "1.23.0"}},
        {"knative-serving": {V: "1.23.0"}},
        "knative-serving",
        "neither",
        None,
        f"namespace knative-serving: {NAMESPACE_FORBIDDEN}; deployment knative-serving/controller: "
        + controller_forbidden("knative-serving"),
    ),
    (
        "renamed-with-the-shipped-rbac",
        {"serving-system": {V: "1.23.0"}},
        {"serving-system": {V: "1.23.0"}},
        "serving-system",
        "shipped",
        None,
        "namespace serving-system: "
        + NAMESPACE_FORBIDDEN.replace('"knative-serving"', '"serving-system"')
        + "; deployment serving-system/controller: "
        + controller_forbidden("serving-system"),
    ),
    (
        "renamed-with-the-rbac-edited",
        {"serving-system": {V: "1.23.0"}},
        {"serving-system": {V: "1.23.0"}},
        "serving-system",
        "renamed",
        "revision",
        f"label {V}=1.23.0 of namespace serving-system",
    ),
]


@pytest.mark.parametrize(
    ("namespaces", "controllers", "system_namespace", "rbac", "floor_object", "source"),
    [case[1:] for case in VERSION_CASES],
    ids=[case[0] for case in VERSION_CASES],
)
async def test_the_version_is_read_or_nothing_is_patched(
    caplog: pytest.LogCaptureFixture,
    namespaces: dict[str, dict[str, str]],
    controllers: dict[str, dict[str, str]],
    system_namespace: str,
    rbac: str | None,
    floor_object: str | None,
    source: str,
) -> None:
    async for cluster in make_cluster(None):
        fake = cluster.server
        fake.namespaces = {name: {"metadata": {"name": name, "labels": labels}} for name, labels in namespaces.items()}
        for namespace, labels in controllers.items():
            fake.add("apps/v1", "deployments", controller(namespace, labels))
        fake.rbac = RBAC(rbac_variant(rbac)) if rbac else None
        refused: list[str] = []
        actuator = KnativeActuator(cluster.api, system_namespace=system_namespace, on_refused=refused.append)
        with caplog.at_level(logging.INFO, logger="knative.actuator"):
            await actuator.apply(decision(2), None)
        messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "knative.actuator"]
        if floor_object is None:
            assert fake.patches() == []  # no Revision, no PodAutoscaler: nothing on an unknown version
            assert not [p for m, p, *_ in fake.requests if "/revisions/" in p or "/podautoscalers/" in p]
            assert refused == ["llm/chat"]
            assert actuator.counts["refused"] == 1
            assert messages == [("ERROR", f"llm/chat: {refusal(source)}")]
            assert actuator.describe("llm/chat") == {
                "min_scale_on": None,
                "serving_version": None,
                "version_from": source,
                "refused": refusal(source),
            }
        else:
            plural = "revisions" if floor_object == "revision" else "podautoscalers"
            assert {path.rsplit("/", 2)[1] for path, _, _ in fake.patches()} == {plural}
            assert cluster.annotations("chat-00002", plural)[MIN] == "2"
            assert refused == []
            version = source.split("=", 1)[1].split(" ", 1)[0]
            assert messages == [("INFO", f"Knative Serving {version} ({source}): min-scale goes on {floor_object}s")]
            assert actuator.describe("llm/chat") == {
                "min_scale_on": floor_object,
                "serving_version": version,
                "version_from": source,
                "refused": None,
            }


async def test_an_unknown_version_is_read_again_and_a_known_one_once() -> None:
    async for cluster in make_cluster(None):
        await cluster.actuator.apply(decision(2), None)
        assert cluster.actuator.counts["refused"] == 1 and cluster.server.patches() == []
        cluster.server.namespaces["knative-serving"]["metadata"]["labels"] = {V: "1.23.0"}  # e.g. RBAC fixed
        await cluster.actuator.apply(decision(3), decision(2))
        assert cluster.annotations("chat-00002")[MIN] == "3"
        assert cluster.actuator.describe("llm/chat")["refused"] is None
        await cluster.actuator.apply(decision(1), decision(3))
        reads = [p for m, p, *_ in cluster.server.requests if p.startswith("/api/v1/namespaces/")]
        assert len(reads) == 2  # refused, then read and known: not read again
        assert cluster.annotations("chat-00002")[MIN] == "1"


async def test_a_transient_error_reading_the_version_is_retried() -> None:
    async for cluster in make_cluster("1.23.0"):
        cluster.server.faults += [("GET", 503)]  # the first read is the namespace's
        with pytest.raises(kube_api.KubeAPIError):  # not refused for a moment's outage: raised, to be retried
            await cluster.actuator.apply(decision(2), None)
        assert cluster.actuator.counts["refused"] == 0 and cluster.actuator.describe("llm/chat")["refused"] is None
        assert await cluster.actuator.apply(decision(2), None) == actuation.APPLIED
        assert cluster.annotations("chat-00002")[MIN] == "2"
        assert cluster.actuator.describe("llm/chat")["version_from"] == f"label {V}=1.23.0 of namespace knative-serving"


async def test_a_forced_floor_object_reads_no_version() -> None:
    async for cluster in make_cluster(None):
        actuator = KnativeActuator(cluster.api, floor_object="podautoscaler")
        assert actuator.describe("llm/chat") == {
            "min_scale_on": "podautoscaler",
            "serving_version": None,
            "version_from": "--knative-floor-object",
            "refused": None,
        }
        await actuator.apply(decision(2), None)
        assert cluster.annotations("chat-00002", "podautoscalers")[MIN] == "2"
        assert not [p for m, p, *_ in cluster.server.requests if p.startswith("/api/v1/namespaces/")]
