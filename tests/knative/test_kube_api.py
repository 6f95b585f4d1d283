"""KubeAPI over aiohttp against the fake API server: a call that is never answered times out with
status 0 and holds up no other call, every write names our field manager, errors keep their
classes, and watches stream events, end, and raise Gone (410) or a status-0 error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kube_api_server import MERGE_PATCH, KubeAPIServer
from support import free_port, kube_api_at, wait_for

from knative import kube_api

SERVING = "serving.knative.dev/v1"
LEASES = "coordination.k8s.io/v1"
HUNG = 48  # more calls than the thread pool the client had (32) and the reconciler's workers then (28)


class Fake:
    """The fake API server, what each request carried, and a KubeAPI talking to it."""

    def __init__(self, server: KubeAPIServer, api: kube_api.KubeAPI, seen: list[dict[str, Any]]) -> None:
        self.server, self.api, self.seen = server, api, seen


def revision(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "llm", "labels": {"serving.knative.dev/service": "chat"}}}


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    server = KubeAPIServer()
    server.add(SERVING, "revisions", revision("chat-00001"))
    server.add_node("gpu-a", labels={"pool": "gpu"})
    seen: list[dict[str, Any]] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        seen.append({"method": request.method, "path": request.path, "query": dict(request.query), **request.headers})
        return await handler(request)

    server.app.middlewares.append(record)
    async with TestServer(server.app) as test_server:
        session, api = kube_api_at(str(test_server.make_url("")), timeout=3.0)
        try:
            yield Fake(server, api, seen)
        finally:
            server.release()
            await session.close()


async def test_hung_calls_time_out_with_status_0_and_hold_up_no_other_call(fake: Fake) -> None:
    fake.server.stall("/stalled")
    hung = [
        asyncio.create_task(fake.api.get_floor_object("revision", "llm", f"stalled-{i}-00001")) for i in range(HUNG)
    ]
    await wait_for(lambda: fake.server.held == HUNG, within=2)
    answered = await asyncio.wait_for(fake.api.get_floor_object("revision", "llm", "chat-00001"), 1.0)
    assert answered["metadata"]["name"] == "chat-00001"
    assert not any(task.done() for task in hung)  # answered while every hung call was still waiting
    outcomes = await asyncio.gather(*hung, return_exceptions=True)
    assert {type(o) for o in outcomes} == {kube_api.KubeAPIError}
    errors = [o for o in outcomes if isinstance(o, kube_api.KubeAPIError)]
    assert {(e.status, e.transient, str(e)) for e in errors} == {(0, True, "TimeoutError: no answer within 3s")}


async def test_every_write_names_the_field_manager_and_reads_do_not(fake: Fake) -> None:
    api = fake.api
    await api.get_floor_object("revision", "llm", "chat-00001")
    await api.patch_floor_object("revision", "llm", "chat-00001", {"metadata": {"annotations": {"a": "1"}}})
    await api.patch_node_labels("gpu-a", {"prewarm.dev/x": "1"})
    await api.list_nodes("pool=gpu")
    lease = {"apiVersion": LEASES, "kind": "Lease", "metadata": {"name": "l", "namespace": "p"}, "spec": {}}
    created = await api.create_lease("p", lease)
    await api.replace_lease("p", "l", created)
    await api.get_lease("p", "l")
    writes = [(r["method"], r["query"].get("fieldManager")) for r in fake.seen if r["method"] != "GET"]
    assert writes == [
        ("PATCH", "kube-prewarm"),
        ("PATCH", "kube-prewarm"),
        ("POST", "kube-prewarm"),
        ("PUT", "kube-prewarm"),
    ]
    reads = [r["query"] for r in fake.seen if r["method"] == "GET"]
    assert reads == [{}, {"labelSelector": "pool=gpu", "limit": str(kube_api.LIST_PAGE)}, {}]
    assert {r["User-Agent"] for r in fake.seen} == {"kube-prewarm"}
    patches = [(path, ctype) for path, ctype, _ in fake.server.patches()]
    assert patches == [
        ("/apis/serving.knative.dev/v1/namespaces/llm/revisions/chat-00001", MERGE_PATCH),
        ("/api/v1/nodes/gpu-a", MERGE_PATCH),
    ]
    assert {m for _, _, m in fake.server.field_managers} == {"kube-prewarm"}


async def test_answers_become_the_error_classes_with_the_apis_message(fake: Fake) -> None:
    with pytest.raises(kube_api.NotFound) as missing:
        await fake.api.get_floor_object("revision", "llm", "nope")
    assert (missing.value.status, missing.value.message) == (404, 'revisions.serving.knative.dev "nope" not found')
    fake.server.faults.append(("PATCH", 409))
    with pytest.raises(kube_api.Conflict):
        await fake.api.patch_floor_object("revision", "llm", "chat-00001", {"metadata": {"annotations": {"a": "1"}}})
    fake.server.faults.append(("GET", 503))
    with pytest.raises(kube_api.KubeAPIError) as unavailable:
        await fake.api.get_floor_object("revision", "llm", "chat-00001")
    assert (unavailable.value.status, unavailable.value.transient, unavailable.value.message) == (
        503,
        True,
        "injected 503",
    )
    with pytest.raises(kube_api.Invalid):
        await fake.api.patch_floor_object(
            "revision", "llm", "chat-00001", {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "-1"}}}
        )


async def test_no_server_is_status_0() -> None:
    session, api = kube_api_at(f"http://127.0.0.1:{free_port()}", timeout=3.0)
    try:
        with pytest.raises(kube_api.KubeAPIError) as refused:
            await api.namespace_labels("knative-serving")
    finally:
        await session.close()
    assert refused.value.status == 0 and refused.value.transient
    assert "ClientConnectorError" in refused.value.message


async def test_a_watch_streams_events_after_the_version_and_ends_when_the_server_ends_it(fake: Fake) -> None:
    items, version = await fake.api.list_serving("revisions", "serving.knative.dev/service")
    assert [i["metadata"]["name"] for i in items] == ["chat-00001"]
    fake.server.add(SERVING, "revisions", revision("chat-00002"))
    fake.server.add(SERVING, "revisions", {"metadata": {"name": "unlabelled", "namespace": "llm"}})
    fake.server.delete(SERVING, "llm", "revisions", "chat-00001")
    events = [
        (event["type"], event["object"]["metadata"]["name"])
        async for event in fake.api.watch_serving("revisions", version, 1, "serving.knative.dev/service")
    ]  # the server ends it after 1 s: the iteration ends, nothing is raised
    assert events == [("ADDED", "chat-00002"), ("DELETED", "chat-00001")]
    watch = next(r for r in fake.seen if r["query"].get("watch"))
    assert watch["query"] == {
        "watch": "true",
        "resourceVersion": version,
        "timeoutSeconds": "1",
        "labelSelector": "serving.knative.dev/service",
    }


async def test_a_watch_from_a_compacted_version_is_gone(fake: Fake) -> None:
    _, version = await fake.api.list_serving("revisions")
    fake.server.add(SERVING, "revisions", revision("chat-00002"))
    fake.server.compact()
    with pytest.raises(kube_api.Gone) as gone:
        async for _ in fake.api.watch_serving("revisions", version, 5):
            pass
    assert gone.value.status == 410 and "too old resource version" in gone.value.message


async def test_a_refused_watch_raises_its_status(fake: Fake) -> None:
    fake.server.faults.append(("WATCH", 500))
    with pytest.raises(kube_api.KubeAPIError) as failed:
        async for _ in fake.api.watch_serving("revisions", "1", 5):
            pass
    assert (failed.value.status, failed.value.transient) == (500, True)


async def test_a_watch_the_server_never_ends_gives_up_after_its_bound() -> None:
    """The server sends headers, then nothing, and never closes: the watch is status 0 after
    timeout_seconds plus the call timeout, not left open."""
    never = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await never.wait()
        return response

    app = web.Application()
    app.router.add_get("/apis/serving.knative.dev/v1/revisions", silent)
    async with TestServer(app) as server:
        session, api = kube_api_at(str(server.make_url("")), timeout=0.3)
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            with pytest.raises(kube_api.KubeAPIError) as stalled:
                async for _ in api.watch_serving("revisions", "1", 1):
                    pass
        finally:
            never.set()
            await session.close()
    assert stalled.value.status == 0 and "TimeoutError" in stalled.value.message
    assert 1.3 <= loop.time() - began < 5


async def test_large_lists_are_read_a_page_at_a_time(fake: Fake) -> None:
    """A list is read in pages of LIST_PAGE items (each page one call within the call timeout, as
    client-go's pager reads them), every item once, with the snapshot's resourceVersion."""
    for index in range(2, 2 * kube_api.LIST_PAGE + 102):
        fake.server.add(SERVING, "revisions", revision(f"chat-{index:05d}"))
    for index in range(kube_api.LIST_PAGE + 1):
        fake.server.add_node(f"gpu-{index:04d}", labels={"pool": "gpu"})
    before = len(fake.seen)
    items, version = await fake.api.list_serving("revisions", "serving.knative.dev/service")
    names = [item["metadata"]["name"] for item in items]
    assert names == [f"chat-{index:05d}" for index in range(1, 2 * kube_api.LIST_PAGE + 102)]
    pages = [request["query"] for request in fake.seen[before:]]
    assert [page.get("continue", "") != "" for page in pages] == [False, True, True]
    assert {page["limit"] for page in pages} == {str(kube_api.LIST_PAGE)}
    fake.server.add(SERVING, "revisions", revision("chat-99999"))  # after the list: seen by a watch from it
    events = [event["object"]["metadata"]["name"] async for event in fake.api.watch_serving("revisions", version, 1)]
    assert events == ["chat-99999"]
    nodes = await fake.api.list_nodes("pool=gpu")
    assert len(nodes) == kube_api.LIST_PAGE + 2 and len({node["name"] for node in nodes}) == len(nodes)
