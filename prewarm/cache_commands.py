"""`prewarm cache exec|gc|stats` and `prewarm knative inject`: the commands run in pods and on
manifests. Kept apart from the server's CLI so a pod start does not import the server stack."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prewarm import cache

DEFAULT_ROOT = Path("/var/cache/prewarm")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}


def parse_size(text: str) -> int:
    """`50G`, `512Mi`, `1000000` -> bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (for example 50G or 512Mi)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prewarm", description="Semi-warm starts: shared compile caches.")
    commands = parser.add_subparsers(dest="command", required=True)

    cache_cmd = commands.add_parser("cache", help="the shared compile cache")
    verbs = cache_cmd.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("exec", help="point compile caches at this runtime's entry and exec CMD")
    run.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the mounted cache volume")
    run.add_argument("--model", default=None, help="model id (default: $PREWARM_MODEL)")
    run.add_argument("--salt", default="", help="an extra key input, to force a separate entry")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    gc = verbs.add_parser("gc", help="evict least recently used entries not in use")
    gc.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    gc.add_argument("--max-bytes", type=parse_size, required=True, help="keep at most this much (50G, 512Mi)")
    stats = verbs.add_parser("stats", help="print entries, bytes, hits and misses as JSON")
    stats.add_argument("--root", type=Path, default=DEFAULT_ROOT)

    knative_cmd = commands.add_parser("knative", help="Knative helpers")
    knative_verbs = knative_cmd.add_subparsers(dest="verb", required=True)
    inject = knative_verbs.add_parser("inject", help="print SERVICE.yaml with the cache volume and wrapper added")
    inject.add_argument("service", type=Path)
    inject.add_argument("--claim", required=True, help="the PersistentVolumeClaim holding the cache")
    inject.add_argument("--model", help="model id (default: the Service's name)")
    inject.add_argument("--container", help="which container, when there are several")
    return parser


def main(argv: Sequence[str]) -> int:
    """Run one command; returns the exit status (2 for bad input, with the reason on stderr)."""
    args = build_parser().parse_args(argv)
    if args.command == "cache" and args.verb == "exec":
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        model = args.model or os.environ.get("PREWARM_MODEL", "")
        if not model or not command:
            print("prewarm cache exec: needs --model (or PREWARM_MODEL) and -- CMD ARGS...", file=sys.stderr)
            return 2
        cache.exec_with_cache(command, root=args.root, model=model, salt=args.salt, env=os.environ)
    if args.command == "cache" and args.verb == "gc":
        evicted = cache.collect_garbage(args.root, max_bytes=args.max_bytes, now=time.time())
        print(json.dumps({"evicted": evicted}))
        return 0
    if args.command == "cache" and args.verb == "stats":
        print(json.dumps(cache.cache_stats(args.root, now=time.time()), indent=2))
        return 0
    if args.command == "knative" and args.verb == "inject":
        from knative import inject as knative_inject

        try:
            text = args.service.read_text()
            sys.stdout.write(
                knative_inject.inject_cache(text, claim=args.claim, model=args.model, container=args.container)
            )
        except (OSError, knative_inject.InjectError) as e:
            print(f"prewarm knative inject: {args.service}: {e}", file=sys.stderr)
            return 2
        return 0
    return 2
