"""How the decider meets Knative: the API client, the wake request, and what discovered Services and
a new leader do to floors. The Knative adapters themselves live in the top-level `knative` package.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from knative import actuator as knative_actuator
from knative import discovery as knative_discovery
from prewarm.core import targets
from prewarm.service import decider, leadership


def load_kube_client(kubeconfig: Path | None) -> k8s_client.ApiClient:
    """A Kubernetes API client: from `kubeconfig`, else in-cluster credentials, else ~/.kube/config."""
    api_client: k8s_client.ApiClient
    if kubeconfig is not None:
        api_client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        return api_client
    try:
        configuration = k8s_client.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        return k8s_client.ApiClient(configuration)
    except k8s_config.ConfigException:
        api_client = k8s_config.new_client_from_config()
        return api_client


async def send_wake(method: str, url: str) -> int:
    """One wake request through a Service's URL (short timeout; the response body is not read)."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.request(method, url) as response:
        return response.status


def describe_targets(
    loop: decider.Decider, actuator: knative_actuator.KnativeActuator | None
) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
    """`/targets`: the decider's view, and for each Knative target where its min-scale goes (which
    object, the Knative Serving version and where it was read) or why its floor was not written."""

    async def view() -> list[dict[str, Any]]:
        rows = await loop.describe()
        if actuator is not None:
            for row in rows:
                if row["kind"] == targets.TargetKind.KNATIVE.value:
                    row["knative"] = actuator.describe(row["target"])
        return rows

    return view


def on_leadership_change(
    leading: bool,
    loop: decider.Decider,
    actuator: knative_actuator.KnativeActuator | None,
    leases: leadership.TargetLeases | None,
) -> None:
    """The Kubernetes Lease changed hands: with decider leases, campaign (or give them up) now;
    a new leader re-applies the floors it decides."""
    if leases is not None:
        leases.wake()
    if leading:
        reapply_floors(loop, actuator)


def reapply_floors(loop: decider.Decider, actuator: knative_actuator.KnativeActuator | None) -> None:
    """A replica that just became leader makes the current floor of every Knative target it
    decides effective: the previous leader may have died between a decision and its patch."""
    if actuator is None:
        return
    for target, decision in list(loop.decisions.items()):
        spec = loop.specs.get(target)
        if spec is not None and spec.kind is targets.TargetKind.KNATIVE and loop.decides(target):
            asyncio.get_running_loop().create_task(actuator.apply_floor(target, decision.floor))


def knative_listeners(
    loop: decider.Decider, actuator: knative_actuator.KnativeActuator, stack: contextlib.AsyncExitStack
) -> knative_discovery.Listeners:
    """What discovered Services do: become targets, get the floor re-applied when a new revision is
    routed (the decider only acts on floor changes), and get the user's min-scale back on leaving."""
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def traffic_changed(target: str) -> None:
        decision = loop.decisions.get(target)
        if decision is not None and loop.decides(target):  # the target's decider patches it
            spawn(actuator.apply_floor(target, decision.floor))

    def target_gone(target: str) -> None:
        deciding = loop.decides(target)
        loop.remove_target(target)
        if deciding:
            spawn(actuator.release(target))

    stack.callback(lambda: [task.cancel() for task in tasks])
    return knative_discovery.Listeners(
        target_seen=loop.add_target, traffic_changed=traffic_changed, target_gone=target_gone
    )
