"""The composition root of `prewarm serve`: builds the target registry, store, telemetry, actuators
and their reconcilers, forecaster, tuner, leases, decider, listener and the embedded scaler from
`ServeOptions`, in the order they depend on each other, and passes each what it needs.
Nothing below it builds a client of its own; nothing here decides or translates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TextIO

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from knative import actuator as knative_actuator
from knative import discovery as knative_discovery
from knative import kube_api as knative_api
from knative import kube_connection as knative_connection
from knative import leader as knative_leader
from prewarm.core import targets
from prewarm.replay import tuned_runs
from prewarm.service import (
    actuation,
    clock,
    config_file,
    decider,
    forecast_loop,
    history,
    knative_targets,
    leadership,
    listener,
    observability,
    reconciler,
    target_registry,
    telemetry,
)
from prewarm.service import cold_starts as cold_start_times
from prewarm.service import tuner as tuning
from prewarm.service.store import Store, build_store
from scaler import __main__ as scaler_main

log = logging.getLogger("prewarm")

KUBE_RESERVED = 4  # of the Kubernetes session's connections, kept from the Knative reconciler's workers


@dataclasses.dataclass(frozen=True, slots=True)
class ServeOptions:
    """What `prewarm serve` was asked to run, parsed from the command line and environment."""

    config: Path | None
    store: str = "memory"
    actuators: tuple[str, ...] = ("log",)
    kubeconfig: Path | None = None  # for the knative actuator; in-cluster credentials when None
    knative_floor_object: str | None = None  # revision | podautoscaler; detected when None
    knative_system_namespace: str = "knative-serving"  # where Knative Serving runs: its version is read there
    leader_lease: str | None = None  # namespace/name of the Lease; None: this replica always patches
    knative_namespaces: tuple[str, ...] = ()  # where to discover annotated Services; () is everywhere
    identity: str = "prewarm"
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    listener: listener.ListenerSettings = dataclasses.field(default_factory=listener.ListenerSettings)
    grpc: scaler_main.ScalerOptions | None = None  # the embedded KEDA scaler, off when None
    decider_lease: float = 10.0  # seconds; with Redis, one replica decides each target under a lease
    store_wait_replicas: int = 0  # acknowledge events only once this many Redis replicas have them
    store_wait_timeout: float = 1.0  # seconds WAIT may take before the event is answered 503
    tuning: tuned_runs.HistoryOptions = dataclasses.field(default_factory=tuned_runs.HistoryOptions)
    prometheus: history.PrometheusSettings | None = None  # request history for forecast.history targets


@dataclasses.dataclass(slots=True)
class RunningService:
    """A started `prewarm serve`: what tests and the CLI need to reach it."""

    decider: decider.Decider
    registry: target_registry.TargetRegistry
    reconcilers: reconciler.Reconcilers
    forecaster: forecast_loop.ForecastLoop
    store: Store
    listener: listener.IntentListener
    http_port: int
    grpc_port: int | None
    decider_task: asyncio.Task[None]
    leases: leadership.TargetLeases | None = None  # with a Redis store: which targets this replica decides


@contextlib.asynccontextmanager
async def run_service(
    options: ServeOptions,
    *,
    clock: clock.Clock,
    out: TextIO,
    env: Mapping[str, str] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> AsyncIterator[RunningService]:
    """Build and start every part of `prewarm serve`; stop them all on exit.

    Raises ConfigError before starting anything when the configuration is invalid.
    """
    # Built in the order they depend on each other: nothing is referred to before it exists.
    parsed = config_file.load_config_file(options.config) if options.config is not None else targets.ParsedTargets(())
    for warning in parsed.warnings:
        log.warning("%s", warning)
    history.require_prometheus(parsed.targets, options.prometheus, source=str(options.config))
    registry = target_registry.TargetRegistry(parsed.targets)
    async with contextlib.AsyncExitStack() as stack:  # each part that holds a resource is closed on any way out
        store = build_store(
            options.store, wait_replicas=options.store_wait_replicas, wait_timeout=options.store_wait_timeout
        )
        stack.push_async_callback(store.close)
        providers = observability.build_observability(env or {}, tracer_provider=tracer_provider)
        stack.callback(providers.shutdown)
        instruments = telemetry.Telemetry(
            meter_provider=providers.meter_provider,
            tracer_provider=providers.tracer_provider,
            targets=list(registry.names()),
        )
        kube: knative_api.KubeAPI | None = None
        kube_session: aiohttp.ClientSession | None = None
        if "knative" in options.actuators:
            kube_configuration = knative_targets.load_kube_configuration(options.kubeconfig)
            kube_session = knative_connection.open_session(kube_configuration)
            stack.push_async_callback(kube_session.close)
            kube = knative_api.KubeAPI(kube_configuration, kube_session)
        store.add_dropped_listener(instruments.record_sessions_dropped)
        elector: knative_leader.LeaseElector | None = None
        if kube is not None and options.leader_lease is not None:
            lease_namespace, _, lease_name = options.leader_lease.partition("/")
            elector = knative_leader.LeaseElector(
                kube, namespace=lease_namespace, name=lease_name, identity=options.identity, clock=clock
            )
        leading = (lambda: True) if elector is None else elector.leading
        waker = knative_targets.Waker()
        stack.push_async_callback(waker.close)
        reconcilers: list[reconciler.Reconciler] = []
        if "log" in options.actuators:
            reconcilers.append(reconciler.Reconciler(actuation.LogActuator(out), clock=clock, telemetry=instruments))
        knative: knative_actuator.KnativeActuator | None = None
        knative_reconciler: reconciler.Reconciler | None = None
        if kube is not None:
            knative = knative_actuator.KnativeActuator(
                kube,
                floor_object=options.knative_floor_object,
                system_namespace=options.knative_system_namespace,
                on_refused=instruments.record_knative_refusal,
                wake=waker.send_wake,
                is_leader=leading,
                # configured or discovered Knative targets only: KEDA targets are served by the scaler
                applies_to=functools.partial(_is_knative, registry),
            )
            # workers hold a connection each, not a thread; a few connections stay free for the Lease
            # and discovery's watches
            knative_reconciler = reconciler.Reconciler(
                knative, clock=clock, telemetry=instruments, workers=max(1, kube.max_in_flight - KUBE_RESERVED)
            )
            reconcilers.append(knative_reconciler)
        actuators = reconciler.Reconcilers(reconcilers)
        prometheus = None if options.prometheus is None else history.open_session(options.prometheus)
        if prometheus is not None:
            stack.push_async_callback(prometheus.close)
        reader = (
            None
            if prometheus is None or options.prometheus is None
            else history.HistoryReader(
                history.PrometheusClient(session=prometheus, settings=options.prometheus), telemetry=instruments
            )
        )
        cold_starts = (
            cold_start_times.ColdStartTimes()
        )  # pod start phases from the listener, lead times for the forecaster
        forecaster = forecast_loop.ForecastLoop(
            store=store,
            clock=clock,
            specs=lambda: registry.specs,
            on_change=registry.changed,
            telemetry=instruments,
            history_reader=reader,
            cold_starts=cold_starts.seconds,
        )
        tuner = tuning.Tuner(
            history=forecaster.arrivals,
            clock=clock,
            specs=lambda: registry.specs,
            fleets={fleet.name: fleet.hours_per_day for fleet in parsed.fleets},
            on_change=registry.changed,
            options=options.tuning,
            starts=instruments.starts,
            telemetry=instruments,
        )
        forecaster.use_specs(tuner.effective_specs)  # the forecaster predicts the tuned specs
        leases: leadership.TargetLeases | None = None
        if store.leases is not None:  # replicas share the store: one decides each target
            leases = leadership.TargetLeases(
                store.leases,
                holder=options.identity,
                targets=registry.names,
                ttl=options.decider_lease,
                may_lead=leading,  # with a Kubernetes Lease, only its holder decides (and so patches Knative objects)
            )
        loop = decider.Decider(
            registry=registry,
            store=store,
            reconcilers=actuators,
            clock=clock,
            telemetry=instruments,
            forecast=forecaster.current_forecast,
            ownership=leases,
            tuned=tuner.effective,
            explain_tuning=tuner.describe,
            forecast_degraded=forecaster.degraded,
            forecast_view=forecaster.describe,
        )
        tuner.follow_decisions(loop.decisions.get)  # what each target spent today, for the fleet caps
        if elector is not None:
            elector.follow(
                functools.partial(
                    knative_targets.on_leadership_change, loop=loop, knative=knative_reconciler, leases=leases
                )
            )

        def current_floor(target: str) -> int | None:
            decision = loop.decisions.get(target)
            return None if decision is None else decision.floor

        intents = listener.IntentListener(
            specs=registry.specs,
            store=store,
            clock=clock,
            settings=options.listener,
            targets_view=knative_targets.describe_targets(loop, actuators, knative),
            telemetry=instruments,
            current_floor=current_floor,
            note_trace=loop.note_trace,
            metrics=providers.prometheus_text,
            cold_starts=cold_starts,
        )
        runner = web.AppRunner(listener.build_app(intents), access_log=None)
        tasks = await stack.enter_async_context(_owned_tasks())
        tasks.append(asyncio.create_task(actuators.run(), name="reconcilers"))
        grpc_port = None
        if options.grpc is not None:
            embedded = await stack.enter_async_context(
                scaler_main.run_scaler(
                    feed=store, specs=registry.specs, options=options.grpc, register=registry.add, prime=None
                )
            )
            grpc_port = embedded.port
        await store.start()  # after every listener (decider, scaler cache) is added
        if leases is not None:
            campaigning_for_targets = asyncio.create_task(leases.run(), name="decider-leases")
            stack.push_async_callback(_stop_leases, leases, campaigning_for_targets)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, options.http_host, options.http_port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else options.http_port
        log.info(
            "serving %d targets on http://%s:%d%s (store=%s, actuator=%s)",
            len(parsed.targets),
            options.http_host,
            port,
            "" if grpc_port is None else f" and gRPC port {grpc_port}",
            options.store.split("@")[-1],
            ",".join(options.actuators),
        )
        if elector is not None:
            tasks.append(asyncio.create_task(elector.run(), name="leader-election"))
        if kube is not None and knative_reconciler is not None:
            finder = knative_discovery.ServiceDiscovery(
                kube,
                knative_targets.knative_listeners(loop, registry, knative_reconciler),
                namespaces=frozenset(options.knative_namespaces),
            )
            tasks.append(asyncio.create_task(finder.run(), name="knative-discovery"))
        await forecaster.prepare()  # history loaded and fitted before the first decision reads a forecast
        tasks.append(asyncio.create_task(forecaster.run(), name="forecaster"))
        tasks.append(asyncio.create_task(tuner.run(), name="tuner"))
        running = asyncio.create_task(loop.run(), name="decider")
        try:
            yield RunningService(
                decider=loop,
                registry=registry,
                reconcilers=actuators,
                forecaster=forecaster,
                store=store,
                listener=intents,
                http_port=port,
                grpc_port=grpc_port,
                decider_task=running,
                leases=leases,
            )
            if running.done():
                running.result()  # the loop only ends by raising: surface it
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


def _is_knative(registry: target_registry.TargetRegistry, target: str) -> bool:
    spec = registry.specs.get(target)
    return spec is not None and spec.kind is targets.TargetKind.KNATIVE


@contextlib.asynccontextmanager
async def _owned_tasks() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Tasks appended to the yielded list are cancelled and awaited on exit (bounded: 2 s)."""
    tasks: list[asyncio.Task[None]] = []
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)


async def _stop_leases(leases: leadership.TargetLeases, campaigning: asyncio.Task[None]) -> None:
    """Stop campaigning and hand the leases back, so a standby decides at once (bounded: 2 s)."""
    campaigning.cancel()
    await asyncio.wait({campaigning}, timeout=2.0)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            await leases.release_all()


async def serve(
    options: ServeOptions,
    *,
    clock: clock.Clock,
    out: TextIO,
    stop: asyncio.Event,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run `prewarm serve` until `stop` is set."""
    async with run_service(options, clock=clock, out=out, env=env) as service:
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({stopping, service.decider_task}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
