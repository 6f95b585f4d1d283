"""KEDA external scaler over grpc.aio: serves decided floors as metrics and pushes activation.

`GetMetrics` reports `metricValueFloat = floor` against `targetSizeFloat = 1`, so the HPA's
AverageValue arithmetic asks for exactly `floor` replicas, a lower bound next to the user's own
triggers. `IsActive` is `floor > 0`. Both answer from one cached decision, so they always agree.
`StreamIsActive` (trigger type `external-push`) sends the current state when a stream opens and
then every change of activeness within milliseconds of the decision that caused it.

Handlers read a local cache that the store keeps current (pub/sub); they never compute a decision
and, once a target is cached, never wait on the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from prewarm.core import policy, targets
from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

METRIC_NAME = "prewarm-floor"
SERVICE_NAME = "externalscaler.ExternalScaler"
_RESOLVED_CAPACITY = 10_000  # distinct (ScaledObject, metadata) pairs remembered; oldest dropped first
_STREAM_QUEUE = 4  # pending pushes per stream; older ones are superseded by newer state

# grpc.aio.ServicerContext; grpcio ships no type information, so the context is untyped here.
Context: TypeAlias = Any
DecisionLoader = Callable[[str], Awaitable[policy.FloorDecision | None]]
TargetRegistrar = Callable[[targets.TargetSpec], None]


async def abort(context: Context, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the RPC with a real gRPC status (context.abort raises; this says so to the type checker)."""
    await context.abort(code, details)
    raise AssertionError("ServicerContext.abort returned")


class DecisionCache:
    """The latest decision per target, fed by `update`, with push subscriptions for activeness."""

    def __init__(self, *, load: DecisionLoader, load_timeout: float = 0.5) -> None:
        self._load = load
        self._load_timeout = load_timeout
        self._decisions: dict[str, policy.FloorDecision] = {}
        self._streams: dict[str, set[asyncio.Queue[bool]]] = {}
        self.refreshes = 0  # re-reads of every cached decision completed (one per gap in the feed)

    def update(self, decision: policy.FloorDecision) -> None:
        """Keep `decision` if it is not older than the cached one; push a change of activeness."""
        cached = self._decisions.get(decision.target)
        if cached is not None and decision.decided_at < cached.decided_at:
            return
        self._decisions[decision.target] = decision
        active = decision.floor > 0
        if cached is not None and (cached.floor > 0) == active:
            return
        for queue in self._streams.get(decision.target, ()):
            if queue.full():
                queue.get_nowait()  # a newer state supersedes the oldest pending one
            queue.put_nowait(active)

    def cached(self, target: str) -> policy.FloorDecision | None:
        """The cached decision, without touching the store."""
        return self._decisions.get(target)

    async def get(self, target: str) -> policy.FloorDecision | None:
        """The cached decision; on a miss, one bounded read from the store fills the cache."""
        decision = self._decisions.get(target)
        if decision is not None:
            return decision
        try:
            async with asyncio.timeout(self._load_timeout):  # not wait_for: it can lose a cancellation on 3.11
                loaded = await self._load(target)
        except (TimeoutError, OSError, RuntimeError) as e:
            log.warning("cannot load the decision of %s: %s", target, e)
            return None
        if loaded is not None:
            self.update(loaded)
        return self._decisions.get(target)

    async def refresh(self) -> None:
        """Re-read every cached target's decision (after a gap in the feed); bounded per target."""
        for target in list(self._decisions):
            try:
                async with asyncio.timeout(self._load_timeout):
                    loaded = await self._load(target)
            except (TimeoutError, OSError, RuntimeError) as e:
                log.warning("cannot re-read the decision of %s: %s", target, e)
                return  # the store is away again: its recovery asks for another refresh
            if loaded is not None:
                self.update(loaded)
        self.refreshes += 1

    def subscribe(self, target: str) -> asyncio.Queue[bool]:
        """A queue that receives every later change of `target`'s activeness."""
        queue: asyncio.Queue[bool] = asyncio.Queue(maxsize=_STREAM_QUEUE)
        self._streams.setdefault(target, set()).add(queue)
        return queue

    def unsubscribe(self, target: str, queue: asyncio.Queue[bool]) -> None:
        """Stop pushing to `queue`."""
        queues = self._streams.get(target)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._streams[target]


class FloorScaler(pb_grpc.ExternalScalerServicer):
    """The ExternalScaler service over a decision cache.

    `specs` are the configured targets. A ScaledObject may also configure a target inline through
    its trigger metadata; `register` (when given) hands such a target to the local decider.
    """

    def __init__(
        self,
        *,
        specs: Mapping[str, targets.TargetSpec],
        cache: DecisionCache,
        register: TargetRegistrar | None = None,
    ) -> None:
        self._specs = specs
        self._cache = cache
        self._register = register
        self._resolved: dict[tuple[Any, ...], str | tuple[grpc.StatusCode, str]] = {}

    async def _resolve(self, ref: pb.ScaledObjectRef, context: Context) -> str:
        """The target a ScaledObject asks about; aborts with INVALID_ARGUMENT or NOT_FOUND.

        KEDA sends the same metadata on every poll, so the outcome is cached per (ScaledObject,
        metadata, configured target): parsing (cron validation included) happens once.
        """
        metadata = tuple(sorted(ref.scalerMetadata.items()))
        name = ref.scalerMetadata.get("target") or f"{ref.namespace}/{ref.name}"
        key = (ref.namespace, ref.name, metadata, self._specs.get(name))
        outcome = self._resolved.get(key)
        if outcome is None:
            outcome = self._resolved[key] = self._resolve_uncached(ref.namespace, ref.name, dict(metadata))
            if len(self._resolved) > _RESOLVED_CAPACITY:
                self._resolved.pop(next(iter(self._resolved)))
        if isinstance(outcome, tuple):
            await abort(context, *outcome)
        return outcome

    def _resolve_uncached(
        self, namespace: str, name: str, metadata: dict[str, str]
    ) -> str | tuple[grpc.StatusCode, str]:
        """The target, or the status to answer with; registers an inline-configured target."""
        scaled_object = targets.TargetRef(namespace=namespace, name=name)
        target_name = metadata.get("target") or str(scaled_object)
        base = self._specs.get(target_name)
        inline = set(metadata) - targets.SCALER_METADATA_CONTROL_KEYS
        if base is None and not inline:
            return grpc.StatusCode.NOT_FOUND, f"unknown target {target_name!r}: not configured"
        try:
            spec, warnings = targets.parse_scaler_metadata(metadata, scaled_object=scaled_object, base=base)
        except targets.ConfigError as e:
            return grpc.StatusCode.INVALID_ARGUMENT, str(e)
        for warning in warnings:
            log.warning("%s", warning)
        target = str(spec.ref)
        if base is None or spec != base:
            if self._register is None:
                if base is None:
                    return grpc.StatusCode.NOT_FOUND, f"unknown target {target!r}: not configured"
                log.warning("%s: inline scalerMetadata differs from the configured target; the decider's wins", target)
            else:
                self._register(spec)
        return target

    async def _decision(self, target: str, context: Context) -> policy.FloorDecision:
        decision = await self._cache.get(target)
        if decision is None:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"no decision for {target!r} yet")
        return decision

    async def IsActive(self, request: pb.ScaledObjectRef, context: Context) -> pb.IsActiveResponse:
        target = await self._resolve(request, context)
        decision = await self._decision(target, context)
        return pb.IsActiveResponse(result=decision.floor > 0)

    async def GetMetricSpec(self, request: pb.ScaledObjectRef, context: Context) -> pb.GetMetricSpecResponse:
        await self._resolve(request, context)
        return pb.GetMetricSpecResponse(
            metricSpecs=[pb.MetricSpec(metricName=METRIC_NAME, targetSize=1, targetSizeFloat=1.0)]
        )

    async def GetMetrics(self, request: pb.GetMetricsRequest, context: Context) -> pb.GetMetricsResponse:
        target = await self._resolve(request.scaledObjectRef, context)
        decision = await self._decision(target, context)
        name = request.metricName or METRIC_NAME
        return pb.GetMetricsResponse(
            metricValues=[
                pb.MetricValue(metricName=name, metricValue=decision.floor, metricValueFloat=float(decision.floor))
            ]
        )

    async def StreamIsActive(self, request: pb.ScaledObjectRef, context: Context) -> AsyncIterator[pb.IsActiveResponse]:
        target = await self._resolve(request, context)
        queue = self._cache.subscribe(target)  # before reading the state, so no change slips between
        try:
            decision = await self._decision(target, context)
            last = decision.floor > 0
            yield pb.IsActiveResponse(result=last)
            while True:
                # Only changes: the queue may repeat the state just read (the read itself can fill
                # an empty cache, which notifies every subscriber of the target, this one too).
                active = await queue.get()
                if active != last:
                    last = active
                    yield pb.IsActiveResponse(result=active)
        finally:
            self._cache.unsubscribe(target, queue)


@dataclasses.dataclass(frozen=True, slots=True)
class TLSMaterial:
    """PEM bytes for the server; with `client_ca`, clients must present a certificate it signed (mTLS)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None


# Dead peers are found by HTTP/2 pings, so streams from vanished KEDA operators are closed.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


async def start_server(
    *, scaler: FloorScaler, health: HealthServicer, address: str, tls: TLSMaterial | None = None
) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server with the scaler and health services; return it and its bound port."""
    server = grpc.aio.server(options=KEEPALIVE_OPTIONS)
    pb_grpc.add_ExternalScalerServicer_to_server(scaler, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.key, tls.cert)],
            root_certificates=tls.client_ca,
            require_client_auth=tls.client_ca is not None,
        )
        port = server.add_secure_port(address, credentials)
    await server.start()
    return server, port


async def report_store_health(
    health: HealthServicer, ping: Callable[[], Awaitable[None]], *, interval: float = 2.0
) -> None:
    """Keep the health service SERVING while `ping` succeeds and NOT_SERVING while it fails."""
    last: int | None = None
    while True:
        try:
            async with asyncio.timeout(interval):
                await ping()
            status = health_pb2.HealthCheckResponse.SERVING
        except Exception as e:  # any failure to reach the store means not serving
            status = health_pb2.HealthCheckResponse.NOT_SERVING
            if last != status:
                log.warning("store unreachable, gRPC health NOT_SERVING: %s", e)
        if status != last:
            for service in ("", SERVICE_NAME):
                await health.set(service, status)
            last = status
        await asyncio.sleep(interval)
