"""Decisions on the wire: the encoder writes exactly what `json` writes for the decision's fields."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from prewarm.core import policy
from prewarm.service.store import codec

T0 = datetime(2026, 12, 7, 4, 30, 0, 250_000, tzinfo=UTC)
PLUS_ONE = timezone(timedelta(hours=1))
BASE = policy.FloorDecision(
    target="ml/chat",
    floor=3,
    source=policy.Source.INTENT,
    reason="3 sessions open",
    decided_at=T0,
    next_change=T0 + timedelta(minutes=5),
    wanted=3,
    wanted_source=policy.Source.INTENT,
    baseline=1,
    held=(),
    budget_day=date(2026, 12, 7),
    budget_used=0.75,
)


def json_text(decision: policy.FloorDecision) -> str:
    """The reference: the decision's fields as a dict, through the standard library's encoder."""
    fields: dict[str, Any] = {
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
    return json.dumps(fields, separators=(",", ":"))


ROWS = [
    BASE,
    dataclasses.replace(BASE, next_change=None),
    dataclasses.replace(BASE, target='ns/"quoted"\\back\nslash', reason="caf\u00e9 \u2014 \U0001f680 \t\x01"),
    dataclasses.replace(
        BASE,
        floor=7,
        held=(
            policy.HeldLevel(7, policy.Source.FORECAST, T0 + timedelta(minutes=9)),
            policy.HeldLevel(5, policy.Source.CRON, T0 + timedelta(minutes=2)),
        ),
    ),
    dataclasses.replace(BASE, decided_at=T0.astimezone(PLUS_ONE), next_change=T0.astimezone(PLUS_ONE)),
    dataclasses.replace(BASE, decided_at=T0.replace(microsecond=0), budget_used=0.0, batch_replicas=2, batch_used=1e-7),
    dataclasses.replace(BASE, budget_used=1e300, batch_used=123456789.125),
    dataclasses.replace(BASE, budget_used=math.inf, batch_used=-math.inf),
    dataclasses.replace(BASE, budget_used=math.nan),
]
IDS = ["plain", "no-next-change", "escapes-unicode", "held", "other-zone", "whole-seconds", "large", "inf", "nan"]


@pytest.mark.parametrize("decision", ROWS, ids=IDS)
def test_the_text_is_what_json_writes(decision: policy.FloorDecision) -> None:
    assert codec.encode_decision(decision) == json_text(decision)


@pytest.mark.parametrize("decision", ROWS[:-1], ids=IDS[:-1])  # NaN is never equal to itself
def test_a_decision_round_trips(decision: policy.FloorDecision) -> None:
    assert codec.decode_decision(codec.encode_decision(decision)) == decision


def test_a_batch_encodes_each_decision_as_alone() -> None:
    """Shared instants are formatted once per batch, but never across zones: 05:30+01:00 and
    04:30Z are equal datetimes that are written differently."""
    batch = [
        BASE,
        dataclasses.replace(BASE, target="ml/a", decided_at=T0.astimezone(PLUS_ONE)),
        dataclasses.replace(BASE, target="ml/b", next_change=T0, held=(policy.HeldLevel(4, policy.Source.MIN, T0),)),
        dataclasses.replace(BASE, target="ml/c", next_change=T0.astimezone(PLUS_ONE)),
    ]
    assert codec.encode_decisions(batch) == [json_text(d) for d in batch]
    assert codec.encode_decisions([]) == []
