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
    parser.add_argument("--store", default="memory", help="memory (default) or redis://host:port/db")
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
    parser.add_argument("--http", type=arguments.parse_address, default=("0.0.0.0", 8080), help="listener HOST:PORT")
    parser.add_argument("--token-file", type=Path, help="bearer tokens for server-side emitters, one a line")
    parser.add_argument("--cors-origin", action="append", default=[], help="browser origin allowed (repeat)")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second per client")
    parser.add_argument("--burst", type=float, default=100.0, help="token-bucket burst per client")
    parser.add_argument("--grpc", type=arguments.parse_address, help="serve the KEDA external scaler on HOST:PORT")
    arguments.add_tls_arguments(parser)
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
    except targets.ConfigError as e:
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
        leader_lease=args.leader_election,
        knative_namespaces=tuple(args.knative_namespace),
        identity=f"{env.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}",
        http_host=args.http[0],
        http_port=args.http[1],
        listener=settings,
        grpc=None if args.grpc is None else arguments.scaler_options(args),
        prometheus=history_source.prometheus_settings(args, env),
    )
