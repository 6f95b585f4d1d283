"""How the decider meets Knative: the API client, the wake request, and what discovered Services and
a new leader do to floors (they queue targets on the Knative reconciler; nothing here waits on the
API). The Knative adapters themselves live in the top-level `knative` package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from knative import actuator as knative_actuator
from knative import discovery as knative_discovery
from prewarm.core import targets
from prewarm.service import decider, leadership, reconciler, target_registry

if TYPE_CHECKING:
    from kubernetes import client as k8s_client


def load_kube_configuration(kubeconfig: Path | None) -> k8s_client.Configuration:
    """Where the Kubernetes API is and how to authenticate: from `kubeconfig`, else in-cluster
    credentials, else ~/.kube/config (the official client's loaders; their token refresh hooks
    included). knative/kube_connection.py builds the HTTP session from it. The official client is
    imported here, when Knative is on: importing it costs `prewarm serve` ~0.3 s of its start."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    configuration = k8s_client.Configuration()
    if kubeconfig is not None:
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        return configuration
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


class Waker:
    """Sends wake requests through one HTTP session, opened on first use and closed with `close()`."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send_wake(self, method: str, url: str) -> int:
        """One wake request through a Service's URL (bounded; the response body is not read)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.request(method, url) as response:
            return response.status

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def describe_targets(
    loop: decider.Decider,
    reconcilers: reconciler.Reconcilers,
    actuator: knative_actuator.KnativeActuator | None,
) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
    """`/targets`: the decider's view; per actuator the desired and applied floor, attempts and last
    error; and for each Knative target where its min-scale goes (which object, the Knative Serving
    version and where it was read) or why its floor was not written."""

    async def view() -> list[dict[str, Any]]:
        rows = await loop.describe()
        for row in rows:
            row["actuation"] = reconcilers.describe(row["target"])
            if actuator is not None and row["kind"] == targets.TargetKind.KNATIVE.value:
                row["knative"] = actuator.describe(row["target"])
        return rows

    return view


def on_leadership_change(
    leading: bool,
    loop: decider.Decider,
    knative: reconciler.Reconciler | None,
    leases: leadership.TargetLeases | None,
) -> None:
    """The Kubernetes Lease changed hands: with decider leases, campaign (or give them up) now;
    a new leader queues every floor it decides again (the previous leader may have died between
    a decision and its patch, or the API may have been failing)."""
    if leases is not None:
        leases.wake()
    if leading and knative is not None:
        for target, decision in list(loop.decisions.items()):
            if loop.decides(target):
                knative.submit(decision, recheck=True)


def knative_listeners(
    loop: decider.Decider, registry: target_registry.TargetRegistry, knative: reconciler.Reconciler
) -> knative_discovery.Listeners:
    """What discovered Services do: become targets, get the floor applied again when a new revision
    is routed or a routed one drifted (queued, like every floor), and get the user's min-scale back
    on leaving."""

    def traffic_changed(target: str) -> None:
        if loop.decides(target):  # the target's decider applies its floors
            knative.recheck([target])

    def target_gone(target: str) -> None:
        deciding = loop.decides(target)
        registry.remove(target)
        if deciding:
            knative.release(target)

    return knative_discovery.Listeners(
        target_seen=registry.add, traffic_changed=traffic_changed, target_gone=target_gone
    )
