"""How to reach the Kubernetes API server, taken from a `kubernetes.client.Configuration` (kubeconfig or
in-cluster credentials, loaded by the official client's config loaders): the TLS context, the
aiohttp session its owner opens and closes, and the Authorization header, refreshed when the
loader gave a hook for it (in-cluster token files, exec plugins, expiring kubeconfig tokens).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:  # the official client's configuration type only: importing it costs ~0.3 s
    from kubernetes import client as k8s

MAX_CONNECTIONS = 132  # calls in flight at once; a hung call holds one connection until its timeout
REFRESH_EVERY = 10.0  # seconds between runs of the loader's token hook (it refreshes 5 min before expiry)
USER_AGENT = "kube-prewarm"


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go, besides the session: the server's base URL, an HTTP(S) proxy, and the
    name the server's certificate is checked against when it is not the URL's host."""

    base_url: str
    proxy: str | None = None
    proxy_headers: dict[str, str] | None = None
    server_hostname: str | None = None


def endpoint_of(configuration: k8s.Configuration) -> Endpoint:
    """The server, proxy and TLS server name of `configuration`."""
    tls_name = getattr(configuration, "tls_server_name", None)
    assert_hostname = getattr(configuration, "assert_hostname", None)
    if not tls_name and isinstance(assert_hostname, str) and assert_hostname:
        tls_name = assert_hostname
    return Endpoint(
        base_url=str(configuration.host).rstrip("/"),
        proxy=configuration.proxy or None,
        proxy_headers=dict(configuration.proxy_headers) if configuration.proxy_headers else None,
        server_hostname=tls_name or None,
    )


def ssl_context(configuration: k8s.Configuration) -> ssl.SSLContext:
    """The TLS context `configuration` asks for: its CA (file or data) or the system's, the client
    certificate and key when given, no verification at all with insecure-skip-tls-verify.

    Raises OSError (ssl.SSLError included) when a named file is missing or not a certificate."""
    ca_data = getattr(configuration, "ca_cert_data", None)
    if isinstance(ca_data, bytes) and ca_data.lstrip().startswith(b"-----"):
        ca_data = ca_data.decode()
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None, cadata=ca_data or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif getattr(configuration, "assert_hostname", None) is False:
        context.check_hostname = False
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


def open_session(configuration: k8s.Configuration, *, max_connections: int = MAX_CONNECTIONS) -> aiohttp.ClientSession:
    """A session for `configuration`'s server, at most `max_connections` calls in flight; the caller
    owns it and closes it. Must be called with the event loop running."""
    tls = ssl_context(configuration) if str(configuration.host).startswith("https:") else True
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls, limit=max_connections),
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        raise_for_status=False,
    )


class Credentials:
    """The Authorization header of `configuration`. When the loader set `refresh_api_key_hook`
    (which may read a token file or run an exec plugin, so blocks), it runs on a worker thread at
    most every `refresh_every` seconds and never twice at once, however many calls wait for it or
    give up waiting; every call in between reuses its header."""

    def __init__(
        self,
        configuration: k8s.Configuration,
        *,
        refresh_every: float = REFRESH_EVERY,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._configuration = configuration
        self._refresh_every = refresh_every
        self._monotonic = monotonic
        self._refreshes = configuration.refresh_api_key_hook is not None
        self._header: str | None = None if self._refreshes else _header(configuration)
        self._refreshed_at: float | None = None
        self._refreshing: asyncio.Task[None] | None = None

    async def authorization(self) -> str | None:
        """The header's value (`Bearer ...`, `Basic ...`), or None when the configuration has none.
        Raises what the refresh hook raised (a failed exec plugin, an unreadable token file)."""
        if not self._refreshes or not self._due():
            return self._header
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh(), name="kube-token-refresh")
            self._refreshing.add_done_callback(_retrieve)
        await asyncio.shield(self._refreshing)  # a caller that gives up leaves the refresh running
        return self._header

    async def _refresh(self) -> None:
        header = await asyncio.to_thread(_header, self._configuration)
        self._header, self._refreshed_at = header, self._monotonic()

    def _due(self) -> bool:
        return self._refreshed_at is None or self._monotonic() - self._refreshed_at >= self._refresh_every


def _retrieve(task: asyncio.Task[None]) -> None:
    """Every waiter may have given up: the refresh's failure is raised to the next caller instead."""
    if not task.cancelled():
        task.exception()


def _header(configuration: k8s.Configuration) -> str | None:
    """What the official client sends as Authorization, after running the refresh hook if any."""
    if configuration.refresh_api_key_hook is not None:
        configuration.refresh_api_key_hook(configuration)
    for name in ("BearerToken", "authorization"):  # the official client's key and its alias
        key = configuration.api_key.get(name)
        if key:
            prefix = configuration.api_key_prefix.get(name)
            return f"{prefix} {key}" if prefix else str(key)
    return None
