"""Discovery: Knative Services annotated `prewarm.dev/enabled: "true"` become targets.

List once, then watch from the list's resourceVersion; each watch is bounded (`timeout_seconds`)
and the next one resumes from the last version seen; a 410 Gone lists again. Targets are parsed
from the Service's own `prewarm.dev/*` annotations (which never mint a Revision) with the shared
schema; `max` falls back to the template's max-scale.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from knative import annotations as keys
from knative import floors, kube_api
from prewarm.core import targets

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Listeners:
    """What discovery reports: a target appeared or changed, its traffic moved, it went away."""

    target_seen: Callable[[targets.TargetSpec], None]
    traffic_changed: Callable[[str], None]
    target_gone: Callable[[str], None]


def spec_of(service: Mapping[str, Any]) -> targets.TargetSpec | None:
    """The target a Service asks for, or None when it is not enabled. Raises ConfigError."""
    metadata = service.get("metadata") or {}
    own = metadata.get("annotations") or {}
    if str(own.get(keys.PREWARM_ENABLED, "")).lower() != "true":
        return None
    template = (((service.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("annotations") or {}
    merged = {k: v for k, v in template.items() if k in keys.MAX_SCALE_READ} | dict(own)
    ref = targets.TargetRef(namespace=metadata["namespace"], name=metadata["name"])
    spec, warnings = targets.parse_annotations(merged, ref=ref, kind=targets.TargetKind.KNATIVE)
    for warning in warnings:
        log.warning("%s", warning)
    return spec


class ServiceDiscovery:
    """Keeps `listeners` told about annotated Services; `run()` until cancelled."""

    def __init__(
        self,
        api: kube_api.KubeAPI,
        listeners: Listeners,
        *,
        timeout_seconds: int = 300,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        namespaces: frozenset[str] = frozenset(),
    ) -> None:
        self._api = api
        self._namespaces = namespaces  # empty: every namespace
        self._listeners = listeners
        self._timeout = timeout_seconds
        self._sleep = sleep
        self._known: dict[str, tuple[targets.TargetSpec, list[str]]] = {}  # target -> (spec, routed revisions)
        self._refused: set[tuple[str, str]] = set()  # (target, resourceVersion) already logged
        self.lists: dict[str, int] = {"services": 0, "revisions": 0}  # full lists made, by plural

    async def run(self) -> None:
        """Follow annotated Services and their Revisions until cancelled."""
        await asyncio.gather(
            self._follow("services", "", self._sync, self._handle),
            self._follow("revisions", keys.SERVICE_LABEL, lambda items: None, self._handle_revision),
        )

    async def _follow(
        self,
        plural: str,
        label_selector: str,
        sync: Callable[[list[dict[str, Any]]], None],
        handle: Callable[[str, dict[str, Any]], None],
    ) -> None:
        """List, then bounded watches that each resume where the last ended; relist on 410 Gone."""
        backoff = 0.5
        while True:
            try:
                items, version = await self._api.list_serving(plural, label_selector)
                self.lists[plural] += 1
                sync(items)
                while True:
                    async for event in self._api.watch_serving(plural, version, self._timeout, label_selector):
                        obj = event["object"]
                        handle(event["type"], obj)
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or "") or version
                    backoff = 0.5
            except kube_api.Gone:
                log.info("watch of Knative %s expired (410); listing again", plural)
            except kube_api.KubeAPIError as e:
                log.warning("Knative %s discovery: %s; retrying in %.1fs", plural, e, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _handle_revision(self, kind: str, revision: dict[str, Any]) -> None:
        """A Revision changed (its min-scale drifted, say): re-apply its Service's floor, unless it is a
        discovered target's unrouted Revision. Config-file targets are not followed here, so any of
        their Revisions counts; the listener ignores Services that are not targets."""
        metadata = revision.get("metadata") or {}
        service = (metadata.get("labels") or {}).get(keys.SERVICE_LABEL)
        target = f"{metadata.get('namespace')}/{service}"
        known = self._known.get(target)
        routed = known is None or metadata.get("name") in known[1]
        if kind == "MODIFIED" and service and routed:
            self._listeners.traffic_changed(target)

    def _sync(self, services: list[dict[str, Any]]) -> None:
        seen = set()
        for service in services:
            target = self._update(service)
            if target is not None:
                seen.add(target)
        for target in set(self._known) - seen:
            del self._known[target]
            self._listeners.target_gone(target)

    def _handle(self, kind: str, service: dict[str, Any]) -> None:
        metadata = service.get("metadata") or {}
        target = f"{metadata.get('namespace')}/{metadata.get('name')}"
        if kind == "DELETED":
            if self._known.pop(target, None) is not None:
                self._listeners.target_gone(target)
        elif self._update(service) is None and target in self._known:
            del self._known[target]
            self._listeners.target_gone(target)

    def _update(self, service: dict[str, Any]) -> str | None:
        """Report a new or changed target; returns its name when the Service is a target."""
        metadata = service.get("metadata") or {}
        if self._namespaces and metadata.get("namespace") not in self._namespaces:
            return None
        target = f"{metadata.get('namespace')}/{metadata.get('name')}"
        try:
            spec = spec_of(service)
        except targets.ConfigError as e:
            key = (target, str(metadata.get("resourceVersion")))
            if key not in self._refused:
                self._refused.add(key)
                log.error("%s", e)
            return target if target in self._known else None  # keep the last valid spec
        if spec is None:
            return None
        routed = floors.routed_revisions(service)
        previous = self._known.get(target)
        self._known[target] = (spec, routed)
        if previous is None or previous[0] != spec:
            self._listeners.target_seen(spec)
        elif previous[1] != routed:
            self._listeners.traffic_changed(target)
        return target
