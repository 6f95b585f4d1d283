"""`prewarm knative inject`: add the shared compile-cache volume to a Knative Service manifest.

Round-trips the YAML (comments, key order and quoting kept) and changes only what it adds: the
PVC volume, its mount, PREWARM_MODEL, and the `prewarm cache exec` wrapper around the container's
command. Knative needs the `kubernetes.podspec-persistent-volume-claim` and
`kubernetes.podspec-persistent-volume-write` features enabled (manifests/cache/).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

VOLUME_NAME = "prewarm-cache"
MOUNT_PATH = "/var/cache/prewarm"
WRAPPER = ("prewarm", "cache", "exec", "--root", MOUNT_PATH, "--")


class InjectError(ValueError):
    """The manifest cannot be injected; the message names the field."""


def _yaml() -> YAML:
    yaml = YAML()  # round-trip mode
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def inject_cache(text: str, *, claim: str, model: str | None = None, container: str | None = None) -> str:
    """Return the Knative Service in `text` with the cache volume and wrapper added.

    Raises InjectError when it is not a Knative Service, the container has no `command` to wrap
    (the image's entrypoint is not visible here), or it was already injected.
    """
    yaml = _yaml()
    document = yaml.load(text)
    if (
        not isinstance(document, CommentedMap)
        or document.get("kind") != "Service"
        or not str(document.get("apiVersion", "")).startswith("serving.knative.dev/")
    ):
        raise InjectError("kind/apiVersion: not a Knative Service (serving.knative.dev/v1)")
    try:
        spec = document["spec"]["template"]["spec"]
        containers: CommentedSeq = spec["containers"]
    except (KeyError, TypeError):
        raise InjectError("spec.template.spec.containers: missing") from None
    target = _pick_container(containers, container)
    command = target.get("command")
    if not command:
        raise InjectError(
            f"spec.template.spec.containers[{target.get('name', 0)}].command: missing; set the model server's "
            "command explicitly so it can be wrapped"
        )
    if list(command[: len(WRAPPER) - 1]) == list(WRAPPER[:-1]):
        raise InjectError("command: already wrapped by prewarm cache exec")
    model_id = model or str(document["metadata"]["name"])

    volumes = spec.setdefault("volumes", CommentedSeq())
    if any(v.get("name") == VOLUME_NAME for v in volumes):
        raise InjectError(f"spec.template.spec.volumes: {VOLUME_NAME} already present")
    volumes.append(
        CommentedMap([("name", VOLUME_NAME), ("persistentVolumeClaim", CommentedMap([("claimName", claim)]))])
    )
    mounts = target.setdefault("volumeMounts", CommentedSeq())
    mounts.append(CommentedMap([("name", VOLUME_NAME), ("mountPath", MOUNT_PATH)]))
    env = target.setdefault("env", CommentedSeq())
    env.append(CommentedMap([("name", "PREWARM_MODEL"), ("value", model_id)]))
    wrapped = CommentedSeq([*WRAPPER, *command])
    target["command"] = wrapped

    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def _pick_container(containers: Sequence[CommentedMap], name: str | None) -> CommentedMap:
    if name is None:
        if len(containers) != 1:
            raise InjectError("spec.template.spec.containers: several containers; name one with --container")
        return containers[0]
    for candidate in containers:
        if candidate.get("name") == name:
            return candidate
    raise InjectError(f"--container: no container named {name!r}")
