"""`prewarm cache warm`: the node follower's composition root (one per node, a DaemonSet). Reads the
targets file for each target's weights, builds the Redis store and the Kubernetes client, and runs
the follower until SIGTERM; without --follow it works every target once and exits.

A verb of `prewarm cache`, but in a module of its own: it loads the server stack (Redis, the
Kubernetes client), which the pod-side `prewarm cache` verbs must not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

from knative import kube_api, kube_connection
from prewarm.cache import s3_source
from prewarm.cli import arguments, cache, process
from prewarm.core import targets
from prewarm.service import config_file, knative_targets, store, weights_follower

log = logging.getLogger("prewarm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm cache warm`'s flags."""
    parser.add_argument("--follow", action="store_true", help="keep following the decisions (else one pass)")
    parser.add_argument("--store", required=True, help="the Redis the deciders write to (redis://, redis+sentinel://)")
    parser.add_argument("--config", type=Path, required=True, help="the targets file; targets with `weights:` count")
    parser.add_argument("--node", default=None, help="this node's name (default: $NODE_NAME)")
    parser.add_argument("--root", type=Path, default=cache.DEFAULT_ROOT, help="the node's cache volume")
    parser.add_argument(
        "--budget", type=cache.parse_size, required=True, help="bytes of weights this node keeps (200G, 500Gi)"
    )
    parser.add_argument(
        "--lead",
        type=arguments.positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="stage this long before a scheduled rise from zero: the cold-start time (default 60)",
    )
    parser.add_argument(
        "--relist",
        type=arguments.positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="work every target again this often, for nodes that joined, left or were cordoned (default 300)",
    )
    parser.add_argument(
        "--node-selector", default="", help="label selector of the nodes the targets' pods run on (the DaemonSet's)"
    )
    parser.add_argument("--kubeconfig", type=Path, help="default: in-cluster credentials")
    parser.add_argument("--s3-endpoint", help="an S3-compatible store's URL, for s3:// sources (default: AWS's)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Follow (or make one pass); 2 with the reason when the flags or the targets file are invalid,
    1 when a pass could not bring every target in line (each named on stderr)."""
    failed: list[str] = []
    code = process.run_until_signalled(lambda stop: warm(args, stop, failed=failed))
    return code or (1 if failed else 0)


async def warm(args: argparse.Namespace, stop: asyncio.Event, *, failed: list[str] | None = None) -> None:
    """Build the follower from the flags and run it until `stop` is set (or make one pass, adding
    the targets it could not bring in line to `failed`: one target's failure stops no other)."""
    node = args.node or os.environ.get("NODE_NAME", "")
    problems = [] if node else [targets.Problem("--node", None, "is required (or NODE_NAME from the downward API)")]
    parsed = config_file.load_config_file(args.config)
    specs = {str(spec.ref): spec.weights for spec in parsed.targets if spec.weights is not None}
    if not specs:
        problems.append(targets.Problem("--config", str(args.config), "names no target with weights"))
    if problems:
        raise targets.ConfigError("prewarm cache warm", problems)
    settings = weights_follower.FollowerSettings(
        node=node,
        root=args.root,
        budget_bytes=args.budget,
        lead=timedelta(seconds=args.lead),
        node_selector=args.node_selector,
        relist=timedelta(seconds=args.relist),
    )
    async with contextlib.AsyncExitStack() as closing:  # what is opened is closed on any way out
        feed = store.RedisStore.from_url(args.store)
        closing.push_async_callback(_close_quietly, feed)
        needs_s3 = any(s3_source.is_s3(w.source) for w in specs.values())
        s3 = s3_source.connect(args.s3_endpoint) if needs_s3 else None
        kube_configuration = knative_targets.load_kube_configuration(args.kubeconfig)
        kube_session = kube_connection.open_session(kube_configuration)
        closing.push_async_callback(kube_session.close)
        api = kube_api.KubeAPI(kube_configuration, kube_session)
        follower = weights_follower.WeightsFollower(feed=feed, nodes=api, specs=specs, settings=settings, s3=s3)
        log.info("following %d targets with weights on node %s (budget %d bytes)", len(specs), node, args.budget)
        if not args.follow:
            for target in specs:
                try:
                    await follower.reconcile(target)
                except Exception as e:  # reported; the next target is worked all the same
                    print(f"prewarm cache warm: {target}: {e}", file=sys.stderr)
                    if failed is not None:
                        failed.append(target)
            return
        async with weights_follower.following(follower):
            await feed.start()
            await stop.wait()


async def _close_quietly(feed: store.RedisStore) -> None:
    """Close the decision feed; a failure to close is not the command's failure."""
    with contextlib.suppress(Exception):
        await feed.close()
