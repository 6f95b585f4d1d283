"""`prewarm serve`: parse the flags and environment into `ServeOptions` and run the service."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from prewarm.cli import arguments, history_source, process
from prewarm.core import targets
from prewarm.service import clock, composition, listener

log = logging.getLogger("prewarm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm serve`'s flags."""
    parser.add_argument(
        "--config", type=Path, help="YAML file with a `targets:` list (optional with --actuator knative)"
    )
    parser.add_argument(
        "--store",
        default="memory",
        help="memory (default), redis://host:port/db, redis+sentinel://host:port[,host:port]/service[/db] "
        "or redis+cluster://host:port[,host:port] (docs/events.md)",
    )
    parser.add_argument(
        "--decider-lease",
        type=arguments.positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="with Redis: one replica decides each target under a lease this long; a standby takes over "
        "within it when that replica dies (default 10)",
    )
    parser.add_argument(
        "--redis-wait-replicas",
        type=arguments.count,
        default=0,
        metavar="N",
        help="acknowledge events only once N Redis replicas have them (WAIT), else 503 (default 0)",
    )
    parser.add_argument(
        "--redis-wait-timeout",
        type=arguments.positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="how long WAIT may take (default 1)",
    )
    parser.add_argument(
        "--actuator",
        action="append",
        choices=["log", "knative"],
        help="how floors are applied (repeat for several; default: log)",
    )
    parser.add_argument("--kubeconfig", type=Path, help="for --actuator knative (default: in-cluster)")
    parser.add_argument(
        "--knative-namespace",
        action="append",
        default=[],
        help="discover annotated Services only here (repeat; default: every namespace)",
    )
    parser.add_argument(
        "--leader-election",
        metavar="NAMESPACE/NAME",
        help="with several replicas: only the holder of this Lease patches Knative objects",
    )
    parser.add_argument(
        "--knative-floor-object",
        choices=["revision", "podautoscaler"],
        help="where min-scale goes (default: detected from the installed Knative version)",
    )
    parser.add_argument(
        "--knative-system-namespace",
        default="knative-serving",
        metavar="NAMESPACE",
        help="where Knative Serving runs; its version is read from this namespace's labels or its controller's",
    )
    parser.add_argument("--http", type=arguments.parse_address, default=("0.0.0.0", 8080), help="listener HOST:PORT")
    parser.add_argument("--token-file", type=Path, help="bearer tokens for server-side emitters, one a line")
    parser.add_argument("--cors-origin", action="append", default=[], help="browser origin allowed (repeat)")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second per client")
    parser.add_argument("--burst", type=float, default=100.0, help="token-bucket burst per client")
    parser.add_argument("--grpc", type=arguments.parse_address, help="serve the KEDA external scaler on HOST:PORT")
    arguments.add_tls_arguments(parser)
    arguments.add_tuning_arguments(parser)
    history_source.add_prometheus_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 2 with one message when the configuration is invalid."""
    if args.config is None and "knative" not in (args.actuator or []):
        print(
            "prewarm: --config is required (targets come from annotated Services only with --actuator knative)",
            file=sys.stderr,
        )
        return process.EXIT_CONFIG_ERROR
    try:
        options = serve_options(args, os.environ)
    except (targets.ConfigError, ValueError) as e:
        print(f"prewarm: {e}", file=sys.stderr)
        return process.EXIT_CONFIG_ERROR
    return process.run_until_signalled(
        lambda stop: composition.serve(options, clock=clock.SystemClock(), out=sys.stdout, stop=stop, env=os.environ)
    )


def serve_options(args: argparse.Namespace, env: Mapping[str, str]) -> composition.ServeOptions:
    """`ServeOptions` from the flags and the environment; ConfigError when a file cannot be read."""
    settings = listener.ListenerSettings(
        tokens=arguments.read_tokens(args.token_file, env),
        cors_origins=tuple(args.cors_origin),
        rate_per_second=args.rate,
        burst=args.burst,
    )
    if not settings.tokens:
        log.warning("no bearer tokens configured: any client may send events")
    return composition.ServeOptions(
        config=args.config,
        store=args.store,
        actuators=tuple(args.actuator or ["log"]),
        kubeconfig=args.kubeconfig,
        knative_floor_object=args.knative_floor_object,
        knative_system_namespace=args.knative_system_namespace,
        leader_lease=args.leader_election,
        knative_namespaces=tuple(args.knative_namespace),
        identity=f"{env.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}",
        http_host=args.http[0],
        http_port=args.http[1],
        listener=settings,
        grpc=None if args.grpc is None else arguments.scaler_options(args),
        decider_lease=args.decider_lease,
        store_wait_replicas=args.redis_wait_replicas,
        store_wait_timeout=args.redis_wait_timeout,
        tuning=arguments.history_options(args),
        prometheus=history_source.prometheus_settings(args, env),
    )
