"""`prewarm inject` (and `prewarm knative inject`): adds the cache volume and wrapper to a Knative
Service or a Deployment, fills in known images' entrypoints, and leaves every other byte alone."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from prewarm.cache import entrypoints, inject

WRAPPER = ["prewarm", "cache", "exec", "--root", "/var/cache/prewarm", "--"]
VOLUMES = [{"name": "prewarm-cache", "persistentVolumeClaim": {"claimName": "prewarm-cache"}}]
MOUNTS = [{"name": "prewarm-cache", "mountPath": "/var/cache/prewarm"}]

SERVICE = """\
# The chat model, served by vLLM on one GPU.
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: chat-8b
  namespace: llm
  annotations:
    prewarm.dev/enabled: "true"   # pre-warm this Service
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/max-scale: "4"
    spec:
      containers:
        - name: server
          image: registry.example.com/vllm:0.11   # pinned
          command: ["python3", "-m", "vllm.entrypoints.openai.api_server"]
          args:
            - --model=/models/chat-8b
          resources:
            limits:
              nvidia.com/gpu: 1
"""

# kubectl's style: sequences not indented under their key.
DEPLOYMENT = """\
# vLLM scaled by KEDA
apiVersion: apps/v1
kind: Deployment
metadata:
  name: chat-8b
  namespace: llm
  labels: {app: chat}   # flow style kept
spec:
  replicas: 0
  selector:
    matchLabels:
      app: chat
  template:
    metadata:
      labels:
        app: chat
    spec:
      containers:
      - name: server
        image: registry.example.com/vllm:0.11   # pinned
        command: ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        args:
        - --model=/models/chat-8b
        resources:
          limits:
            nvidia.com/gpu: 1
"""

SCALED_OBJECT = """\
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: chat-8b-prewarm
  namespace: llm
spec:
  scaleTargetRef:
    name: chat-8b        # kind defaults to Deployment
  minReplicaCount: 0
  triggers:
    - type: external-push
      metadata: {scalerAddress: "prewarm.prewarm.svc:9090"}
"""

KUBE_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: chat-8b
  namespace: llm
spec:
  ports: [{port: 80, targetPort: 8000}]
"""


def args_only(image: str, args: list[str]) -> str:
    """A Knative Service whose container names only the image and its args."""
    lines = "".join(f"            - {arg!r}\n" for arg in args)
    return (
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: chat\nspec:\n  template:\n"
        f"    spec:\n      containers:\n        - name: server\n          image: {image}\n          args:\n{lines}"
    )


def container_of(text: str, index: int = 0) -> dict[str, Any]:
    return dict(list(YAML(typ="safe").load_all(text))[index]["spec"]["template"]["spec"]["containers"][0])


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """(lines removed or replaced, lines added) between two texts."""
    old, new = before.splitlines(), after.splitlines()
    removed: list[str] = []
    added: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag in ("delete", "replace"):
            removed += old[i1:i2]
        if tag in ("insert", "replace"):
            added += new[j1:j2]
    return removed, added


def test_adds_volume_mount_env_and_wrapper() -> None:
    out = inject.inject_cache(SERVICE, claim="prewarm-cache").text
    spec = YAML(typ="safe").load(out)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["volumes"] == VOLUMES
    assert container["volumeMounts"] == MOUNTS
    assert container["env"] == [{"name": "PREWARM_MODEL", "value": "chat-8b"}]
    assert container["command"] == [*WRAPPER, "python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert container["args"] == ["--model=/models/chat-8b"]


@pytest.mark.parametrize("text", [SERVICE, DEPLOYMENT], ids=["knative-service", "deployment-kubectl-style"])
def test_only_the_command_line_changes_everything_else_is_added(text: str) -> None:
    out = inject.inject_cache(text, claim="prewarm-cache", model="llm/chat-8b").text
    removed, added = changed_lines(text, out)
    assert [line.strip() for line in removed] == ['command: ["python3", "-m", "vllm.entrypoints.openai.api_server"]']
    assert "value: llm/chat-8b" in [line.strip() for line in added]


def test_a_deployment_and_a_knative_service_get_the_same_volume_mount_and_environment() -> None:
    service, deployment = (inject.inject_cache(t, claim="prewarm-cache").text for t in (SERVICE, DEPLOYMENT))
    for out in (service, deployment):
        spec = YAML(typ="safe").load(out)["spec"]["template"]["spec"]
        assert spec["volumes"] == VOLUMES
    knative, apps = container_of(service), container_of(deployment)
    assert {k: knative[k] for k in ("volumeMounts", "env", "command", "args")} == {
        "volumeMounts": MOUNTS,
        "env": [{"name": "PREWARM_MODEL", "value": "chat-8b"}],
        "command": [*WRAPPER, "python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": ["--model=/models/chat-8b"],
    }
    assert {k: apps[k] for k in ("volumeMounts", "env", "command", "args")} == {
        k: knative[k] for k in ("volumeMounts", "env", "command", "args")
    }


VLLM = "python3 -m vllm.entrypoints.openai.api_server"


@pytest.mark.parametrize(
    ("image", "args", "command", "note"),
    [
        (
            "vllm/vllm-openai:v0.11.0",
            ["--model", "Qwen/Qwen3-8B", "--max-model-len", "8192"],
            ["python3", "-m", "vllm.entrypoints.openai.api_server"],
            f"image vllm/vllm-openai:v0.11.0 is vLLM OpenAI server: wrapping its entrypoint {VLLM!r}",
        ),
        (
            "docker.io/vllm/vllm-openai:latest",
            ["Qwen/Qwen3-8B", "--max-model-len", "8192"],
            ["vllm", "serve"],
            "image docker.io/vllm/vllm-openai:latest is vLLM OpenAI server: wrapping its entrypoint 'vllm serve'",
        ),
        (
            "registry.example.com/mirror/vllm/vllm-openai@sha256:" + "ab" * 32,
            ["--model=/models/chat"],
            ["python3", "-m", "vllm.entrypoints.openai.api_server"],
            f"image registry.example.com/mirror/vllm/vllm-openai@sha256:{'ab' * 32} is vLLM OpenAI server: "
            f"wrapping its entrypoint {VLLM!r}",
        ),
        (
            "lmsysorg/sglang:v0.5.5-cu129",
            ["python3", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen3-8B", "--port", "30000"],
            [],
            "image lmsysorg/sglang:v0.5.5-cu129 is SGLang, which has no entrypoint of its own: "
            "the args are the command",
        ),
        (
            "ghcr.io/huggingface/text-generation-inference:3.3.4",
            ["--model-id", "Qwen/Qwen3-8B", "--port", "8080"],
            ["text-generation-launcher"],
            "image ghcr.io/huggingface/text-generation-inference:3.3.4 is Hugging Face TGI: "
            "wrapping its entrypoint 'text-generation-launcher'",
        ),
        (
            "nvcr.io/nvidia/tritonserver:25.01-py3",
            ["tritonserver", "--model-repository=/models"],
            [],
            "image nvcr.io/nvidia/tritonserver:25.01-py3 is NVIDIA Triton Inference Server, which has no entrypoint "
            "of its own: the args are the command",
        ),
        (
            "kserve/sklearnserver:v0.15.0",
            ["--model_name=iris", "--model_dir=/mnt/models"],
            ["python", "-m", "sklearnserver"],
            "image kserve/sklearnserver:v0.15.0 is KServe scikit-learn runtime: "
            "wrapping its entrypoint 'python -m sklearnserver'",
        ),
    ],
    ids=["vllm-model-flag", "vllm-positional-model", "vllm-mirror-digest", "sglang", "tgi", "triton", "kserve"],
)
def test_args_only_known_images_are_wrapped_with_their_entrypoint(
    image: str, args: list[str], command: list[str], note: str
) -> None:
    text = args_only(image, args)
    injected = inject.inject_cache(text, claim="prewarm-cache")
    container = container_of(injected.text)
    assert container["command"] == [*WRAPPER, *command]
    assert container["args"] == args  # kept, in order
    assert injected.notes == (f"Knative Service chat: spec.template.spec.containers[server]: {note}", KNATIVE_NOTE)
    removed, _ = changed_lines(text, injected.text)
    assert removed == []


KNATIVE_NOTE = (
    "Knative Serving must allow PVCs: enable kubernetes.podspec-persistent-volume-claim and "
    "kubernetes.podspec-persistent-volume-write (manifests/cache/knative-config-features-patch.yaml)"
)


@pytest.mark.parametrize(
    ("flag", "args", "command"),
    [
        ("/opt/app/serve --log-format json", ["--model", "m"], ["/opt/app/serve", "--log-format", "json"]),
        ("", ["/opt/app/serve", "--model", "m"], []),  # the args are the whole command
        (
            "/opt/nvidia/nvidia_entrypoint.sh",
            ["tritonserver", "--model-repository=/models"],
            ["/opt/nvidia/nvidia_entrypoint.sh"],
        ),
    ],
    ids=["words", "empty-args-are-the-command", "keep-an-image-script"],
)
def test_command_flag_names_the_entrypoint(flag: str, args: list[str], command: list[str]) -> None:
    injected = inject.inject_cache(args_only("acme/server:1", args), claim="prewarm-cache", command=flag)
    container = container_of(injected.text)
    assert container["command"] == [*WRAPPER, *command]
    assert container["args"] == args
    assert injected.notes == (KNATIVE_NOTE,)


MULTI = f"{DEPLOYMENT}---\n{KUBE_SERVICE}--- # the KEDA side\n{SCALED_OBJECT}"


def test_the_deployment_a_scaled_object_names_is_injected_and_other_documents_kept() -> None:
    other = DEPLOYMENT.replace("name: chat-8b", "name: router").replace("app: chat", "app: router")
    text = f"{other}---\n{MULTI}"
    out = inject.inject_cache(text, claim="prewarm-cache").text
    documents = list(YAML(typ="safe").load_all(out))
    assert [d["metadata"]["name"] for d in documents] == ["router", "chat-8b", "chat-8b", "chat-8b-prewarm"]
    assert "volumes" not in documents[0]["spec"]["template"]["spec"]
    assert documents[1]["spec"]["template"]["spec"]["volumes"] == VOLUMES
    assert container_of(out, 1)["command"][: len(WRAPPER)] == WRAPPER
    # every other document, and the separators with their comments, byte for byte
    assert out.startswith(other + "---\n")
    assert out.endswith(f"---\n{KUBE_SERVICE}--- # the KEDA side\n{SCALED_OBJECT}")


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        (
            SERVICE.replace("kind: Service", "kind: ConfigMap"),
            None,
            r"no Knative Service \(serving.knative.dev/v1\) or ",
        ),
        (
            SERVICE.replace('          command: ["python3", "-m", "vllm.entrypoints.openai.api_server"]\n', ""),
            None,
            r"containers\[server\]\.command: missing, and image registry.example.com/vllm:0.11 is not one inject "
            r"knows; pass its entrypoint with --command '...'",
        ),
        (inject.inject_cache(SERVICE, claim="c").text, None, "already wrapped"),
        (
            f"{DEPLOYMENT}---\n{DEPLOYMENT.replace('chat-8b', 'embed')}",
            None,
            r"several workloads \(Deployment chat-8b, ",
        ),
        (f"{DEPLOYMENT}---\n{DEPLOYMENT}", "missing", "--name: no Knative Service or Deployment named 'missing'"),
        (
            f"{KUBE_SERVICE}---\n{SERVICE}---\n{SCALED_OBJECT}",
            None,
            "ScaledObject chat-8b-prewarm: spec.scaleTargetRef.name: Deployment chat-8b is not in this file",
        ),
        (
            DEPLOYMENT + "---\n" + SCALED_OBJECT.replace("name: chat-8b ", "kind: StatefulSet\n    name: chat-8b "),
            None,
            "spec.scaleTargetRef: apps/v1 StatefulSet is not supported",
        ),
        (args_only("lmsysorg/sglang:latest", []), None, r"args: missing; SGLang images have no entrypoint"),
        ("a: [1\n", None, "document 1: not YAML"),
    ],
    ids=[
        "no-workload",
        "unknown-args-only-image",
        "twice",
        "several",
        "no-such-name",
        "scale-target-absent",
        "scale-target-kind",
        "sglang-without-args",
        "not-yaml",
    ],
)
def test_refuses_what_it_cannot_do(text: str, name: str | None, message: str) -> None:
    with pytest.raises(inject.InjectError, match=message):
        inject.inject_cache(text, claim="prewarm-cache", name=name)


def test_command_flag_refuses_a_manifest_that_sets_one_and_bad_quoting() -> None:
    with pytest.raises(inject.InjectError, match=r"command: already set in the manifest; drop --command"):
        inject.inject_cache(SERVICE, claim="c", command="vllm serve")
    with pytest.raises(inject.InjectError, match="--command: 'vllm \"serve': No closing quotation"):
        inject.inject_cache(args_only("acme/x:1", ["--a"]), claim="c", command='vllm "serve')


def test_name_picks_one_of_several_workloads() -> None:
    text = f"{SERVICE}---\n{DEPLOYMENT.replace('name: chat-8b', 'name: embed')}"
    out = inject.inject_cache(text, claim="prewarm-cache", name="embed").text
    assert out.startswith(SERVICE + "---\n")
    assert container_of(out, 1)["env"] == [{"name": "PREWARM_MODEL", "value": "embed"}]


@pytest.mark.parametrize(
    ("image", "path"),
    [
        ("vllm/vllm-openai", "vllm/vllm-openai"),
        ("vllm/vllm-openai:v0.11.0", "vllm/vllm-openai"),
        ("docker.io/vllm/vllm-openai:latest", "vllm/vllm-openai"),
        ("nvcr.io/nvidia/tritonserver:25.01-py3", "nvidia/tritonserver"),
        ("localhost:5000/lmsysorg/sglang:dev", "lmsysorg/sglang"),
        ("ghcr.io/huggingface/text-generation-inference@sha256:00", "huggingface/text-generation-inference"),
        ("ubuntu:24.04", "ubuntu"),
    ],
)
def test_repository_path(image: str, path: str) -> None:
    assert entrypoints.repository_path(image) == path


@pytest.mark.parametrize(
    ("image", "known"),
    [
        ("vllm/vllm-openai:v0.11.0", "vLLM OpenAI server"),
        ("mirror.example.com/cache/vllm/vllm-openai:v0.11.0", "vLLM OpenAI server"),
        ("acme/vllm-openai:v0.11.0", None),  # another owner's image of the same name
        ("vllm/vllm-openai-rocm:latest", None),
        ("rocm/vllm:latest", None),
    ],
)
def test_find_serving_image(image: str, known: str | None) -> None:
    found = entrypoints.find_serving_image(image)
    assert (found.name if found else None) == known


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "prewarm.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("verb", [("inject",), ("knative", "inject")], ids=["inject", "knative-inject"])
def test_cli_prints_the_manifest_and_the_choice(tmp_path: Path, verb: tuple[str, ...]) -> None:
    path = tmp_path / "svc.yaml"
    text = args_only("vllm/vllm-openai:v0.11.0", ["--model", "m"])
    path.write_text(text)
    result = run_cli(*verb, str(path), "--claim", "prewarm-cache")
    assert result.returncode == 0
    assert result.stdout == inject.inject_cache(text, claim="prewarm-cache").text
    prog = " ".join(("prewarm", *verb))
    assert result.stderr.splitlines() == [
        f"{prog}: Knative Service chat: spec.template.spec.containers[server]: image vllm/vllm-openai:v0.11.0 is "
        f"vLLM OpenAI server: wrapping its entrypoint {VLLM!r}",
        f"{prog}: {KNATIVE_NOTE}",
    ]


def test_cli_unknown_args_only_image_exits_2_naming_the_container_and_suggesting_command(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(args_only("registry.example.com/acme/llm-server:2", ["--model", "m"]))
    result = run_cli("inject", str(path), "--claim", "prewarm-cache")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"prewarm inject: {path}: Knative Service chat: spec.template.spec.containers[server].command: missing, "
        "and image registry.example.com/acme/llm-server:2 is not one inject knows; pass its entrypoint with "
        "--command '...' (docs/semi-warm.md)\n"
    )
    fixed = run_cli("inject", str(path), "--claim", "prewarm-cache", "--entrypoint", "/opt/llm/serve")
    assert fixed.returncode == 0
    assert container_of(fixed.stdout)["command"] == [*WRAPPER, "/opt/llm/serve"]


def test_cli_multi_document_file_with_a_scaled_object(tmp_path: Path) -> None:
    path = tmp_path / "keda.yaml"
    path.write_text(MULTI)
    result = run_cli("inject", str(path), "--claim", "prewarm-cache", "--model", "llm/chat-8b")
    assert result.returncode == 0
    assert result.stderr == ""  # the command was in the manifest; nothing chosen, not Knative
    assert result.stdout.endswith(f"---\n{KUBE_SERVICE}--- # the KEDA side\n{SCALED_OBJECT}")
    assert container_of(result.stdout)["env"] == [{"name": "PREWARM_MODEL", "value": "llm/chat-8b"}]
    missing = run_cli("inject", str(tmp_path / "absent.yaml"), "--claim", "c")
    assert missing.returncode == 2
    assert "absent.yaml: [Errno 2] No such file or directory" in missing.stderr


WEIGHTS_ENV = [
    {"name": "PREWARM_MODEL", "value": "chat-8b"},
    {"name": "HF_HUB_CACHE", "value": "/var/cache/prewarm/weights"},
    {"name": "PREWARM_WEIGHTS_MODEL", "value": "acme/chat-8b"},
]
WEIGHTS_AFFINITY = {
    "nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [{"key": "weights.prewarm.dev/models--acme--chat-8b", "operator": "Exists"}]
                },
            }
        ]
    }
}


@pytest.mark.parametrize("text", [SERVICE, DEPLOYMENT], ids=["knative-service", "deployment"])
def test_weights_add_the_hub_cache_and_a_preferred_node_affinity(text: str) -> None:
    injected = inject.inject_cache(text, claim="prewarm-cache", weights="acme/chat-8b")
    spec = YAML(typ="safe").load(injected.text)["spec"]["template"]["spec"]
    assert spec["containers"][0]["env"] == WEIGHTS_ENV
    assert spec["affinity"] == WEIGHTS_AFFINITY
    assert any("weights.prewarm.dev/models--acme--chat-8b" in note for note in injected.notes)


def test_the_weights_annotation_names_the_model_and_affinities_already_there_are_kept() -> None:
    text = SERVICE.replace(
        '    prewarm.dev/enabled: "true"   # pre-warm this Service\n',
        '    prewarm.dev/enabled: "true"   # pre-warm this Service\n    prewarm.dev/weights-model: acme/chat-8b\n',
    ).replace(
        "    spec:\n      containers:\n",
        "    spec:\n      affinity:\n        nodeAffinity:\n"
        "          preferredDuringSchedulingIgnoredDuringExecution:\n"
        "            - weight: 10\n              preference: {matchExpressions: [{key: zone, operator: Exists}]}\n"
        "      containers:\n",
    )
    injected = inject.inject_cache(text, claim="prewarm-cache")
    preferred = YAML(typ="safe").load(injected.text)["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred == [
        {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}},
        *WEIGHTS_AFFINITY["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
    ]
    assert "kubernetes.podspec-affinity" in injected.notes[-1]
    with pytest.raises(inject.InjectError, match=re.escape("--weights: '../x' must be ORG/NAME or NAME")):
        inject.inject_cache(SERVICE, claim="prewarm-cache", weights="../x")


def test_a_hub_cache_the_container_sets_is_replaced_not_duplicated() -> None:
    text = SERVICE.replace(
        "          args:\n",
        "          env:\n            - name: HF_HUB_CACHE\n              value: /data/hf\n          args:\n",
    )
    injected = inject.inject_cache(text, claim="prewarm-cache", weights="acme/chat-8b")
    env = YAML(typ="safe").load(injected.text)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env].count("HF_HUB_CACHE") == 1
    assert {"name": "HF_HUB_CACHE", "value": "/var/cache/prewarm/weights"} in env
    assert any("HF_HUB_CACHE was /data/hf" in note for note in injected.notes)


@pytest.mark.parametrize("on", ["service", "template"])
def test_a_bad_weights_annotation_is_named_in_the_error(on: str) -> None:
    if on == "service":
        text = SERVICE.replace(
            '    prewarm.dev/enabled: "true"   # pre-warm this Service\n',
            '    prewarm.dev/enabled: "true"   # pre-warm this Service\n    prewarm.dev/weights-model: a--b\n',
        )
        key = "metadata.annotations[prewarm.dev/weights-model]"
    else:
        text = SERVICE.replace(
            '        autoscaling.knative.dev/max-scale: "4"\n',
            '        autoscaling.knative.dev/max-scale: "4"\n        prewarm.dev/weights-model: a--b\n',
        )
        key = "spec.template.metadata.annotations[prewarm.dev/weights-model]"
    with pytest.raises(inject.InjectError, match=re.escape(f"Knative Service chat-8b: {key}: 'a--b' must be")):
        inject.inject_cache(text, claim="prewarm-cache")
