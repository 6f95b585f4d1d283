"""Decisions on the wire: Redis values and pub/sub messages, as compact JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import UTC, date, datetime
from json.encoder import encode_basestring_ascii as _quoted
from typing import Any

from prewarm.core import policy

_COMPACT = json.JSONEncoder(separators=(",", ":"))  # stateless; json.dumps would build one per call


def encode_decision(decision: policy.FloorDecision) -> str:
    """A decision as compact JSON, lossless for `decode_decision`."""
    return encode_decisions((decision,))[0]


def encode_decisions(decisions: Iterable[policy.FloorDecision]) -> list[str]:
    """`encode_decision` of each, in order: the text `json` writes for the decision's fields (compact,
    ASCII), built without an intermediate dict, and each UTC instant formatted once per batch (a batch
    decided together shares its `decided_at`)."""
    instants: dict[datetime, str] = {}

    def instant(at: datetime) -> str:
        if at.tzinfo is not UTC:  # equal instants in other zones format differently: not shared
            return _quoted(at.isoformat())
        text = instants.get(at)
        if text is None:
            text = instants[at] = _quoted(at.isoformat())
        return text

    texts = []
    for d in decisions:
        held = ",".join(f"[{_integer(h.floor)},{_quoted(h.source.value)},{instant(h.wanted_until)}]" for h in d.held)
        texts.append(
            f'{{"target":{_quoted(d.target)},"floor":{_integer(d.floor)},"source":{_quoted(d.source.value)},'
            f'"reason":{_quoted(d.reason)},"decided_at":{instant(d.decided_at)},'
            f'"next_change":{"null" if d.next_change is None else instant(d.next_change)},'
            f'"wanted":{_integer(d.wanted)},"wanted_source":{_quoted(d.wanted_source.value)},'
            f'"baseline":{_integer(d.baseline)},"held":[{held}],"budget_day":{_quoted(d.budget_day.isoformat())},'
            f'"budget_used":{_real(d.budget_used)},"batch_replicas":{_integer(d.batch_replicas)},'
            f'"batch_used":{_real(d.batch_used)}}}'
        )
    return texts


def _integer(value: int) -> str:
    """An int field as `json` writes it (a float stored there by mistake still round-trips as json would)."""
    return int.__repr__(value) if type(value) is int else _COMPACT.encode(value)


def _real(value: float) -> str:
    """A float field as `json` writes it: repr when finite, NaN/Infinity/-Infinity otherwise."""
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return _COMPACT.encode(value)


def decode_decision(text: str | bytes) -> policy.FloorDecision:
    """Parse what `encode_decision` wrote; raise ValueError on anything else."""
    try:
        raw: dict[str, Any] = json.loads(text)
        return policy.FloorDecision(
            target=raw["target"],
            floor=int(raw["floor"]),
            source=policy.Source(raw["source"]),
            reason=raw["reason"],
            decided_at=datetime.fromisoformat(raw["decided_at"]),
            next_change=None if raw["next_change"] is None else datetime.fromisoformat(raw["next_change"]),
            wanted=int(raw["wanted"]),
            wanted_source=policy.Source(raw["wanted_source"]),
            baseline=int(raw["baseline"]),
            held=tuple(
                policy.HeldLevel(int(f), policy.Source(s), datetime.fromisoformat(u)) for f, s, u in raw["held"]
            ),
            budget_day=date.fromisoformat(raw["budget_day"]),
            budget_used=float(raw["budget_used"]),
            batch_replicas=int(raw.get("batch_replicas", 0)),  # absent from decisions stored before batch
            batch_used=float(raw.get("batch_used", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a stored decision: {e}") from e
