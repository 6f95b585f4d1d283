"""How long a target that failed to actuate waits before its next attempt.

client-go's default controller rate limiter, with jitter: the longer of a per-target exponential
backoff (so one bad target cannot starve the others) and an overall token bucket (so an outage
of the API does not turn into a stampede of retries once it answers again).
"""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True, slots=True)
class BackoffSettings:
    """Per-target backoff from `first` doubling up to `cap` seconds, and `qps`/`burst` for all targets.

    The cap is short on purpose: a floor must land within a couple of seconds of the API answering again.
    """

    first: float = 0.05
    cap: float = 1.0
    qps: float = 50.0
    burst: int = 200

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"backoff needs 0 < first <= cap, got first={self.first} cap={self.cap}")
        if self.qps <= 0 or self.burst < 1:
            raise ValueError(f"backoff needs qps > 0 and burst >= 1, got qps={self.qps} burst={self.burst}")


class RateLimiter:
    """`when(key, now)` is the delay before `key`'s next attempt; `forget(key)` once it succeeded.

    `now` is monotonic seconds from the caller's clock; `rng` draws the jitter (seeded in tests).
    """

    def __init__(self, settings: BackoffSettings | None = None, *, rng: random.Random | None = None) -> None:
        self._settings = settings or BackoffSettings()
        self._rng = rng or random.Random()
        self._failures: dict[str, int] = {}
        self._tokens = float(self._settings.burst)
        self._filled_at: float | None = None

    def when(self, key: str, now: float) -> float:
        """Count one more failure of `key` and return how long to wait before trying it again."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        settings = self._settings
        exponential = min(settings.cap, settings.first * 2.0 ** min(failures - 1, 62))
        own = exponential * (0.5 + 0.5 * self._rng.random())  # jitter: never past the cap
        return max(own, self._bucket_delay(now))

    def _bucket_delay(self, now: float) -> float:
        settings = self._settings
        if self._filled_at is not None:
            self._tokens = min(float(settings.burst), self._tokens + (now - self._filled_at) * settings.qps)
        self._filled_at = now
        self._tokens -= 1.0  # reserved now, paid back by waiting while it is negative
        return 0.0 if self._tokens >= 0 else -self._tokens / settings.qps

    def failures(self, key: str) -> int:
        """Failures of `key` since it last succeeded."""
        return self._failures.get(key, 0)

    def forget(self, key: str) -> None:
        """`key` succeeded (or is gone): its next failure starts from the first delay again."""
        self._failures.pop(key, None)
