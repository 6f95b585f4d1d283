"""The `prewarm` command and the composition root of `prewarm serve`.

This is the one place that reads files, arguments and the environment, builds the store, clock
and actuators, and hands them down. Nothing below it builds a client of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from knative import actuator as knative_actuator
from knative import discovery as knative_discovery
from knative import kube_api as knative_api
from knative import leader as knative_leader
from prewarm import actuation, clock, config_file, decider, forecast_loop, listener, state, targets, telemetry
from scaler import __main__ as scaler_main

log = logging.getLogger("prewarm")

EXIT_CONFIG_ERROR = 2


@dataclasses.dataclass(frozen=True, slots=True)
class ServeOptions:
    """What `prewarm serve` was asked to run, parsed from the command line and environment."""

    config: Path | None
    store: str = "memory"
    actuators: tuple[str, ...] = ("log",)
    kubeconfig: Path | None = None  # for the knative actuator; in-cluster credentials when None
    knative_floor_object: str | None = None  # revision | podautoscaler; detected when None
    leader_lease: str | None = None  # namespace/name of the Lease; None: this replica always patches
    knative_namespaces: tuple[str, ...] = ()  # where to discover annotated Services; () is everywhere
    identity: str = "prewarm"
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    listener: listener.ListenerSettings = dataclasses.field(default_factory=listener.ListenerSettings)
    grpc: scaler_main.ScalerOptions | None = None  # the embedded KEDA scaler, off when None


def reapply_floors(loop: decider.Decider, actuator: knative_actuator.KnativeActuator | None) -> None:
    """A replica that just became leader makes every Knative target's current floor effective:
    the previous leader may have died between a decision and its patch."""
    if actuator is None:
        return
    for target, decision in list(loop.decisions.items()):
        spec = loop.specs.get(target)
        if spec is not None and spec.kind is targets.TargetKind.KNATIVE:
            asyncio.get_running_loop().create_task(actuator.apply_floor(target, decision.floor))


async def send_wake(method: str, url: str) -> int:
    """One wake request through a Service's URL (short timeout; the response body is not read)."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.request(method, url) as response:
        return response.status


def knative_listeners(
    loop: decider.Decider, actuator: knative_actuator.KnativeActuator, stack: contextlib.AsyncExitStack
) -> knative_discovery.Listeners:
    """What discovered Services do: become targets, get the floor re-applied when a new revision is
    routed (the decider only acts on floor changes), and get the user's min-scale back on leaving."""
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def traffic_changed(target: str) -> None:
        decision = loop.decisions.get(target)
        if decision is not None:
            spawn(actuator.apply_floor(target, decision.floor))

    def target_gone(target: str) -> None:
        loop.remove_target(target)
        spawn(actuator.release(target))

    stack.callback(lambda: [task.cancel() for task in tasks])
    return knative_discovery.Listeners(
        target_seen=loop.add_target, traffic_changed=traffic_changed, target_gone=target_gone
    )


def load_kube_client(kubeconfig: Path | None) -> k8s_client.ApiClient:
    """A Kubernetes API client: from `kubeconfig`, else in-cluster credentials, else ~/.kube/config."""
    api_client: k8s_client.ApiClient
    if kubeconfig is not None:
        api_client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        return api_client
    try:
        configuration = k8s_client.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        return k8s_client.ApiClient(configuration)
    except k8s_config.ConfigException:
        api_client = k8s_config.new_client_from_config()
        return api_client


def build_store(url: str) -> state.MemoryStore | state.RedisStore:
    """`memory`, or `redis://host:port/db` (`rediss://` for TLS)."""
    if url == "memory":
        return state.MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return state.RedisStore.from_url(url)
    raise targets.ConfigError("--store", [targets.Problem("--store", url, "is not memory or a redis:// URL")])


@dataclasses.dataclass(slots=True)
class RunningService:
    """A started `prewarm serve`: what tests and the CLI need to reach it."""

    decider: decider.Decider
    store: state.Store
    listener: listener.IntentListener
    http_port: int
    grpc_port: int | None
    decider_task: asyncio.Task[None]


@dataclasses.dataclass(slots=True)
class Observability:
    """The OpenTelemetry providers of one process and the Prometheus registry they export to."""

    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    registry: CollectorRegistry

    def prometheus_text(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def build_observability(env: Mapping[str, str], *, tracer_provider: TracerProvider | None = None) -> Observability:
    """Prometheus export always; OTLP (metrics and traces) when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "kube-prewarm")})
    registry = CollectorRegistry(auto_describe=True)
    readers: list[MetricReader] = [PrometheusMetricReader(registry=registry)]
    otlp = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if tracer_provider is None:
        tracer_provider = TracerProvider(resource=resource)
        if otlp:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Observability(
        meter_provider=MeterProvider(metric_readers=readers, resource=resource),
        tracer_provider=tracer_provider,
        registry=registry,
    )


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
    parsed = config_file.load_config_file(options.config) if options.config is not None else targets.ParsedTargets(())
    for warning in parsed.warnings:
        log.warning("%s", warning)
    store = build_store(options.store)
    observability = build_observability(env or {}, tracer_provider=tracer_provider)
    instruments = telemetry.Telemetry(
        meter_provider=observability.meter_provider,
        tracer_provider=observability.tracer_provider,
        targets=[str(spec.ref) for spec in parsed.targets],
    )
    actuators: list[actuation.Actuator] = []
    kube: knative_api.KubeAPI | None = None
    knative: knative_actuator.KnativeActuator | None = None
    if "log" in options.actuators:
        actuators.append(actuation.LogActuator(out))
    elector: knative_leader.LeaseElector | None = None
    if "knative" in options.actuators:
        kube = knative_api.KubeAPI(load_kube_client(options.kubeconfig))
        if options.leader_lease is not None:
            lease_namespace, _, lease_name = options.leader_lease.partition("/")
            elector = knative_leader.LeaseElector(
                kube,
                namespace=lease_namespace,
                name=lease_name,
                identity=options.identity,
                clock=clock,
                on_change=lambda leading: reapply_floors(loop, knative) if leading else None,
            )
        knative = knative_actuator.KnativeActuator(
            kube,
            floor_object=options.knative_floor_object,
            wake=send_wake,
            is_leader=(lambda: True) if elector is None else (lambda: elector is not None and elector.is_leader),
            # configured or discovered Knative targets only: KEDA targets are served by the scaler
            applies_to=lambda target: (
                (spec := loop.specs.get(target)) is not None and spec.kind is targets.TargetKind.KNATIVE
            ),
        )
        actuators.append(knative)
    forecaster = forecast_loop.ForecastLoop(
        store=store,
        clock=clock,
        specs=lambda: loop.specs,
        on_change=lambda target: loop.mark_changed(target),
        telemetry=instruments,
    )
    loop = decider.Decider(
        target_specs=parsed.targets,
        store=store,
        actuators=actuators,
        clock=clock,
        telemetry=instruments,
        forecast=forecaster.current_forecast,
    )

    def current_floor(target: str) -> int | None:
        decision = loop.decisions.get(target)
        return None if decision is None else decision.floor

    intents = listener.IntentListener(
        specs=loop.specs,
        store=store,
        clock=clock,
        settings=options.listener,
        targets_view=loop.describe,
        telemetry=instruments,
        current_floor=current_floor,
        note_trace=loop.note_trace,
        metrics=observability.prometheus_text,
    )
    runner = web.AppRunner(listener.build_app(intents), access_log=None)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        stack.callback(observability.shutdown)
        if kube is not None:
            stack.callback(kube.close)
        grpc_port = None
        if options.grpc is not None:
            embedded = await stack.enter_async_context(
                scaler_main.run_scaler(
                    feed=store, specs=loop.specs, options=options.grpc, register=loop.add_target, prime=None
                )
            )
            grpc_port = embedded.port
        if isinstance(store, state.RedisStore):
            await store.start()  # after every listener (decider, scaler cache) is added
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
            campaigning = asyncio.create_task(elector.run(), name="leader-election")
            stack.callback(campaigning.cancel)
        if kube is not None and knative is not None:
            finder = knative_discovery.ServiceDiscovery(
                kube, knative_listeners(loop, knative, stack), namespaces=frozenset(options.knative_namespaces)
            )
            discovering = asyncio.create_task(finder.run(), name="knative-discovery")
            stack.callback(discovering.cancel)
        forecasting = asyncio.create_task(forecaster.run(), name="forecaster")
        stack.callback(forecasting.cancel)
        running = asyncio.create_task(loop.run(), name="decider")
        try:
            yield RunningService(
                decider=loop, store=store, listener=intents, http_port=port, grpc_port=grpc_port, decider_task=running
            )
            if running.done():
                running.result()  # the loop only ends by raising: surface it
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


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


async def run_standalone_scaler(
    *, store_url: str, config: Path | None, options: scaler_main.ScalerOptions, stop: asyncio.Event
) -> None:
    """`prewarm scaler`: serve stored decisions over gRPC, beside a `prewarm serve` that decides."""
    parsed = config_file.load_config_file(config) if config is not None else targets.ParsedTargets(())
    for warning in parsed.warnings:
        log.warning("%s", warning)
    store = build_store(store_url)
    specs = {str(spec.ref): spec for spec in parsed.targets}
    prime = store.start if isinstance(store, state.RedisStore) else None
    try:
        async with scaler_main.run_scaler(feed=store, specs=specs, options=options, prime=prime) as running:
            log.info("KEDA external scaler on port %d (store=%s)", running.port, store_url.split("@")[-1])
            await stop.wait()
    finally:
        await store.close()


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`) for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def read_tokens(token_file: Path | None, env: Mapping[str, str]) -> tuple[str, ...]:
    """Bearer tokens from a file (one a line, # comments) and/or PREWARM_TOKENS (comma-separated)."""
    tokens: list[str] = [t.strip() for t in env.get("PREWARM_TOKENS", "").split(",") if t.strip()]
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            problem = targets.Problem("--token-file", str(token_file), f"cannot be read: {e.strerror}")
            raise targets.ConfigError(str(token_file), [problem]) from e
        tokens += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return tuple(tokens)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """TLS for the gRPC server, matching KEDA's caCert / tlsClientCert / tlsClientKey trigger options."""
    parser.add_argument("--grpc-cert", type=Path, help="server certificate (PEM); enables TLS")
    parser.add_argument("--grpc-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--grpc-client-ca", type=Path, help="CA that signs client certificates; enables mTLS")


def scaler_options(args: argparse.Namespace) -> scaler_main.ScalerOptions:
    """The gRPC options shared by `serve --grpc` and `scaler`."""
    host, port = args.grpc
    return scaler_main.ScalerOptions(
        address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        tls_cert=args.grpc_cert,
        tls_key=args.grpc_key,
        tls_client_ca=args.grpc_client_ca,
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line: `prewarm serve ...`."""
    parser = argparse.ArgumentParser(
        prog="prewarm",
        description="Pre-warm GPU inference services.",
        epilog="Also: `prewarm cache exec|gc|stats` and `prewarm knative inject` (see docs/semi-warm.md).",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the decision loop")
    serve_cmd.add_argument(
        "--config", type=Path, help="YAML file with a `targets:` list (optional with --actuator knative)"
    )
    serve_cmd.add_argument("--store", default="memory", help="memory (default) or redis://host:port/db")
    serve_cmd.add_argument(
        "--actuator",
        action="append",
        choices=["log", "knative"],
        help="how floors are applied (repeat for several; default: log)",
    )
    serve_cmd.add_argument("--kubeconfig", type=Path, help="for --actuator knative (default: in-cluster)")
    serve_cmd.add_argument(
        "--knative-namespace",
        action="append",
        default=[],
        help="discover annotated Services only here (repeat; default: every namespace)",
    )
    serve_cmd.add_argument(
        "--leader-election",
        metavar="NAMESPACE/NAME",
        help="with several replicas: only the holder of this Lease patches Knative objects",
    )
    serve_cmd.add_argument(
        "--knative-floor-object",
        choices=["revision", "podautoscaler"],
        help="where min-scale goes (default: detected from the installed Knative version)",
    )
    serve_cmd.add_argument("--http", type=parse_address, default=("0.0.0.0", 8080), help="listener HOST:PORT")
    serve_cmd.add_argument("--token-file", type=Path, help="bearer tokens for server-side emitters, one a line")
    serve_cmd.add_argument("--cors-origin", action="append", default=[], help="browser origin allowed (repeat)")
    serve_cmd.add_argument("--rate", type=float, default=50.0, help="events per second per client")
    serve_cmd.add_argument("--burst", type=float, default=100.0, help="token-bucket burst per client")
    serve_cmd.add_argument("--grpc", type=parse_address, help="serve the KEDA external scaler on HOST:PORT")
    add_tls_arguments(serve_cmd)
    scaler_cmd = commands.add_parser("scaler", help="serve stored floors to KEDA (gRPC) beside a prewarm serve")
    scaler_cmd.add_argument("--store", required=True, help="redis://host:port/db shared with prewarm serve")
    scaler_cmd.add_argument("--config", type=Path, help="targets file (the same one prewarm serve reads)")
    scaler_cmd.add_argument("--grpc", type=parse_address, default=("0.0.0.0", 9090), help="HOST:PORT")
    add_tls_arguments(scaler_cmd)
    return parser


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _serve_until_signalled(options: ServeOptions) -> None:
    await serve(options, clock=clock.SystemClock(), out=sys.stdout, stop=_stop_on_signals(), env=os.environ)


async def _scaler_until_signalled(args: argparse.Namespace) -> None:
    await run_standalone_scaler(
        store_url=args.store, config=args.config, options=scaler_options(args), stop=_stop_on_signals()
    )


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (it is a dependency on Linux), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """`prewarm serve` and `prewarm scaler` (`cache` and `knative` are in prewarm.cache_commands);
    returns the process exit status."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] and raw[0] in ("cache", "knative"):
        from prewarm import cache_commands

        return cache_commands.main(raw)
    args = build_parser().parse_args(raw)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.command == "serve":
        if args.config is None and "knative" not in (args.actuator or []):
            print(
                "prewarm: --config is required (targets come from annotated Services only with --actuator knative)",
                file=sys.stderr,
            )
            return EXIT_CONFIG_ERROR
        try:
            settings = listener.ListenerSettings(
                tokens=read_tokens(args.token_file, os.environ),
                cors_origins=tuple(args.cors_origin),
                rate_per_second=args.rate,
                burst=args.burst,
            )
            if not settings.tokens:
                log.warning("no bearer tokens configured: any client may send events")
            options = ServeOptions(
                config=args.config,
                store=args.store,
                actuators=tuple(args.actuator or ["log"]),
                kubeconfig=args.kubeconfig,
                knative_floor_object=args.knative_floor_object,
                leader_lease=args.leader_election,
                knative_namespaces=tuple(args.knative_namespace),
                identity=f"{os.environ.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}",
                http_host=args.http[0],
                http_port=args.http[1],
                listener=settings,
                grpc=None if args.grpc is None else scaler_options(args),
            )
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                runner.run(_serve_until_signalled(options))
        except targets.ConfigError as e:
            print(f"prewarm: {e}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
    elif args.command == "scaler":
        try:
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                runner.run(_scaler_until_signalled(args))
        except targets.ConfigError as e:
            print(f"prewarm: {e}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
