"""The pure forecaster: causal features, calibrated probabilities, quantile floors, histogram fallback."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prewarm.forecast import arrival_model, idle_histogram, minute_features, pooled_forecast
from prewarm.replay import evaluator


def test_a_row_never_sees_its_own_minute_or_later() -> None:
    rng = np.random.default_rng(1)
    counts = rng.poisson(0.3, 20_000)
    minutes = np.arange(0, 20_000, 97)
    base = minute_features.feature_matrix(counts, minutes, first_minute=28_000_000, horizon=2)
    for m in (0, 1, 500, 11_000, 19_999):
        changed = counts.copy()
        changed[m:] = rng.poisson(5.0, changed.size - m)
        row = minute_features.feature_matrix(changed, np.asarray([m]), first_minute=28_000_000, horizon=2)
        again = minute_features.feature_matrix(counts, np.asarray([m]), first_minute=28_000_000, horizon=2)
        np.testing.assert_array_equal(row, again)
    assert base.shape == (minutes.size, len(minute_features.FEATURE_NAMES))
    sessions = [minute_features.FEATURE_NAMES.index(f"sessions_{w}") for w in ("1m", "5m", "60m")]
    requests = [i for i in range(base.shape[1]) if i not in sessions]
    assert np.isfinite(base[:, requests]).all()
    assert np.isnan(base[:, sessions]).all()  # no intent signal given: unknown, not zero


def test_recent_counts_and_idle_time_features() -> None:
    counts = np.zeros(200)
    counts[[100, 103, 104]] = [2, 1, 1]
    row = minute_features.feature_matrix(counts, np.asarray([110]), first_minute=0, horizon=1)[0]
    named = dict(zip(minute_features.FEATURE_NAMES, row.tolist(), strict=True))
    assert named["arrivals_1m"] == 0.0
    assert named["arrivals_15m"] == pytest.approx(math.log1p(4))
    assert named["minutes_idle"] == pytest.approx(math.log1p(5))  # last arrival in minute 104
    assert named["active_minutes_7d"] == pytest.approx(3 / minute_features.MINUTES_PER_WEEK)


NAN = math.nan


def named_row(counts: list[float], minute: int, sessions: list[float] | None = None) -> dict[str, float]:
    row = minute_features.feature_matrix(
        np.asarray(counts, dtype=np.float64),
        np.asarray([minute]),
        first_minute=0,
        horizon=1,
        sessions=None if sessions is None else np.asarray(sessions, dtype=np.float64),
    )[0]
    return dict(zip(minute_features.FEATURE_NAMES, row.tolist(), strict=True))


@pytest.mark.parametrize(
    ("counts", "minute", "feature", "expected"),
    [
        ([1, 0, 1, 0, 0], 4, "arrivals_5m", math.log1p(2)),  # all known: the plain sum
        ([1, NAN, 1, 0, 0], 4, "arrivals_5m", math.log1p(2 * 4 / 3)),  # 3 of 4 minutes known: scaled up
        # the one minute in the window is unknown: the rate of the 5 minutes (4 recorded, 2 known)
        ([1, NAN, 1, NAN, 0], 4, "arrivals_1m", math.log1p(1.0)),
        ([1, NAN, 1, NAN, 0], 4, "arrivals_15m", math.log1p(2 * 4 / 2)),  # window clipped to the 4 recorded
        ([NAN, NAN, NAN, NAN, 0], 4, "arrivals_60m", NAN),  # nothing known all week: unknown
        ([2, NAN, NAN, NAN, 0], 4, "minutes_idle", math.log1p(3)),  # unknown minutes are not arrivals
        ([0, 1, NAN, 1, 0], 4, "active_minutes_7d", (2 * 4 / 3) / minute_features.MINUTES_PER_WEEK),
    ],
    ids=[
        "known",
        "scaled",
        "window-unknown-takes-the-longer-rate",
        "clipped-and-scaled",
        "nothing-known",
        "idle",
        "active-share",
    ],
)
def test_unknown_minutes_are_not_zero(counts: list[float], minute: int, feature: str, expected: float) -> None:
    got = named_row(counts, minute)[feature]
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-6)


def test_a_window_a_day_back_that_is_unknown_takes_the_last_days_rate() -> None:
    day = minute_features.MINUTES_PER_DAY
    counts = [NAN] * day + [1, 0, 1, 0, 0]  # yesterday unknown; today 2 arrivals in 5 known minutes
    row = named_row(counts, day + 5)
    daily_rate = (2 * day / 5) / day  # the day's known sum scaled to the day, per minute
    assert row["same_window_yesterday"] == pytest.approx(math.log1p(daily_rate * 1), rel=1e-6)
    assert row["around_this_time_yesterday"] == pytest.approx(math.log1p(daily_rate * 61), rel=1e-6)
    assert row["arrivals_1d"] == pytest.approx(math.log1p(2 * day / 5), rel=1e-6)


def test_ewma_skips_unknown_minutes_and_equals_the_plain_one_without_them() -> None:
    known = [0.0, 4.0, 0.0, 0.0, 2.0, 0.0]
    gap = [0.0, 4.0, NAN, NAN, 2.0, 0.0]
    plain = named_row(known, 6)["ewma_10m"]
    alpha = 1 - 0.5 ** (1 / 10)
    expected = 0.0
    for c in known:
        expected = alpha * c + (1 - alpha) * expected
    assert plain == pytest.approx(math.log1p(expected), rel=1e-6)
    # with two minutes unknown the average runs over the four known ones, re-weighted to a full window
    numerator, weight, full = 0.0, 0.0, 0.0
    for c in gap:
        numerator = alpha * (0.0 if math.isnan(c) else c) + (1 - alpha) * numerator
        weight = alpha * (0.0 if math.isnan(c) else 1.0) + (1 - alpha) * weight
        full = alpha + (1 - alpha) * full
    assert named_row(gap, 6)["ewma_10m"] == pytest.approx(math.log1p(numerator * full / weight), rel=1e-6)


def test_session_openings_are_features_beside_requests() -> None:
    row = named_row([0, 0, 1, 0, 0, 0], 6, sessions=[0, 0, 0, 2, 1, 0])
    assert row["sessions_1m"] == 0.0
    assert row["sessions_5m"] == pytest.approx(math.log1p(3))
    assert row["sessions_60m"] == pytest.approx(math.log1p(3))
    assert row["arrivals_5m"] == pytest.approx(math.log1p(1))


@pytest.mark.parametrize(
    ("counts", "horizon", "labels", "known"),
    [
        ([0, 1, 0, 0], 1, [False, True, False, False], [True, True, True, True]),
        ([0, NAN, 0, 0], 1, [False, False, False, False], [True, False, True, True]),
        ([0, NAN, 1, 0], 2, [False, True, True, False], [False, True, True, True]),
    ],
    ids=["known", "unknown-minute", "arrival-decides-despite-unknown"],
)
def test_labels_of_unknown_windows_are_unknown(
    counts: list[float], horizon: int, labels: list[bool], known: list[bool]
) -> None:
    minutes = np.arange(len(counts))
    values = np.asarray(counts, dtype=np.float64)
    assert minute_features.arrival_labels(values, minutes, horizon).tolist() == labels
    assert minute_features.labels_known(values, minutes, horizon).tolist() == known


def test_demand_windows_with_unknown_minutes_are_left_out() -> None:
    counts = np.asarray([1, 2, NAN, 3, 0], dtype=np.float64)
    assert minute_features.demand_in_horizon(counts, 2).tolist() == [3.0, 3.0]  # [0,1] and [3,4]
    assert arrival_model.has_history(np.asarray([NAN, NAN, 0.0])) is False
    assert arrival_model.has_history(np.asarray([NAN, 1.0])) is True


def test_time_of_day_and_day_of_week_are_cyclical_utc() -> None:
    monday_noon = (4 * 1440) + 12 * 60  # 1970-01-05 was a Monday
    row = minute_features.feature_matrix(np.zeros(10), np.asarray([0]), first_minute=monday_noon, horizon=1)[0]
    assert row[0] == pytest.approx(0.0, abs=1e-6) and row[1] == pytest.approx(-1.0)  # noon
    assert row[2] == pytest.approx(0.0, abs=1e-6) and row[3] == pytest.approx(1.0)  # Monday


@pytest.mark.parametrize(
    ("counts", "horizon", "expected"),
    [
        ([0, 1, 0, 0], 1, [False, True, False, False]),
        ([0, 1, 0, 0], 2, [True, True, False, False]),
        ([0, 0, 0, 3], 3, [False, True, True, True]),
    ],
    ids=["one-minute", "two-minutes", "three-minutes"],
)
def test_arrival_labels(counts: list[int], horizon: int, expected: list[bool]) -> None:
    labels = minute_features.arrival_labels(np.asarray(counts), np.arange(len(counts)), horizon)
    assert labels.tolist() == expected


@pytest.mark.parametrize(
    ("p", "quantile", "expected"),
    [
        (0.2, 0.9, 1.0),  # P(N>=1)=0.2 > 0.1; P(N>=2)=0.1 is not > 0.1
        (0.2, 0.95, 2.0),  # P(N>=2)=0.1 > 0.05
        (0.05, 0.9, 0.0),
        (math.nan, 0.99, 0.0),
        (math.inf, 0.5, 1.0),
    ],
    ids=["one", "two", "none", "nan", "inf"],
)
def test_replicas_keep_the_quantile_warm(p: float, quantile: float, expected: float) -> None:
    tail = np.zeros(arrival_model.MAX_LEVEL)
    tail[:2] = [1.0, 0.5]
    assert arrival_model.replicas_for(np.asarray([p]), tail, quantile)[0] == expected


def test_replicas_divide_by_concurrency() -> None:
    tail = np.ones(arrival_model.MAX_LEVEL)
    assert arrival_model.replicas_for(np.asarray([1.0]), tail, 0.9, concurrency=4)[0] == 4.0  # 16 requests


def test_replicas_reject_a_quantile_outside_0_1() -> None:
    with pytest.raises(ValueError, match="quantile"):
        arrival_model.replicas_for(np.asarray([0.5]), np.ones(arrival_model.MAX_LEVEL), 1.0)


def test_demand_tail_leans_on_the_prior_with_few_windows() -> None:
    prior = np.linspace(1.0, 0.0, arrival_model.MAX_LEVEL)
    own = arrival_model.demand_tail(np.asarray([0, 1, 0, 1]), prior, prior_weight=20.0)
    assert own[0] == pytest.approx(1.0)
    assert own[1] == pytest.approx((20 / 22) * prior[1])


@pytest.mark.parametrize("kind", list(arrival_model.ModelKind), ids=[k.value for k in arrival_model.ModelKind])
def test_sampled_fit_stays_calibrated(kind: arrival_model.ModelKind) -> None:
    rng = np.random.default_rng(5)
    x = rng.random((60_000, 1)).astype(np.float32)
    truth = np.where(x[:, 0] > 0.5, 0.40, 0.02)
    y = rng.random(truth.size) < truth
    config = arrival_model.ForecastConfig(model=kind, max_training_rows=4_000, seed=2)
    model = arrival_model.fit_arrival_model(x, y, config)
    assert model.odds_scale < 0.5  # negatives were sampled far more sparsely than positives
    grid = np.linspace(0.0, 1.0, 2001, dtype=np.float32)[:, None]
    p = model.probability(grid)
    # Calibrated in each half on average (a logistic curve cannot draw the step itself).
    assert p[grid[:, 0] < 0.5].mean() == pytest.approx(0.02, abs=0.04)
    assert p[grid[:, 0] > 0.5].mean() == pytest.approx(0.40, abs=0.04)


def test_one_class_training_gives_a_constant() -> None:
    model = arrival_model.fit_arrival_model(np.zeros((50, 3)), np.zeros(50, dtype=bool), arrival_model.ForecastConfig())
    assert model.estimator is None
    assert model.probability(np.zeros((2, 3))).tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("idle", "expected"),
    [
        ([], idle_histogram.HistogramWindows(0.0, 4 * 3600.0, "fixed")),
        ([600.0] * 5, idle_histogram.HistogramWindows(0.0, 4 * 3600.0, "fixed")),
        ([599.0] * 12, idle_histogram.HistogramWindows(486.0, 660.0 - 486.0, "histogram")),
        ([float(s) for s in range(0, 14_400, 60)], idle_histogram.HistogramWindows(0.0, 4 * 3600.0, "fixed")),
        (
            [20_000.0, 30_000.0, 100.0, 40_000.0],
            idle_histogram.HistogramWindows(30_000.0 * 0.85, 30_000.0 * 0.3, "out-of-range"),
        ),
    ],
    ids=["none", "too-few", "periodic", "flat-cv-below-2", "mostly-out-of-range"],
)
def test_histogram_windows(idle: list[float], expected: idle_histogram.HistogramWindows) -> None:
    got = idle_histogram.histogram_windows(idle)
    assert got.rule == expected.rule
    assert got.prewarm == pytest.approx(expected.prewarm)
    assert got.keepalive == pytest.approx(expected.keepalive)


def test_fallback_applies_the_histogram_rule_per_minute() -> None:
    counts = np.zeros(400)
    counts[::30] = 1  # idle 29 minutes between arrivals, twelve and more times
    minutes = np.arange(360, 400)
    warm = idle_histogram.fallback_replicas(counts, minutes, learned_until=360)
    # head bin 29 -> 29*60*0.9 = 1566 s; tail end 30*60*1.1 = 1980 s; a row reads minutes < m.
    last = np.asarray([max(a for a in range(0, 400, 30) if a < m) for m in minutes])
    idle_s = (minutes - 1 - last) * 60.0
    assert warm.tolist() == ((idle_s >= 1566.0) & (idle_s < 1980.0)).astype(float).tolist()
    assert warm.any()


def test_forecast_config_is_validated() -> None:
    with pytest.raises(ValueError, match="horizon"):
        arrival_model.ForecastConfig(horizon=0)
    assert minute_features.horizon_minutes(61.0) == 2 and minute_features.horizon_minutes(60.0) == 1


@pytest.mark.parametrize(
    ("arrivals", "minute", "keep_alive", "replicas", "expected"),
    [
        ([5], 6, 3, 1, 1.0),  # an arrival in the last minute
        ([5], 8, 3, 1, 1.0),  # three minutes later: still inside
        ([5], 9, 3, 1, 0.0),  # four: out
        ([5], 5, 3, 1, 0.0),  # its own minute is not known yet at its start
        ([5], 6, 3, 2, 2.0),
        ([], 6, 3, 1, 0.0),
        ([5], 6, 0, 1, 0.0),  # no keep-alive
    ],
    ids=["next-minute", "last-minute-inside", "past-it", "own-minute", "two-replicas", "no-arrivals", "off"],
)
def test_keep_alive_after_a_minute_with_arrivals(
    arrivals: list[int], minute: int, keep_alive: int, replicas: int, expected: float
) -> None:
    counts = np.zeros(20)
    counts[arrivals] = 1
    got = arrival_model.keep_alive_replicas(
        counts, np.asarray([minute]), keep_alive_minutes=keep_alive, replicas=replicas
    )
    assert got.tolist() == [expected]


def test_live_predictions_keep_alive_as_the_replay_does() -> None:
    """Where the model does not speak, both the live prediction and the replay's forecast take the
    larger of the hybrid-histogram fallback and the keep-alive, minute by minute."""
    counts = np.zeros(3100)
    counts[[2000, 2990]] = 1.0
    first = 1_000_000
    minutes = np.arange(2980, 3040)
    fallback = np.zeros(counts.size)
    fallback[minutes] = [idle_histogram.fallback_replicas(counts, np.asarray([m]), learned_until=m)[0] for m in minutes]
    replay = evaluator.TraceForecast(
        first_minute=first,
        probability={"t": np.full(counts.size, np.nan)},
        fallback={"t": fallback},
        blocks=np.asarray([0]),
        tails={"t": np.zeros((1, arrival_model.MAX_LEVEL))},
        counts={"t": counts},
    )
    replayed = replay.replicas("t", 0.9, 1, keep_alive_minutes=10, keep_alive_replicas=2)[minutes]
    history = pooled_forecast.TargetHistory(first, counts)
    tail = arrival_model.demand_tail(np.zeros(0))
    live = [
        pooled_forecast.predict(
            None,
            history,
            minute=first + m,
            horizon=1,
            quantile=0.9,
            tail=tail,
            keep_alive_minutes=10,
            keep_alive_replicas=2,
        ).replicas
        for m in minutes.tolist()
    ]
    assert replayed.tolist() == live
    # the arrival at 2990 keeps two warm for the ten minutes after it; the fallback (out of range:
    # the one idle time seen is 16 h) keeps none
    assert [m for m, r in zip(minutes.tolist(), live, strict=True) if r == 2.0] == list(range(2991, 3001))
    assert set(live) == {0.0, 2.0}


@pytest.mark.parametrize(
    ("service", "lead", "overlap"),
    [
        (None, 23.0, 1.0),
        (4.0, 20.0, 0.4),  # starts less than 4 s apart either way, within a 20 s lead
        (30.0, 20.0, 1.0),  # longer than the lead: every arrival needs its own replica
        (0.0, 20.0, 0.0),
        (math.nan, 20.0, 1.0),
        (math.inf, 20.0, 1.0),
        (4.0, 0.0, 1.0),
    ],
    ids=["unknown", "short", "long", "zero", "nan", "inf", "no-lead"],
)
def test_overlap_share(service: float | None, lead: float, overlap: float) -> None:
    assert arrival_model.overlap_share(service, lead) == pytest.approx(overlap)


def test_replicas_needed_is_the_arrivals_when_every_request_overlaps() -> None:
    tail = arrival_model.replicas_needed_tail(np.asarray([1.0, 3.0]), 1.0)
    assert tail[:, :4].tolist() == [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]


def test_replicas_needed_is_one_plus_the_binomial_number_of_others_in_service() -> None:
    tail = arrival_model.replicas_needed_tail(np.asarray([3.0]), 0.25)[0]
    # others ~ Binomial(2, 0.25): P(0) = 0.5625, P(1) = 0.375, P(2) = 0.0625
    assert tail[:4] == pytest.approx([1.0, 0.4375, 0.0625, 0.0])
    assert arrival_model.replicas_needed_tail(np.asarray([500.0]), 0.0)[0][:2].tolist() == [1.0, 0.0]
    many = arrival_model.replicas_needed_tail(np.asarray([5000.0]), 0.5)[0]  # no underflow into nonsense
    assert many == pytest.approx(np.ones(arrival_model.MAX_LEVEL))


def test_short_requests_need_fewer_replicas_than_their_arrivals() -> None:
    demand = np.asarray([0.0, 10.0, 0.0, 10.0])
    by_arrivals = arrival_model.demand_tail(demand)
    by_work = arrival_model.demand_tail(demand, overlap=0.1)
    assert by_arrivals[9] == 1.0
    assert by_work[0] == 1.0
    assert by_work[1] == pytest.approx(1 - 0.9**9)
    assert by_work[5] < 0.01
    p = np.asarray([0.5])
    assert arrival_model.replicas_for(p, by_arrivals, 0.9)[0] == 10.0
    assert arrival_model.replicas_for(p, by_work, 0.9)[0] == 3.0  # P(R >= 3) = 0.5 * 0.225; P(R >= 4) < 0.1


def test_demand_tails_size_each_target_by_its_service_time() -> None:
    counts = np.asarray([0.0, 6.0, 0.0, 6.0] * 30)
    histories = {name: pooled_forecast.TargetHistory(0, counts) for name in ("long", "short")}
    tails = pooled_forecast.demand_tails(
        histories,
        minute=counts.size,
        horizon=1,
        service_seconds={"short": 2.0, "long": None},
        lead_seconds={"short": 40.0, "long": 40.0},
    )
    # 60 busy windows each: 0.75 of a target's own tail, 0.25 of the pooled one
    assert tails["long"][5] == pytest.approx(0.75 + 0.25 * 0.5, abs=1e-3)  # six arrivals, each its own replica
    assert tails["short"][1] == pytest.approx(0.75 * (1 - 0.9**5) + 0.25 * (1 + 1 - 0.9**5) / 2)
    assert tails["short"][5] == pytest.approx(0.125, abs=1e-3)


def test_dropped_features_are_left_out_of_the_fit() -> None:
    with pytest.raises(ValueError, match=r"unknown features \['hour'\]"):
        arrival_model.ForecastConfig(dropped_features=("hour",))
    counts = np.tile(np.asarray([0.0] * 9 + [2.0]), 300)
    history = pooled_forecast.TargetHistory(27_000_000, counts)
    dropped = ("time_of_day_sin", "time_of_day_cos")
    rows = history.features(np.arange(100, 110), 1, dropped)
    assert np.isnan(rows[:, :2]).all() and not np.isnan(rows[:, 2:16]).any()
    config = arrival_model.ForecastConfig(dropped_features=dropped, max_training_rows=500)
    model = pooled_forecast.fit_at({"t": history}, minute=27_000_000 + counts.size, config=config)
    assert model.columns is not None and 0 not in model.columns and 1 not in model.columns
