"""The log actuator's line: what an operator reads when floors change."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from prewarm.core import policy, targets
from prewarm.service.actuation import format_floor_change

SPEC = targets.TargetSpec(ref=targets.TargetRef("ml", "chat"), kind=targets.TargetKind.KEDA, max=4)


@pytest.mark.parametrize(
    "decided_at",
    [
        datetime(2026, 5, 1, 12, 0, 7, tzinfo=UTC),
        datetime(2026, 5, 1, 12, 0, 7, 999_999, tzinfo=UTC),  # to the second, not rounded up
        datetime(2026, 5, 1, 14, 0, 7, 1, tzinfo=timezone(timedelta(hours=2))),  # the same instant, shown in UTC
    ],
)
def test_a_floor_change_is_one_line_in_utc_to_the_second(decided_at: datetime) -> None:
    decision = dataclasses.replace(
        policy.decide_floor(SPEC, policy.Signals(sessions=3), datetime(2026, 5, 1, 12, tzinfo=UTC), None),
        decided_at=decided_at,
    )
    previous = policy.decide_floor(SPEC, policy.Signals(), datetime(2026, 5, 1, 11, tzinfo=UTC), None)
    assert format_floor_change(decision, previous) == (
        "2026-05-01T12:00:07Z ml/chat 0 -> 1 [intent] intent 1 (3 interactive sessions / 4 per replica)"
    )
    assert format_floor_change(decision, None).startswith("2026-05-01T12:00:07Z ml/chat - -> 1 ")
