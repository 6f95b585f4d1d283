"""`prewarm scaler`: serve stored decisions to KEDA over gRPC, beside a `prewarm serve` that decides."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from prewarm.cli import arguments, process
from prewarm.core import targets
from prewarm.service import config_file
from prewarm.service.store import build_store
from scaler import __main__ as scaler_main

log = logging.getLogger("prewarm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm scaler`'s flags."""
    parser.add_argument("--store", required=True, help="redis://host:port/db shared with prewarm serve")
    parser.add_argument("--config", type=Path, help="targets file (the same one prewarm serve reads)")
    parser.add_argument("--grpc", type=arguments.parse_address, default=("0.0.0.0", 9090), help="HOST:PORT")
    arguments.add_tls_arguments(parser)
    parser.set_defaults(run=run)


async def run_standalone_scaler(
    *, store_url: str, config: Path | None, options: scaler_main.ScalerOptions, stop: asyncio.Event
) -> None:
    """Serve the stored decisions of the targets in `config` until `stop` is set."""
    parsed = config_file.load_config_file(config) if config is not None else targets.ParsedTargets(())
    for warning in parsed.warnings:
        log.warning("%s", warning)
    store = build_store(store_url)
    specs = {str(spec.ref): spec for spec in parsed.targets}
    prime = store.start
    try:
        async with scaler_main.run_scaler(feed=store, specs=specs, options=options, prime=prime) as running:
            log.info("KEDA external scaler on port %d (store=%s)", running.port, store_url.split("@")[-1])
            await stop.wait()
    finally:
        await store.close()


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 2 with one message when the configuration is invalid."""
    return process.run_until_signalled(
        lambda stop: run_standalone_scaler(
            store_url=args.store, config=args.config, options=arguments.scaler_options(args), stop=stop
        )
    )
