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
    "cache": "semi-warm starts: compile caches and model weights on the node's volume (exec, stage, warm, gc, stats)",
    "knative": "Knative helpers (inject the cache into a Service)",
    "inject": "add the shared compile cache to a Knative Service or Deployment manifest",
    "forecast": "explain one target's live forecast from its history (JSON)",
    "history": "export a trace as Prometheus request history (OpenMetrics)",
}

# Verbs that load the server stack, of a command whose other verbs must not (`cache` runs in pods):
# each lives in a module of its own, imported only when that verb is run or all help is built.
SERVER_VERBS = {
    "cache": {"warm": ("cache_warm", "stage targets' weights on this node ahead of need (follows the decisions)")},
}


def build_parser(only: str | None = None, verb: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, just that command's flags are loaded (and of its server
    verbs, only `verb`)."""
    parser = argparse.ArgumentParser(prog="prewarm", description="Pre-warm GPU inference services.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        if only is None or only == name:
            verbs = importlib.import_module(f"prewarm.cli.{name}").add_arguments(command)
            for server_verb, (module, verb_help) in SERVER_VERBS.get(name, {}).items():
                verb_parser = verbs.add_parser(server_verb, help=verb_help)
                if only is None or server_verb == verb:
                    importlib.import_module(f"prewarm.cli.{module}").add_arguments(verb_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `prewarm` command; returns the process exit status (2 for bad input)."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    only = next((word for word in args_in if word in COMMANDS), None)
    after = args_in[args_in.index(only) + 1 :] if only is not None else []
    args = build_parser(only, after[0] if after else None).parse_args(args_in)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    status: int = args.run(args)
    return status
