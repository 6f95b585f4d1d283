"""The Kubernetes calls the Knative adapter and the weights follower make, as asynchronous HTTP
requests over one aiohttp session (knative/kube_connection.py builds it from the official client's
configuration), so a call the API server never answers costs a socket and a coroutine until its
timeout, not a thread. Errors become a small hierarchy the callers can act on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from knative import annotations as keys
from knative import kube_connection

if TYPE_CHECKING:  # the official client's configuration type only: importing it costs ~0.3 s
    from kubernetes import client as k8s


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


LIST_PAGE = 500  # items per page of a list (client-go's pager default)
FIELD_MANAGER = "kube-prewarm"  # who owns our writes in managedFields, sent with every write
WRITES = frozenset({"PATCH", "POST", "PUT"})
LEASES = ("coordination.k8s.io", "v1")


def _error(status: int, reason: str, body: bytes) -> KubeAPIError:
    """The error for an answer with `status`, worded with the API's Status message when there is one."""
    message = reason
    if body:
        try:
            parsed = json.loads(body)
            message = str(parsed.get("message") or message) if isinstance(parsed, dict) else message
        except ValueError:
            message = body[:500].decode(errors="replace")
    return _of_status(status, message)


def _of_status(status: int, message: str) -> KubeAPIError:
    kind = {403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone, 422: Invalid}.get(status, KubeAPIError)
    return kind(status, message)


def _no_answer(error: BaseException, timeout: float) -> KubeAPIError:
    """Status 0: the call timed out or never reached the server (or its answer broke off)."""
    if isinstance(error, TimeoutError):
        return KubeAPIError(0, f"TimeoutError: no answer within {timeout:g}s")
    return KubeAPIError(0, f"{type(error).__name__}: {error}")


def _path(*segments: str) -> str:
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


def _selector(label_selector: str) -> dict[str, str]:
    """`labelSelector` only when there is one."""
    return {"labelSelector": label_selector} if label_selector else {}


class KubeAPI:
    """Services, Revisions, PodAutoscalers, the labels that say which Knative Serving is installed,
    Leases, and the Nodes whose labels say which model weights they hold (the weights follower's),
    over `session` (opened and closed by its owner, see kube_connection.open_session).

    Every call is bounded by `timeout` seconds (a watch by its own `timeout_seconds` more); calls in
    flight are bounded by the session's connections (`max_in_flight`), and one that hangs holds
    nothing another call waits for while connections remain."""

    def __init__(
        self, configuration: k8s.Configuration, session: aiohttp.ClientSession, *, timeout: float = 10.0
    ) -> None:
        self._session = session
        self._endpoint = kube_connection.endpoint_of(configuration)
        self._credentials = kube_connection.Credentials(configuration)
        self._timeout = timeout
        self._bound = aiohttp.ClientTimeout(total=timeout)

    @property
    def max_in_flight(self) -> int:
        """How many calls may be in flight at once (the session's connection limit; 0: no limit)."""
        return self._session.connector.limit if self._session.connector is not None else 0

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {} if content_type is None else {"Content-Type": content_type}
        try:
            authorization = await self._credentials.authorization()
        except Exception as e:  # the loader's refresh hook: an exec plugin or token file that failed
            raise KubeAPIError(0, f"refreshing the API credentials: {type(e).__name__}: {e}") from e
        if authorization is not None:
            headers["Authorization"] = authorization
        return headers

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str],
        data: bytes | None,
        headers: Mapping[str, str],
        timeout: aiohttp.ClientTimeout,
    ) -> Any:  # aiohttp's request context manager
        if method in WRITES:
            params = {**params, "fieldManager": FIELD_MANAGER}
        return self._session.request(
            method,
            self._endpoint.base_url + path,
            params=params,
            data=data,
            headers=headers,
            proxy=self._endpoint.proxy,
            proxy_headers=self._endpoint.proxy_headers,
            server_hostname=self._endpoint.server_hostname,
            timeout=timeout,
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request and its JSON answer, within `timeout`; KubeAPIError otherwise."""
        data = None if body is None else json.dumps(body).encode()
        try:
            async with asyncio.timeout(self._timeout):
                headers = await self._headers(None if data is None else content_type)
                async with self._request(
                    method, path, params=params or {}, data=data, headers=headers, timeout=self._bound
                ) as response:
                    raw = await response.read()
                    if response.status >= 400:
                        raise _error(response.status, response.reason or "", raw)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise _no_answer(e, self._timeout) from e
        try:
            return json.loads(raw)
        except ValueError as e:
            raise KubeAPIError(0, f"the answer to {method} {path} is not JSON: {raw[:200]!r}") from e

    async def _object(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        result = await self._call(method, path, params=params, body=body, **kwargs)
        if not isinstance(result, dict):
            raise KubeAPIError(0, f"expected an object, got {type(result).__name__}")
        return result

    async def _list_all(self, path: str, params: Mapping[str, str]) -> tuple[list[dict[str, Any]], str]:
        """Every item of a list, a page of LIST_PAGE at a time (as client-go's pager: each page is one
        call within the call timeout, however large the cluster), and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await self._object(
                "GET", path, params={**params, "limit": str(LIST_PAGE), **({"continue": token} if token else {})}
            )
            items += page.get("items") or []
            metadata = page.get("metadata") or {}
            token = str(metadata.get("continue") or "")
            if not token:
                return items, str(metadata.get("resourceVersion") or "")

    async def namespace_labels(self, name: str) -> dict[str, str]:
        """A namespace's labels; NotFound, Forbidden (RBAC) or another KubeAPIError otherwise."""
        namespace = await self._object("GET", _path("api", "v1", "namespaces", name))
        return _labels(namespace)

    async def deployment_labels(self, namespace: str, name: str) -> dict[str, str]:
        """A Deployment's own labels; NotFound, Forbidden (RBAC) or another KubeAPIError otherwise."""
        deployment = await self._object(
            "GET", _path("apis", "apps", "v1", "namespaces", namespace, "deployments", name)
        )
        return _labels(deployment)

    async def get_service(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._object(
            "GET", _path("apis", keys.SERVING_GROUP, keys.SERVING_VERSION, "namespaces", namespace, "services", name)
        )

    async def get_floor_object(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """A Revision (`revision`) or PodAutoscaler (`podautoscaler`); both share the name."""
        group, version, plural = self._coordinates(kind)
        return await self._object("GET", _path("apis", group, version, "namespaces", namespace, plural, name))

    async def patch_floor_object(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch (never a full update: the rest of the object is not ours)."""
        group, version, plural = self._coordinates(kind)
        return await self._object(
            "PATCH",
            _path("apis", group, version, "namespaces", namespace, plural, name),
            body=patch,
            content_type=keys.MERGE_PATCH,
        )

    async def list_serving(self, plural: str, label_selector: str = "") -> tuple[list[dict[str, Any]], str]:
        """Every Knative Serving object of `plural` (`services`, `revisions`) in the cluster matching
        `label_selector`, and the list's resourceVersion to watch from."""
        path = _path("apis", keys.SERVING_GROUP, keys.SERVING_VERSION, plural)
        return await self._list_all(path, _selector(label_selector))

    async def watch_serving(
        self, plural: str, resource_version: str, timeout_seconds: int, label_selector: str = ""
    ) -> AsyncIterator[dict[str, Any]]:
        """Events (`{"type": ..., "object": {...}}`) of `plural` after `resource_version`, until the
        server ends the watch (it is asked to within `timeout_seconds`; the call gives up `timeout`
        seconds after that). Raises Gone when the version is too old, KubeAPIError on any other
        error or a broken stream: the caller lists again."""
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
            **_selector(label_selector),
        }
        bound = aiohttp.ClientTimeout(total=timeout_seconds + self._timeout, connect=self._timeout)
        path = _path("apis", keys.SERVING_GROUP, keys.SERVING_VERSION, plural)
        try:
            async with asyncio.timeout(self._timeout):
                headers = await self._headers(None)
            async with self._request("GET", path, params=params, data=None, headers=headers, timeout=bound) as response:
                if response.status >= 400:
                    raise _error(response.status, response.reason or "", await response.read())
                pending = b""
                async for chunk in response.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield _event(line)
                if pending.strip():
                    yield _event(pending)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise _no_answer(e, timeout_seconds + self._timeout) from e

    async def list_nodes(self, label_selector: str = "") -> list[dict[str, Any]]:
        """Nodes (matching `label_selector`) as plain dicts: name, labels, unschedulable, Ready."""
        items, _ = await self._list_all(_path("api", "v1", "nodes"), _selector(label_selector))
        found = []
        for node in items:
            conditions = (node.get("status") or {}).get("conditions") or []
            found.append(
                {
                    "name": (node.get("metadata") or {}).get("name"),
                    "labels": _labels(node),
                    "unschedulable": bool((node.get("spec") or {}).get("unschedulable")),
                    "ready": any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
                }
            )
        return found

    async def patch_node_labels(self, name: str, labels: dict[str, str | None]) -> None:
        """Set (or, with None, remove) a node's labels by JSON merge patch; the rest is not ours."""
        await self._object(
            "PATCH",
            _path("api", "v1", "nodes", name),
            body={"metadata": {"labels": labels}},
            content_type=keys.MERGE_PATCH,
        )

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._object("GET", _path("apis", *LEASES, "namespaces", namespace, "leases", name))

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a Lease; Conflict (409 AlreadyExists) when another replica created it first."""
        return await self._object("POST", _path("apis", *LEASES, "namespaces", namespace, "leases"), body=body)

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace a Lease; Conflict when its resourceVersion moved since it was read."""
        return await self._object("PUT", _path("apis", *LEASES, "namespaces", namespace, "leases", name), body=body)

    @staticmethod
    def _coordinates(kind: str) -> tuple[str, str, str]:
        if kind == "revision":
            return keys.SERVING_GROUP, keys.SERVING_VERSION, "revisions"
        if kind == "podautoscaler":
            return keys.AUTOSCALING_GROUP, keys.AUTOSCALING_VERSION, "podautoscalers"
        raise ValueError(f"unknown floor object kind {kind!r}")


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _event(line: bytes) -> dict[str, Any]:
    """One line of a watch; an ERROR event (410 Gone, say) is raised as the error it carries."""
    try:
        event = json.loads(line)
    except ValueError as e:
        raise KubeAPIError(0, f"a watch line is not JSON: {line[:200]!r}") from e
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise KubeAPIError(0, f"a watch line is not an event: {line[:200]!r}")
    if event.get("type") == "ERROR":
        status = event["object"]
        raise _of_status(int(status.get("code") or 0), str(status.get("message") or status.get("reason") or ""))
    return {"type": str(event.get("type")), "object": event["object"]}
