"""Actuators apply decided floors to the world; the `log` actuator prints them (embedded default).

An actuator never decides and never retries: a reconciler (prewarm/service/reconciler.py) hands it
the newest decision of one target at a time and retries with backoff whatever it raises.
"""

from __future__ import annotations

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
    """One line: time, target, old -> new, source and reason."""
    old = "-" if previous is None else str(previous.floor)
    return (
        f"{decision.decided_at:%Y-%m-%dT%H:%M:%SZ} {decision.target} {old} -> {decision.floor} "
        f"[{decision.source.value}] {decision.reason}"
    )


class LogActuator:
    """Writes one line per floor change to a stream and flushes it, so pipes see it at once."""

    name = "log"

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    async def apply(self, decision: policy.FloorDecision, previous: policy.FloorDecision | None) -> outcomes.Result:
        self._stream.write(format_floor_change(decision, previous) + "\n")
        self._stream.flush()
        return outcomes.APPLIED

    async def release(self, target: str) -> outcomes.Result:
        return outcomes.APPLIED
