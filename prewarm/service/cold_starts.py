"""Each target's measured cold-start time, from the pod start phases `prewarm cache exec` reports.

The forecaster starts replicas this far ahead (the lead time its floors are sized for); a target
whose pods report no phases keeps its configured `forecast.horizon`. Kept in memory per process:
the phases arrive at whichever replica's listener the pods post to.
"""

from __future__ import annotations

import collections
import statistics
from datetime import datetime

READY_PHASE = "runtime_ready"  # the replica can serve from here on
START_PHASE = "container_started"
KEPT_STARTS = 20  # the median of the last this many starts per target
_MAX_PENDING = 10_000  # pods started and not yet ready, over all targets


class ColdStartTimes:
    """Container start to runtime ready, per target: the median of its last `KEPT_STARTS` pod starts."""

    def __init__(self) -> None:
        self._started: collections.OrderedDict[tuple[str, str], datetime] = collections.OrderedDict()
        self._durations: dict[str, collections.deque[float]] = {}

    def record(self, *, target: str, pod: str, phase: str, at: datetime) -> None:
        """One phase of one pod's start (phases of a start nobody saw begin are ignored)."""
        key = (target, pod)
        if phase == START_PHASE:
            self._started[key] = at
            self._started.move_to_end(key)
            while len(self._started) > _MAX_PENDING:
                self._started.popitem(last=False)
        elif phase == READY_PHASE and key in self._started:
            seconds = (at - self._started.pop(key)).total_seconds()
            if seconds >= 0:
                self._durations.setdefault(target, collections.deque(maxlen=KEPT_STARTS)).append(seconds)

    def seconds(self, target: str) -> float | None:
        """The target's measured cold start in seconds, None before its first complete start."""
        durations = self._durations.get(target)
        return statistics.median(durations) if durations else None
