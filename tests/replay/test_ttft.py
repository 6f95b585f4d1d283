"""TTFT and priority classes in replay, on hand-made traces with worked answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prewarm.core import targets
from prewarm.replay import evaluator, simulation, traces, ttft

COLD = 5.0  # seconds to start a replica
MODEL_TTFT = ttft.TtftDistribution("fixed 0.5 s", np.asarray([0.5]))
DAY = 86400.0
T0 = 1_700_000_000.0  # seconds since the epoch; a minute boundary


def hand_made_trace() -> traces.Trace:
    """Two interactive requests and one batch request to one model.

    chat-1 at 0 s (runs 2 s): no replica; one starts and is ready at 5 s: waits 5, TTFT 5 + 0.5.
    job-1 at 10 s (batch, runs 3 s): the replica has been idle since 7 s: warm, TTFT 0.5.
    chat-2 at 20 s (runs 1 s): the replica has been idle since 13 s: warm, TTFT 0.5.
    The scored window ends 1 s after the last arrival (21 s); the replica, started at 0 s, is up all
    of it (it would go 90 s after 21 s): warm 21 s, busy 2 + 3 + 1 = 6 s.
    """
    request = traces.TargetRequests(
        name="m1",
        arrivals=T0 + np.asarray([0.0, 10.0, 20.0]),
        exec_seconds=np.asarray([2.0, 3.0, 1.0]),
        groups=("chat-1", "job-1", "chat-2"),
        batch=np.asarray([False, True, False]),
    )
    return traces.Trace((request,), T0, T0 + 20.0)


def settings(**changes: object) -> evaluator.ReplaySettings:
    fields: dict[str, object] = {"cold_starts": np.asarray([COLD]), "model_ttft": MODEL_TTFT}
    fields.update(changes)
    return evaluator.ReplaySettings(**fields)  # type: ignore[arg-type]


def knative_default(trace: traces.Trace, replay_settings: evaluator.ReplaySettings) -> evaluator.PolicyScore:
    result = evaluator.run_replay(
        trace, replay_settings, [evaluator.PolicyChoice(evaluator.PolicyKind.KNATIVE_DEFAULT)], sweep=False
    )
    return result.scores[0]


def test_hand_made_trace_worked_ttfts_and_hit_rates() -> None:
    score = knative_default(hand_made_trace(), settings())
    every, interactive, batch = score.ttft
    days = 21.0 / DAY  # the scored window runs to the trace's end + 1 s
    warm_hours = 21.0 / 3600.0 / days  # one replica all the time: 24 replica-hours per day
    assert every == ttft.ClassScore(
        priority="all",
        requests=3,
        cold_starts=1,
        hit_rate=pytest.approx(2 / 3),
        warm_p50_s=0.5,
        warm_p95_s=0.5,
        warm_p99_s=0.5,
        cold_p50_s=5.5,
        cold_p95_s=5.5,
        cold_p99_s=5.5,
        blended_p50_s=0.5,  # [0.5, 0.5, 5.5]
        blended_p95_s=pytest.approx(5.0),  # linear between the 2nd and 3rd value at 1.9
        blended_p99_s=pytest.approx(5.4),
        warm_replica_hours_per_day=pytest.approx(warm_hours),
        gpu_busy_over_warm=pytest.approx(6.0 / 21.0),
    )
    assert (interactive.priority, interactive.requests, interactive.cold_starts) == ("interactive", 2, 1)
    assert interactive.hit_rate == pytest.approx(0.5)
    assert (interactive.warm_p50_s, interactive.cold_p50_s) == (0.5, 5.5)
    assert (interactive.blended_p50_s, interactive.blended_p95_s, interactive.blended_p99_s) == pytest.approx(
        (3.0, 5.25, 5.45)  # [0.5, 5.5]
    )
    assert (batch.priority, batch.requests, batch.cold_starts, batch.hit_rate) == ("batch", 1, 0, 1.0)
    assert (batch.warm_p50_s, batch.cold_p50_s, batch.blended_p99_s) == (0.5, None, 0.5)
    assert score.cold_starts == 1 and score.wait_p50_s == COLD  # the existing columns agree


def test_the_oracle_has_no_cold_ttft() -> None:
    result = evaluator.run_replay(
        hand_made_trace(), settings(), [evaluator.PolicyChoice(evaluator.PolicyKind.ORACLE)], sweep=False
    )
    every = result.scores[0].ttft[0]
    assert (every.requests, every.cold_starts, every.hit_rate) == (3, 0, 1.0)
    assert (every.blended_p99_s, every.cold_p50_s) == (0.5, None)
    # loaded just in time (before the window) for 0 s; the 8 s and 7 s gaps are longer than a 5 s
    # load, so it is unloaded and loaded again 5 s ahead of 10 s and of 20 s: warm 2 + 5 + 3 + 5 + 1
    assert every.gpu_busy_over_warm == pytest.approx(6.0 / 16.0)


def test_a_request_queued_behind_a_busy_replica_is_cold() -> None:
    # chat-2 moved to 11 s: the replica runs job-1 until 13 s; a second replica would be ready at
    # 16 s, so chat-2 runs on the first one at 13 s: waits 2 s, TTFT 2.5 s.
    trace = hand_made_trace()
    request = trace.targets[0]
    moved = traces.TargetRequests(
        request.name, T0 + np.asarray([0.0, 10.0, 11.0]), request.exec_seconds, request.groups, request.batch
    )
    score = knative_default(traces.Trace((moved,), T0, T0 + 11.0), settings())
    interactive = score.ttft[1]
    assert interactive.cold_starts == 2
    assert (interactive.cold_p50_s, interactive.blended_p99_s) == pytest.approx((4.0, 5.47))  # [2.5, 5.5]


def test_model_ttft_draws_are_per_class_and_do_not_depend_on_the_other_class() -> None:
    samples = ttft.TtftDistribution("uniform", np.linspace(0.1, 2.0, 50))
    trace = hand_made_trace()
    window = simulation.Window(T0, T0 + 21.0)
    both = ttft.scored_requests(trace, window, samples, seed=3)
    request = trace.targets[0]
    alone = traces.Trace(
        (evaluator.requests_of(request, ~request.batch_mask()),), T0, T0 + 20.0
    )  # the same interactive requests without the batch one
    only = ttft.scored_requests(alone, window, samples, seed=3)
    np.testing.assert_array_equal(both.model_ttft[~both.batch], only.model_ttft)
    assert both.batch.tolist() == [False, True, False]


def test_default_distribution_is_derived_from_the_published_figures() -> None:
    default = ttft.default_distribution()
    assert np.median(default.default) == pytest.approx(0.775, rel=1e-3)  # middle of 0.65-0.9 s
    assert np.percentile(default.default, 95) == pytest.approx(0.775 * 8.9 / 4.8, rel=0.01)
    assert "derived from published figures" in default.label


def test_ttft_distribution_file_per_target(tmp_path: Path) -> None:
    path = tmp_path / "ttft.csv"
    path.write_text("target,value\nm1,400\nm1,600\n,900\n")
    read = ttft.read_distribution(path)
    assert read.samples_for("m1").tolist() == [0.4, 0.6]
    assert read.samples_for("other").tolist() == [0.9]
    assert ttft.unknown_targets(read, hand_made_trace()) == []
    path.write_text("target,value\nm9,400\n")
    assert ttft.unknown_targets(ttft.read_distribution(path), hand_made_trace()) == ["m9"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ms\n5\n", "line 1: missing column 'value' (found: ms)"),
        ("value\n0\n", "line 2, column 'value': '0' is not a duration > 0 (ms)"),
        ("value\nfast\n", "line 2, column 'value': 'fast' is not a duration > 0 (ms)"),
        ("value\n", "no values"),
    ],
    ids=["no-value-column", "zero", "not-a-number", "empty"],
)
def test_a_bad_ttft_file_names_line_and_column(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "ttft.csv"
    path.write_text(text)
    with pytest.raises(traces.TraceError) as caught:
        ttft.read_distribution(path)
    assert caught.value.problems == (problem,)


# --- a batch flood in replay ---


def flood_trace(*, chats: int) -> traces.Trace:
    """A 100-request batch flood (one group each) at 2 h, and `chats` interactive requests 30 s apart."""
    flood = T0 + 7200.0 + np.arange(100) * 0.5
    chat = T0 + 7200.0 + np.arange(chats) * 30.0
    arrivals = np.concatenate([flood, chat])
    order = np.argsort(arrivals, kind="stable")
    groups = np.asarray([f"job-{i}" for i in range(100)] + [f"chat-{i}" for i in range(chats)])
    batch = np.concatenate([np.ones(100, dtype=bool), np.zeros(chats, dtype=bool)])
    request = traces.TargetRequests(
        "m1", arrivals[order], np.full(arrivals.size, 20.0), tuple(groups[order].tolist()), batch[order]
    )
    return traces.Trace((request,), T0 + 7200.0, float(arrivals.max()))


@pytest.mark.parametrize("allowance", [0, 2])
def test_a_batch_flood_never_lifts_the_prewarm_floor_above_the_batch_allowance(allowance: int) -> None:
    trace = flood_trace(chats=0)
    replay = evaluator.Replay(
        trace,
        settings(intent_lead=evaluator.IntentLead(15.0, 0.5), batch=targets.BatchAllowance(floor=allowance)),
    )
    prewarm = evaluator.PolicyChoice(evaluator.PolicyKind.PREWARM)
    floor = replay.floor(prewarm, trace.targets[0], intent=True)
    assert len(replay.batch_sessions()["m1"]) == 100 and replay.sessions()["m1"] == []
    assert max(floor.levels, default=0) == allowance  # 100 batch sessions ask for 100; the allowance caps
    # the forecast learns interactive arrivals only, so the flood does not raise it either
    assert max(replay.floor(prewarm, trace.targets[0], intent=False).levels, default=0) == 0


def test_interactive_sessions_still_raise_the_floor_beside_a_flood() -> None:
    trace = flood_trace(chats=4)
    replay = evaluator.Replay(
        trace, settings(intent_lead=evaluator.IntentLead(15.0, 0.5), batch=targets.BatchAllowance(floor=1))
    )
    floor = replay.floor(evaluator.PolicyChoice(evaluator.PolicyKind.PREWARM), trace.targets[0], intent=True)
    # four chat sessions, one request each, overlapping: up to 4 replicas for them, never 100
    assert 1 < max(floor.levels) <= 4 + 1


def test_the_batch_budget_share_caps_batch_floor_hours_in_replay() -> None:
    trace = flood_trace(chats=0)
    share = settings(
        intent_lead=evaluator.IntentLead(15.0, 0.5),
        batch=targets.BatchAllowance(floor=2, budget_share=0.5),
        budget=0.02,  # replica-hours per day: batch may spend 0.01 h = 36 s
    )
    floor = evaluator.Replay(trace, share).floor(
        evaluator.PolicyChoice(evaluator.PolicyKind.PREWARM), trace.targets[0], intent=True
    )
    times = [*floor.times, trace.end + 3600.0]
    spent = sum(level * (b - a) for a, b, level in zip(times, times[1:], floor.levels, strict=False))
    assert spent == pytest.approx(36.0)  # 2 replicas for 18 s, then the share is spent
