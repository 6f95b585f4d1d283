"""Cron windows: DST rules, midnight wrap, overlaps, next change (tables of instant -> expected)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prewarm.core import schedule

NY = "America/New_York"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def window(expr: str, duration_s: float, floor: int, tz: str = "UTC") -> schedule.CronWindow:
    return schedule.CronWindow(schedule=expr, duration=timedelta(seconds=duration_s), floor=floor, timezone=tz)


# (windows, now UTC, expected floor, expected next change UTC or None)
CASES = [
    # 2026-03-08: New York springs forward at 02:00 EST (07:00 UTC) to 03:00 EDT.
    ([window("30 2 * * *", 3600, 2, NY)], "2026-03-08 06:59:59", 0, "2026-03-08 07:00:00"),
    ([window("30 2 * * *", 3600, 2, NY)], "2026-03-08 07:00:00", 2, "2026-03-08 08:00:00"),
    ([window("30 2 * * *", 3600, 2, NY)], "2026-03-08 07:59:59", 2, "2026-03-08 08:00:00"),
    ([window("30 2 * * *", 3600, 2, NY)], "2026-03-08 08:00:00", 0, "2026-03-09 06:30:00"),
    # a window opening before the jump lasts elapsed time: 01:00 EST + 2h = 04:00 EDT
    ([window("0 1 * * *", 7200, 1, NY)], "2026-03-08 07:30:00", 1, "2026-03-08 08:00:00"),
    ([window("0 1 * * *", 7200, 1, NY)], "2026-03-08 08:00:00", 0, "2026-03-09 05:00:00"),
    # 2026-11-01: New York falls back at 02:00 EDT (06:00 UTC) to 01:00 EST; 01:30 happens twice.
    ([window("30 1 * * *", 1800, 3, NY)], "2026-11-01 05:29:59", 0, "2026-11-01 05:30:00"),
    ([window("30 1 * * *", 1800, 3, NY)], "2026-11-01 05:30:00", 3, "2026-11-01 06:00:00"),
    ([window("30 1 * * *", 1800, 3, NY)], "2026-11-01 06:30:00", 0, "2026-11-02 06:30:00"),  # no second run
    ([window("0 * * * *", 600, 1, NY)], "2026-11-01 05:05:00", 1, "2026-11-01 05:10:00"),  # 01:00 EDT fires
    ([window("0 * * * *", 600, 1, NY)], "2026-11-01 06:05:00", 0, "2026-11-01 07:00:00"),  # 01:00 EST does not
    # 22:00 for 4h spans midnight
    ([window("0 22 * * *", 4 * 3600, 1)], "2026-05-01 21:59:59", 0, "2026-05-01 22:00:00"),
    ([window("0 22 * * *", 4 * 3600, 1)], "2026-05-01 22:00:00", 1, "2026-05-02 02:00:00"),
    ([window("0 22 * * *", 4 * 3600, 1)], "2026-05-02 01:59:59", 1, "2026-05-02 02:00:00"),
    ([window("0 22 * * *", 4 * 3600, 1)], "2026-05-02 02:00:00", 0, "2026-05-02 22:00:00"),
    # overlapping windows: the larger floor wins; next change is the nearest boundary of any
    (
        [window("0 9 * * *", 8 * 3600, 1), window("0 12 * * *", 3600, 3)],
        "2026-05-01 12:30:00",
        3,
        "2026-05-01 13:00:00",
    ),
    (
        [window("0 9 * * *", 8 * 3600, 1), window("0 12 * * *", 3600, 3)],
        "2026-05-01 13:00:00",
        1,
        "2026-05-01 17:00:00",
    ),
    # a window that re-fires before it ends runs on: the change is the end of the chain
    ([window("*/10 * * * *", 900, 2)], "2026-05-01 10:05:00", 2, "2026-05-01 10:10:00"),
    # weekdays only: Friday evening -> Monday morning
    ([window("55 8 * * 1-5", 13 * 3600, 2, NY)], "2026-05-02 12:00:00", 0, "2026-05-04 12:55:00"),
    ([], "2026-05-01 12:00:00", 0, None),
]
IDS = [
    "dst-spring-before-gap",
    "dst-spring-gap-start-fires-at-03:00",
    "dst-spring-last-second",
    "dst-spring-ended",
    "dst-spring-elapsed-duration",
    "dst-spring-elapsed-duration-ended",
    "dst-fall-before",
    "dst-fall-first-occurrence",
    "dst-fall-repeat-does-not-fire",
    "dst-fall-hourly-fires-first-01:00",
    "dst-fall-hourly-skips-repeated-01:00",
    "midnight-before",
    "midnight-open",
    "midnight-after-midnight",
    "midnight-end-is-exclusive",
    "overlap-larger-wins",
    "overlap-falls-back-to-smaller",
    "self-overlap",
    "weekdays-skip-weekend",
    "no-windows",
]


@pytest.mark.parametrize(("windows", "now", "floor", "next_change"), CASES, ids=IDS)
def test_evaluate_windows(windows: list[schedule.CronWindow], now: str, floor: int, next_change: str | None) -> None:
    state = schedule.evaluate_windows(windows, utc(now))
    assert state.floor == floor
    assert state.next_change == (None if next_change is None else utc(next_change))


def test_self_overlapping_window_reports_the_end_of_the_chain() -> None:
    state = schedule.evaluate_windows([window("*/10 * * * *", 900, 2)], utc("2026-05-01 10:05:00"))
    # Every run is followed by the next before it ends; the run is followed a bounded way ahead.
    assert state.ends_at is not None and state.ends_at > utc("2026-05-01 20:00:00")


def test_evaluate_windows_rejects_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.evaluate_windows([], datetime(2026, 5, 1))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("* * * *", "is not a 5-field cron expression (has 4 fields)"),
        ("0 0 * * * *", "is not a 5-field cron expression (has 6 fields)"),
        ("61 * * * *", "is not a valid cron expression"),
        ("0 0 30 2 *", "never fires"),
        (5, "is not a cron expression"),
    ],
    ids=["four-fields", "six-fields", "minute-61", "february-30", "not-a-string"],
)
def test_parse_schedule_errors(raw: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        schedule.parse_schedule(raw)
    assert str(caught.value) == message


def test_parse_schedule_normalises_spaces() -> None:
    assert schedule.parse_schedule("  0  22 * *   * ") == "0 22 * * *"


@pytest.mark.parametrize("raw", ["Mars/Olympus", "", 3], ids=["unknown", "empty", "number"])
def test_parse_timezone_errors(raw: object) -> None:
    with pytest.raises(ValueError, match="is not an IANA timezone name"):
        schedule.parse_timezone(raw)
