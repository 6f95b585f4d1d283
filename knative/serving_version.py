"""Which Knative Serving is installed, and so which object carries min-scale; never a guess.

The version is read from the `app.kubernetes.io/version` (or, until 1.3, `serving.knative.dev/release`)
label of Knative Serving's system namespace, else of its `controller` Deployment there (operator
installs create the namespace without the label; the release's Deployments carry it). When neither
can be read, the version is unknown and the actuator writes nothing: a Revision patch on <= 1.20
never reaches the autoscaler and is copied into the pod template, restarting every pod.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from knative import annotations as keys
from knative import floors, kube_api

Labels = dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class ServingVersion:
    """Where min-scale goes and why: `floor_object` is None when the version is unknown."""

    floor_object: str | None  # revision | podautoscaler
    version: str | None  # the label's value, for operators
    source: str  # where the version was read, or why it could not be


def forced(floor_object: str) -> ServingVersion:
    """The choice `--knative-floor-object` made; nothing is read."""
    return ServingVersion(floor_object=floor_object, version=None, source="--knative-floor-object")


async def detect_serving_version(api: kube_api.KubeAPI, *, system_namespace: str) -> ServingVersion:
    """Read the version from the system namespace, then its controller Deployment.

    Absent or unreadable labels and errors that will not pass (403, 404, ...) make the result
    unknown, with every reason in `source`; an error that may pass (no answer, 429, 5xx) is
    raised, so the caller tries again rather than refusing for a moment's outage.
    """
    sources: tuple[tuple[str, Callable[[], Awaitable[Labels]]], ...] = (
        (f"namespace {system_namespace}", lambda: api.namespace_labels(system_namespace)),
        (
            f"deployment {system_namespace}/{keys.CONTROLLER_DEPLOYMENT}",
            lambda: api.deployment_labels(system_namespace, keys.CONTROLLER_DEPLOYMENT),
        ),
    )
    problems = []
    for where, read in sources:
        try:
            labels = await read()
        except kube_api.Forbidden as e:
            problems.append(f"{where}: forbidden by RBAC ({e.message})")
            continue
        except kube_api.NotFound:
            problems.append(f"{where}: not found")
            continue
        except kube_api.KubeAPIError as e:
            if e.transient:
                raise
            problems.append(f"{where}: {e}")
            continue
        found = floors.version_from_labels(labels)
        if isinstance(found, str):
            problems.append(f"{where}: {found}")
            continue
        version, label = found
        return ServingVersion(
            floor_object=floors.floor_object_for(version),
            version=label.partition("=")[2],
            source=f"label {label} of {where}",
        )
    return ServingVersion(floor_object=None, version=None, source="; ".join(problems))
