"""The `prewarm` command line: one module per command, each adding its flags and running itself.

Only the command being run is imported, so a pod start (`prewarm cache exec`) never loads the
server stack. This package is the edge where arguments, files and the environment are read.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

COMMANDS = {
    "serve": "run the decision loop (listener, store, decider, actuators)",
    "scaler": "serve stored floors to KEDA (gRPC) beside a prewarm serve",
    "replay": "score pre-warming policies on a request trace",
    "tune": "show the forecast settings chosen for objectives and fleet budgets",
    "cache": "semi-warm starts: the shared compile cache (exec, gc, stats)",
    "knative": "Knative helpers (inject the cache into a Service)",
    "inject": "add the shared compile cache to a Knative Service or Deployment manifest",
    "forecast": "explain one target's live forecast from its history (JSON)",
    "history": "export a trace as Prometheus request history (OpenMetrics)",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, just that command's flags are loaded."""
    parser = argparse.ArgumentParser(prog="prewarm", description="Pre-warm GPU inference services.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        if only is None or only == name:
            importlib.import_module(f"prewarm.cli.{name}").add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `prewarm` command; returns the process exit status (2 for bad input)."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    only = next((word for word in args_in if word in COMMANDS), None)
    args = build_parser(only).parse_args(args_in)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    status: int = args.run(args)
    return status
