"""Test support: real redis-server processes on free loopback ports (one server, a Sentinel-managed
master with a replica, a 3-master Cluster), a real prometheus, and polling with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio
from kubernetes import client as k8s

from knative import kube_api, kube_connection


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose Cluster bus port (port + 10000) is free too, both below 65536."""
    for _ in range(100):
        port = free_port()
        if port + 10_000 > 65_535:
            port -= 30_000  # ephemeral ports start at 32768: move below them, bus port included
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        pytest.fail(f"{name} is not installed (.ci/run installs it)")
    return binary


def _command(port: int, line: bytes, *, password: str | None = None, timeout: float = 0.5) -> bytes:
    """One inline command on a fresh connection; the raw reply (b'' when nothing answers)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            if password is not None:
                conn.sendall(b"AUTH " + password.encode() + b"\r\n")
                conn.recv(64)
            conn.sendall(line + b"\r\n")
            return conn.recv(65536)
    except OSError:
        return b""


def wait_until(predicate: Callable[[], bool], *, within: float, what: str) -> None:
    """Poll a condition outside an event loop (processes, files); RuntimeError naming `what` on timeout."""
    _wait_until(predicate, within=within, what=what)


def _wait_until(predicate: Callable[[], bool], *, within: float, what: str) -> None:
    """Poll a process-level condition (these helpers run outside the event loop)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} before the deadline")
        time.sleep(0.01)


class RedisServer:
    """A redis-server process with append-only persistence, which tests may stop and start again,
    freeze (SIGSTOP), thaw and kill -9. `extra` adds arguments (replication, auth, cluster)."""

    def __init__(
        self, directory: Path, *, extra: Sequence[str] = (), password: str | None = None, port: int | None = None
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = tuple(extra)
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        auth = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        quick = ["--repl-diskless-sync-delay", "0", "--shutdown-timeout", "1", "--logfile", str(self.directory / "log")]
        self._process = subprocess.Popen(
            [
                _binary("redis-server"),
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
                *auth,
                *quick,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_until(lambda: self.command(b"PING").startswith(b"+PONG"), within=10, what="redis-server did not start")

    def command(self, line: bytes) -> bytes:
        """One inline command (e.g. b"ROLE"); the raw reply."""
        return _command(self.port, line, password=self.password)

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """kill -9: nothing is flushed or handed over."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGCONT)  # a frozen server cannot stop
            # Redis refuses a SIGTERM while it writes its first AOF (right after a replica's
            # sync): ask again until it exits; kill it only if it never does.
            for _ in range(50):
                self._process.terminate()
                try:
                    self._process.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None


class SentinelGroup:
    """A master, `replicas` replicas of it (two by default) and three Sentinels (quorum 2) watching
    them as `service`, all behind one password; failover is quick (down after 500 ms)."""

    def __init__(
        self, directory: Path, *, service: str = "prewarm", password: str = "s3cret", replicas: int = 2
    ) -> None:
        self.directory = directory
        self.service = service
        self.password = password
        self.master = RedisServer(directory / "a", password=password)
        self.replicas = [RedisServer(directory / name, password=password) for name in "bcdefgh"[:replicas]]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return self.url_of(range(len(self.sentinel_ports)))

    def url_of(self, indexes: Sequence[int]) -> str:
        """The store URL naming only some of the Sentinels."""
        hosts = ",".join(f"127.0.0.1:{self.sentinel_ports[i]}" for i in indexes)
        return f"redis+sentinel://:{self.password}@{hosts}/{self.service}/0"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, *self.replicas]

    def start(self) -> None:
        self.master.start()
        for replica in self.replicas:
            replica.extra = ("--replicaof", "127.0.0.1", str(self.master.port))
            replica.start()
        _wait_until(
            lambda: all(b"master_link_status:up" in r.command(b"INFO replication") for r in self.replicas),
            within=10,
            what="the replicas did not sync",
        )
        ids = [f"{index + 1:040x}" for index in range(len(self.sentinel_ports))]
        for index, port in enumerate(self.sentinel_ports):
            config = self.directory / f"sentinel-{index}.conf"
            # each Sentinel knows the others and the replicas from the start: no discovery to wait for
            known = "".join(
                f"sentinel known-sentinel {self.service} 127.0.0.1 {other} {ids[j]}\n"
                for j, other in enumerate(self.sentinel_ports)
                if j != index
            )
            known += "".join(
                f"sentinel known-replica {self.service} 127.0.0.1 {replica.port}\n" for replica in self.replicas
            )
            config.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.directory}\n"
                f"sentinel myid {ids[index]}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel auth-pass {self.service} {self.password}\n"
                f"sentinel down-after-milliseconds {self.service} 500\n"
                f"sentinel failover-timeout {self.service} 10000\n"
                f"sentinel parallel-syncs {self.service} 2\n" + known
            )
            self._sentinels.append(self._launch_sentinel(index))
        self.wait_sentinels()

    def _launch_sentinel(self, index: int) -> subprocess.Popen[bytes]:
        config = self.directory / f"sentinel-{index}.conf"  # rewritten by the Sentinel as it learns
        return subprocess.Popen(
            [_binary("redis-sentinel"), str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_sentinels(self, indexes: Sequence[int] | None = None) -> None:
        """Wait until the running Sentinels (or those of `indexes`) know each other and the replicas."""
        for index in range(len(self.sentinel_ports)) if indexes is None else indexes:
            _wait_until(
                lambda port=self.sentinel_ports[index]: self.sentinels_see_each_other(port),
                within=15,
                what="the sentinels did not find each other",
            )

    def stop_sentinel(self, index: int) -> None:
        """Stop one Sentinel (SIGTERM, waited for); `start_sentinel` starts it again on its port."""
        self._sentinels[index].terminate()
        self._sentinels[index].wait(timeout=10)

    def start_sentinel(self, index: int) -> None:
        self._sentinels[index] = self._launch_sentinel(index)
        _wait_until(
            lambda: _command(self.sentinel_ports[index], b"PING").startswith(b"+PONG"),
            within=10,
            what="the sentinel did not start",
        )

    def switch_subscribers(self, index: int) -> int:
        """How many clients of one Sentinel are subscribed to a channel (Sentinels have no PUBSUB)."""
        clients = _command(self.sentinel_ports[index], b"CLIENT LIST").split(b"\n")
        return sum(b" sub=0 " not in line and b" sub=" in line for line in clients)

    def failover(self, index: int = 0) -> None:
        """A planned failover (the old master stays up), asked of one Sentinel."""
        reply = _command(self.sentinel_ports[index], b"SENTINEL FAILOVER " + self.service.encode())
        if not reply.startswith(b"+OK"):
            raise AssertionError(f"SENTINEL FAILOVER answered {reply!r}")

    def sentinels_see_each_other(self, port: int) -> bool:
        reply = _command(port, b"SENTINEL MASTER " + self.service.encode()).split(b"\r\n")
        try:
            others = int(reply[reply.index(b"num-other-sentinels") + 2])
            replicas = int(reply[reply.index(b"num-slaves") + 2])
        except (ValueError, IndexError):
            return False
        return others == len(self.sentinel_ports) - 1 and replicas == len(self.replicas)

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel tells it."""
        reply = _command(self.sentinel_ports[0], b"SENTINEL GET-MASTER-ADDR-BY-NAME " + self.service.encode())
        parts = reply.split(b"\r\n")
        return int(parts[4]) if len(parts) > 4 and parts[4].isdigit() else None

    def stop(self) -> None:
        for process in self._sentinels:
            process.terminate()
        for process in self._sentinels:
            process.wait(timeout=10)
        self._sentinels.clear()
        for server in self.servers:
            server.stop()


class RedisCluster:
    """Three masters with `--cluster-enabled yes`, joined by `redis-cli --cluster create`, each with
    `replicas` replicas that the cluster itself promotes when their master fails."""

    def __init__(self, directory: Path, *, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                directory / f"node-{i}",
                extra=["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms)],
                port=free_cluster_port(),
            )
            for i in range(3 * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])

    def start(self) -> None:
        for node in self.nodes:
            node.extra += ("--cluster-config-file", str(node.directory / "nodes.conf"))
            node.start()
        subprocess.run(
            [
                _binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        _wait_until(
            lambda: all(b"cluster_state:ok" in node.command(b"CLUSTER INFO") for node in self.nodes),
            within=20,
            what="the cluster did not come up",
        )
        if self.replicas:
            _wait_until(
                lambda: all(
                    b"master_link_status:up" in node.command(b"INFO replication")
                    for node in self.nodes
                    if not self.is_master(node)
                ),
                within=20,
                what="the cluster's replicas did not sync",
            )

    def is_master(self, node: RedisServer) -> bool:
        return node.command(b"ROLE").split(b"\r\n")[2:3] == [b"master"]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


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
    targets_minutes: dict[str, tuple[int, int]],
    *,
    start: float,
    end: float,
    preset: Any,
    namespace: str,
    run_seconds: float = 300.0,
) -> str:
    """OpenMetrics for a trace where each target (name -> (minute of the hour, most requests)) gets
    between one and that many requests (seeded) at that minute of every hour in [start, end): the
    recurring arrival the forecast tests wait for. Each runs `run_seconds` (by default long enough
    that every request of the minute holds its own replica)."""
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
        requests.append(traces.TargetRequests(name, times, np.full(times.size, run_seconds), ("",) * times.size))
    trace = traces.Trace(
        tuple(requests),
        min(float(r.arrivals[0]) for r in requests),
        max(float(r.arrivals[-1]) for r in requests),
    )
    return "\n".join(history_export.openmetrics_lines(trace, preset=preset, namespace=namespace)) + "\n"


async def wait_for(predicate: Callable[[], bool], *, within: float = 5.0) -> None:
    """Poll `predicate` while the event loop runs; fail after `within` seconds. A predicate that
    looks up what is not there yet (a decision a replica has not made) raises LookupError: not met."""
    deadline = time.monotonic() + within
    while not _holds(predicate):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)


def _holds(predicate: Callable[[], bool]) -> bool:
    try:
        return predicate()
    except LookupError:
        return False


async def wait_for_async(predicate: Callable[[], Awaitable[bool]], *, within: float = 5.0) -> None:
    """`wait_for` for a predicate that must await (a scrape, a query)."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)


async def post_session_opened(http: Any, port: int, *, target: str, event_id: str, source: str, within: float) -> int:
    """POST one session-opened CloudEvent (session = event id) to a serve listener on loopback:
    its HTTP status, or 0 when it is not answered within `within` seconds."""
    body = {
        "specversion": "1.0",
        "type": "dev.prewarm.session.opened",
        "source": source,
        "id": event_id,
        "data": {"target": target, "session": event_id},
    }
    try:
        async with asyncio.timeout(within):
            response = await http.post(
                f"http://127.0.0.1:{port}/events", json=body, headers={"Content-Type": "application/cloudevents+json"}
            )
            return int(response.status)
    except TimeoutError:
        return 0


async def acknowledged_lost(statuses: dict[str, int], *, port: int, password: str | None, target: str) -> list[str]:
    """The events answered 202 (session = event id, as post_session_opened sends them) whose
    session `target` does not hold on the Redis at `port`: acknowledged and lost."""
    client = redis.asyncio.Redis(port=port, password=password)
    try:
        stored = {m.decode() for m in await client.zrange(f"prewarm:{{{target}}}:sessions", 0, -1)}
    finally:
        await client.aclose()
    return [event for event, status in sorted(statuses.items()) if status == 202 and event not in stored]


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
        self._profile = profile
        self._process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: Any = None
        self._ids = iter(range(1, 1_000_000))
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
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


def kube_api_at(url: str, *, timeout: float = 10.0) -> tuple[aiohttp.ClientSession, kube_api.KubeAPI]:
    """A KubeAPI talking plain HTTP to `url` (the fake API server), over a session of its own that
    the caller closes. Call with the event loop running."""
    configuration = k8s.Configuration(host=url.rstrip("/"))
    session = kube_connection.open_session(configuration)
    return session, kube_api.KubeAPI(configuration, session, timeout=timeout)
