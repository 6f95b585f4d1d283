"""Both SDKs emit events that match the one schema in docs/, and the listener accepts that schema."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import Chromium

from prewarm import sdk

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "intent-event.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def test_schema_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize(
    "event",
    [
        {
            "specversion": "1.0",
            "type": "dev.prewarm.session.opened",
            "source": "/s",
            "id": "1",
            "data": {"session": "a"},
        },
        {
            "specversion": "1.0",
            "type": "dev.prewarm.session.paused",
            "source": "/s",
            "id": "1",
            "data": {"target": "a/b", "session": "a"},
        },
        {
            "specversion": "1.0",
            "type": "dev.prewarm.session.opened",
            "source": "/s",
            "id": "1",
            "data": {"target": "a/b", "session": "a", "ttl": 0},
        },
        {
            "specversion": "1.0",
            "type": "dev.prewarm.session.opened",
            "source": "/s",
            "id": "1",
            "data": {"target": "a/b", "session": "a", "ttl": 1e308},
        },
        {
            "specversion": "1.0",
            "type": "dev.prewarm.session.opened",
            "source": "/s",
            "id": "1",
            "data": {"target": "a/b", "session": "a", "priority": "urgent"},
        },
    ],
    ids=["no-target-nor-subject", "unknown-type", "zero-ttl", "huge-ttl", "unknown-priority"],
)
def test_schema_rejects_what_the_listener_rejects(event: dict[str, object]) -> None:
    assert not VALIDATOR.is_valid(event)


async def test_python_sdk_events_match_the_schema() -> None:
    bodies: list[bytes] = []

    async def accept(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/events", accept)
    async with TestServer(app) as server, sdk.AsyncIntentClient(str(server.make_url("/"))) as client:
        session = client.open("ml/chat", ttl=90)
        client.heartbeat("ml/chat", session)
        client.close_session("ml/chat", session)
        job = client.open("ml/chat", priority="batch")
        client.heartbeat("ml/chat", job)
        client.close_session("ml/chat", job)
        await client.flush()
    events = [event for body in bodies for event in json.loads(body)]
    assert [e["type"].rsplit(".", 1)[1] for e in events] == ["opened", "heartbeat", "closed"] * 2
    assert [e["data"].get("priority") for e in events] == [None] * 3 + ["batch"] * 3
    for event in events:
        VALIDATOR.validate(event)


@pytest.fixture
async def sdk_page(browser: Chromium) -> AsyncIterator[str]:
    """A page with the browser SDK's Session class on `window`; yields its DevTools session."""
    sdk_source = (Path(sdk.__file__).parent / "prewarm.js").read_text()
    module = sdk_source.replace("export ", "") + "\nwindow.Session = Session;"
    page = f"<!doctype html><script type=module>{module}</script>"
    app = web.Application()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/", serve)
    async with TestServer(app) as server:
        _, session = await browser.open_page(str(server.make_url("/")))
        yield session


MADE_EVENTS = """
  (async () => {
    while (!window.Session) await new Promise((r) => setTimeout(r, 10));
    const sent = [];
    const s = new window.Session({
      endpoint: "http://127.0.0.1:9", target: "ml/chat", ttlSeconds: 90,
      fetchImpl: async (url, init) => { sent.push(init.body); return { status: 202, headers: new Headers() }; },
      beacon: () => true,
    });
    return [...sent, s._event("heartbeat"), s._event("closed")];
  })()
"""


async def test_browser_sdk_events_match_the_schema(browser: Chromium, sdk_page: str) -> None:
    events = [json.loads(text) for text in await browser.evaluate(sdk_page, MADE_EVENTS)]
    assert [e["type"].rsplit(".", 1)[1] for e in events] == ["opened", "heartbeat", "closed"]
    assert all("priority" not in e["data"] for e in events)  # interactive: the listener's default
    for event in events:
        VALIDATOR.validate(event)
    batch = MADE_EVENTS.replace("ttlSeconds: 90,", 'ttlSeconds: 90, priority: "batch",')
    events = [json.loads(text) for text in await browser.evaluate(sdk_page, batch)]
    assert [e["data"]["priority"] for e in events] == ["batch"] * 3
    for event in events:
        VALIDATOR.validate(event)


BAD_PRIORITY = """
  (async () => {
    while (!window.Session) await new Promise((r) => setTimeout(r, 10));
    try {
      new window.Session({ endpoint: "http://127.0.0.1:9", target: "ml/chat", priority: "urgent",
                           fetchImpl: async () => ({ status: 202, headers: new Headers() }) });
      return "no error";
    } catch (error) {
      return error.message;
    }
  })()
"""


async def test_browser_sdk_refuses_an_unknown_priority(browser: Chromium, sdk_page: str) -> None:
    message = await browser.evaluate(sdk_page, BAD_PRIORITY)
    assert message == 'prewarm.open: priority "urgent" is not one of interactive, batch'


RETRY_AFTER = """
  (async () => {
    while (!window.Session) await new Promise((r) => setTimeout(r, 10));
    const calls = [];
    let limited = true;
    const s = new window.Session({
      endpoint: "http://127.0.0.1:9", target: "ml/chat", heartbeatSeconds: 3600,
      fetchImpl: async (url, init) => {
        calls.push(JSON.parse(init.body).type);
        return { status: limited ? 429 : 202, headers: new Headers({ "Retry-After": "1" }) };
      },
      beacon: () => true,
    });
    await new Promise((r) => setTimeout(r, 50));
    const afterLimit = { retryAt: s.retryAt - Date.now(), calls: [...calls], opened: s.sent.opened };
    s._send("heartbeat");  // inside the Retry-After window: not sent
    await new Promise((r) => setTimeout(r, 50));
    const duringWindow = [...calls];
    limited = false;
    // the refused `opened` is sent again once Retry-After has passed
    while (s.sent.opened === 0) await new Promise((r) => setTimeout(r, 20));
    return { afterLimit, duringWindow, calls };
  })()
"""


async def test_browser_sdk_honours_retry_after(browser: Chromium, sdk_page: str) -> None:
    result = await browser.evaluate(sdk_page, RETRY_AFTER)
    assert result["afterLimit"]["calls"] == ["dev.prewarm.session.opened"]
    assert 0 < result["afterLimit"]["retryAt"] <= 1000
    assert result["afterLimit"]["opened"] == 0
    assert result["duringWindow"] == ["dev.prewarm.session.opened"]
    assert result["calls"] == ["dev.prewarm.session.opened", "dev.prewarm.session.opened"]
