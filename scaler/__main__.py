"""Composition root of the KEDA scaler: `prewarm scaler` on its own, or embedded in `prewarm serve`.

Builds the decision cache over a store, wires it to the store's decision feed, and runs the gRPC
server with health reporting. The store is passed in; this module builds no client of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1._async import HealthServicer

from prewarm.core import policy, targets
from scaler import service


class DecisionFeed(Protocol):
    """What the scaler needs from a store: read a decision, hear of new ones (and of gaps in what
    it heard), check reachability."""

    async def load_decision(self, target: str) -> policy.FloorDecision | None: ...

    def add_decision_listener(self, listener: Callable[[policy.FloorDecision], None]) -> None: ...

    def add_resync_listener(self, listener: Callable[[], None]) -> None: ...

    async def ping(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class ScalerOptions:
    """Where the scaler listens and with which TLS material."""

    address: str = "0.0.0.0:9090"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    health_interval: float = 2.0


def read_tls(options: ScalerOptions) -> service.TLSMaterial | None:
    """Load the PEM files named in `options`; raise ConfigError naming any that cannot be used."""
    if options.tls_cert is None and options.tls_key is None:
        if options.tls_client_ca is not None:
            problem = targets.Problem(
                "--grpc-client-ca", str(options.tls_client_ca), "needs --grpc-cert and --grpc-key"
            )
            raise targets.ConfigError("gRPC TLS options", [problem])
        return None
    problems: list[targets.Problem] = []
    contents: dict[str, bytes] = {}
    for flag, path in (("--grpc-cert", options.tls_cert), ("--grpc-key", options.tls_key)):
        if path is None:
            problems.append(targets.Problem(flag, None, "is required with TLS"))
    for flag, path in (
        ("--grpc-cert", options.tls_cert),
        ("--grpc-key", options.tls_key),
        ("--grpc-client-ca", options.tls_client_ca),
    ):
        if path is not None:
            try:
                contents[flag] = path.read_bytes()
            except OSError as e:
                problems.append(targets.Problem(flag, str(path), f"cannot be read: {e.strerror}"))
    if problems:
        raise targets.ConfigError("gRPC TLS options", problems)
    return service.TLSMaterial(
        cert=contents["--grpc-cert"], key=contents["--grpc-key"], client_ca=contents.get("--grpc-client-ca")
    )


@dataclasses.dataclass(slots=True)
class RunningScaler:
    """A started scaler: its bound port and the cache it serves from."""

    port: int
    cache: service.DecisionCache
    server: grpc.aio.Server


@contextlib.asynccontextmanager
async def run_scaler(
    *,
    feed: DecisionFeed,
    specs: Mapping[str, targets.TargetSpec],
    options: ScalerOptions,
    register: Callable[[targets.TargetSpec], None] | None = None,
    prime: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[RunningScaler]:
    """Serve the ExternalScaler and health services until the context exits.

    Add the cache's listener before the feed starts relaying (see Store.start); `prime` runs
    after that, for feeds that must be started.
    """
    tls = read_tls(options)
    cache = service.DecisionCache(load=feed.load_decision)
    feed.add_decision_listener(cache.update)
    refreshing: set[asyncio.Task[None]] = set()

    def refresh_after_gap() -> None:  # decisions may have been published while nobody listened
        task = asyncio.get_running_loop().create_task(cache.refresh())
        refreshing.add(task)
        task.add_done_callback(refreshing.discard)

    feed.add_resync_listener(refresh_after_gap)
    if prime is not None:
        await prime()
    for target in specs:  # fill the cache so handlers need not wait on the store
        await cache.get(target)
    health = HealthServicer()
    scaler = service.FloorScaler(specs=specs, cache=cache, register=register)
    server, port = await service.start_server(scaler=scaler, health=health, address=options.address, tls=tls)
    reporting = asyncio.create_task(
        service.report_store_health(health, feed.ping, interval=options.health_interval), name="grpc-health"
    )
    try:
        yield RunningScaler(port=port, cache=cache, server=server)
    finally:
        reporting.cancel()
        for task in refreshing:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
        await server.stop(grace=1.0)
