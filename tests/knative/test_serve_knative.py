"""`prewarm serve --actuator knative` end to end: an intent event moves a routed revision's min-scale
on an API server with Kubernetes' semantics, reached through a kubeconfig file."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from kube_api_server import KubeAPIServer
from prometheus_client.parser import text_string_to_metric_families
from support import RedisServer, wait_for, wait_for_async

from prewarm.service import clock, composition

SERVING = "serving.knative.dev/v1"
MIN = "autoscaling.knative.dev/min-scale"


def knative_api_server() -> KubeAPIServer:
    """An API test server with Knative Serving 1.23 installed (its namespace's version label)."""
    fake = KubeAPIServer()
    fake.namespaces["knative-serving"] = {
        "metadata": {"name": "knative-serving", "labels": {"app.kubernetes.io/version": "1.23.0"}}
    }
    return fake


async def open_session(port: int, target: str, session: str) -> None:
    """Send one session.opened event to a live prewarm serve and expect it stored (202)."""
    event = {
        "specversion": "1.0",
        "type": "dev.prewarm.session.opened",
        "source": "/t",
        "id": session,
        "data": {"target": target, "session": session},
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/events", json=event, headers={"Content-Type": "application/cloudevents+json"}
        ) as response,
    ):
        assert response.status == 202


def write_kubeconfig(directory: Path, api: TestServer) -> Path:
    """A kubeconfig whose only cluster is the test server."""
    path = directory / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{str(api.make_url('')).rstrip('/')}'}}}}]\n"
        "users: [{name: fake, user: {token: not-checked}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
    )
    return path


async def test_an_intent_event_raises_the_routed_revisions_min_scale(tmp_path: Path) -> None:
    fake = knative_api_server()
    fake.add_routed_service("llm", "chat")
    fake.add(SERVING, "services", {"metadata": {"name": "sdxl", "namespace": "vision"}})  # a KEDA target's name
    config = tmp_path / "targets.yaml"
    config.write_text(
        "targets:\n"
        "  - {name: llm/chat, kind: knative, max: 4, sessionsPerReplica: 1, hold: 0s}\n"
        "  - {name: vision/sdxl, kind: keda, max: 2}\n"
    )
    async with TestServer(fake.app) as api:
        kubeconfig = write_kubeconfig(tmp_path, api)
        options = composition.ServeOptions(
            config=config,
            http_host="127.0.0.1",
            http_port=0,
            actuators=("log", "knative"),
            kubeconfig=kubeconfig,
            leader_lease="prewarm/prewarm-knative",
            identity="replica-1",
        )
        out = io.StringIO()
        async with composition.run_service(options, clock=clock.SystemClock(), out=out) as service:
            await wait_for(lambda: out.getvalue().count("\n") == 2)
            await open_session(service.http_port, "llm/chat", "a")
            revision = lambda: fake.get(SERVING, "llm", "revisions", "chat-00001")  # noqa: E731
            await wait_for(lambda: (revision()["metadata"].get("annotations") or {}).get(MIN) == "1", within=10)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{service.http_port}/targets") as response,
            ):
                rows = {row["target"]: row for row in (await response.json())["targets"]}
    assert rows["llm/chat"]["knative"] == {
        "min_scale_on": "revision",
        "serving_version": "1.23.0",
        "version_from": "label app.kubernetes.io/version=1.23.0 of namespace knative-serving",
        "refused": None,
    }
    assert "knative" not in rows["vision/sdxl"]  # a KEDA target
    # this replica campaigned for the Lease and held it while it patched
    assert fake.get("coordination.k8s.io/v1", "prewarm", "leases", "prewarm-knative")["spec"]["holderIdentity"] == (
        "replica-1"
    )
    # the KEDA target's floor never went to the Kubernetes API
    assert not [path for path, _, _ in fake.patches() if "/namespaces/vision/" in path]
    assert [path for method, path, _, _ in fake.requests if "sdxl" in path] == []


async def test_annotated_services_are_discovered_and_followed(tmp_path: Path) -> None:
    fake = knative_api_server()

    def agent(traffic: str, *, enabled: bool = True) -> dict[str, object]:
        own = {"prewarm.dev/enabled": "true", "prewarm.dev/sessions-per-replica": "1", "prewarm.dev/hold": "0s"}
        return {
            "metadata": {"name": "agent", "namespace": "llm", "annotations": own if enabled else {}},
            "spec": {
                "template": {"metadata": {"annotations": {"autoscaling.knative.dev/max-scale": "3", MIN: "1"}}}
            },  # the user's own min-scale
            "status": {"traffic": [{"revisionName": traffic, "percent": 100}]},
        }

    fake.add(SERVING, "services", agent("agent-00001"))
    for name in ("agent-00001", "agent-00002"):
        fake.add(SERVING, "revisions", {"metadata": {"name": name, "namespace": "llm"}})

    def min_scale(name: str) -> str | None:
        return (fake.get(SERVING, "llm", "revisions", name)["metadata"].get("annotations") or {}).get(MIN)

    async with TestServer(fake.app) as api:
        kubeconfig = write_kubeconfig(tmp_path, api)
        options = composition.ServeOptions(
            config=None, http_host="127.0.0.1", http_port=0, actuators=("knative",), kubeconfig=kubeconfig
        )
        async with composition.run_service(options, clock=clock.SystemClock(), out=io.StringIO()) as service:
            await wait_for(lambda: "llm/agent" in service.decider.specs, within=10)
            await wait_for(lambda: min_scale("agent-00001") == "1", within=10)  # the user's value, kept
            for session in ("a", "b"):
                await open_session(service.http_port, "llm/agent", session)
            await wait_for(lambda: min_scale("agent-00001") == "2", within=10)
            fake.add(SERVING, "services", agent("agent-00002"))  # a new revision takes the traffic
            await wait_for(lambda: min_scale("agent-00002") == "2", within=10)
            fake.add(SERVING, "services", agent("agent-00002", enabled=False))  # pre-warming switched off
            await wait_for(lambda: "llm/agent" not in service.decider.specs, within=10)
            await wait_for(lambda: min_scale("agent-00002") == "1", within=10)  # the user's min-scale again


async def test_a_drifted_routed_revision_gets_the_floor_back(tmp_path: Path) -> None:
    fake = knative_api_server()
    fake.add(
        SERVING,
        "services",
        {
            "metadata": {"name": "chat", "namespace": "llm", "annotations": {"prewarm.dev/enabled": "true"}},
            "spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/max-scale": "4"}}}},
            "status": {"traffic": [{"revisionName": "chat-00001", "percent": 100}]},
        },
    )
    labels = {"serving.knative.dev/service": "chat"}
    fake.add(SERVING, "revisions", {"metadata": {"name": "chat-00001", "namespace": "llm", "labels": labels}})
    fake.add(SERVING, "revisions", {"metadata": {"name": "chat-00000", "namespace": "llm", "labels": labels}})
    async with TestServer(fake.app) as api:
        options = composition.ServeOptions(
            config=None,  # targets come from annotated Services only
            http_host="127.0.0.1",
            http_port=0,
            actuators=("log", "knative"),
            kubeconfig=write_kubeconfig(tmp_path, api),
        )
        async with composition.run_service(options, clock=clock.SystemClock(), out=io.StringIO()) as service:
            await wait_for(lambda: "llm/chat" in service.decider.specs, within=10)
            await open_session(service.http_port, "llm/chat", "a")
            revision = lambda name: fake.get(SERVING, "llm", "revisions", name)  # noqa: E731
            min_scale = lambda name: (revision(name)["metadata"].get("annotations") or {}).get(MIN)  # noqa: E731
            await wait_for(lambda: min_scale("chat-00001") == "1", within=10)
            patches = len(fake.patches())
            # Someone (a GitOps tool, a person) writes the routed Revision's min-scale back to 0.
            drifted = revision("chat-00001")
            drifted["metadata"]["annotations"][MIN] = "0"
            fake.add(SERVING, "revisions", drifted)
            await wait_for(lambda: min_scale("chat-00001") == "1", within=10)
            assert len(fake.patches()) == patches + 1
            # An unrouted Revision changing is none of our business.
            fake.add(SERVING, "revisions", {**revision("chat-00000"), "spec": {"note": "touched"}})
            await wait_for(lambda: revision("chat-00000").get("spec") == {"note": "touched"})
    assert [p for p, _, _ in fake.patches() if p.endswith("/chat-00000")] == []


async def test_an_unknown_knative_version_is_refused_in_the_log_metrics_and_targets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = KubeAPIServer()
    fake.namespaces["knative-serving"] = {"metadata": {"name": "knative-serving"}}  # no version label, no controller
    fake.add(
        SERVING,
        "services",
        {
            "metadata": {"name": "chat", "namespace": "llm", "annotations": {"prewarm.dev/enabled": "true"}},
            "spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/max-scale": "4"}}}},
            "status": {"traffic": [{"revisionName": "chat-00001", "percent": 100}]},
        },
    )
    fake.add(SERVING, "revisions", {"metadata": {"name": "chat-00001", "namespace": "llm"}})
    no_label = "no app.kubernetes.io/version or serving.knative.dev/release label"
    source = f"namespace knative-serving: {no_label}; deployment knative-serving/controller: not found"
    async with TestServer(fake.app) as api:
        options = composition.ServeOptions(
            config=None,
            http_host="127.0.0.1",
            http_port=0,
            actuators=("knative",),
            kubeconfig=write_kubeconfig(tmp_path, api),
        )
        with caplog.at_level(logging.ERROR, logger="knative.actuator"):
            async with (
                composition.run_service(options, clock=clock.SystemClock(), out=io.StringIO()) as service,
                aiohttp.ClientSession() as http,
            ):
                base = f"http://127.0.0.1:{service.http_port}"
                await wait_for(lambda: "llm/chat" in service.decider.specs, within=10)
                await open_session(service.http_port, "llm/chat", "a")

                async def knative_view() -> dict[str, Any]:
                    async with http.get(f"{base}/targets") as response:
                        rows = (await response.json())["targets"]
                    return dict(rows[0].get("knative") or {})

                async def refused() -> bool:
                    return (await knative_view()).get("refused") is not None

                await wait_for_async(refused, within=10)
                view = await knative_view()
                async with http.get(f"{base}/metrics") as response:
                    metrics = await response.text()
                await wait_for(lambda: service.decider.decisions["llm/chat"].floor == 1, within=10)
    assert view == {
        "min_scale_on": None,
        "serving_version": None,
        "version_from": source,
        "refused": (
            f"min-scale not written: Knative Serving version unknown ({source}); set --knative-system-namespace "
            "to where Knative Serving runs, let this service account read it (manifests/overlays/knative/rbac.yaml), "
            "or choose with --knative-floor-object"
        ),
    }
    assert f"llm/chat: {view['refused']}" in [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    refusals = [
        sample
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "prewarm_knative_refusals_total"
    ]
    assert [(s.labels["target"], s.value >= 1) for s in refusals] == [("llm/chat", True)]
    assert fake.patches() == []  # no Revision (or anything else) patched on an unknown version


async def test_with_redis_only_the_lease_holder_decides_and_patches(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two replicas on one Redis with --leader-election: the holder of the Kubernetes Lease is the
    only one that campaigns for decider leases, so it alone decides, logs and patches; an event
    sent to the other replica moves the floor through it."""
    fake = knative_api_server()
    fake.add_routed_service("llm", "chat")
    config = tmp_path / "targets.yaml"
    config.write_text("targets:\n  - {name: llm/chat, kind: knative, max: 4, sessionsPerReplica: 1, hold: 0s}\n")
    async with TestServer(fake.app) as api, contextlib.AsyncExitStack() as stack:
        kubeconfig = write_kubeconfig(tmp_path, api)
        outputs = {name: io.StringIO() for name in ("replica-1", "replica-2")}
        services = {}
        for name, out in outputs.items():  # replica-1 starts first and takes the Lease
            options = composition.ServeOptions(
                config=config,
                store=redis_server.url,
                http_host="127.0.0.1",
                http_port=0,
                actuators=("log", "knative"),
                kubeconfig=kubeconfig,
                leader_lease="prewarm/prewarm-knative",
                identity=name,
            )
            services[name] = await stack.enter_async_context(
                composition.run_service(options, clock=clock.SystemClock(), out=out)
            )
            if name == "replica-1":
                await wait_for(lambda: "llm/chat -" in outputs["replica-1"].getvalue(), within=10)
        leader, follower = services["replica-1"], services["replica-2"]
        await wait_for(lambda: "llm/chat" in follower.decider.decisions, within=5)  # followed, not decided
        await open_session(follower.http_port, "llm/chat", "a")
        revision = lambda: fake.get(SERVING, "llm", "revisions", "chat-00001")  # noqa: E731
        await wait_for(lambda: (revision()["metadata"].get("annotations") or {}).get(MIN) == "1", within=10)
        await wait_for(lambda: follower.decider.decisions["llm/chat"].floor == 1, within=5)
        assert leader.leases is not None and follower.leases is not None
        assert (leader.leases.held, follower.leases.held) == (frozenset({"llm/chat"}), frozenset())
        assert not follower.decider.decides("llm/chat")
    assert outputs["replica-2"].getvalue() == ""
    assert [line.split(" ", 1)[1] for line in outputs["replica-1"].getvalue().splitlines()] == [
        "llm/chat - -> 0 [min] min 0",
        "llm/chat 0 -> 1 [intent] intent 1 (1 interactive sessions / 1 per replica)",
    ]


async def test_a_stalled_api_holds_up_no_other_target_and_the_floor_lands_once_it_answers(tmp_path: Path) -> None:
    """The API server stops answering for the Knative target's objects: sessions on the KEDA targets
    are decided and shown within 1 s each all the same, and the Knative floor lands within 2 s of
    the API answering again; /targets says meanwhile that it is desired and not applied."""
    fake = knative_api_server()
    fake.add_routed_service("llm", "chat")
    keda = ["vision/sdxl", "vision/flux", "audio/whisper"]
    config = tmp_path / "targets.yaml"
    config.write_text(
        "targets:\n"
        "  - {name: llm/chat, kind: knative, max: 4, sessionsPerReplica: 1, hold: 0s}\n"
        + "".join(f"  - {{name: {name}, kind: keda, max: 2, sessionsPerReplica: 1, hold: 0s}}\n" for name in keda)
    )
    async with TestServer(fake.app) as api:
        options = composition.ServeOptions(
            config=config,
            http_host="127.0.0.1",
            http_port=0,
            actuators=("log", "knative"),
            kubeconfig=write_kubeconfig(tmp_path, api),
        )
        out = io.StringIO()
        async with (
            composition.run_service(options, clock=clock.SystemClock(), out=out) as service,
            aiohttp.ClientSession() as http,
        ):

            async def rows() -> dict[str, Any]:
                async with http.get(f"http://127.0.0.1:{service.http_port}/targets") as response:
                    return {row["target"]: row for row in (await response.json())["targets"]}

            await wait_for(lambda: out.getvalue().count("\n") == 4, within=10)  # every target's first floor

            async def knative_applied(floor: int) -> bool:
                return bool((await rows())["llm/chat"]["actuation"]["knative"]["applied"] == floor)

            await wait_for_async(lambda: knative_applied(0), within=10)
            fake.stall("/namespaces/llm/")
            try:
                await open_session(service.http_port, "llm/chat", "a")
                await wait_for(lambda: fake.held >= 1, within=5)
                for name in keda:
                    await open_session(service.http_port, name, f"{name}-a")  # event ids are unique per source
                    await wait_for(lambda name=name: service.decider.decisions[name].floor == 1, within=1)
                    assert (await rows())[name]["floor"] == 1
                stalled = (await rows())["llm/chat"]
                assert stalled["floor"] == 1
                assert {k: stalled["actuation"]["knative"][k] for k in ("desired", "applied", "state")} == {
                    "desired": 1,
                    "applied": 0,
                    "state": "pending",
                }
                assert stalled["actuation"]["log"]["applied"] == 1  # the log actuator was not held up either
            finally:
                fake.release()
            revision = lambda: fake.get(SERVING, "llm", "revisions", "chat-00001")  # noqa: E731
            await wait_for(lambda: (revision()["metadata"].get("annotations") or {}).get(MIN) == "1", within=2)
            await wait_for_async(lambda: knative_applied(1), within=2)
            async with http.get(f"http://127.0.0.1:{service.http_port}/metrics") as response:
                metrics = {
                    (
                        sample.name,
                        tuple(sorted((k, v) for k, v in sample.labels.items() if "otel" not in k)),
                    ): sample.value
                    for family in text_string_to_metric_families(await response.text())
                    for sample in family.samples
                }
    assert {manager for _, _, manager in fake.field_managers} == {"kube-prewarm"}  # our writes are ours
    knative = (("actuator", "knative"),)
    assert metrics[("prewarm_actuation_queue_depth", knative)] == 0
    assert metrics[("prewarm_actuation_unapplied_age_seconds", knative)] == 0
    assert metrics[("prewarm_actuations_total", (("actuator", "knative"), ("outcome", "applied")))] >= 2
    assert (
        metrics[("prewarm_actuations_total", (("actuator", "knative"), ("outcome", "skipped")))] == 6
    )  # 3 KEDA targets x 2 floors
