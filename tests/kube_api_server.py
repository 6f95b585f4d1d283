"""An aiohttp server that speaks the Kubernetes API's semantics for the paths the Knative adapter
uses: JSON merge patch (RFC 7386) with its content type, resourceVersion preconditions (409),
403, 404 and 422 as Status objects, RBAC (Roles, ClusterRoles and their bindings, resourceNames
included) when given, Knative's webhook rules for min/max/activation-scale, and faults injected
from the test side."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from typing import Any

import yaml
from aiohttp import web

MERGE_PATCH = "application/merge-patch+json"
SERVICE_ACCOUNT = ("prewarm", "prewarm")  # (namespace, name) every request is made as


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return web.json_response(body, status=code)


class RBAC:
    """The rules granted to `account` (SERVICE_ACCOUNT unless told) by the Roles, ClusterRoles and
    bindings of a manifest, checked as the API server's RBAC authorizer checks them."""

    def __init__(self, manifest: str, *, account: tuple[str, str] = SERVICE_ACCOUNT) -> None:
        documents = [d for d in yaml.safe_load_all(manifest) if d]
        roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in documents}
        self.grants: list[tuple[str | None, dict[str, Any]]] = []  # (namespace or None for everywhere, rule)
        for binding in documents:
            if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            subjects = binding.get("subjects") or []
            if not any(
                (s.get("kind"), s.get("namespace"), s.get("name")) == ("ServiceAccount", *account) for s in subjects
            ):
                continue
            ref = binding["roleRef"]
            where = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
            role = roles.get((ref["kind"], where if ref["kind"] == "Role" else None, ref["name"]))
            for rule in (role or {}).get("rules") or []:
                self.grants.append((where, rule))

    def allows(self, *, verb: str, group: str, resource: str, namespace: str | None, name: str | None) -> bool:
        for where, rule in self.grants:
            if where is not None and where != namespace:
                continue
            names = rule.get("resourceNames") or []
            if (
                (verb in rule["verbs"] or "*" in rule["verbs"])
                and (group in rule["apiGroups"] or "*" in rule["apiGroups"])
                and (resource in rule["resources"] or "*" in rule["resources"])
                and (not names or name in names)
            ):
                return True
        return False


def forbidden(*, verb: str, group: str, resource: str, namespace: str | None, name: str | None) -> web.Response:
    """403 as the API server words it."""
    qualified = f"{resource}.{group}" if group else resource
    subject = f"{qualified} {json.dumps(name)}" if name else qualified
    user = f"system:serviceaccount:{SERVICE_ACCOUNT[0]}:{SERVICE_ACCOUNT[1]}"
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = (
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group "{group}" {scope}'
    )
    details = {"group": group, "kind": resource, **({"name": name} if name else {})}
    return status(403, "Forbidden", message, details)


class KubeAPIServer:
    """Objects live in memory keyed by (group/version, namespace, plural, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}  # cluster-scoped core objects, by name
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.faults: list[tuple[str, int]] = []  # (method, status) answered before anything else
        self.field_managers: list[tuple[str, str, str | None]] = []  # (method, path, fieldManager) of each write
        self.stalling: str | None = None  # requests whose path contains this are held until `release()`
        self.held = 0  # requests held now
        self._released = asyncio.Event()
        self.rbac: RBAC | None = None  # None: every request is allowed
        self.denied: list[tuple[str, str, str | None, str | None]] = []  # (verb, resource, namespace, name) -> 403
        self._version = 100
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, plural, type, object)
        self.oldest_watchable = 0  # resourceVersions below this are compacted: a watch gets 410
        self._changed = asyncio.Condition()
        self._closing = False
        self.app = web.Application()
        self.app.on_shutdown.append(self._end_watches)
        self.app.router.add_get("/api/v1/namespaces/{name}", self._get_namespace)
        self.app.router.add_get("/api/v1/nodes", self._list_nodes)
        self.app.router.add_route("*", "/api/v1/nodes/{name}", self._node)
        self.app.router.add_get("/apis/{group}/{version}/{plural}", self._list_or_watch)
        self.app.router.add_post("/apis/{group}/{version}/namespaces/{ns}/{plural}", self._create)
        self.app.router.add_route("*", "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}", self._object)

    def add(self, group_version: str, plural: str, obj: dict[str, Any]) -> None:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = self._next_version()
        key = (group_version, meta["namespace"], plural, meta["name"])
        self._record(plural, "MODIFIED" if key in self.objects else "ADDED", obj)
        self.objects[key] = obj

    def add_routed_service(
        self, namespace: str, name: str, *, revision_annotations: dict[str, str] | None = None
    ) -> None:
        """A Knative Service whose traffic all goes to one Revision, `<name>-00001` (as Knative's
        controller leaves a Service after its first deploy), and that Revision."""
        revision = f"{name}-00001"
        self.add(
            "serving.knative.dev/v1",
            "services",
            {
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"template": {"metadata": {}}},
                "status": {"traffic": [{"revisionName": revision, "percent": 100}]},
            },
        )
        metadata: dict[str, Any] = {"name": revision, "namespace": namespace}
        if revision_annotations:
            metadata["annotations"] = dict(revision_annotations)
        self.add("serving.knative.dev/v1", "revisions", {"metadata": metadata})

    def delete(self, group_version: str, namespace: str, plural: str, name: str) -> None:
        obj = self.objects.pop((group_version, namespace, plural, name))
        obj["metadata"]["resourceVersion"] = self._next_version()
        self._record(plural, "DELETED", obj)

    def compact(self) -> None:
        """Forget the event history: watches from any earlier resourceVersion get 410 Gone."""
        self.oldest_watchable = self._version + 1

    async def _end_watches(self, app: web.Application) -> None:
        """On shutdown open watches end at once, as the API server closes them (no 60 s drain)."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()

    def _record(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        self.events.append((int(obj["metadata"]["resourceVersion"]), plural, kind, copy.deepcopy(obj)))

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        with contextlib.suppress(RuntimeError):  # no running loop yet: nobody is watching
            asyncio.get_running_loop().create_task(notify())

    def get(self, group_version: str, namespace: str, plural: str, name: str) -> dict[str, Any]:
        return self.objects[(group_version, namespace, plural, name)]

    def bump(self, group_version: str, namespace: str, plural: str, name: str) -> None:
        """Someone else wrote the object: its resourceVersion moves on."""
        self.get(group_version, namespace, plural, name)["metadata"]["resourceVersion"] = self._next_version()

    def patches(self) -> list[tuple[str, str | None, Any]]:
        return [(path, ctype, body) for method, path, ctype, body in self.requests if method == "PATCH"]

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def stall(self, path_part: str) -> None:
        """Hold every request whose path contains `path_part` (an overloaded or restarting API server
        that accepts the connection and does not answer) until `release()`."""
        self.stalling = path_part
        self._released.clear()

    def release(self) -> None:
        """Answer the held requests, and every later one at once."""
        self.stalling = None
        self._released.set()

    async def _hold(self, request: web.Request) -> None:
        if self.stalling is not None and self.stalling in request.path:
            self.held += 1
            try:
                await self._released.wait()
            finally:
                self.held -= 1

    def _fault(self, method: str) -> web.Response | None:
        for index, (fault_method, code) in enumerate(self.faults):
            if fault_method == method:
                del self.faults[index]
                reason = {
                    409: "Conflict",
                    422: "Invalid",
                    429: "TooManyRequests",
                    500: "InternalError",
                    503: "ServiceUnavailable",
                }
                # no Retry-After: the client library would wait it out on its own (urllib3 honours it)
                return status(code, reason.get(code, "Unknown"), f"injected {code}")
        return None

    def _denied(
        self, *, verb: str, group: str, resource: str, namespace: str | None, name: str | None
    ) -> web.Response | None:
        if self.rbac is None or self.rbac.allows(
            verb=verb, group=group, resource=resource, namespace=namespace, name=name
        ):
            return None
        self.denied.append((verb, resource, namespace, name))
        return forbidden(verb=verb, group=group, resource=resource, namespace=namespace, name=name)

    async def _get_namespace(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", request.path, None, None))
        await self._hold(request)
        denied = self._denied(
            verb="get", group="", resource="namespaces", namespace=None, name=request.match_info["name"]
        )
        if denied is not None:
            return denied
        fault = self._fault("GET")
        if fault is not None:
            return fault
        namespace = self.namespaces.get(request.match_info["name"])
        if namespace is None:
            return status(404, "NotFound", f'namespaces "{request.match_info["name"]}" not found')
        return web.json_response(namespace)

    def add_node(self, name: str, *, labels: dict[str, str] | None = None, ready: bool = True) -> None:
        """A Node (cluster-scoped, core API), Ready unless told otherwise."""
        self.nodes[name] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels or {}), "resourceVersion": self._next_version()},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        }

    def _page(self, items: list[dict[str, Any]], request: web.Request) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """A list's page as the API server cuts it: at most `limit` items from where `continue`
        left off, and a `continue` token while more remain (the snapshot's resourceVersion on each)."""
        version, _, offset_text = request.query.get("continue", "").partition(":")
        offset = int(offset_text or 0)
        metadata = {"resourceVersion": version or str(self._version)}
        limit = int(request.query.get("limit") or 0)
        if limit <= 0 or offset + limit >= len(items):
            return items[offset:], metadata
        return items[offset : offset + limit], {
            **metadata,
            "continue": f"{metadata['resourceVersion']}:{offset + limit}",
        }

    async def _list_nodes(self, request: web.Request) -> web.Response:
        self.requests.append(("LIST", request.path, None, dict(request.query)))
        denied = self._denied(verb="list", group="", resource="nodes", namespace=None, name=None)
        if denied is not None:
            return denied
        fault = self._fault("LIST")
        if fault is not None:
            return fault
        selector = request.query.get("labelSelector", "")
        items = [node for _, node in sorted(self.nodes.items()) if labels_match(node, selector)]
        page, metadata = self._page(items, request)
        return web.json_response({"kind": "NodeList", "apiVersion": "v1", "metadata": metadata, "items": page})

    async def _node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.json() if request.method == "PATCH" and request.can_read_body else None
        self.requests.append((request.method, request.path, request.headers.get("Content-Type"), body))
        if request.method == "PATCH":
            self.field_managers.append((request.method, request.path, request.query.get("fieldManager")))
        verb = {"GET": "get", "PATCH": "patch"}.get(request.method, "unknown")
        denied = self._denied(verb=verb, group="", resource="nodes", namespace=None, name=name)
        if denied is not None:
            return denied
        fault = self._fault(request.method)
        if fault is not None:
            return fault
        node = self.nodes.get(name)
        if node is None:
            return status(404, "NotFound", f'nodes "{name}" not found')
        if request.method == "GET":
            return web.json_response(node)
        if request.method != "PATCH":
            return status(405, "MethodNotAllowed", request.method)
        if request.headers.get("Content-Type", "").split(";")[0] != MERGE_PATCH:
            return status(415, "UnsupportedMediaType", f"unsupported patch type {request.headers.get('Content-Type')}")
        updated = merge_patch(node, body)
        updated["metadata"]["resourceVersion"] = self._next_version()
        self.nodes[name] = updated
        return web.json_response(updated)

    async def _object(self, request: web.Request) -> web.Response:
        info = request.match_info
        key = (f"{info['group']}/{info['version']}", info["ns"], info["plural"], info["name"])
        body = await request.json() if request.method in ("PATCH", "PUT") and request.can_read_body else None
        self.requests.append((request.method, request.path, request.headers.get("Content-Type"), body))
        if request.method in ("PATCH", "PUT"):
            self.field_managers.append((request.method, request.path, request.query.get("fieldManager")))
        await self._hold(request)
        verb = {"GET": "get", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(request.method, "unknown")
        denied = self._denied(
            verb=verb, group=info["group"], resource=info["plural"], namespace=info["ns"], name=info["name"]
        )
        if denied is not None:
            return denied
        fault = self._fault(request.method)
        if fault is not None:
            return fault
        obj = self.objects.get(key)
        if obj is None:
            return status(404, "NotFound", f'{info["plural"]}.{info["group"]} "{info["name"]}" not found')
        if request.method == "GET":
            return web.json_response(obj)
        if request.method == "PUT":
            return self._replace(key, obj, body if body is not None else await request.json())
        if request.method != "PATCH":
            return status(405, "MethodNotAllowed", request.method)
        if request.headers.get("Content-Type", "").split(";")[0] != MERGE_PATCH:
            return status(415, "UnsupportedMediaType", f"unsupported patch type {request.headers.get('Content-Type')}")
        wanted = ((body or {}).get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
            return status(
                409, "Conflict", "the object has been modified; please apply your changes to the latest version"
            )
        if info["plural"] == "revisions" and "spec" in (body or {}):
            return status(422, "Invalid", "Revision spec is immutable")
        updated = merge_patch(obj, body)
        problem = knative_webhook(updated)
        if problem is not None:
            return status(
                422,
                "Invalid",
                f'admission webhook "validation.webhook.serving.knative.dev" denied the request: {problem}',
            )
        updated["metadata"]["resourceVersion"] = self._next_version()
        self.objects[key] = updated
        self._record(info["plural"], "MODIFIED", updated)
        return web.json_response(updated)

    async def _create(self, request: web.Request) -> web.Response:
        info = request.match_info
        body = await request.json()
        self.requests.append(("POST", request.path, request.headers.get("Content-Type"), body))
        self.field_managers.append(("POST", request.path, request.query.get("fieldManager")))
        await self._hold(request)
        denied = self._denied(
            verb="create", group=info["group"], resource=info["plural"], namespace=info["ns"], name=None
        )
        if denied is not None:
            return denied
        fault = self._fault("POST")
        if fault is not None:
            return fault
        key = (f"{info['group']}/{info['version']}", info["ns"], info["plural"], body["metadata"]["name"])
        if key in self.objects:
            return status(409, "AlreadyExists", f'{info["plural"]} "{body["metadata"]["name"]}" already exists')
        body["metadata"]["namespace"] = info["ns"]
        body["metadata"]["resourceVersion"] = self._next_version()
        self.objects[key] = body
        self._record(info["plural"], "ADDED", body)
        return web.json_response(body, status=201)

    def _replace(self, key: tuple[str, str, str, str], current: dict[str, Any], body: dict[str, Any]) -> web.Response:
        """PUT: the whole object, applied only at the resourceVersion it was read at."""
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted != current["metadata"]["resourceVersion"]:
            return status(
                409, "Conflict", "the object has been modified; please apply your changes to the latest version"
            )
        body["metadata"]["resourceVersion"] = self._next_version()
        self.objects[key] = body
        self._record(key[2], "MODIFIED", body)
        return web.json_response(body)

    async def _list_or_watch(self, request: web.Request) -> web.StreamResponse:
        plural = request.match_info["plural"]
        self.requests.append(
            (
                "WATCH" if request.query.get("watch") in ("true", "1", "True") else "LIST",
                request.path,
                None,
                dict(request.query),
            )
        )
        watching = request.query.get("watch") in ("true", "1", "True")
        denied = self._denied(
            verb="watch" if watching else "list",
            group=request.match_info["group"],
            resource=plural,
            namespace=None,
            name=None,
        )
        if denied is not None:
            return denied
        selector = request.query.get("labelSelector", "")
        if not watching:
            items = [
                obj
                for (gv, _, p, _), obj in sorted(self.objects.items())
                if p == plural and labels_match(obj, selector)
            ]
            page, metadata = self._page(items, request)
            return web.json_response({"kind": "List", "metadata": metadata, "items": page})
        refused = next((code for method, code in self.faults if method == "WATCH" and code != 410), None)
        if refused is not None:  # 410 is sent as the API server sends it, an ERROR event in the stream
            self.faults.remove(("WATCH", refused))
            return status(refused, "InternalError" if refused >= 500 else "Unknown", f"injected {refused}")
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 30)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        injected_gone = ("WATCH", 410) in self.faults
        if injected_gone:
            self.faults.remove(("WATCH", 410))
        if injected_gone or since < self.oldest_watchable - 1:
            gone = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "Expired",
                "code": 410,
                "message": f"too old resource version: {since} ({self.oldest_watchable})",
            }
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent = since
        while True:
            for rv, event_plural, kind, obj in list(self.events):
                if rv > sent and event_plural == plural:
                    if labels_match(obj, selector):
                        await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                    sent = rv
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closing:
                return response
            try:
                async with self._changed:
                    if self._closing:  # checked under the lock: a shutdown cannot slip in before the wait
                        return response
                    await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return response


def labels_match(obj: dict[str, Any], selector: str) -> bool:
    """Equality and existence label selectors (`a=b,c`), as the API server reads them."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, equals, value = term.partition("=")
        if key not in labels or (equals and labels[key] != value):
            return False
    return True


def knative_webhook(obj: dict[str, Any]) -> str | None:
    """Knative's validation of the autoscaling annotations that matter here."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}

    def read(name: str) -> int | None:
        raw = annotations.get(f"autoscaling.knative.dev/{name}")
        return None if raw is None else int(json.loads(raw) if raw.isdigit() else -1)

    low, high, activation = read("min-scale"), read("max-scale"), read("activation-scale")
    if low is not None and low < 0:
        return "expected 0 <= min-scale"
    if low is not None and high and low > high:
        return f"min-scale={low} is greater than max-scale={high}"
    if activation is not None and (activation <= 1 or (low is not None and activation < low)):
        return f"activation-scale={activation} must be > 1 and >= min-scale"
    return None
