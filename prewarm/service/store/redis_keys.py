"""Where a target's state lives in Redis: one hash tag per target, so a target's keys share a Cluster slot."""

from __future__ import annotations

from datetime import datetime

import redis.crc

CHANGES_CHANNEL = "prewarm:changes"
DECISIONS_CHANNEL = "prewarm:decisions"
MAX_ENCODED_KEYS = 250_000  # per part, in EncodedKeys


def key(target: str, part: str) -> str:
    """The key of one part (sessions, decision, leader...) of `target`'s state."""
    return f"prewarm:{{{target}}}:{part}"


class EncodedKeys:
    """The keys of one part of every target, encoded once: the client encodes every str argument of
    every call, and deciding and renewing leases name the same 50,000 keys again and again."""

    def __init__(self, part: str) -> None:
        self._part = part
        self._encoded: dict[str, bytes] = {}

    def __call__(self, target: str) -> bytes:
        encoded = self._encoded.get(target)
        if encoded is None:
            if len(self._encoded) >= MAX_ENCODED_KEYS:  # targets come and go: start over, bounded
                self._encoded.clear()
            encoded = self._encoded[target] = key(target, self._part).encode()
        return encoded


def slot(target: str) -> int:
    """The Cluster hash slot that holds every key of `target`."""
    return int(redis.crc.key_slot(key(target, "sessions").encode()))


def ms(at: datetime) -> int:
    """A time as the milliseconds since the epoch that the scripts compare."""
    return int(at.timestamp() * 1000)
