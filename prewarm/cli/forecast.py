"""`prewarm forecast explain TARGET --config FILE [--at TIME]`: the live forecaster's prediction for one
target at one minute, as JSON: the history it read, P(arrival in the horizon), the predicted demand
and the floor. The same code `prewarm serve` runs, started once for that minute."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from prewarm.cli import history_source, process
from prewarm.core import targets
from prewarm.service import clock, config_file, forecast_loop, history
from prewarm.service.store import build_store

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`prewarm forecast`'s verbs and their flags."""
    verbs = parser.add_subparsers(dest="verb", required=True)
    explain = verbs.add_parser("explain", help="print one target's forecast and what it was made from (JSON)")
    explain.add_argument("target", help="namespace/name of a forecast-enabled target in --config")
    explain.add_argument("--config", type=Path, required=True, help="the targets YAML `prewarm serve` reads")
    explain.add_argument(
        "--at", help='the minute to forecast: "YYYY-MM-DD HH:MM:SS" or ISO 8601 (UTC without an offset; default now)'
    )
    explain.add_argument("--store", default="memory", help="read session openings from this store (redis://...)")
    history_source.add_prometheus_arguments(explain)
    parser.set_defaults(run=run)


def parse_at(text: str | None, now: datetime) -> datetime:
    """`--at` as a UTC instant; `now` when not given. Raises ConfigError naming the flag."""
    if text is None:
        return now
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise targets.ConfigError(
            "--at", [targets.Problem("--at", text, "is not YYYY-MM-DD HH:MM:SS or ISO 8601")]
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


async def explain(args: argparse.Namespace, env: Mapping[str, str], *, now: datetime) -> dict[str, Any]:
    """Load the config, read the history the target's forecast needs, fit and predict at `--at`.

    Raises ConfigError for a target that is not in the config or not forecast-enabled, or settings
    that are invalid.
    """
    parsed = config_file.load_config_file(args.config)
    specs = {str(spec.ref): spec for spec in parsed.targets}
    spec = specs.get(args.target)
    problems: list[targets.Problem] = []
    if spec is None or not spec.forecast.enabled:
        why = "is not a target in the config" if spec is None else "does not have forecast.enabled"
        problems.append(targets.Problem("TARGET", args.target, why))

    def collect(check: Callable[[], T]) -> T | None:
        try:
            return check()
        except targets.ConfigError as e:
            problems.extend(e.problems)
            return None

    reported = len(problems)
    settings = collect(lambda: history_source.prometheus_settings(args, env))
    if len(problems) == reported:  # with bad Prometheus flags, "needs --prometheus" would only repeat them
        collect(lambda: history.require_prometheus(parsed.targets, settings, source=str(args.config)))
    at = collect(lambda: parse_at(args.at, now))
    store = collect(lambda: build_store(args.store))
    if problems or spec is None or at is None or store is None:
        raise targets.ConfigError("prewarm forecast explain's arguments", problems)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        reader = None
        if settings is not None:
            session = history.open_session(settings)
            stack.push_async_callback(session.close)
            reader = history.HistoryReader(history.PrometheusClient(session=session, settings=settings))
        await store.start()
        forecaster = forecast_loop.ForecastLoop(
            store=store,
            clock=clock.ManualClock(at),
            specs=lambda: specs,  # every forecast-enabled target, pooled as `serve` pools them
            on_change=lambda target: None,
            history_reader=reader,
        )
        await forecaster.prepare()
        return forecaster.explain(spec)


def run(args: argparse.Namespace) -> int:
    """Print the explanation; 2 with one message when the config, target or flags are wrong."""
    try:
        result = asyncio.run(explain(args, os.environ, now=datetime.now(UTC)))
    except targets.ConfigError as e:
        print(f"prewarm forecast explain: {e}", file=sys.stderr)
        return process.EXIT_CONFIG_ERROR
    print(json.dumps(result, indent=2))
    return 0
