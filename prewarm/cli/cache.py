"""`prewarm cache exec|gc|stats`: the commands run in pods against the shared cache volume. Imports
the standard library and `prewarm.cache` only, so a pod start does not load the server stack."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from prewarm.cache import entries, launch

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm cache`'s verbs and their flags."""
    verbs = parser.add_subparsers(dest="verb", required=True)
    run_cmd = verbs.add_parser("exec", help="point compile caches at this runtime's entry and exec CMD")
    run_cmd.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the mounted cache volume")
    run_cmd.add_argument("--model", default=None, help="model id (default: $PREWARM_MODEL)")
    run_cmd.add_argument("--salt", default="", help="an extra key input, to force a separate entry")
    run_cmd.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    gc = verbs.add_parser("gc", help="evict least recently used entries not in use")
    gc.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    gc.add_argument("--max-bytes", type=parse_size, required=True, help="keep at most this much (50G, 512Mi)")
    stats = verbs.add_parser("stats", help="print entries, bytes, hits and misses as JSON")
    stats.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run one verb; returns the exit status (2 for bad input, with the reason on stderr)."""
    if args.verb == "exec":
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        model = args.model or os.environ.get("PREWARM_MODEL", "")
        if not model or not command:
            print("prewarm cache exec: needs --model (or PREWARM_MODEL) and -- CMD ARGS...", file=sys.stderr)
            return 2
        launch.exec_with_cache(command, root=args.root, model=model, salt=args.salt, env=os.environ)
    if args.verb == "gc":
        evicted = entries.collect_garbage(args.root, max_bytes=args.max_bytes, now=time.time())
        print(json.dumps({"evicted": evicted}))
        return 0
    if args.verb == "stats":
        print(json.dumps(entries.cache_stats(args.root, now=time.time()), indent=2))
        return 0
    return 2
