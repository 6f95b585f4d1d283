"""The replay's autoscaler simulation and policies on hand-built traces with hand-worked answers."""

from __future__ import annotations

import numpy as np
import pytest

from prewarm.replay import evaluator, simulation, traces

COLD = 5.0  # seconds; short enough that the KPA's 90 s tail is what decides in these traces


def run(
    arrivals: list[float],
    floor: simulation.FloorSteps,
    *,
    run_s: float = 1.0,
    concurrency: int = 1,
    window: simulation.Window | None = None,
) -> simulation.Outcome:
    times = np.asarray(arrivals, dtype=np.float64)
    return simulation.simulate(
        times,
        np.full(times.size, run_s),
        floor,
        simulation.ColdStarts(np.asarray([COLD]), seed=0, target_index=0),
        concurrency=concurrency,
        window=window or simulation.Window(0.0, 10_000.0),
    )


def keepalive(arrivals: list[float], seconds: float, run_s: float = 1.0) -> simulation.FloorSteps:
    times = np.asarray(arrivals, dtype=np.float64)
    return evaluator.keepalive_floor(times, np.full(times.size, run_s), seconds)


def test_two_requests_100s_apart_under_keepalive_60_are_both_cold() -> None:
    # First: no replica, waits COLD, runs [5, 6]. Keep-alive ends at 0 + 1 + 60 = 61; the KPA keeps
    # the last replica until 6 + 60 + 30 = 96 < 100, so the second request starts cold too.
    outcome = run([0.0, 100.0], keepalive([0.0, 100.0], 60))
    assert (outcome.requests, outcome.cold_starts) == (2, 2)
    assert outcome.waits == [COLD, COLD]


def test_the_kpa_tail_alone_keeps_a_replica_for_90s_after_its_last_request() -> None:
    outcome = run([0.0, 95.0], simulation.FloorSteps())  # replica idle since 6, retired at 96
    assert outcome.cold_starts == 1
    outcome = run([0.0, 97.0], simulation.FloorSteps())
    assert outcome.cold_starts == 2


def test_replica_time_is_counted_from_start_to_retirement() -> None:
    outcome = run([0.0], simulation.FloorSteps())
    # Started at 0, ready at 5, busy [5, 6], retired at 6 + 90 = 96.
    assert outcome.warm_seconds == pytest.approx(96.0)
    assert outcome.idle_seconds == pytest.approx(90.0)


def test_a_floor_started_ahead_of_a_request_makes_it_warm() -> None:
    floor = simulation.FloorSteps.from_changes([(40.0, 1), (60.0, 0)])
    outcome = run([50.0], floor)
    assert outcome.cold_starts == 0  # started at 40, ready at 45


def test_a_floor_raised_too_late_leaves_a_shorter_wait() -> None:
    floor = simulation.FloorSteps.from_changes([(48.0, 1)])
    outcome = run([50.0], floor)
    assert outcome.cold_starts == 1
    assert outcome.waits == [pytest.approx(3.0)]  # ready at 53


def test_keepalive_count_matches_the_closed_form_over_gaps() -> None:
    rng = np.random.default_rng(7)
    gaps = np.maximum(rng.exponential(300.0, 400), 10.0)  # never overlapping: run time is 1 s
    arrivals = np.cumsum(gaps).tolist()
    seconds = 300.0  # > the KPA tail, so the keep-alive decides
    outcome = run(arrivals, keepalive(arrivals, seconds), window=simulation.Window(0.0, arrivals[-1] + 1))
    assert outcome.requests == len(arrivals)
    expected = 1 + int(np.count_nonzero(np.diff(arrivals) > 1.0 + seconds))
    assert outcome.cold_starts == expected


def test_concurrent_requests_need_more_replicas() -> None:
    outcome = run([0.0, 1.0, 2.0], simulation.FloorSteps(), run_s=30.0)
    assert outcome.cold_starts == 3
    outcome = run([0.0, 1.0, 2.0], simulation.FloorSteps(), run_s=30.0, concurrency=3)
    assert outcome.cold_starts == 3  # the one starting replica takes all three, all still wait
    outcome = run([0.0, 10.0], simulation.FloorSteps(), run_s=1.0, concurrency=1)
    assert outcome.cold_starts == 1  # the first replica is ready and free at 10


def test_a_queued_request_takes_a_busy_replica_that_frees_before_a_new_one_is_ready() -> None:
    # Replica ready at 5 runs [5, 15]; the request at 14 would wait 5 s for a new replica but
    # only 1 s for the busy one.
    outcome = run([0.0, 14.0], simulation.FloorSteps(), run_s=10.0)
    assert outcome.cold_starts == 2
    assert outcome.waits == [COLD, pytest.approx(1.0)]


def test_oracle_never_has_a_cold_start_and_never_costs_more_than_keepalive() -> None:
    rng = np.random.default_rng(3)
    arrivals = np.cumsum(rng.exponential(120.0, 300))
    runs = rng.uniform(1.0, 40.0, arrivals.size)
    window = simulation.Window(0.0, float(arrivals[-1]) + 1)
    samples = np.asarray([3.0, 20.0, 45.0])
    oracle = simulation.simulate_oracle(
        arrivals, runs, simulation.ColdStarts(samples, 1, 0), concurrency=1, window=window
    )
    assert oracle.requests == arrivals.size and oracle.cold_starts == 0
    for seconds in (60.0, 600.0):
        kept = simulation.simulate(
            arrivals,
            runs,
            evaluator.keepalive_floor(arrivals, runs, seconds),
            simulation.ColdStarts(samples, 1, 0),
            concurrency=1,
            window=window,
        )
        assert kept.cold_starts > 0
        assert oracle.warm_seconds < kept.warm_seconds


def test_score_window_excludes_earlier_requests_and_time() -> None:
    window = simulation.Window(1000.0, 5000.0)
    outcome = run([0.0, 500.0, 2000.0, 2050.0], simulation.FloorSteps(), window=window)
    assert outcome.requests == 2
    assert outcome.cold_starts == 1  # 2050 finds the replica started for 2000
    # Started 2000, loading to 2005, busy [2005, 2006] and [2050, 2051], retired at 2051 + 90.
    assert outcome.warm_seconds == pytest.approx(141.0)
    assert outcome.idle_seconds == pytest.approx(141.0 - 5.0 - 2.0)


@pytest.mark.parametrize(
    ("changes", "times", "levels"),
    [
        ([], (), ()),
        ([(1.0, 0)], (), ()),
        ([(1.0, 1), (2.0, 1), (3.0, 0)], (1.0, 3.0), (1, 0)),
        ([(1.0, 1), (1.0, 2), (4.0, 2)], (1.0,), (2,)),
    ],
    ids=["empty", "zero-at-start", "repeat-dropped", "same-time-last-wins"],
)
def test_floor_steps_from_changes(
    changes: list[tuple[float, int]], times: tuple[float, ...], levels: tuple[int, ...]
) -> None:
    steps = simulation.FloorSteps.from_changes(changes)
    assert (steps.times, steps.levels) == (times, levels)


def test_floor_steps_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        simulation.FloorSteps((2.0, 1.0), (1, 0))
    with pytest.raises(ValueError, match=">= 0"):
        simulation.FloorSteps((1.0,), (-1,))


def test_hybrid_histogram_prewarms_a_periodic_target_just_before_its_next_request() -> None:
    arrivals = np.arange(0.0, 40 * 600.0, 600.0)  # every 10 minutes, 1 s each
    runs = np.ones(arrivals.size)
    floor = evaluator.hybrid_histogram_floor(arrivals, runs)
    # After ten idle times of ~599 s the histogram is representative: head bin 9 (540 s) less
    # 10% = 486 s, tail bin end 600 s plus 10% = 660 s, cut at the next arrival.
    last = arrivals[-2] + 1.0
    assert floor.level_at(last + 480.0) == 0
    assert floor.level_at(last + 490.0) == 1
    outcome = simulation.simulate(
        arrivals,
        runs,
        floor,
        simulation.ColdStarts(np.asarray([COLD]), 0, 0),
        concurrency=1,
        window=simulation.Window(0.0, arrivals[-1] + 10),
    )
    assert outcome.cold_starts <= 12  # cold until the histogram has ten idle times, warm after


def test_sessions_group_one_users_requests_with_gaps_under_ten_minutes() -> None:
    arrivals = np.asarray([0.0, 60.0, 100.0, 2000.0, 2010.0])
    finishes = arrivals + 5.0
    groups = ("a", "a", "b", "a", "b")
    sessions = traces.sessions_of(groups, arrivals, finishes, evaluator.SESSION_GAP)
    assert sessions == [(0.0, 65.0), (100.0, 105.0), (2000.0, 2005.0), (2010.0, 2015.0)]
