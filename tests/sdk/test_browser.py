"""The browser SDK in real headless Chromium, against a live `prewarm serve` with the Redis store.

The test page is served from another origin than the listener, so CORS (preflight for opened and
heartbeats, the origin allowlist for the token-less beacon) is exercised as in production.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from aiohttp import web
from support import Chromium, RedisServer, free_port, wait_for

from prewarm.service import clock, composition, listener

PAGE = """<!doctype html>
<title>chat</title>
<script type="module">
  import * as prewarm from "{listener}/sdk/prewarm.js";
  window.session = prewarm.open({{ endpoint: "{listener}", target: "ml/chat", heartbeatSeconds: 0.2 }});
</script>
"""


async def test_page_open_raises_the_floor_hidden_pauses_and_close_sends_closed(
    tmp_path: Path, redis_server: RedisServer, browser: Chromium
) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text("targets: [{name: ml/chat, kind: knative, max: 3, sessionsPerReplica: 1, hold: 0s}]\n")
    page_port = free_port()
    settings = listener.ListenerSettings(
        tokens=("server-side-only",), cors_origins=(f"http://127.0.0.1:{page_port}",), rate_per_second=100
    )
    options = composition.ServeOptions(
        config=config, store=redis_server.url, http_host="127.0.0.1", http_port=0, listener=settings
    )
    async with composition.run_service(options, clock=clock.SystemClock(), out=io.StringIO()) as service:
        origin = f"http://127.0.0.1:{service.http_port}"
        app = web.Application()

        async def page(request: web.Request) -> web.Response:
            return web.Response(text=PAGE.format(listener=origin), content_type="text/html")

        app.router.add_get("/", page)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", page_port).start()
        try:
            target, session = await browser.open_page(f"http://127.0.0.1:{page_port}/")
            sessions = service.decider.describe

            async def active() -> int:
                return int((await sessions())[0]["sessions"])

            # opening the page records a session and raises the floor
            await wait_for(
                lambda: (
                    service.decider.decisions.get("ml/chat") is not None
                    and service.decider.decisions["ml/chat"].floor == 1
                ),
                within=20,
            )
            assert await active() == 1
            await wait_for_value(browser, session, "window.session.sent.heartbeat >= 2")

            # hiding the page pauses heartbeats; showing it again sends one at once and resumes
            await browser.evaluate(session, HIDE)
            assert await browser.evaluate(session, "window.session.state") == "paused"
            paused_at = await browser.evaluate(session, "window.session.sent.heartbeat")
            await browser.evaluate(session, SHOW)
            assert await browser.evaluate(session, "window.session.state") == "open"
            await wait_for_value(browser, session, f"window.session.sent.heartbeat >= {paused_at + 2}")

            # closing the page sends `closed` with a beacon: the session ends and the floor drops
            await browser.close_page(target)
            await wait_for(lambda: service.decider.decisions["ml/chat"].floor == 0, within=20)
            assert await active() == 0
            assert service.listener.counts["rejected.401"] == 0
        finally:
            await runner.cleanup()


async def wait_for_value(browser: Chromium, session: str, expression: str) -> None:
    """Poll a page expression until it is true, failing after a deadline."""
    deadline = time.monotonic() + 20
    while await browser.evaluate(session, expression) is not True:
        if time.monotonic() > deadline:
            raise AssertionError(f"{expression} stayed false")


# The page cannot be hidden from outside in headless mode; these set what the Page Visibility API
# reports and fire its event, which is all the SDK reads.
HIDE = """
Object.defineProperty(document, "visibilityState", { value: "hidden", configurable: true });
document.dispatchEvent(new Event("visibilitychange"));
"""
SHOW = """
Object.defineProperty(document, "visibilityState", { value: "visible", configurable: true });
document.dispatchEvent(new Event("visibilitychange"));
"""
