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
    ],
    ids=["no-target-nor-subject", "unknown-type", "zero-ttl"],
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
        await client.flush()
    events = [event for body in bodies for event in json.loads(body)]
    assert [e["type"].rsplit(".", 1)[1] for e in events] == ["opened", "heartbeat", "closed"]
    for event in events:
        VALIDATOR.validate(event)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    chromium = Chromium(tmp_path / "profile")
    await chromium.start()
    try:
        yield chromium
    finally:
        await chromium.stop()


async def test_browser_sdk_events_match_the_schema(browser: Chromium) -> None:
    sdk_source = (Path(sdk.__file__).parent / "prewarm.js").read_text()
    page = (
        "<!doctype html><script type=module>"
        + sdk_source.replace("export ", "")
        + "\nwindow.Session = Session;</script>"
    )
    app = web.Application()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/", serve)
    async with TestServer(app) as server:
        _, session = await browser.open_page(str(server.make_url("/")))
        made = """
          new Promise((resolve) => {
            const wait = () => window.Session ? resolve() : setTimeout(wait, 10);
            wait();
          }).then(() => {
            const sent = [];
            const s = new window.Session({
              endpoint: "http://127.0.0.1:9", target: "ml/chat", ttlSeconds: 90,
              fetchImpl: async (url, init) => { sent.push(init.body); return {status: 202, headers: new Headers()}; },
              beacon: () => true,
            });
            return [...sent, s._event("heartbeat"), s._event("closed")];
          })
        """
        events = [json.loads(text) for text in await browser.evaluate(session, made)]
    assert [e["type"].rsplit(".", 1)[1] for e in events] == ["opened", "heartbeat", "closed"]
    for event in events:
        VALIDATOR.validate(event)
