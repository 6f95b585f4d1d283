"""The `knative` actuator: a decided floor becomes the min-scale of a Service's routed revisions.

It patches the Revision's annotation (Knative >= 1.21) or the PodAutoscaler's (<= 1.20), never
the Service template (that would mint a Revision and restart GPU pods), only when the value
changes, and only what the webhook will accept. When the installed version cannot be read it
patches nothing and says so (log, metric, `/targets`, a `refused` outcome): the wrong object is
worse than none. It makes one attempt per call and raises what may pass (no answer, 429, 5xx):
the reconciler in front of it retries with backoff, so a slow API never holds up another target.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from knative import annotations as keys
from knative import floors, kube_api, serving_version
from prewarm.core import actuation, policy

log = logging.getLogger(__name__)

Wake = Callable[[str, str], Awaitable[int]]  # (method, url) -> HTTP status
CONFLICT_REREADS = 3  # a 409 is read again and retried at once, this many times within one attempt


def parse_wake(value: str | None) -> tuple[str, str] | None:
    """`GET /healthz` -> ("GET", "/healthz"); None when absent or not METHOD /path."""
    if not value:
        return None
    method, _, path = value.strip().partition(" ")
    path = path.strip()
    if method.upper() not in ("GET", "HEAD", "POST") or not path.startswith("/"):
        return None
    return method.upper(), path


class KnativeActuator:
    """Applies floors to Knative Services named by the decisions' targets (`namespace/name`)."""

    name = "knative"

    def __init__(
        self,
        api: kube_api.KubeAPI,
        *,
        floor_object: str | None = None,
        applies_to: Callable[[str], bool] = lambda target: True,
        wake: Wake | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        system_namespace: str = keys.KNATIVE_NAMESPACE,
        on_refused: Callable[[str], None] = lambda target: None,
    ) -> None:
        self._api = api
        self._is_leader = is_leader
        self._wake = wake
        self._applies_to = applies_to
        self._system_namespace = system_namespace
        self._on_refused = on_refused  # a target's floor was not written: the version is unknown
        # None: not read yet; a known version is read once, an unknown one again at the next apply
        self._version = None if floor_object is None else serving_version.forced(floor_object)
        self._detecting = asyncio.Lock()
        self._refused: dict[str, str] = {}  # target -> why its last floor was not written
        self._invalid_logged: set[tuple[str, str, str]] = set()
        self.counts: dict[str, int] = {
            "patched": 0,
            "unchanged": 0,
            "gone": 0,
            "invalid": 0,
            "refused": 0,
        }

    async def installed_version(self) -> serving_version.ServingVersion:
        """Where min-scale goes: read from the installed Knative Serving once it is known, and
        tried again on every call while it is not (RBAC fixed, API server back). Raises
        KubeAPIError when a read failed in a way that may pass."""
        if self._version is not None and self._version.floor_object is not None:
            return self._version
        async with self._detecting:
            if self._version is None or self._version.floor_object is None:
                found = await serving_version.detect_serving_version(self._api, system_namespace=self._system_namespace)
                if found.floor_object is not None:
                    log.info(
                        "Knative Serving %s (%s): min-scale goes on %ss",
                        found.version,
                        found.source,
                        found.floor_object,
                    )
                self._version = found
            return self._version

    def describe(self, target: str) -> dict[str, str | None]:
        """For `/targets`: which object gets `target`'s min-scale and why, or why its floor was not written."""
        version = self._version
        return {
            "min_scale_on": None if version is None else version.floor_object,
            "serving_version": None if version is None else version.version,
            "version_from": "not read yet" if version is None else version.source,
            "refused": self._refused.get(target),
        }

    def _refuse(self, target: str, version: serving_version.ServingVersion) -> actuation.Result:
        reason = (
            f"min-scale not written: Knative Serving version unknown ({version.source}); set "
            "--knative-system-namespace to where Knative Serving runs, let this service account read it "
            "(manifests/overlays/knative/rbac.yaml), or choose with --knative-floor-object"
        )
        self.counts["refused"] += 1
        self._on_refused(target)
        if self._refused.get(target) != reason:  # once per target and reason; the metric counts every one
            log.error("%s: %s", target, reason)
        self._refused[target] = reason
        return actuation.Result(actuation.Outcome.REFUSED, reason)

    async def apply(self, decision: policy.FloorDecision, previous: policy.FloorDecision | None) -> actuation.Result:
        if not self._applies_to(decision.target):
            return actuation.Result(actuation.Outcome.SKIPPED, "not a Knative target")
        leaving_zero = decision.floor > 0 and (previous is None or previous.floor == 0)
        return await self.apply_floor(decision.target, decision.floor, wake=leaving_zero)

    async def release(self, target: str) -> actuation.Result:
        """Pre-warming ended for `target`: give its routed revisions back the user's own min-scale."""
        return await self.apply_floor(target, 0)

    async def apply_floor(self, target: str, floor: int, *, wake: bool = False) -> actuation.Result:
        """Make `floor` the min-scale of `target`'s routed revisions (re-read from the Service).

        With `wake`, also send the Service's `prewarm.dev/wake` request once: a revision at zero
        whose autoscaler has no metrics (desired scale -1) can ignore a raised min-scale.
        Replicas that do not hold the lease patch nothing (see knative/leader.py). Raises
        KubeAPIError when a call failed in a way that may pass: the caller retries.
        """
        if not self._is_leader():
            return actuation.Result(actuation.Outcome.SKIPPED, "another replica holds the Knative lease")
        version = await self.installed_version()
        if version.floor_object is None:
            return self._refuse(target, version)
        kind = version.floor_object
        self._refused.pop(target, None)
        namespace, _, name = target.partition("/")
        try:
            service = await self._api.get_service(namespace, name)
        except kube_api.NotFound:
            self.counts["gone"] += 1
            log.info("%s: no such Knative Service; nothing to patch", target)
            return actuation.APPLIED  # nothing to hold a floor: done until the Service appears
        user_min = floors.user_min_scale(service)
        for revision in floors.routed_revisions(service):
            await self._apply_one(kind, namespace, revision, floor, user_min)
        if wake:
            await self._send_wake(target, service)
        return actuation.APPLIED

    async def _send_wake(self, target: str, service: dict[str, Any]) -> None:
        annotations = (service.get("metadata") or {}).get("annotations") or {}
        request = parse_wake(annotations.get(keys.PREWARM_WAKE))
        url = (service.get("status") or {}).get("url")
        if request is None or self._wake is None or not url:
            if annotations.get(keys.PREWARM_WAKE) and request is None:
                log.warning(
                    "%s: %s=%r is not 'METHOD /path'", target, keys.PREWARM_WAKE, annotations[keys.PREWARM_WAKE]
                )
            return
        method, path = request
        try:
            code = await self._wake(method, str(url).rstrip("/") + path)
        except Exception as e:  # a wake is a nudge: failing it must not fail the actuation
            self.counts["wake_failed"] = self.counts.get("wake_failed", 0) + 1
            log.warning("%s: wake %s %s failed: %s", target, method, path, e)
            return
        self.counts["woken"] = self.counts.get("woken", 0) + 1
        log.info("%s: wake %s %s -> %d", target, method, path, code)

    async def _apply_one(self, kind: str, namespace: str, name: str, floor: int, user_min: int | None) -> None:
        """Read the object, patch min-scale when it differs; a 409 is read again at once (bounded).
        Raises KubeAPIError on anything else that may pass."""
        for _ in range(CONFLICT_REREADS):
            try:
                obj = await self._api.get_floor_object(kind, namespace, name)
                patch = self._patch_for(obj, floor, user_min)
                if patch is None:
                    self.counts["unchanged"] += 1
                    return
                await self._api.patch_floor_object(kind, namespace, name, patch)
                self.counts["patched"] += 1
                return
            except kube_api.NotFound:
                self.counts["gone"] += 1  # the revision went away: forget it
                return
            except kube_api.Invalid as e:
                self.counts["invalid"] += 1
                key = (kind, namespace, name)
                if key not in self._invalid_logged:  # once: it will not get better by retrying
                    self._invalid_logged.add(key)
                    log.error("%s %s/%s refused min-scale: %s", kind, namespace, name, e.message)
                return
            except kube_api.Conflict:
                continue  # changed since read: read again and retry at once
        raise kube_api.Conflict(409, f"{kind} {namespace}/{name} changed on every one of {CONFLICT_REREADS} tries")

    @staticmethod
    def _patch_for(obj: dict[str, Any], floor: int, user_min: int | None) -> dict[str, Any] | None:
        metadata = obj.get("metadata") or {}
        current_annotations = metadata.get("annotations") or {}
        desired = floors.desired_min_scale(floor, user_min=user_min, revision_annotations=current_annotations)
        current = current_annotations.get(keys.MIN_SCALE)
        if (None if desired is None else str(desired)) == current:
            return None
        return floors.min_scale_patch(desired, metadata.get("resourceVersion"))
