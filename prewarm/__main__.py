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
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from aiohttp import web

from prewarm import actuation, clock, decider, listener, state, targets

log = logging.getLogger("prewarm")

EXIT_CONFIG_ERROR = 2


@dataclasses.dataclass(frozen=True, slots=True)
class ServeOptions:
    """What `prewarm serve` was asked to run, parsed from the command line and environment."""

    config: Path | None
    store: str = "memory"
    actuator: str = "log"
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    listener: listener.ListenerSettings = dataclasses.field(default_factory=listener.ListenerSettings)


def load_config_file(path: Path) -> targets.ParsedTargets:
    """Read and parse a targets file; raise ConfigError (never OSError) when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        problem = targets.Problem("--config", str(path), f"cannot be read: {e.strerror}")
        raise targets.ConfigError(str(path), [problem]) from e
    return targets.parse_config_document(text, source=str(path))


def build_store(url: str) -> state.MemoryStore | state.RedisStore:
    """`memory`, or `redis://host:port/db` (`rediss://` for TLS)."""
    if url == "memory":
        return state.MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return state.RedisStore.from_url(url)
    raise targets.ConfigError("--store", [targets.Problem("--store", url, "is not memory or a redis:// URL")])


@dataclasses.dataclass(slots=True)
class RunningService:
    """A started `prewarm serve`: what tests and the CLI need to reach it."""

    decider: decider.Decider
    store: state.Store
    listener: listener.IntentListener
    http_port: int


@contextlib.asynccontextmanager
async def run_service(options: ServeOptions, *, clock: clock.Clock, out: TextIO) -> AsyncIterator[RunningService]:
    """Build and start every part of `prewarm serve`; stop them all on exit.

    Raises ConfigError before starting anything when the configuration is invalid.
    """
    parsed = load_config_file(options.config) if options.config is not None else targets.ParsedTargets(())
    for warning in parsed.warnings:
        log.warning("%s", warning)
    store = build_store(options.store)
    actuators: list[actuation.Actuator] = [actuation.LogActuator(out)]
    loop = decider.Decider(target_specs=parsed.targets, store=store, actuators=actuators, clock=clock)
    intents = listener.IntentListener(
        specs=loop.specs, store=store, clock=clock, settings=options.listener, targets_view=loop.describe
    )
    runner = web.AppRunner(listener.build_app(intents), access_log=None)
    running: asyncio.Task[None] | None = None
    try:
        if isinstance(store, state.RedisStore):
            await store.start()
        await runner.setup()
        site = web.TCPSite(runner, options.http_host, options.http_port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else options.http_port
        log.info(
            "serving %d targets on http://%s:%d (store=%s, actuator=%s)",
            len(parsed.targets),
            options.http_host,
            port,
            options.store.split("@")[-1],
            options.actuator,
        )
        running = asyncio.create_task(loop.run(), name="decider")
        yield RunningService(decider=loop, store=store, listener=intents, http_port=port)
        if running.done():
            running.result()  # the loop only ends by raising: surface it
    finally:
        if running is not None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        await runner.cleanup()
        await store.close()


async def serve(options: ServeOptions, *, clock: clock.Clock, out: TextIO, stop: asyncio.Event) -> None:
    """Run `prewarm serve` until `stop` is set."""
    async with run_service(options, clock=clock, out=out):
        await stop.wait()


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`) for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def read_tokens(token_file: Path | None, env: Mapping[str, str]) -> tuple[str, ...]:
    """Bearer tokens from a file (one a line, # comments) and/or PREWARM_TOKENS (comma-separated)."""
    tokens: list[str] = [t.strip() for t in env.get("PREWARM_TOKENS", "").split(",") if t.strip()]
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            problem = targets.Problem("--token-file", str(token_file), f"cannot be read: {e.strerror}")
            raise targets.ConfigError(str(token_file), [problem]) from e
        tokens += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return tuple(tokens)


def build_parser() -> argparse.ArgumentParser:
    """The command line: `prewarm serve ...`."""
    parser = argparse.ArgumentParser(prog="prewarm", description="Pre-warm GPU inference services.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the decision loop")
    serve_cmd.add_argument("--config", type=Path, required=True, help="YAML file with a `targets:` list")
    serve_cmd.add_argument("--store", default="memory", help="memory (default) or redis://host:port/db")
    serve_cmd.add_argument("--actuator", default="log", choices=["log"], help="how floors are applied")
    serve_cmd.add_argument("--http", type=parse_address, default=("0.0.0.0", 8080), help="listener HOST:PORT")
    serve_cmd.add_argument("--token-file", type=Path, help="bearer tokens for server-side emitters, one a line")
    serve_cmd.add_argument("--cors-origin", action="append", default=[], help="browser origin allowed (repeat)")
    serve_cmd.add_argument("--rate", type=float, default=50.0, help="events per second per client")
    serve_cmd.add_argument("--burst", type=float, default=100.0, help="token-bucket burst per client")
    return parser


async def _serve_until_signalled(options: ServeOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(options, clock=clock.SystemClock(), out=sys.stdout, stop=stop)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (it is a dependency on Linux), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prewarm` console script; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.command == "serve":
        try:
            settings = listener.ListenerSettings(
                tokens=read_tokens(args.token_file, os.environ),
                cors_origins=tuple(args.cors_origin),
                rate_per_second=args.rate,
                burst=args.burst,
            )
            if not settings.tokens:
                log.warning("no bearer tokens configured: any client may send events")
            options = ServeOptions(
                config=args.config,
                store=args.store,
                actuator=args.actuator,
                http_host=args.http[0],
                http_port=args.http[1],
                listener=settings,
            )
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                runner.run(_serve_until_signalled(options))
        except targets.ConfigError as e:
            print(f"prewarm: {e}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
