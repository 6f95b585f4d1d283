"""Actuators apply decided floors to the world; the `log` actuator prints them (embedded default).

An actuator never decides and never retries: a reconciler (prewarm/service/reconciler.py) hands it
the newest decision of one target at a time and retries with backoff whatever it raises.
"""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Protocol, TextIO

from prewarm.core import actuation as outcomes
from prewarm.core import policy


class Actuator(Protocol):
    """Applies floors. Never decides, never retries: raise on a failure that may pass."""

    name: str

    async def apply(self, decision: policy.FloorDecision, previous: policy.FloorDecision | None) -> outcomes.Result:
        """Make `decision.floor` effective for `decision.target`; `previous` is the decision this
        actuator last applied for it (None on first sight)."""
        ...

    async def release(self, target: str) -> outcomes.Result:
        """Pre-warming ended for `target`: undo what the floors did (when anything needs undoing)."""
        ...


def format_floor_change(decision: policy.FloorDecision, previous: policy.FloorDecision | None) -> str:
    """One line: time (UTC, to the second), target, old -> new, source and reason."""
    old = "-" if previous is None else str(previous.floor)
    at = decision.decided_at
    if at.utcoffset():
        at = at.astimezone(UTC)
    # isoformat, not strftime: a tenth of its cost, and a relist logs a line per target
    return (
        f"{at.isoformat(timespec='seconds')[:19]}Z {decision.target} {old} -> {decision.floor} "
        f"[{decision.source.value}] {decision.reason}"
    )


class LogActuator:
    """Writes one line per floor change to a stream, flushed once per turn of the event loop: pipes
    see each line at once, and a relist of 50,000 floors makes no 50,000 flushes."""

    name = "log"

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._flushing = False

    async def apply(self, decision: policy.FloorDecision, previous: policy.FloorDecision | None) -> outcomes.Result:
        self._stream.write(format_floor_change(decision, previous) + "\n")
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)
        return outcomes.APPLIED

    def _flush(self) -> None:
        self._flushing = False
        self._stream.flush()

    async def release(self, target: str) -> outcomes.Result:
        return outcomes.APPLIED
