"""The load profiles: counts, gaps and class shares match their parameters on a fixed seed."""

from __future__ import annotations

import itertools
from typing import Annotated

import numpy as np
import pytest

from prewarm.replay import profiles, traces

SEED = 7


def merged(trace: traces.Trace) -> tuple[np.ndarray, np.ndarray]:
    """All arrivals of the trace in time order, and whether each is batch."""
    arrivals = np.concatenate([t.arrivals for t in trace.targets])
    batch = np.concatenate([t.batch_mask() for t in trace.targets])
    order = np.argsort(arrivals, kind="stable")
    return arrivals[order], batch[order]


def clusters(arrivals: np.ndarray, silence: float) -> list[np.ndarray]:
    """Runs of arrivals separated by gaps longer than `silence`."""
    cuts = np.flatnonzero(np.diff(arrivals) > silence) + 1
    return np.split(arrivals, cuts)


def users_one_request_at_a_time(trace: traces.Trace) -> bool:
    """Each user's next request comes after the reply to the previous one."""
    for target in trace.targets:
        per_user: dict[str, list[tuple[float, float]]] = {}
        for group, at, run in zip(target.groups, target.arrivals.tolist(), target.exec_seconds.tolist(), strict=True):
            per_user.setdefault(group, []).append((at, run))
        for requests in per_user.values():
            if any(nxt[0] < at + run for (at, run), nxt in itertools.pairwise(requests)):
                return False
    return True


def test_idle_to_burst_counts_gaps_and_spans() -> None:
    made = profiles.generate(
        "idle-to-burst",
        ["cycles=30", "burst_users=10", "user_requests=2", "idle_min=10m", "idle_max=15m"],
        seed=SEED,
    )
    arrivals, batch = merged(made.trace)
    assert made.trace.requests == 30 * 10 * 2
    assert not batch.any()  # no batch traffic in this profile
    bursts = clusters(arrivals, silence=300.0)  # a burst lasts a minute or two; the silences 10-15 min
    assert [b.size for b in bursts] == [20] * 30
    gaps = np.asarray([nxt[0] - cur[-1] for cur, nxt in itertools.pairwise(bursts)])
    assert gaps.min() >= 600.0 and gaps.max() <= 900.0 + 60.0  # silence, then users within the 60 s burst
    assert users_one_request_at_a_time(made.trace)
    assert len({g for t in made.trace.targets for g in t.groups}) == 30 * 10
    assert [t.name for t in made.trace.targets] == ["llm-7b-0", "llm-7b-1", "llm-7b-2"]
    assert made.score_from == profiles.PROFILE_START.timestamp() + 6 * 3600  # default warmup


@pytest.mark.parametrize(
    ("shape", "first_fifth", "first_half"),
    [("spike", 0.636, 0.924), ("square", 0.2, 0.5), ("ramp", 0.04, 0.25)],
    ids=["spike", "square", "ramp"],
)
def test_burst_shapes(shape: str, first_fifth: float, first_half: float) -> None:
    offsets = profiles.burst_offsets(shape, 20_000, 60.0, np.random.default_rng(SEED))
    assert offsets.min() >= 0.0 and offsets.max() < 60.0
    assert np.all(np.diff(offsets) >= 0)
    # spike: exponential with scale 12 s cut at 60 s; square: uniform; ramp: density rising linearly
    assert np.mean(offsets < 12.0) == pytest.approx(first_fifth, abs=0.01)
    assert np.mean(offsets < 30.0) == pytest.approx(first_half, abs=0.01)


def test_sawtooth_counts_per_cycle_rest_and_ramp_density() -> None:
    made = profiles.generate(
        "sawtooth",
        ["cycles=20", "ramp=10m", "drain=2m", "rest=5m", "peak_users=0.1", "user_requests=3"],
        seed=SEED,
    )
    arrivals, batch = merged(made.trace)
    users = round(0.1 * 600 / 2) + round(0.1 * 120 / 2)  # 30 arriving on the ramp, 6 on the drain
    assert made.trace.requests == 20 * users * 3
    assert not batch.any()
    cycles = clusters(arrivals, silence=299.0)
    assert [c.size for c in cycles] == [users * 3] * 20
    assert users_one_request_at_a_time(made.trace)
    # each cycle starts `rest` after the previous one's last request; users arrive on a linear ramp,
    # so the ramp's second half brings three times its first half
    starts = [profiles.PROFILE_START.timestamp()] + [c[-1] + 300.0 for c in cycles[:-1]]
    firsts: dict[str, float] = {}
    for target in made.trace.targets:
        for group, at in zip(target.groups, target.arrivals.tolist(), strict=True):
            firsts[group] = min(at, firsts.get(group, at))
    offsets = np.asarray([at - starts[int(group.split("-")[0].removeprefix("cycle"))] for group, at in firsts.items()])
    assert offsets.min() >= 0.0 and offsets.max() < 720.0
    first, second = np.sum(offsets < 300.0), np.sum((offsets >= 300.0) & (offsets < 600.0))
    assert (first + second, np.sum(offsets >= 600.0)) == (20 * 30, 20 * 6)
    assert second / first == pytest.approx(3.0, rel=0.25)


def test_mixed_priority_counts_shares_and_jobs() -> None:
    made = profiles.generate(
        "mixed-priority", ["length=12h", "sessions_per_hour=20", "session_requests=3", "batch_share=25%"], seed=SEED
    )
    arrivals, batch = merged(made.trace)
    interactive = 12 * 20 * 3
    flood = round(interactive * 0.25 / 0.75)
    assert (int((~batch).sum()), int(batch.sum())) == (interactive, flood)
    assert batch.mean() == pytest.approx(0.25, abs=1 / arrivals.size)
    for target in made.trace.targets:
        jobs: dict[str, list[float]] = {}
        for group, at, is_batch in zip(
            target.groups, target.arrivals.tolist(), target.batch_mask().tolist(), strict=True
        ):
            if is_batch:
                jobs.setdefault(group, []).append(at)
        for times in jobs.values():  # each job floods one model within its spread
            assert max(times) - min(times) < 120.0
            assert len(times) <= 50
    sizes = sorted(
        sum(1 for g, b in zip(t.groups, t.batch_mask().tolist(), strict=True) if b and g == job)
        for t in made.trace.targets
        for job in {g for g, b in zip(t.groups, t.batch_mask().tolist(), strict=True) if b}
    )
    assert sizes == sorted([50] * (flood // 50) + [flood % 50])


def test_mixed_priority_interactive_traffic_is_the_same_with_or_without_batch() -> None:
    with_batch = profiles.generate("mixed-priority", ["length=6h", "warmup=1h"], seed=SEED).trace
    without = profiles.generate("mixed-priority", ["length=6h", "warmup=1h", "batch_share=0"], seed=SEED).trace
    assert not any(t.batch_mask().any() for t in without.targets)
    for alone, mixed in zip(without.targets, with_batch.targets, strict=True):
        keep = ~mixed.batch_mask()
        assert alone.name == mixed.name
        np.testing.assert_array_equal(alone.arrivals, mixed.arrivals[keep])
        np.testing.assert_array_equal(alone.exec_seconds, mixed.exec_seconds[keep])


@pytest.mark.parametrize("name", ["idle-to-burst", "sawtooth", "mixed-priority"])
def test_the_same_seed_gives_the_same_trace(name: str) -> None:
    first, again, other = (profiles.generate(name, [], seed=s).trace for s in (SEED, SEED, SEED + 1))
    for a, b in zip(first.targets, again.targets, strict=True):
        np.testing.assert_array_equal(a.arrivals, b.arrivals)
        np.testing.assert_array_equal(a.exec_seconds, b.exec_seconds)
        assert a.groups == b.groups
    assert not np.array_equal(first.targets[0].arrivals, other.targets[0].arrivals)


@pytest.mark.parametrize(
    ("name", "assignments", "message"),
    [
        ("idle-to-burst", ["idle_min=ten"], "idle_min='ten' is not a duration (use 90s, 5m or 2h)"),
        ("idle-to-burst", ["cycles=0"], "cycles='0' must be >= 1"),
        ("idle-to-burst", ["burst_shape=wave"], "burst_shape='wave' is not one of spike, square, ramp"),
        ("idle-to-burst", ["idle_min=20m"], "idle_max='900s' must be >= idle_min (1200s)"),
        ("sawtooth", ["peak_users=-1"], "peak_users='-1' must be > 0"),
        ("sawtooth", ["peak_users=0.001"], "peak_users=0.001 gives no user per cycle"),
        ("mixed-priority", ["batch_share=100%"], "batch_share='100%' must be below 100%"),
        ("mixed-priority", ["batch_share=1.5"], "batch_share='1.5' must be between 0% and 100%"),
        ("mixed-priority", ["length=30m"], "length='30m' must be at least 3600s"),
        ("mixed-priority", ["jobsize=5"], "jobsize='5': mixed-priority has no parameter 'jobsize' (known: length,"),
        ("mixed-priority", ["batch_share"], "'batch_share' is not name=value"),
        ("flat", [], "'flat' is not a profile (known: idle-to-burst, mixed-priority, sawtooth)"),
    ],
    ids=[
        "not-a-duration",
        "zero-cycles",
        "unknown-shape",
        "idle-range",
        "negative-rate",
        "rate-too-low",
        "all-batch",
        "share-above-one",
        "too-short",
        "unknown-parameter",
        "no-value",
        "unknown-profile",
    ],
)
def test_bad_parameters_name_the_parameter_and_value(name: str, assignments: list[str], message: str) -> None:
    with pytest.raises(profiles.ProfileError) as caught:
        profiles.generate(name, assignments, seed=SEED)
    assert message in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(profiles.ProfileError) as caught:
        profiles.generate("idle-to-burst", ["cycles=x", "burst_users=0"], seed=SEED)
    assert caught.value.problems == ("cycles='x' is not an integer", "burst_users='0' must be >= 1")


def test_a_profile_is_one_registered_function() -> None:
    @profile_for_test
    def steady(
        seed: int,
        *,
        requests: Annotated[int, profiles.Count("requests, one a minute")] = 5,
    ) -> list[profiles.Request]:
        """One request a minute to one model."""
        return [profiles.Request("llm-7b-0", 60.0 * i, 1.0, f"user{i}") for i in range(requests)]

    try:
        made = profiles.generate("steady-test", ["requests=3", "warmup=0s"], seed=SEED)
        assert made.trace.targets[0].arrivals.tolist() == [profiles.PROFILE_START.timestamp() + s for s in (0, 60, 120)]
        assert made.describe() == "steady-test (requests=3, warmup=0s)"
        assert profiles.describe_parameters("steady-test")[0] == ("requests", "5", "requests, one a minute")
    finally:
        del profiles.PROFILES["steady-test"]


def profile_for_test(function: profiles.ProfileFunction) -> profiles.ProfileFunction:
    return profiles.profile("steady-test")(function)
