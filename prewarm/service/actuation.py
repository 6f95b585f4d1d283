"""Actuators apply decided floors to the world; the `log` actuator prints them (embedded default)."""

from __future__ import annotations

from typing import Protocol, TextIO

from prewarm.core import policy


class Actuator(Protocol):
    """Applies a floor. Never decides: it is handed decisions whose floor changed."""

    name: str

    async def apply(self, decision: policy.FloorDecision, previous: policy.FloorDecision | None) -> None:
        """Make `decision.floor` effective for `decision.target`; `previous` is None on first sight."""
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

    async def apply(self, decision: policy.FloorDecision, previous: policy.FloorDecision | None) -> None:
        self._stream.write(format_floor_change(decision, previous) + "\n")
        self._stream.flush()
