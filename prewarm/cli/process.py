"""What a long-running command's process needs: its event loop and a stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from prewarm.core import targets

EXIT_CONFIG_ERROR = 2


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (it is a dependency on Linux), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> int:
    """Run `main(stop)` on the event loop until it returns (it should return once SIGINT or SIGTERM
    sets `stop`); 2 with one message on stderr when the configuration is invalid."""

    async def with_signals() -> None:
        await main(stop_on_signals())

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(with_signals())
    except targets.ConfigError as e:
        print(f"prewarm: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0
