"""Pending webhook deliveries in Redis, so any instance delivers them and none is lost.

Deliveries are records in one hash, scheduled in a sorted set by due time. A claim (one
script) takes the due ones and moves each a lease into the future: the instance that
claimed it records the outcome before then, or, if it died, the delivery comes due again
for any instance. A job's status (url, pending, last error) is a hash of its own, and its
delivered entries a capped list, beside the job's keys with the same `{id}` tag, so the
runner's saves of the job and these writes never touch each other.
"""

from __future__ import annotations

import time

import redis.asyncio as redis

from . import payloads
from . import redis_keys as keys
from .redis_store import patiently, redis_errors
from .webhook_queue import MAX_DELIVERED_SHOWN, Delivery

#: how often the shared queue is looked at for deliveries due (another instance's, or retries)
POLL_S = 0.5

#: KEYS due, records. ARGV now, lease end, limit.
CLAIM_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local record = redis.call('HGET', KEYS[2], id)
  if record then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, record)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

#: KEYS due, records, status. ARGV id, record, due, error. Only a delivery still pending is
#: rescheduled: one another instance has finished meanwhile stays finished.
RETRY = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
-- Not on a status that has expired: a hash with no url and no TTL would stay for good.
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], 'last_error', ARGV[4]) end
return 1
"""

#: KEYS due, records, status, delivered. ARGV id, error ('' if delivered), entry, cap, ttl.
#: Counted once however many instances finish the same delivery.
DONE = """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
local status = redis.call('EXISTS', KEYS[3]) == 1
if status then redis.call('HINCRBY', KEYS[3], 'pending', -1) end
if ARGV[2] ~= '' then
  if status then redis.call('HSET', KEYS[3], 'last_error', ARGV[2]) end
else
  redis.call('RPUSH', KEYS[4], ARGV[3])
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[4]), -1)
  redis.call('EXPIRE', KEYS[4], ARGV[5])
end
return 1
"""


class RedisDeliveryQueue:
    """The shared queue; statuses live `status_ttl_s` after their last change. A push waits
    out a Redis restart for up to `push_patience_s`, like the job's own writes: a `completed`
    delivery is queued right after the job's end was written, and must not be dropped."""

    def __init__(self, client: redis.Redis, *, status_ttl_s: float, push_patience_s: float) -> None:
        self.client = client
        self.status_ttl_s = int(status_ttl_s)
        self.push_patience_s = push_patience_s
        self._claim = client.register_script(CLAIM_DUE)
        self._retry = client.register_script(RETRY)
        self._done = client.register_script(DONE)

    async def push(self, delivery: Delivery) -> None:
        status = keys.webhook_status_key(delivery.job_id)

        async def write() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(keys.WEBHOOK_RECORDS, delivery.id, delivery.dumps())
                pipe.zadd(keys.WEBHOOKS_DUE, {delivery.id: delivery.created})
                pipe.hsetnx(status, "url", delivery.url)
                pipe.hincrby(status, "pending", 1)
                pipe.expire(status, self.status_ttl_s)
                await pipe.execute()

        await patiently(write, self.push_patience_s)

    async def claim(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        async with redis_errors():
            records = await self._claim(keys=[keys.WEBHOOKS_DUE, keys.WEBHOOK_RECORDS],
                                        args=[now, now + lease_s, limit])
        return [Delivery.loads(record) for record in records]

    async def retry(self, delivery: Delivery, due: float, error: str) -> None:
        async with redis_errors():
            await self._retry(keys=[keys.WEBHOOKS_DUE, keys.WEBHOOK_RECORDS,
                                    keys.webhook_status_key(delivery.job_id)],
                              args=[delivery.id, delivery.dumps(), due, error])

    async def done(self, delivery: Delivery, error: str | None) -> None:
        entry = payloads.WebhookDelivery(type=delivery.type, id=delivery.id,  # type: ignore[arg-type]
                                         attempts=delivery.attempts).model_dump_json()
        async with redis_errors():
            await self._done(
                keys=[keys.WEBHOOKS_DUE, keys.WEBHOOK_RECORDS, keys.webhook_status_key(delivery.job_id),
                      keys.webhook_delivered_key(delivery.job_id)],
                args=[delivery.id, error or "", entry, MAX_DELIVERED_SHOWN, self.status_ttl_s])

    async def status(self, job_id: str) -> payloads.WebhookStatus | None:
        async with redis_errors():
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.webhook_status_key(job_id))
                pipe.lrange(keys.webhook_delivered_key(job_id), 0, -1)
                fields, delivered = await pipe.execute()
        if not fields:
            return None
        error = fields.get(b"last_error")
        return payloads.WebhookStatus(
            url=fields[b"url"].decode(),
            delivered=[payloads.WebhookDelivery.model_validate_json(entry) for entry in delivered],
            pending=max(0, int(fields.get(b"pending", b"0"))),
            last_error=error.decode() if error is not None else None)

    async def next_due(self) -> float | None:
        return time.time() + POLL_S  # another instance may add one at any time: poll

    async def pending(self) -> int:
        return 0  # what waits in Redis stays there for the other instances
