"""A token bucket per client for submits: RATE_LIMIT_BURST at once, then a steady rate.

In memory for one process; on Redis (one script, so every instance shares each bucket) when
REDIS_URL is set. The `limits` library offers fixed and moving windows, not a bucket with a
burst, so the bucket is ours: a few lines, the same rule on both backends.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as redis

from pipeline.redis_keys import PREFIX
from pipeline.redis_store import redis_errors

_MAX_CLIENTS = 100_000

# KEYS bucket. ARGV rate per second, burst. Time is Redis's own, so instances whose clocks
# differ still share one rule. The bucket expires once it would be full again.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = math.min(burst, (tonumber(bucket[1]) or burst) + (now - (tonumber(bucket[2]) or now)) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1)
return tostring(wait)
"""


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
        return self.take(key, time.monotonic())

    def take(self, key: str, now: float) -> float:
        if not self.enabled:
            return 0.0
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


class RedisRateLimiter:
    """Buckets in Redis, shared by every instance."""

    def __init__(self, client: redis.Redis, *, per_minute: int, burst: int) -> None:
        self.rate_per_s = per_minute / 60
        self.burst = max(1, burst)
        self.enabled = self.rate_per_s > 0
        self._take = client.register_script(_TAKE)

    async def acquire(self, key: str) -> float:
        if not self.enabled:
            return 0.0
        async with redis_errors():
            wait = await self._take(keys=[f"{PREFIX}rate:{key}"], args=[self.rate_per_s, self.burst])
        return float(wait)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
