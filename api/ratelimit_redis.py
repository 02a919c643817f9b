"""The submit token bucket on Redis, shared by every instance: one script, Redis's clock."""

from __future__ import annotations

import redis.asyncio as redis

from pipeline import redis_keys as keys
from pipeline.redis_store import redis_errors

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
            wait = await self._take(keys=[keys.rate_key(key)], args=[self.rate_per_s, self.burst])
        return float(wait)
