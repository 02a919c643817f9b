"""A token bucket per client for submits: RATE_LIMIT_BURST at once, then a steady rate."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

_MAX_CLIENTS = 100_000


class RateLimiter:
    def __init__(self, *, per_minute: int, burst: int) -> None:
        self.rate_per_s = per_minute / 60
        self.burst = max(1, burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def acquire(self, key: str, now: float | None = None) -> float:
        """0 if `key` may go ahead now, else the seconds until it may."""
        if not self.enabled:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate_per_s)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            retry = 0.0
        else:
            self._buckets[key] = (tokens, now)
            retry = (1 - tokens) / self.rate_per_s
        # Least recently seen clients go first, so memory stays bounded.
        while len(self._buckets) > _MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return retry


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
