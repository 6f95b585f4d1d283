"""`prewarm knative inject`: adds the cache volume and wrapper, and leaves every other byte alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from prewarm.cache import inject

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


def test_adds_volume_mount_env_and_wrapper() -> None:
    out = inject.inject_cache(SERVICE, claim="prewarm-cache")
    spec = YAML(typ="safe").load(out)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["volumes"] == [{"name": "prewarm-cache", "persistentVolumeClaim": {"claimName": "prewarm-cache"}}]
    assert container["volumeMounts"] == [{"name": "prewarm-cache", "mountPath": "/var/cache/prewarm"}]
    assert container["env"] == [{"name": "PREWARM_MODEL", "value": "chat-8b"}]
    assert container["command"] == [
        "prewarm",
        "cache",
        "exec",
        "--root",
        "/var/cache/prewarm",
        "--",
        "python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
    ]
    assert container["args"] == ["--model=/models/chat-8b"]


def test_everything_else_is_kept_byte_for_byte() -> None:
    out = inject.inject_cache(SERVICE, claim="prewarm-cache", model="llm/chat-8b")
    untouched = [line for line in SERVICE.splitlines() if not line.lstrip().startswith("command:")]
    remaining = iter(out.splitlines())
    for line in untouched:  # in order, comments and quoting included
        assert any(candidate == line for candidate in remaining), f"lost or changed: {line!r}"
    assert "value: llm/chat-8b" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            SERVICE.replace('          command: ["python3", "-m", "vllm.entrypoints.openai.api_server"]\n', ""),
            "command: missing",
        ),
        (SERVICE.replace("kind: Service", "kind: Deployment"), "not a Knative Service"),
        (inject.inject_cache(SERVICE, claim="c"), "already wrapped"),
    ],
    ids=["no-command", "not-knative", "twice"],
)
def test_refuses_what_it_cannot_do(text: str, message: str) -> None:
    with pytest.raises(inject.InjectError, match=message):
        inject.inject_cache(text, claim="prewarm-cache")


def run_inject(path: Path, claim: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "prewarm.cli", "knative", "inject", str(path), "--claim", claim]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_cli_prints_the_service_and_exits_2_on_errors(tmp_path: Path) -> None:
    good = tmp_path / "svc.yaml"
    good.write_text(SERVICE)
    result = run_inject(good, "prewarm-cache")
    assert result.returncode == 0
    assert result.stdout == inject.inject_cache(SERVICE, claim="prewarm-cache")
    bad = tmp_path / "bad.yaml"
    bad.write_text(SERVICE.replace("kind: Service", "kind: Deployment"))
    result = run_inject(bad, "x")
    assert result.returncode == 2
    assert "not a Knative Service" in result.stderr
