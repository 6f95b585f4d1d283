"""`prewarm inject`: add the shared compile-cache volume to a Knative Service or a Deployment.

Round-trips the one YAML document it changes (comments, key order and quoting kept), copies every
other document of the file as it was, and changes only what it adds: the PVC volume, its mount,
PREWARM_MODEL, and the `prewarm cache exec` wrapper around the container's command. A file with a
KEDA ScaledObject gets the Deployment its `scaleTargetRef` names. Knative needs the
`kubernetes.podspec-persistent-volume-claim` and `kubernetes.podspec-persistent-volume-write`
features enabled (manifests/cache/).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import re
import shlex
from collections.abc import Sequence
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from prewarm.cache import entrypoints, hub_layout

WEIGHTS_ANNOTATION = "prewarm.dev/weights-model"  # the target's weights model, read when --weights is not given
WEIGHTS_AFFINITY_WEIGHT = 100  # the strongest preference: weights on the node matter more than spreading
VOLUME_NAME = "prewarm-cache"
MOUNT_PATH = "/var/cache/prewarm"
WRAPPER = ("prewarm", "cache", "exec", "--root", MOUNT_PATH, "--")
KNATIVE_FEATURES = "manifests/cache/knative-config-features-patch.yaml"

_SEPARATOR = re.compile(r"---(?:[ \t].*)?")
_KEY_LINE = re.compile(r"( *)[^ #\-][^:#]*:\s*(?:#.*)?")  # `key:` ending its line: a nested block follows
_DASH_LINE = re.compile(r"( *)- ")


class InjectError(ValueError):
    """The manifest cannot be injected; the message names the field."""


@dataclasses.dataclass(frozen=True, slots=True)
class Injected:
    """The injected manifest, and what inject chose on the user's behalf (printed to stderr)."""

    text: str
    notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class _Document:
    separator: str  # the `---` line that opens it, with its newline ("" for the first)
    body: str
    data: Any
    yaml: YAML  # what loaded it, and writes it back in the same style


@dataclasses.dataclass(frozen=True, slots=True)
class _Workload:
    index: int
    kind: str  # `Knative Service` or `Deployment`
    name: str
    namespace: str | None

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def inject_cache(
    text: str,
    *,
    claim: str,
    model: str | None = None,
    container: str | None = None,
    command: str | None = None,
    name: str | None = None,
    weights: str | None = None,
) -> Injected:
    """Return `text` with the cache volume and wrapper added to one workload's container.

    The workload is the one Knative Service or Deployment in the file, the Deployment a KEDA
    ScaledObject in the file scales, or the one called `name`. The command wrapped is the
    container's `command`, else `command` (shell words; "" when the args are the whole command),
    else the entrypoint of a known serving image (`entrypoints.SERVING_IMAGES`).

    With a weights model (`weights`, else the workload's `prewarm.dev/weights-model` annotation)
    the container also gets HF_HUB_CACHE on the volume's weights tier, and the pod a preferred
    node affinity for nodes whose label says they hold that model's weights.

    Raises InjectError when no single workload is found, the container's command is unknown, or
    it was already injected.
    """
    documents = _split_documents(text)
    workload = _pick_workload(documents, name)
    document = documents[workload.index]
    notes: list[str] = []
    where = "spec.template.spec.containers"
    try:
        spec = document.data["spec"]["template"]["spec"]
        containers = spec["containers"]
    except (KeyError, TypeError):
        raise InjectError(f"{workload}: {where}: missing") from None
    if not isinstance(containers, CommentedSeq) or not containers:
        raise InjectError(f"{workload}: {where}: missing")
    target = _pick_container(containers, container, where=f"{workload}: {where}")
    label = f"{workload}: {where}[{target.get('name', 0)}]"
    wrapped = _wrapped_command(target, label=label, explicit=command, notes=notes)
    volumes = spec.setdefault("volumes", CommentedSeq())
    if any(isinstance(v, CommentedMap) and v.get("name") == VOLUME_NAME for v in volumes):
        raise InjectError(f"{workload}: spec.template.spec.volumes: {VOLUME_NAME} already present")
    volumes.append(
        CommentedMap([("name", VOLUME_NAME), ("persistentVolumeClaim", CommentedMap([("claimName", claim)]))])
    )
    mounts = target.setdefault("volumeMounts", CommentedSeq())
    mounts.append(CommentedMap([("name", VOLUME_NAME), ("mountPath", MOUNT_PATH)]))
    env = target.setdefault("env", CommentedSeq())
    env.append(CommentedMap([("name", "PREWARM_MODEL"), ("value", model or workload.name)]))
    weights_model, weights_key = (weights, "--weights") if weights is not None else _annotated_weights(document.data)
    if weights_model is not None:
        _add_weights(spec, env, weights_model, where=f"{workload}: {weights_key}", notes=notes)
    if "command" in target:
        target["command"] = wrapped
    else:  # before `args`, where a reader looks for it
        keys = list(target.keys())
        target.insert(keys.index("args") if "args" in keys else len(keys), "command", wrapped)
    if workload.kind == "Knative Service":
        affinity = " and kubernetes.podspec-affinity" if weights_model is not None else ""
        notes.append(
            "Knative Serving must allow PVCs: enable kubernetes.podspec-persistent-volume-claim and "
            f"kubernetes.podspec-persistent-volume-write{affinity} ({KNATIVE_FEATURES})"
        )
    out = io.StringIO()
    document.yaml.dump(document.data, out)
    pieces = [f"{d.separator}{out.getvalue() if d is document else d.body}" for d in documents]
    return Injected(text="".join(pieces), notes=tuple(notes))


def _annotated_weights(data: Any) -> tuple[str | None, str]:
    """The workload's `prewarm.dev/weights-model` annotation (its own, else its pod template's),
    and where it was found, for errors."""
    template = ((data.get("spec") or {}).get("template") or {}).get("metadata")
    for metadata, where in ((data.get("metadata"), "metadata"), (template, "spec.template.metadata")):
        value = ((metadata or {}).get("annotations") or {}).get(WEIGHTS_ANNOTATION)
        if value:
            return str(value), f"{where}.annotations[{WEIGHTS_ANNOTATION}]"
    return None, ""


def _add_weights(spec: CommentedMap, env: CommentedSeq, model: str, *, where: str, notes: list[str]) -> None:
    """HF_HUB_CACHE and PREWARM_WEIGHTS_MODEL for the container, a preferred node affinity for the pod."""
    problem = hub_layout.check_model(model)
    if problem is not None:
        raise InjectError(f"{where}: {model!r} {problem}")
    cache = f"{MOUNT_PATH}/{hub_layout.WEIGHTS}"
    present = next((e for e in env if isinstance(e, CommentedMap) and e.get("name") == "HF_HUB_CACHE"), None)
    if present is None:
        env.append(CommentedMap([("name", "HF_HUB_CACHE"), ("value", cache)]))
    else:  # one entry per name: a second would be rejected by server-side apply, or silently win
        notes.append(f"{where}: HF_HUB_CACHE was {present.get('value', present.get('valueFrom'))}; now {cache}")
        present.pop("valueFrom", None)
        present["value"] = cache
    env.append(CommentedMap([("name", "PREWARM_WEIGHTS_MODEL"), ("value", model)]))
    label = hub_layout.node_label(hub_layout.repo_folder(model))
    expression = CommentedMap([("key", label), ("operator", "Exists")])
    term = CommentedMap(
        [
            ("weight", WEIGHTS_AFFINITY_WEIGHT),
            ("preference", CommentedMap([("matchExpressions", CommentedSeq([expression]))])),
        ]
    )
    affinity = spec.setdefault("affinity", CommentedMap())
    node_affinity = affinity.setdefault("nodeAffinity", CommentedMap())
    node_affinity.setdefault("preferredDuringSchedulingIgnoredDuringExecution", CommentedSeq()).append(term)
    notes.append(f"{where}: {model} is read from {cache}; the scheduler prefers nodes labelled {label}")


def _yaml(text: str) -> YAML:
    """Round-trip YAML that writes sequences and mappings indented as `text` does."""
    mapping, sequence, offset = _guess_indents(text)
    yaml = YAML()  # round-trip mode
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def _guess_indents(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, dash offset) as the first nested mapping and block sequence use them;
    this project's own style (2, 4, 2) where the text has none."""
    mapping: int | None = None
    dash: int | None = None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for parent, child in itertools.pairwise(lines):
        opened = _KEY_LINE.fullmatch(parent)
        if opened is None:
            continue
        depth = len(child) - len(child.lstrip(" "))
        item = _DASH_LINE.match(child)
        if item is not None and dash is None and depth >= len(opened.group(1)):
            dash = depth - len(opened.group(1))
        elif item is None and mapping is None and depth > len(opened.group(1)):
            mapping = depth - len(opened.group(1))
        if mapping is not None and dash is not None:
            break
    mapping = mapping or 2
    offset = 2 if dash is None else dash
    return mapping, offset + 2, offset


def _split_documents(text: str) -> list[_Document]:
    """The file's documents at their `---` lines, each parsed (None for one holding only comments)."""
    chunks: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines(keepends=True):
        if _SEPARATOR.fullmatch(line.rstrip("\r\n")):
            chunks.append((line, []))
        else:
            chunks[-1][1].append(line)
    documents = []
    for number, (separator, lines) in enumerate(chunks):
        body = "".join(lines)
        yaml = _yaml(body)
        try:
            data = yaml.load(body)
        except YAMLError as e:
            raise InjectError(f"document {number + 1}: not YAML: {e}") from None
        documents.append(_Document(separator=separator, body=body, data=data, yaml=yaml))
    return documents


def _kind_of(data: Any) -> str | None:
    if not isinstance(data, CommentedMap):
        return None
    api_version, kind = str(data.get("apiVersion", "")), data.get("kind")
    if kind == "Service" and api_version.startswith("serving.knative.dev/"):
        return "Knative Service"
    if kind == "Deployment" and api_version == "apps/v1":
        return "Deployment"
    if kind == "ScaledObject" and api_version.startswith("keda.sh/"):
        return "ScaledObject"
    return None


def _metadata(data: CommentedMap) -> tuple[str, str | None]:
    metadata = data.get("metadata") or {}
    namespace = metadata.get("namespace")
    return str(metadata.get("name") or ""), None if namespace is None else str(namespace)


def _pick_workload(documents: Sequence[_Document], name: str | None) -> _Workload:
    workloads: list[_Workload] = []
    scaled: list[tuple[str, str | None, Any]] = []  # ScaledObjects: name, namespace, scaleTargetRef
    for index, document in enumerate(documents):
        kind = _kind_of(document.data)
        if kind is None:
            continue
        own_name, namespace = _metadata(document.data)
        if kind == "ScaledObject":
            scaled.append((own_name, namespace, (document.data.get("spec") or {}).get("scaleTargetRef")))
        else:
            workloads.append(_Workload(index=index, kind=kind, name=own_name, namespace=namespace))
    if not workloads:
        raise InjectError("kind/apiVersion: no Knative Service (serving.knative.dev/v1) or Deployment (apps/v1) found")
    if name is not None:
        candidates = [w for w in workloads if w.name == name]
        if not candidates:
            raise InjectError(f"--name: no Knative Service or Deployment named {name!r}")
    elif scaled:
        candidates = []
        problems = []
        for scaled_name, namespace, ref in scaled:
            found = _scale_target(scaled_name, namespace, ref, workloads)
            if isinstance(found, str):
                problems.append(found)
            elif found not in candidates:
                candidates.append(found)
        if not candidates:
            raise InjectError("; ".join(problems))
    else:
        candidates = workloads
    if len(candidates) > 1:
        names = ", ".join(str(w) for w in candidates)
        raise InjectError(f"several workloads ({names}); name one with --name")
    return candidates[0]


def _scale_target(scaled_name: str, namespace: str | None, ref: Any, workloads: Sequence[_Workload]) -> _Workload | str:
    """The Deployment a ScaledObject scales, or why it is not in the file."""
    where = f"ScaledObject {scaled_name}: spec.scaleTargetRef"
    if not isinstance(ref, CommentedMap) or not ref.get("name"):
        return f"{where}.name: missing"
    kind, api_version = ref.get("kind", "Deployment"), ref.get("apiVersion", "apps/v1")
    if kind != "Deployment" or api_version != "apps/v1":
        return f"{where}: {api_version} {kind} is not supported (Deployments only)"
    for workload in workloads:
        same_namespace = namespace is None or workload.namespace is None or namespace == workload.namespace
        if workload.kind == "Deployment" and workload.name == ref["name"] and same_namespace:
            return workload
    return f"{where}.name: Deployment {ref['name']} is not in this file"


def _pick_container(containers: Sequence[Any], name: str | None, *, where: str) -> CommentedMap:
    if name is None:
        if len(containers) != 1:
            raise InjectError(f"{where}: several containers; name one with --container")
        only = containers[0]
        if not isinstance(only, CommentedMap):
            raise InjectError(f"{where}[0]: not a mapping")
        return only
    for candidate in containers:
        if isinstance(candidate, CommentedMap) and candidate.get("name") == name:
            return candidate
    raise InjectError(f"--container: no container named {name!r}")


def _wrapped_command(target: CommentedMap, *, label: str, explicit: str | None, notes: list[str]) -> CommentedSeq:
    """`prewarm cache exec ... --` followed by the model server's command; the args stay as they are."""
    command = target.get("command")
    args = target.get("args") or []
    if command:
        if list(command[: len(WRAPPER) - 1]) == list(WRAPPER[:-1]):
            raise InjectError(f"{label}.command: already wrapped by prewarm cache exec")
        if explicit is not None:
            raise InjectError(f"{label}.command: already set in the manifest; drop --command")
        return CommentedSeq([*WRAPPER, *command])
    if explicit is not None:
        try:
            words = shlex.split(explicit)
        except ValueError as e:
            raise InjectError(f"--command: {explicit!r}: {e}") from None
        if not words and not args:
            raise InjectError(f"{label}.args: missing; with --command '' the args must hold the whole command")
        return CommentedSeq([*WRAPPER, *words])
    image = str(target.get("image") or "")
    known = entrypoints.find_serving_image(image)
    if known is None:
        raise InjectError(
            f"{label}.command: missing, and image {image or '(none)'} is not one inject knows; pass its "
            "entrypoint with --command '...' (docs/semi-warm.md)"
        )
    words = list(entrypoints.entrypoint_for(known, [str(a) for a in args]))
    if not words:
        if not args:
            raise InjectError(f"{label}.args: missing; {known.name} images have no entrypoint of their own")
        notes.append(
            f"{label}: image {image} is {known.name}, which has no entrypoint of its own: the args are the command"
        )
    else:
        notes.append(f"{label}: image {image} is {known.name}: wrapping its entrypoint {shlex.join(words)!r}")
    return CommentedSeq([*WRAPPER, *words])
