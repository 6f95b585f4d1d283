"""`prewarm inject`: print a Knative Service or Deployment manifest with the shared compile cache added."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prewarm.cache import inject


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm inject`'s flags (also those of `prewarm knative inject`)."""
    parser.add_argument(
        "manifest", type=Path, help="a Knative Service, a Deployment, or a Deployment and its ScaledObject"
    )
    parser.add_argument("--claim", required=True, help="the PersistentVolumeClaim holding the cache")
    parser.add_argument("--model", help="model id (default: the workload's name)")
    parser.add_argument("--container", help="which container, when there are several")
    parser.add_argument(
        "--weights",
        metavar="MODEL",
        help="the hub model id whose staged weights the pods read (default: the prewarm.dev/weights-model annotation)",
    )
    parser.add_argument("--name", help="which workload, when the file holds several")
    parser.add_argument(
        "--command",
        "--entrypoint",
        dest="entrypoint",
        metavar="'PROGRAM ARGS...'",
        help="the image's entrypoint, for a container that sets only args ('' when the args are the whole command)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the injected manifest and, on stderr, what was chosen; 2 with the reason when it cannot be injected."""
    prog = "prewarm knative inject" if getattr(args, "command", None) == "knative" else "prewarm inject"
    try:
        injected = inject.inject_cache(
            args.manifest.read_text(),
            claim=args.claim,
            model=args.model,
            container=args.container,
            command=args.entrypoint,
            name=args.name,
            weights=args.weights,
        )
    except (OSError, inject.InjectError) as e:
        print(f"{prog}: {args.manifest}: {e}", file=sys.stderr)
        return 2
    for note in injected.notes:
        print(f"{prog}: {note}", file=sys.stderr)
    sys.stdout.write(injected.text)
    return 0
