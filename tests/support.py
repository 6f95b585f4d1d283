"""Test support: real redis-server and prometheus processes on free loopback ports, and polling with deadlines."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server process with append-only persistence, which tests may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


class PrometheusServer:
    """Debian's `prometheus` (2.42) on a free loopback port, with no scrape targets, over a storage
    directory that `load_openmetrics` fills with blocks made by `promtool`. Tests may stop and
    start it again on the same port and data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.storage = directory / "data"
        self.port = free_port()
        self.tls: tuple[Path, Path] | None = None  # (certificate, key): serve https when set
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def load_openmetrics(self, text: str) -> None:
        """Backfill `text` (OpenMetrics, ending with `# EOF`) as TSDB blocks; call before `start`."""
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.fail("promtool is not installed (.ci/run installs the prometheus package)")
        self.directory.mkdir(parents=True, exist_ok=True)
        source = self.directory / "history.om"
        source.write_text(text)
        subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(self.storage)],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed (.ci/run installs it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        web: list[str] = []
        if self.tls is not None:
            web_config = self.directory / "web.yml"
            web_config.write_text(f"tls_server_config:\n  cert_file: {self.tls[0]}\n  key_file: {self.tls[1]}\n")
            web = [f"--web.config.file={web_config}"]
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.storage}",
                "--storage.tsdb.retention.time=100y",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                *web,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as raw:
                    conn = raw
                    if self.tls is not None:
                        unverified = ssl.create_default_context()
                        unverified.check_hostname = False
                        unverified.verify_mode = ssl.CERT_NONE
                        conn = unverified.wrap_socket(raw)
                    conn.sendall(b"GET /-/ready HTTP/1.0\r\n\r\n")
                    if b" 200 " in conn.recv(64):
                        return
            except OSError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prometheus did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=20)
            self._process = None


def recurring_openmetrics(
    targets_minutes: dict[str, tuple[int, int]], *, start: float, end: float, preset: Any, namespace: str
) -> str:
    """OpenMetrics for a trace where each target (name -> (minute of the hour, most requests)) gets
    between one and that many requests (seeded) at that minute of every hour in [start, end): the
    recurring arrival the forecast tests wait for."""
    import numpy as np

    from prewarm.replay import history_export, traces

    requests = []
    for index, (name, (minute, most)) in enumerate(sorted(targets_minutes.items())):
        rng = np.random.default_rng(index)
        hours = np.arange(int(start // 3600), int(end // 3600) + 1) * 3600.0
        counts = rng.integers(1, most + 1, hours.size)
        times = np.sort(
            np.concatenate([hour + minute * 60 + 5 + 10 * np.arange(n) for hour, n in zip(hours, counts, strict=True)])
        )
        times = times[(times >= start) & (times < end)]
        requests.append(traces.TargetRequests(name, times, np.ones(times.size), ("",) * times.size))
    trace = traces.Trace(
        tuple(requests),
        min(float(r.arrivals[0]) for r in requests),
        max(float(r.arrivals[-1]) for r in requests),
    )
    return "\n".join(history_export.openmetrics_lines(trace, preset=preset, namespace=namespace)) + "\n"


async def wait_for(predicate: Callable[[], bool], *, within: float = 5.0) -> None:
    """Poll `predicate` while the event loop runs; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)


async def wait_for_async(predicate: Callable[[], Awaitable[bool]], *, within: float = 5.0) -> None:
    """`wait_for` for a predicate that must await (a scrape, a query)."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class Chromium:
    """Debian's headless Chromium, driven over the DevTools protocol (a websocket)."""

    def __init__(self, profile: Path) -> None:
        import aiohttp

        self._profile = profile
        self._process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: Any = None
        self._ids = iter(range(1, 1_000_000))
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import aiohttp

        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail("chromium is not installed (.ci/run installs it)")
        self._process = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self._profile}",
            "--remote-debugging-port=0",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        active = self._profile / "DevToolsActivePort"
        await wait_for(active.exists, within=30)
        await wait_for(lambda: len(active.read_text().splitlines()) >= 2, within=10)
        port, path = active.read_text().splitlines()[:2]
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        call_id = next(self._ids)
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def open_page(self, url: str) -> tuple[str, str]:
        """Open `url` in a new tab; return (target id, session id)."""
        target = (await self.send("Target.createTarget", {"url": url}))["targetId"]
        session = (await self.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        deadline = time.monotonic() + 30
        while True:  # the context is replaced while the page loads: retry until it is complete
            try:
                # a new tab first completes an initial about:blank, then navigates to `url`
                href, state = await self.evaluate(session, "[location.href, document.readyState]")
                if href != "about:blank" and state == "complete":
                    return target, session
            except RuntimeError as e:
                if "context" not in str(e).lower():
                    raise
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not finish loading")
            await asyncio.sleep(0.01)

    async def evaluate(self, session: str, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def close_page(self, target: str) -> None:
        await self.send("Target.closeTarget", {"targetId": target})

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._process is not None:
            self._process.terminate()
            await asyncio.wait_for(self._process.wait(), 10)
