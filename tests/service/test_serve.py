"""`prewarm serve` through its composition root, on an injected clock: no wall-clock sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import RedisServer, wait_for

from prewarm.core import actuation as actuation_outcome
from prewarm.core import ledger, policy, targets
from prewarm.service import actuation, clock, composition, decider, reconciler, target_registry
from prewarm.service.store import Intent, MemoryStore, Store

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


async def test_serve_logs_the_floor_change_when_a_cron_window_opens(tmp_path: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text(
        "targets:\n"
        "  - name: ml/chat\n"
        "    kind: knative\n"
        "    max: 4\n"
        "    cron: '1 12 * * * for 10m = 2'\n"  # opens one minute after T0
    )
    manual = clock.ManualClock(T0)
    out = io.StringIO()
    stop = asyncio.Event()
    options = composition.ServeOptions(config=config, http_host="127.0.0.1", http_port=0)
    task = asyncio.create_task(composition.serve(options, clock=manual, out=out, stop=stop))
    await wait_for(lambda: out.getvalue().count("\n") == 1)
    assert out.getvalue() == "2026-05-01T12:00:00Z ml/chat - -> 0 [min] min 0\n"

    manual.advance(timedelta(seconds=59))
    await asyncio.sleep(0)  # give the loop a chance to act wrongly: nothing is due yet
    assert out.getvalue().count("\n") == 1

    manual.advance(timedelta(seconds=1))
    await wait_for(lambda: out.getvalue().count("\n") == 2)
    assert out.getvalue().splitlines()[1] == (
        "2026-05-01T12:01:00Z ml/chat 0 -> 2 [cron] cron 2 ('1 12 * * *' in UTC until 2026-05-01T12:11:00Z)"
    )
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_serve_raises_config_error_before_starting(tmp_path: Path) -> None:
    config = tmp_path / "targets.yaml"
    config.write_text("targets: [{name: ml/chat, kind: knative}]")
    with pytest.raises(targets.ConfigError):
        await composition.serve(
            composition.ServeOptions(config=config),
            clock=clock.ManualClock(T0),
            out=io.StringIO(),
            stop=asyncio.Event(),
        )


class RecordingActuator:
    """Keeps what it was asked to apply, in order."""

    name = "recording"

    def __init__(self) -> None:
        self.applied: list[tuple[int | None, int]] = []

    async def apply(
        self, decision: policy.FloorDecision, previous: policy.FloorDecision | None
    ) -> actuation_outcome.Result:
        self.applied.append((None if previous is None else previous.floor, decision.floor))
        return actuation_outcome.APPLIED

    async def release(self, target: str) -> actuation_outcome.Result:
        return actuation_outcome.APPLIED


class FailingActuator:
    name = "failing"

    async def apply(
        self, decision: policy.FloorDecision, previous: policy.FloorDecision | None
    ) -> actuation_outcome.Result:
        raise RuntimeError("cluster unreachable")

    async def release(self, target: str) -> actuation_outcome.Result:
        raise RuntimeError("cluster unreachable")


@contextlib.asynccontextmanager
async def deciding(
    *, specs: list[targets.TargetSpec], store: Store, actuators: list[actuation.Actuator], at: clock.Clock
) -> AsyncIterator[decider.Decider]:
    """A decider and a reconciler per actuator, running until the block ends."""
    queues = reconciler.Reconcilers([reconciler.Reconciler(a, clock=at) for a in actuators])
    loop = decider.Decider(registry=target_registry.TargetRegistry(specs), store=store, reconcilers=queues, clock=at)
    tasks = [asyncio.create_task(loop.run()), asyncio.create_task(queues.run())]
    try:
        yield loop
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


def chat_spec() -> targets.TargetSpec:
    return targets.TargetSpec(
        ref=targets.TargetRef("ml", "chat"), kind=targets.TargetKind.KEDA, max=5, hold=timedelta(seconds=30)
    )


def opened(session: str, at: datetime) -> ledger.SessionEvent:
    return ledger.SessionEvent(ledger.SessionEventType.OPENED, session, at, timedelta(seconds=60))


async def test_decider_reacts_to_store_changes_then_follows_expiry_and_hold() -> None:
    manual = clock.ManualClock(T0)
    store = MemoryStore()
    recorder = RecordingActuator()
    async with deciding(specs=[chat_spec()], store=store, actuators=[FailingActuator(), recorder], at=manual) as loop:
        await wait_for(lambda: recorder.applied == [(None, 0)])
        await store.record_intents([Intent("ml/chat", "test", f"e{i}", opened(f"s{i}", T0)) for i in range(5)])
        await wait_for(lambda: recorder.applied[-1] == (0, 2))
        assert loop.decisions["ml/chat"].source is policy.Source.INTENT
        assert loop.decisions["ml/chat"].next_change == T0 + timedelta(seconds=60)  # sessions expire

        manual.advance(timedelta(seconds=60))  # sessions expire: the floor is held for 30 s
        await wait_for(lambda: loop.decisions["ml/chat"].decided_at == T0 + timedelta(seconds=60))
        assert loop.decisions["ml/chat"].floor == 2
        manual.advance(timedelta(seconds=30))
        await wait_for(lambda: recorder.applied[-1] == (2, 0))
        assert recorder.applied == [(None, 0), (0, 2), (2, 0)]
        saved = await store.load_decision("ml/chat")
        assert saved is not None and saved.floor == 0


async def test_decider_resumes_from_stored_decision_and_actuates_once() -> None:
    store = MemoryStore()
    spec = chat_spec()
    earlier = policy.decide_floor(spec, policy.Signals(sessions=4), T0, None)
    await store.save_decision(earlier)
    recorder = RecordingActuator()
    manual = clock.ManualClock(T0 + timedelta(seconds=5))
    async with deciding(specs=[spec], store=store, actuators=[recorder], at=manual) as loop:
        # no sessions now, but the stored decision's floor is held: applied once (this process had
        # applied nothing yet), not lowered
        await wait_for(lambda: recorder.applied == [(None, 1)])
        assert loop.decisions["ml/chat"].reason.startswith("holding 1 (intent)")


def test_log_actuator_line_format() -> None:
    out = io.StringIO()
    spec = chat_spec()
    first = policy.decide_floor(spec, policy.Signals(sessions=9), T0, None)
    asyncio.run(actuation.LogActuator(out).apply(first, None))
    assert (
        out.getvalue()
        == "2026-05-01T12:00:00Z ml/chat - -> 3 [intent] intent 3 (9 interactive sessions / 4 per replica)\n"
    )


async def test_sessions_survive_a_restart_with_the_redis_store(tmp_path: Path, redis_server: RedisServer) -> None:
    import aiohttp
    from cloudevents.core.bindings import http as ce_http
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    config = tmp_path / "targets.yaml"
    config.write_text("targets: [{name: ml/chat, kind: keda, max: 4, sessionsPerReplica: 1}]\n")
    options = composition.ServeOptions(config=config, store=redis_server.url, http_host="127.0.0.1", http_port=0)
    manual = clock.ManualClock(T0)

    async with composition.run_service(options, clock=manual, out=io.StringIO()) as service:
        async with aiohttp.ClientSession() as http:
            for i in range(2):
                event = CloudEvent(
                    {"type": "dev.prewarm.session.opened", "source": "/web", "id": f"e{i}", "time": T0},
                    {"target": "ml/chat", "session": f"s{i}"},
                )
                message = ce_http.to_structured(event, JSONFormat())
                url = f"http://127.0.0.1:{service.http_port}/"
                async with http.post(url, data=message.body, headers=message.headers) as response:
                    assert response.status == 202
        await wait_for(lambda: service.decider.decisions["ml/chat"].floor == 2)

    manual.advance(timedelta(seconds=30))
    out = io.StringIO()
    async with composition.run_service(options, clock=manual, out=out) as service, aiohttp.ClientSession() as http:
        await wait_for(lambda: "ml/chat" in service.decider.decisions)
        async with http.get(f"http://127.0.0.1:{service.http_port}/targets") as response:
            view = await response.json()
    assert view["targets"][0]["sessions"] == 2
    assert view["targets"][0]["floor"] == 2
    # the restarted process applies the stored floor once; it had applied nothing before
    assert out.getvalue().startswith("2026-05-01T12:00:30Z ml/chat - -> 2 [intent]")


@pytest.mark.parametrize("kind", ["system", "manual"])
async def test_a_swallowed_cancellation_still_stops_a_loop_before_it_sleeps(kind: str) -> None:
    slept_on = asyncio.Event()
    waiting: clock.Clock = clock.SystemClock() if kind == "system" else clock.ManualClock(T0)

    async def loop_with_a_library_that_eats_cancellation() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as a client library's cleanup path may do
            await asyncio.sleep(30)
        await waiting.wait_until(waiting.now() + timedelta(seconds=30), asyncio.Event())
        slept_on.set()

    task = asyncio.create_task(loop_with_a_library_that_eats_cancellation())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await task
    assert not slept_on.is_set()
