"""`prewarm cache exec|stage|gc|stats`: the commands run in pods and on nodes against the shared
cache volume. Imports the standard library and `prewarm.cache` only, so a pod start does not load
the server stack (`prewarm cache warm`, which follows the store, lives in cli/cache_warm.py)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from prewarm.cache import entries, launch, model_source, ranged_copy, s3_source, staging

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


def add_arguments(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """`prewarm cache`'s verbs and their flags; returns the verbs, which the CLI extends with those
    that load the server stack (cli.SERVER_VERBS)."""
    verbs = parser.add_subparsers(dest="verb", required=True)
    run_cmd = verbs.add_parser("exec", help="point compile caches at this runtime's entry and exec CMD")
    run_cmd.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the mounted cache volume")
    run_cmd.add_argument("--model", default=None, help="model id (default: $PREWARM_MODEL)")
    run_cmd.add_argument("--salt", default="", help="an extra key input, to force a separate entry")
    run_cmd.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    stage = verbs.add_parser("stage", help="put a model's weights on the volume's weights/ tier (hub cache layout)")
    stage.add_argument("model", help="the model id, ORG/NAME")
    stage.add_argument("--revision", default="main", help="branch, tag or commit the snapshot is known by")
    stage.add_argument(
        "--source", required=True, help="the model's folder in a filesystem model store, or s3://BUCKET/PREFIX"
    )
    stage.add_argument("--s3-endpoint", help="an S3-compatible store's URL (default: AWS_ENDPOINT_URL, else AWS)")
    stage.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    stage.add_argument(
        "--sha256-manifest",
        type=Path,
        help="each file's sha256 (sha256sum output or JSON); git-lfs pointers need none",
    )
    stage.add_argument("--verify", action="store_true", help="hash every staged blob again, not only changed ones")
    stage.add_argument("--threads", type=int, default=ranged_copy.THREADS, help="ranged reads in flight per file")
    gc = verbs.add_parser("gc", help="evict least recently used entries not in use")
    gc.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    gc.add_argument("--max-bytes", type=parse_size, required=True, help="keep at most this much (50G, 512Mi)")
    stats = verbs.add_parser("stats", help="print entries, bytes, hits and misses as JSON")
    stats.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.set_defaults(run=run)
    return verbs


def run(args: argparse.Namespace) -> int:
    """Run one verb; returns the exit status (2 for bad input, with the reason on stderr)."""
    if args.verb == "exec":
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        model = args.model or os.environ.get("PREWARM_MODEL", "")
        if not model or not command:
            print("prewarm cache exec: needs --model (or PREWARM_MODEL) and -- CMD ARGS...", file=sys.stderr)
            return 2
        launch.exec_with_cache(command, root=args.root, model=model, salt=args.salt, env=os.environ)
    if args.verb == "stage":
        return run_stage(args)
    if args.verb in ("gc", "stats") and not args.root.is_dir():
        print(f"prewarm cache {args.verb}: --root {args.root}: not a folder", file=sys.stderr)
        return 2
    if args.verb == "gc":
        evicted = entries.collect_garbage(args.root, max_bytes=args.max_bytes, now=time.time())
        print(json.dumps({"evicted": evicted}))
        return 0
    if args.verb == "stats":
        print(json.dumps(entries.cache_stats(args.root, now=time.time()), indent=2))
        return 0
    return 2


def run_stage(args: argparse.Namespace) -> int:
    """Stage the weights; prints the result as JSON on stdout and one line on stderr."""
    try:
        expected = None
        if args.sha256_manifest is not None:
            expected = model_source.parse_sha256_manifest(
                args.sha256_manifest.read_text(), origin=str(args.sha256_manifest)
            )
        s3 = s3_source.connect(args.s3_endpoint) if s3_source.is_s3(args.source) else None
        result = staging.stage_weights(
            args.root,
            model=args.model,
            revision=args.revision,
            source=args.source,
            expected=expected,
            s3=s3,
            verify=args.verify,
            threads=max(1, args.threads),
        )
    except (OSError, model_source.SourceError, staging.StageError) as e:
        print(f"prewarm cache stage: {e}", file=sys.stderr)
        return 2
    what = "hit" if result.hit else f"staged {result.staged_bytes / 1e6:.1f} MB at {result.mb_per_s:.0f} MB/s"
    print(f"prewarm cache stage: {args.model}@{args.revision} ({result.revision_id}): {what}", file=sys.stderr)
    print(json.dumps(result.summary()))
    return 0
