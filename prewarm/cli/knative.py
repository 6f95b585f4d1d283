"""`prewarm knative inject`: print a Service manifest with the shared compile cache added."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prewarm.cache import inject


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm knative`'s verbs and their flags."""
    verbs = parser.add_subparsers(dest="verb", required=True)
    inject_cmd = verbs.add_parser("inject", help="print SERVICE.yaml with the cache volume and wrapper added")
    inject_cmd.add_argument("service", type=Path)
    inject_cmd.add_argument("--claim", required=True, help="the PersistentVolumeClaim holding the cache")
    inject_cmd.add_argument("--model", help="model id (default: the Service's name)")
    inject_cmd.add_argument("--container", help="which container, when there are several")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the injected manifest; 2 with the reason on stderr when it cannot be injected."""
    try:
        text = args.service.read_text()
        sys.stdout.write(inject.inject_cache(text, claim=args.claim, model=args.model, container=args.container))
    except (OSError, inject.InjectError) as e:
        print(f"prewarm knative inject: {args.service}: {e}", file=sys.stderr)
        return 2
    return 0
