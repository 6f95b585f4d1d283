"""The embedded store's batched decision reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prewarm.core import ledger, policy, targets
from prewarm.service.store import Intent, MemoryStore

T0 = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


async def test_a_cached_decision_is_left_out_of_the_inputs_but_not_its_sessions() -> None:
    store = MemoryStore()
    event = ledger.SessionEvent(
        ledger.SessionEventType.OPENED, "s1", T0, timedelta(minutes=5), ledger.Priority.INTERACTIVE
    )
    assert (await store.record_intents([Intent("ml/a", "/test", "e1", event)])).accepted == 1
    decisions = []
    for name in ("ml/a", "ml/b"):
        namespace, _, short = name.partition("/")
        spec = targets.TargetSpec(ref=targets.TargetRef(namespace, short), kind=targets.TargetKind.KEDA, max=9)
        decisions.append(policy.decide_floor(spec, policy.Signals(sessions=1), T0, None))
    assert await store.save_decisions([(d, "") for d in decisions]) == [True, True]
    everything = await store.decision_inputs(["ml/a", "ml/b"], T0)
    assert [stored for _, stored in everything] == decisions
    partly = await store.decision_inputs(["ml/a", "ml/b"], T0, cached={"ml/a"})
    assert [stored for _, stored in partly] == [None, decisions[1]]
    assert [s.active for s, _ in partly] == [s.active for s, _ in everything] == [1, 0]
