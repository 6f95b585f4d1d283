"""Decisions on the wire: Redis values and pub/sub messages, as compact JSON."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from prewarm.core import policy

_COMPACT = json.JSONEncoder(separators=(",", ":"))  # stateless; json.dumps would build one per call


def encode_decision(decision: policy.FloorDecision) -> str:
    """A decision as compact JSON, lossless for `decode_decision`."""
    return _COMPACT.encode(
        {
            "target": decision.target,
            "floor": decision.floor,
            "source": decision.source.value,
            "reason": decision.reason,
            "decided_at": decision.decided_at.isoformat(),
            "next_change": None if decision.next_change is None else decision.next_change.isoformat(),
            "wanted": decision.wanted,
            "wanted_source": decision.wanted_source.value,
            "baseline": decision.baseline,
            "held": [[h.floor, h.source.value, h.wanted_until.isoformat()] for h in decision.held],
            "budget_day": decision.budget_day.isoformat(),
            "budget_used": decision.budget_used,
            "batch_replicas": decision.batch_replicas,
            "batch_used": decision.batch_used,
        }
    )


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
