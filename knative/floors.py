"""Pure rules for turning a decided floor into a revision's min-scale annotation.

No I/O: the actuator reads the objects, these functions say what to write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from knative import annotations as keys


def read_scale(annotations: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    """The first of `names` present with a non-negative integer value, else None."""
    for name in names:
        raw = annotations.get(name)
        if raw is not None and re.fullmatch(r"\s*\d+\s*", str(raw)):
            return int(raw)
    return None


def parse_version(text: str | None) -> tuple[int, int] | None:
    """`v1.21.0`, `1.20`, `knative-v1.23.1` -> (1, 21); None when unreadable."""
    if not text:
        return None
    match = re.search(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def version_from_labels(labels: Mapping[str, str]) -> tuple[tuple[int, int], str] | str:
    """((major, minor), `label=value`) from the first version label whose value is a version;
    otherwise a string saying why there is none."""
    unreadable = []
    for label in keys.VERSION_LABELS:
        value = labels.get(label)
        if not value:
            continue
        version = parse_version(value)
        if version is not None:
            return version, f"{label}={value}"
        unreadable.append(f"{label}={value}")
    if unreadable:
        return f"{', '.join(unreadable)} is not a version"
    return f"no {' or '.join(keys.VERSION_LABELS)} label"


def floor_object_for(version: tuple[int, int]) -> str:
    """Which object carries min-scale for this Knative version: `revision` or `podautoscaler`.

    There is no default: on <= 1.20 a Revision's min-scale never reaches the autoscaler and is
    copied into the pod template (every change would restart every pod); on >= 1.21 a
    PodAutoscaler's own annotation is removed by the revision reconciler.
    """
    return "podautoscaler" if version < keys.REVISION_ANNOTATIONS_SINCE else "revision"


def desired_min_scale(floor: int, *, user_min: int | None, revision_annotations: Mapping[str, str]) -> int | None:
    """The min-scale to write: max(user's template min-scale, floor), clamped so the webhook accepts
    it (<= the revision's max-scale; <= activation-scale when that is set). None means the user
    had none and pre-warming wants none: remove the annotation."""
    value = max(floor, user_min or 0)
    max_scale = read_scale(revision_annotations, keys.MAX_SCALE_READ)
    if max_scale:  # 0 means unbounded
        value = min(value, max_scale)
    activation = read_scale(revision_annotations, keys.ACTIVATION_SCALE_READ)
    if activation is not None and activation > 1:
        value = min(value, activation)
    if value == 0 and user_min is None:
        return None
    return value


def routed_revisions(service: Mapping[str, Any]) -> list[str]:
    """Revisions that receive traffic (percent > 0): min-scale is ignored on the others."""
    traffic = (service.get("status") or {}).get("traffic") or []
    names = []
    for entry in traffic:
        name = entry.get("revisionName")
        if name and (entry.get("percent") or 0) > 0 and name not in names:
            names.append(name)
    return names


def user_min_scale(service: Mapping[str, Any]) -> int | None:
    """The min-scale the user set on the Service's template (a lower bound we never go under)."""
    template = ((service.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return read_scale(template.get("annotations") or {}, keys.MIN_SCALE_READ)


def min_scale_patch(value: int | None, resource_version: str | None) -> dict[str, Any]:
    """A JSON merge patch that sets (or, with None, removes) min-scale; with `resource_version`
    the API server applies it only to that version (409 otherwise)."""
    metadata: dict[str, Any] = {"annotations": {keys.MIN_SCALE: None if value is None else str(value)}}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {"metadata": metadata}
