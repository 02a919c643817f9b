"""A token bucket per client for submits: RATE_LIMIT_BURST at once, then a steady rate.

In memory for one process here; on Redis (`ratelimit_redis.py`, imported only when REDIS_URL
is set) every instance shares each bucket. The `limits` library offers fixed and moving
windows, not a bucket with a burst, so the bucket is ours: the same rule on both backends.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Protocol

_MAX_CLIENTS = 100_000


class Limiter(Protocol):
    enabled: bool

    async def acquire(self, key: str) -> float:
        """0 if `key` may go ahead now, else the seconds until it may."""


class RateLimiter:
    """Buckets in this process's memory."""

    def __init__(self, *, per_minute: int, burst: int) -> None:
        self.rate_per_s = per_minute / 60
        self.burst = max(1, burst)
        self.enabled = self.rate_per_s > 0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def acquire(self, key: str) -> float:
        if not self.enabled:
            return 0.0
        now = time.monotonic()
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
