"""The `prewarm` command and the composition root of `prewarm serve`.

This is the one place that reads files, arguments and the environment, builds the store, clock
and actuators, and hands them down. Nothing below it builds a client of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from prewarm import actuation, clock, decider, state, targets

log = logging.getLogger("prewarm")

EXIT_CONFIG_ERROR = 2


@dataclasses.dataclass(frozen=True, slots=True)
class ServeOptions:
    """What `prewarm serve` was asked to run, parsed from the command line."""

    config: Path
    store: str = "memory"
    actuator: str = "log"


def load_config_file(path: Path) -> targets.ParsedTargets:
    """Read and parse a targets file; raise ConfigError (never OSError) when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise targets.ConfigError(
            str(path), [targets.Problem("--config", str(path), f"cannot be read: {e.strerror}")]
        ) from e
    return targets.parse_config_document(text, source=str(path))


async def serve(
    options: ServeOptions,
    *,
    clock: clock.Clock,
    out: TextIO,
    stop: asyncio.Event,
) -> None:
    """Run the decision loop with the configured store and actuators until `stop` is set.

    Raises ConfigError before starting anything when the configuration is invalid.
    """
    parsed = load_config_file(options.config)
    for warning in parsed.warnings:
        log.warning("%s", warning)
    store = state.MemoryStore()
    actuators: list[actuation.Actuator] = [actuation.LogActuator(out)]
    loop = decider.Decider(target_specs=parsed.targets, store=store, actuators=actuators, clock=clock)
    log.info("serving %d targets (store=%s, actuator=%s)", len(parsed.targets), options.store, options.actuator)
    running = asyncio.create_task(loop.run(), name="decider")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # the loop only ends by raising: surface it
    finally:
        for task in (running, stopping):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await store.close()


def build_parser() -> argparse.ArgumentParser:
    """The command line: `prewarm serve ...`."""
    parser = argparse.ArgumentParser(prog="prewarm", description="Pre-warm GPU inference services.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the decision loop")
    serve_cmd.add_argument("--config", type=Path, required=True, help="YAML file with a `targets:` list")
    serve_cmd.add_argument("--store", default="memory", choices=["memory"], help="where state lives")
    serve_cmd.add_argument("--actuator", default="log", choices=["log"], help="how floors are applied")
    return parser


async def _serve_until_signalled(options: ServeOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(options, clock=clock.SystemClock(), out=sys.stdout, stop=stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prewarm` console script; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.command == "serve":
        options = ServeOptions(config=args.config, store=args.store, actuator=args.actuator)
        try:
            asyncio.run(_serve_until_signalled(options))
        except targets.ConfigError as e:
            print(f"prewarm: {e}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
