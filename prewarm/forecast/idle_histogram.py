"""The hybrid-histogram keep-alive rule (Shahrad et al., ATC 2020): the baseline policy and the
fallback for targets with too little history for the learned model. Pure, like the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from prewarm.forecast import minute_features


@dataclasses.dataclass(frozen=True, slots=True)
class HistogramWindows:
    """The hybrid-histogram rule's windows after an execution ends (seconds), and which rule set them.

    Unload at the end of an execution, load again `prewarm` later, keep loaded for `keepalive`.
    `prewarm` 0 means stay loaded for `keepalive` after the execution.
    """

    prewarm: float
    keepalive: float
    rule: str  # "histogram", "fixed" (not representative) or "out-of-range"


HISTOGRAM_BIN_SECONDS = 60.0
HISTOGRAM_RANGE_SECONDS = 4 * 3600.0
HISTOGRAM_MIN_SAMPLES = 10
HISTOGRAM_MIN_CV = 2.0
HISTOGRAM_OUT_OF_RANGE_SHARE = 0.5
HISTOGRAM_HEAD, HISTOGRAM_TAIL = 0.05, 0.99
HISTOGRAM_MARGIN = 0.10
OUT_OF_RANGE_MARGIN = 0.15


class IdleHistogram:
    """The hybrid-histogram policy's state for one target (Shahrad et al., ATC 2020), updated in O(1).

    1-minute bins over 4 h. `windows()` reads it: representative (>= 10 idle times in range and a
    bin-count CV >= 2): pre-warm at the 5th percentile's bin start less 10%, keep alive to the
    99th percentile's bin end plus 10%. Mostly (> 50%) out of range: the paper fits ARIMA; we
    predict the next idle time as the median of the last five out-of-range ones and pre-warm 15%
    before it, keeping alive for 30% of it. Otherwise the paper's fallback: no pre-warm, keep
    alive for the whole 4 h range.
    """

    _BINS = int(HISTOGRAM_RANGE_SECONDS // HISTOGRAM_BIN_SECONDS)

    def __init__(self) -> None:
        self._counts = np.zeros(self._BINS, dtype=np.int64)
        self._inside = 0
        self._outside = 0
        self._recent_outside: list[float] = []

    def add(self, idle_seconds: float) -> None:
        if idle_seconds >= HISTOGRAM_RANGE_SECONDS:
            self._outside += 1
            self._recent_outside = [*self._recent_outside[-4:], idle_seconds]
        else:
            self._counts[int(max(idle_seconds, 0.0) // HISTOGRAM_BIN_SECONDS)] += 1
            self._inside += 1

    def windows(self) -> HistogramWindows:
        total = self._inside + self._outside
        if total and self._outside / total > HISTOGRAM_OUT_OF_RANGE_SHARE:
            predicted = float(np.median(self._recent_outside))
            return HistogramWindows(
                predicted * (1 - OUT_OF_RANGE_MARGIN), predicted * 2 * OUT_OF_RANGE_MARGIN, "out-of-range"
            )
        fixed = HistogramWindows(0.0, HISTOGRAM_RANGE_SECONDS, "fixed")
        if self._inside < HISTOGRAM_MIN_SAMPLES:
            return fixed
        mean = self._inside / self._BINS
        if self._counts.std() / mean < HISTOGRAM_MIN_CV:
            return fixed
        cumulative = np.cumsum(self._counts) / self._inside
        head_bin = int(np.searchsorted(cumulative, HISTOGRAM_HEAD))
        tail_bin = int(np.searchsorted(cumulative, HISTOGRAM_TAIL))
        prewarm = head_bin * HISTOGRAM_BIN_SECONDS * (1 - HISTOGRAM_MARGIN)
        keepalive_until = (tail_bin + 1) * HISTOGRAM_BIN_SECONDS * (1 + HISTOGRAM_MARGIN)
        return HistogramWindows(prewarm, max(keepalive_until - prewarm, 0.0), "histogram")


def histogram_windows(idle_times: Sequence[float] | np.ndarray) -> HistogramWindows:
    """The hybrid-histogram windows learned from `idle_times` (seconds, oldest first)."""
    histogram = IdleHistogram()
    for idle in np.asarray(idle_times, dtype=np.float64).tolist():
        histogram.add(idle)
    return histogram.windows()


def histogram_floor(idle_seconds: float, windows: HistogramWindows) -> int:
    """1 while `idle_seconds` since the last execution fall inside the rule's warm window, else 0."""
    return 1 if windows.prewarm <= idle_seconds < windows.prewarm + windows.keepalive else 0


def fallback_replicas(counts: np.ndarray, minutes: np.ndarray, *, learned_until: int) -> np.ndarray:
    """The hybrid-histogram rule on minute counts, for the start of each minute index in `minutes`.

    Idle times are the gaps between minutes with arrivals before `learned_until`; each row's idle
    time since the last arrival reads `counts[:m]` only, like the features.
    """
    counts = np.asarray(counts, dtype=np.float64)
    minutes = np.asarray(minutes, dtype=np.int64)
    active = np.flatnonzero(counts[:learned_until] > 0)  # unknown (NaN) minutes count as no arrival
    windows = histogram_windows((np.diff(active) - 1) * 60.0)
    seen = minute_features.last_arrival_before(counts, minutes)
    idle = (minutes - 1 - seen) * 60.0
    warm = (seen >= 0) & (idle >= windows.prewarm) & (idle < windows.prewarm + windows.keepalive)
    return np.asarray(warm, dtype=np.float64)
