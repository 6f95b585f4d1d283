"""The deployment manifests, rendered by kubectl kustomize and checked against what reads them.

Core objects are walked against the `kubernetes` client's models (known kinds, field names and
types); the container's command line is parsed by prewarm's own argument parser; the targets
ConfigMap by our schema; Knative and KEDA objects against the fields our docs rely on. With
PREWARM_TEST_KUBECONFIG set, every overlay is also applied with a server-side dry run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from knative import discovery
from prewarm import cli
from prewarm.core import targets

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
DEPLOYMENTS = ("base", "overlays/knative", "overlays/keda", "overlays/redis-external")
CORE_MODELS: dict[tuple[str, str], type] = {
    ("v1", "Namespace"): kubernetes.client.V1Namespace,
    ("v1", "ServiceAccount"): kubernetes.client.V1ServiceAccount,
    ("v1", "ConfigMap"): kubernetes.client.V1ConfigMap,
    ("v1", "Secret"): kubernetes.client.V1Secret,
    ("v1", "Service"): kubernetes.client.V1Service,
    ("apps/v1", "Deployment"): kubernetes.client.V1Deployment,
    ("apps/v1", "StatefulSet"): kubernetes.client.V1StatefulSet,
    ("policy/v1", "PodDisruptionBudget"): kubernetes.client.V1PodDisruptionBudget,
    ("networking.k8s.io/v1", "NetworkPolicy"): kubernetes.client.V1NetworkPolicy,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): kubernetes.client.V1ClusterRole,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): kubernetes.client.V1ClusterRoleBinding,
    ("rbac.authorization.k8s.io/v1", "Role"): kubernetes.client.V1Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): kubernetes.client.V1RoleBinding,
}
CUSTOM_KINDS = {
    ("serving.knative.dev/v1", "Service"),
    ("eventing.knative.dev/v1", "Trigger"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}


def kubectl() -> str:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not installed (.ci/run installs Debian's kubernetes-client)")
    return binary


def render(folder: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


# --- the kubernetes client's models as a schema ---

_LIST = re.compile(r"^[Ll]ist\[(.+)\]$")  # the client spells them list[X] or List[X] by version
_DICT = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")


def schema_problems(value: Any, type_name: str, path: str) -> Iterator[str]:
    """Every unknown field or mistyped value under `value`, read as the client type `type_name`."""
    if value is None:
        return
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            yield f"{path}: want a list, got {value!r}"
            return
        for i, item in enumerate(value):
            yield from schema_problems(item, match.group(1), f"{path}[{i}]")
        return
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            yield f"{path}: want a map, got {value!r}"
            return
        for key, item in value.items():
            yield from schema_problems(item, match.group(1) or match.group(2), f"{path}.{key}")
        return
    scalars: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float)}
    if type_name in scalars:
        ok = isinstance(value, scalars[type_name]) and not (type_name == "int" and isinstance(value, bool))
        if not ok:
            yield f"{path}: want {type_name}, got {value!r}"
        return
    if type_name in ("object", "datetime", "date"):
        return  # IntOrString, free-form and timestamps
    model = getattr(kubernetes.client, type_name)
    if not isinstance(value, dict):
        yield f"{path}: want an object ({type_name}), got {value!r}"
        return
    by_json = {json_key: python for python, json_key in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            yield f"{path}.{key}: unknown field of {type_name}"
            continue
        yield from schema_problems(item, model.openapi_types[by_json[key]], f"{path}.{key}")


@pytest.mark.parametrize("folder", [*DEPLOYMENTS, "examples"])
def test_every_object_is_a_known_kind_with_known_fields(folder: str) -> None:
    objects = render(folder)
    assert objects
    problems = []
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if key in CUSTOM_KINDS:
            continue
        assert key in CORE_MODELS, f"{name}: unexpected kind {key}"
        problems += list(schema_problems(obj, CORE_MODELS[key].__name__, name))
    assert problems == []


def test_the_schema_walk_catches_mistakes() -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "2", "template": {"spec": {"containers": [{"name": "c", "imagePullPolcy": "Always"}]}}},
    }
    assert list(schema_problems(bad, "V1Deployment", "d")) == [
        "d.spec.replicas: want int, got '2'",
        "d.spec.template.spec.containers[0].imagePullPolcy: unknown field of V1Container",
    ]


# --- what the manifests promise, checked against the code that reads them ---


def expand(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), "redis://from-secret:6379/0"), arg)


def mounted(container: dict[str, Any], pod: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume that holds `path` (longest mount prefix wins)."""
    mounts = [m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is not on any mounted volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return next(v for v in pod["volumes"] if v["name"] == mount["name"])


@pytest.mark.parametrize("folder", DEPLOYMENTS)
def test_the_deployment_runs_a_valid_prewarm_serve(folder: str) -> None:
    objects = render(folder)
    deployment = find(objects, "Deployment", "prewarm")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    args = cli.build_parser().parse_args([expand(a, env) for a in container["args"]])
    assert args.command == "serve" and args.store.startswith("redis://") and args.grpc == ("0.0.0.0", 9090)
    assert deployment["spec"]["replicas"] == 2
    config_volume = mounted(container, pod, str(args.config))
    configmap = find(objects, "ConfigMap", config_volume["configMap"]["name"])
    parsed = targets.parse_config_document(configmap["data"][args.config.name], source="configmap")
    assert parsed.targets and parsed.warnings == ()
    assert mounted(container, pod, str(args.token_file))["secret"]["secretName"] == "prewarm-tokens"
    for tls in (args.grpc_cert, args.grpc_key, args.grpc_client_ca):
        if tls is not None:
            assert mounted(container, pod, str(tls))["secret"]["secretName"] == "prewarm-grpc-tls"
    assert (folder == "overlays/keda") == (args.grpc_client_ca is not None)
    assert (folder == "overlays/knative") == ("knative" in (args.actuator or []))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.http[1], "grpc": 9090}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = container["startupProbe"]
    assert startup.get("grpc") == {"port": 9090} or (folder == "overlays/keda" and "tcpSocket" in startup)


@pytest.mark.parametrize("folder", DEPLOYMENTS)
def test_every_workload_is_locked_down_and_sized(folder: str) -> None:
    for obj in render(folder):
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert (
                set(container["resources"]["requests"])
                == set(container["resources"]["limits"])
                == {
                    "cpu",
                    "memory",
                }
            )


@pytest.mark.parametrize("folder", DEPLOYMENTS)
def test_services_budgets_and_policies_select_the_pods_they_mean(folder: str) -> None:
    objects = render(folder)
    pods = {
        o["metadata"]["name"]: (o["spec"]["template"]["metadata"]["labels"], o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    }

    def selected(selector: dict[str, str]) -> list[str]:
        return [name for name, (labels, _) in pods.items() if selector.items() <= labels.items()]

    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec", {})
        if kind == "Service":
            (workload,) = selected(spec["selector"])
            names = {p["name"] for c in pods[workload][1]["containers"] for p in c["ports"]}
            assert {p["targetPort"] for p in spec["ports"]} <= names
        elif kind == "PodDisruptionBudget":
            assert selected(spec["selector"]["matchLabels"]) == ["prewarm"]
            assert spec["minAvailable"] < 2
        elif kind == "NetworkPolicy":
            assert len(selected(spec["podSelector"]["matchLabels"])) == 1
    grpc = find(objects, "Service", "prewarm-grpc")
    assert grpc["metadata"]["namespace"] == "prewarm" and grpc["spec"]["ports"][0]["port"] == 9090


def test_redis_is_persistent_in_the_base_and_external_in_its_overlay() -> None:
    base = render("base")
    redis = find(base, "StatefulSet", "prewarm-redis")
    conf = find(base, "ConfigMap", "prewarm-redis")["data"]["redis.conf"]
    assert "appendonly yes" in conf.splitlines()
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    external = render("overlays/redis-external")
    assert not [o for o in external if o["metadata"]["name"] == "prewarm-redis"]
    container = find(external, "Deployment", "prewarm")["spec"]["template"]["spec"]["containers"][0]
    store = next(e for e in container["env"] if e["name"] == "PREWARM_STORE_URL")
    assert store == {
        "name": "PREWARM_STORE_URL",
        "valueFrom": {"secretKeyRef": {"key": "url", "name": "prewarm-redis"}},
    }


def test_only_the_knative_overlay_talks_to_the_kubernetes_api() -> None:
    rbac_kinds = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    for folder in ("base", "overlays/keda", "overlays/redis-external"):
        objects = render(folder)
        assert not [o for o in objects if o["kind"] in rbac_kinds]
        assert find(objects, "ServiceAccount", "prewarm")["automountServiceAccountToken"] is False
    objects = render("overlays/knative")
    account = find(objects, "ServiceAccount", "prewarm")
    assert account["automountServiceAccountToken"] is True
    shipped = [d for d in yaml.safe_load_all((MANIFESTS / "overlays/knative/rbac.yaml").read_text()) if d]
    rendered_rules = {o["metadata"]["name"]: o["rules"] for o in objects if o["kind"] in ("Role", "ClusterRole")}
    assert rendered_rules == {
        d["metadata"]["name"]: d["rules"] for d in shipped if d["kind"] in ("Role", "ClusterRole")
    }
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prewarm", "namespace": "prewarm"}]
    container = find(objects, "Deployment", "prewarm")["spec"]["template"]["spec"]["containers"][0]
    lease = next(a for a in container["args"] if a.startswith("--leader-election="))
    lease_namespace = lease.split("=", 1)[1].split("/")[0]
    assert find(objects, "Role", "prewarm-leader-election")["metadata"]["namespace"] == lease_namespace
    # the controller Deployment is read in Knative's namespace, not moved into ours by kustomize
    for kind in ("Role", "RoleBinding"):
        assert find(objects, kind, "prewarm-knative-version")["metadata"]["namespace"] == "knative-serving"


def test_the_knative_examples_match_what_the_actuator_and_listener_read() -> None:
    examples = render("examples")
    service = find(examples, "Service", "chat-8b")
    assert service["apiVersion"] == "serving.knative.dev/v1"
    spec = discovery.spec_of(service)  # what discovery makes of it
    assert spec is not None and spec.forecast.enabled and spec.max == 4  # max from the template's max-scale
    meta = service["metadata"]
    merged = service["spec"]["template"]["metadata"]["annotations"] | meta["annotations"]
    _, warnings = targets.parse_annotations(
        merged, ref=targets.TargetRef(meta["namespace"], meta["name"]), kind=targets.TargetKind.KNATIVE
    )
    assert warnings == ()
    template = service["spec"]["template"]
    assert not [k for k in template["metadata"]["annotations"] if k.startswith("prewarm.dev/")]  # would mint Revisions
    container = template["spec"]["containers"][0]
    assert container["command"][:3] == ["prewarm", "cache", "exec"]
    claim = template["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == yaml.safe_load((MANIFESTS / "cache" / "pvc.yaml").read_text())["metadata"]["name"]
    events_url = next(e["value"] for e in container["env"] if e["name"] == "PREWARM_EVENTS_URL")
    assert events_url == "http://prewarm.prewarm.svc.cluster.local/events"
    trigger = find(examples, "Trigger", "prewarm-sessions")
    assert trigger["apiVersion"] == "eventing.knative.dev/v1" and trigger["spec"]["broker"]
    subscriber = trigger["spec"]["subscriber"]["ref"]
    base = render("base")
    listener = find(base, "Service", subscriber["name"])
    assert (subscriber["kind"], listener["metadata"]["namespace"]) == ("Service", subscriber["namespace"])
    assert listener["spec"]["ports"][0]["port"] == 80  # the Knative sink convention: POST / on port 80


def test_the_keda_examples_reach_the_scaler_with_mtls() -> None:
    examples = render("examples")
    scaled = find(examples, "ScaledObject", "chat-8b")
    trigger = next(t for t in scaled["spec"]["triggers"] if t["type"] == "external-push")
    host, port = trigger["metadata"]["scalerAddress"].rsplit(":", 1)
    grpc = find(render("overlays/keda"), "Service", "prewarm-grpc")
    assert host == f"{grpc['metadata']['name']}.{grpc['metadata']['namespace']}.svc.cluster.local"
    assert int(port) == grpc["spec"]["ports"][0]["port"]
    auth = find(examples, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["metadata"]["namespace"] == scaled["metadata"]["namespace"]
    assert {p["parameter"] for p in auth["spec"]["secretTargetRef"]} == {"caCert", "tlsClientCert", "tlsClientKey"}


def test_the_image_is_multi_stage_slim_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) >= 2
    final = stages[-1]
    assert "slim" in final.splitlines()[0]
    user = re.search(r"^USER (\d+)(?::(\d+))?$", final, flags=re.MULTILINE)
    assert user is not None and int(user.group(1)) > 0
    assert not re.search(r"^RUN ", final, flags=re.MULTILINE)  # nothing installed or built in the final stage
    assert "COPY --from=build /opt/prewarm /opt/prewarm" in final
    assert 'ENTRYPOINT ["prewarm"]' in final
    packages = set(re.findall(r"^COPY (\w+) \./\1$", stages[0], flags=re.MULTILINE))
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[(.*)\]", pyproject)
    assert include is not None
    assert packages == {p.strip('" *') for p in include.group(1).split(",")}


KUBECONFIG = os.environ.get("PREWARM_TEST_KUBECONFIG")


def namespace_phase(base: list[str], namespace: str) -> str | None:
    """`Active`, `Terminating`, or None when the namespace does not exist."""
    result = subprocess.run(
        [*base, "get", "namespace", namespace, "-o", "jsonpath={.status.phase}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return (result.stdout.strip() or None) if result.returncode == 0 else None


@pytest.fixture(scope="module")
def cluster_namespaces() -> Iterator[None]:
    """The namespaces the overlays apply into, created once for every case. Namespaces are deleted
    asynchronously: one left Terminating (by an earlier run) is waited out, never applied into."""
    base = [kubectl(), "--kubeconfig", str(KUBECONFIG)]
    created = []
    for namespace in ("prewarm", "llm"):
        deadline = time.monotonic() + 180
        while namespace_phase(base, namespace) == "Terminating":
            if time.monotonic() > deadline:
                pytest.fail(f"namespace {namespace} is still Terminating after 180 s")
            time.sleep(1)  # polling the API server for a deletion it runs on its own
        if namespace_phase(base, namespace) is None:
            subprocess.run([*base, "create", "namespace", namespace], check=True, capture_output=True, timeout=60)
            created.append(namespace)
    try:
        yield
    finally:
        for namespace in created:
            subprocess.run([*base, "delete", "namespace", namespace, "--wait=false"], capture_output=True, check=False)


@pytest.mark.skipif(not KUBECONFIG, reason="PREWARM_TEST_KUBECONFIG is not set")
@pytest.mark.parametrize("folder", [*DEPLOYMENTS, "examples"])
def test_server_side_dry_run_on_a_real_cluster(folder: str, cluster_namespaces: None) -> None:
    base = [kubectl(), "--kubeconfig", str(KUBECONFIG)]
    result = subprocess.run(
        [*base, "apply", "--dry-run=server", "-k", str(MANIFESTS / folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout
