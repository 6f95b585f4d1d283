"""The Kubernetes calls the Knative adapter makes, over the official client.

The client is blocking, so every call runs in a bounded thread pool with `_request_timeout`, and
its errors become a small hierarchy the actuator can act on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from knative import annotations as keys


class KubeAPIError(RuntimeError):
    """A call failed; `status` is the HTTP status (0 for a transport error or timeout)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """Whether trying again may succeed: no answer, throttled (429) or a server error (5xx)."""
        return self.status in (0, 429) or self.status >= 500


class NotFound(KubeAPIError):
    """404: the object is gone."""


class Forbidden(KubeAPIError):
    """403: RBAC does not let this service account make the call."""


class Conflict(KubeAPIError):
    """409: the object changed since it was read."""


class Invalid(KubeAPIError):
    """422: the API server (or a webhook) refused the change; retrying will not help."""


class Gone(KubeAPIError):
    """410: the resourceVersion to watch from is too old; list again."""


def _selector(label_selector: str) -> dict[str, str]:
    """`label_selector` for the client only when there is one (an empty one would still be sent)."""
    return {"label_selector": label_selector} if label_selector else {}


def _translate(error: ApiException) -> KubeAPIError:
    status = int(error.status or 0)
    message = str(error.reason or "")
    body = getattr(error, "body", None)
    if body:
        try:
            import json

            message = json.loads(body).get("message", message)
        except (ValueError, AttributeError):
            message = str(body)[:500]
    kind = {403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone, 422: Invalid}.get(status, KubeAPIError)
    return kind(status, message)


FIELD_MANAGER = "kube-prewarm"  # who owns our writes in managedFields (not the client's `OpenAPI-Generator`)


class KubeAPI:
    """Async facade over CoreV1Api, AppsV1Api and CustomObjectsApi for Services, Revisions,
    PodAutoscalers, the labels that say which Knative Serving is installed, and the Nodes whose
    labels say which model weights they hold (the weights follower's).

    `max_workers` bounds the calls in flight: give the actuator's reconciler no more workers than
    this, so a stalled call holds one thread and never a thread another target waits for."""

    def __init__(self, api_client: k8s.ApiClient, *, max_workers: int = 32, timeout: float = 10.0) -> None:
        self._core = k8s.CoreV1Api(api_client)
        self._apps = k8s.AppsV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kube")
        self._timeout = timeout
        self._max_workers = max_workers

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        call = functools.partial(fn, *args, _request_timeout=self._timeout, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except ApiException as e:
            raise _translate(e) from e
        except (OSError, TimeoutError) as e:
            raise KubeAPIError(0, f"{type(e).__name__}: {e}") from e
        except Exception as e:  # urllib3 errors (timeouts, protocol) do not share a base with OSError
            if type(e).__module__.startswith("urllib3"):
                raise KubeAPIError(0, f"{type(e).__name__}: {e}") from e
            raise

    async def _object(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        result = await self._call(fn, *args, **kwargs)
        if not isinstance(result, dict):
            raise KubeAPIError(0, f"expected an object, got {type(result).__name__}")
        return result

    async def namespace_labels(self, name: str) -> dict[str, str]:
        """A namespace's labels; NotFound, Forbidden (RBAC) or another KubeAPIError otherwise."""
        namespace = await self._call(self._core.read_namespace, name)
        return dict((namespace.metadata.labels if namespace.metadata is not None else None) or {})

    async def deployment_labels(self, namespace: str, name: str) -> dict[str, str]:
        """A Deployment's own labels; NotFound, Forbidden (RBAC) or another KubeAPIError otherwise."""
        deployment = await self._call(self._apps.read_namespaced_deployment, name, namespace)
        return dict((deployment.metadata.labels if deployment.metadata is not None else None) or {})

    async def get_service(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._object(
            self._custom.get_namespaced_custom_object,
            keys.SERVING_GROUP,
            keys.SERVING_VERSION,
            namespace,
            "services",
            name,
        )

    async def get_floor_object(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """A Revision (`revision`) or PodAutoscaler (`podautoscaler`); both share the name."""
        group, version, plural = self._coordinates(kind)
        return await self._object(self._custom.get_namespaced_custom_object, group, version, namespace, plural, name)

    async def patch_floor_object(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch (never a full update: the rest of the object is not ours)."""
        group, version, plural = self._coordinates(kind)
        return await self._object(
            self._custom.patch_namespaced_custom_object,
            group,
            version,
            namespace,
            plural,
            name,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type=keys.MERGE_PATCH,
        )

    async def list_serving(self, plural: str, label_selector: str = "") -> tuple[list[dict[str, Any]], str]:
        """Every Knative Serving object of `plural` (`services`, `revisions`) in the cluster matching
        `label_selector`, and the list's resourceVersion to watch from."""
        listing = await self._object(
            self._custom.list_cluster_custom_object,
            keys.SERVING_GROUP,
            keys.SERVING_VERSION,
            plural,
            **_selector(label_selector),
        )
        return list(listing.get("items") or []), str((listing.get("metadata") or {}).get("resourceVersion") or "")

    async def watch_serving(
        self, plural: str, resource_version: str, timeout_seconds: int, label_selector: str = ""
    ) -> AsyncIterator[dict[str, Any]]:
        """Events of `plural` after `resource_version`, until the server ends the watch (bounded by
        `timeout_seconds`). Raises Gone when the version is too old. The blocking stream runs on a
        thread of its own, so a long watch never holds one of the pool's workers."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        watcher = k8s_watch.Watch()

        def hand_over(item: dict[str, Any] | BaseException | None) -> bool:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody listens any more
                return False
            return True

        def stream() -> None:
            try:
                for event in watcher.stream(
                    self._custom.list_cluster_custom_object,
                    keys.SERVING_GROUP,
                    keys.SERVING_VERSION,
                    plural,
                    resource_version=resource_version,
                    timeout_seconds=timeout_seconds,
                    _request_timeout=timeout_seconds + self._timeout,
                    **_selector(label_selector),
                ):
                    if not hand_over(event):
                        return
            except BaseException as e:  # handed to the loop, raised there
                hand_over(e)
            else:
                hand_over(None)

        thread = threading.Thread(target=stream, name="kube-watch", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, ApiException):
                    raise _translate(item) from item
                if isinstance(item, BaseException):
                    raise KubeAPIError(0, f"{type(item).__name__}: {item}") from item
                yield item
        finally:
            watcher.stop()

    async def list_nodes(self, label_selector: str = "") -> list[dict[str, Any]]:
        """Nodes (matching `label_selector`) as plain dicts: name, labels, unschedulable, Ready."""
        nodes = await self._call(self._core.list_node, **_selector(label_selector))
        found = []
        for node in nodes.items or []:
            conditions = (node.status.conditions if node.status is not None else None) or []
            found.append(
                {
                    "name": node.metadata.name,
                    "labels": dict(node.metadata.labels or {}),
                    "unschedulable": bool(node.spec is not None and node.spec.unschedulable),
                    "ready": any(c.type == "Ready" and c.status == "True" for c in conditions),
                }
            )
        return found

    async def patch_node_labels(self, name: str, labels: dict[str, str | None]) -> None:
        """Set (or, with None, remove) a node's labels by JSON merge patch; the rest is not ours."""
        await self._call(
            self._core.patch_node,
            name,
            {"metadata": {"labels": labels}},
            _content_type=keys.MERGE_PATCH,
            field_manager=FIELD_MANAGER,
        )

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._object(
            self._custom.get_namespaced_custom_object, "coordination.k8s.io", "v1", namespace, "leases", name
        )

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a Lease; Conflict (409 AlreadyExists) when another replica created it first."""
        return await self._object(
            self._custom.create_namespaced_custom_object,
            "coordination.k8s.io",
            "v1",
            namespace,
            "leases",
            body,
            field_manager=FIELD_MANAGER,
        )

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace a Lease; Conflict when its resourceVersion moved since it was read."""
        return await self._object(
            self._custom.replace_namespaced_custom_object,
            "coordination.k8s.io",
            "v1",
            namespace,
            "leases",
            name,
            body,
            field_manager=FIELD_MANAGER,
        )

    @staticmethod
    def _coordinates(kind: str) -> tuple[str, str, str]:
        if kind == "revision":
            return keys.SERVING_GROUP, keys.SERVING_VERSION, "revisions"
        if kind == "podautoscaler":
            return keys.AUTOSCALING_GROUP, keys.AUTOSCALING_VERSION, "podautoscalers"
        raise ValueError(f"unknown floor object kind {kind!r}")

    @property
    def max_workers(self) -> int:
        """How many calls may be in flight at once."""
        return self._max_workers

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
