"""Where a target's state lives in Redis: one hash tag per target, so a target's keys share a Cluster slot."""

from __future__ import annotations

from datetime import datetime

import redis.crc

CHANGES_CHANNEL = "prewarm:changes"
DECISIONS_CHANNEL = "prewarm:decisions"


def key(target: str, part: str) -> str:
    """The key of one part (sessions, decision, leader...) of `target`'s state."""
    return f"prewarm:{{{target}}}:{part}"


def slot(target: str) -> int:
    """The Cluster hash slot that holds every key of `target`."""
    return int(redis.crc.key_slot(key(target, "sessions").encode()))


def ms(at: datetime) -> int:
    """A time as the milliseconds since the epoch that the scripts compare."""
    return int(at.timestamp() * 1000)
