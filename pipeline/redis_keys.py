"""Every Redis key and channel the service uses, and the Lua scripts that change jobs (the
webhook queue's own scripts are in `redis_webhooks.py`).

A job's keys share the hash tag `{id}`, so a later Redis Cluster would keep them in one slot;
some scripts also touch shared keys (the queue, the lists, the finished set), so today the
service needs one Redis primary.
Scripts make each change atomic: an event's id is its stream entry's (`0-n`, n = the log's
length + 1, so 1, 2, 3 ... with no gap however many instances append), a job's end and its
terminal event are written together, and a runner's writes are refused once another
instance has claimed the job (its `runner` token differs). A runner names the id it expects
to write, so a command retried after a lost reply is not applied twice.
"""

from __future__ import annotations

PREFIX = "as:"
#: the work queue (a stream) and its consumer group
QUEUE = PREFIX + "queue"
GROUP = "runners"
#: how many jobs wait in QUEUE, kept by the scripts
QUEUED = PREFIX + "queued"
#: finished jobs by end time: members are "<id> <list key>"
FINISHED = PREFIX + "finished"
#: job ids whose running instance must stop them
CANCEL_CHANNEL = PREFIX + "cancel"
#: webhook delivery ids scored by when each is due
WEBHOOKS_DUE = PREFIX + "webhooks:due"
#: webhook delivery id -> the delivery's JSON
WEBHOOK_RECORDS = PREFIX + "webhooks:records"


def job_key(job_id: str) -> str:
    return f"{PREFIX}{{{job_id}}}:job"


def log_key(job_id: str) -> str:
    return f"{PREFIX}{{{job_id}}}:log"


def webhook_status_key(job_id: str) -> str:
    """A job's webhook status: url, pending, last error."""
    return f"{PREFIX}{{{job_id}}}:webhook"


def webhook_delivered_key(job_id: str) -> str:
    """The job's webhook deliveries the receiver took, newest last."""
    return f"{PREFIX}{{{job_id}}}:webhook:delivered"


def events_channel(job_id: str) -> str:
    """Where each event of one job is published as it is appended: "<event id>\n<type>\n<data>"."""
    return f"{PREFIX}{{{job_id}}}:events"


def job_of_channel(channel: str) -> str:
    """The job id in an `events_channel` name."""
    return channel[len(PREFIX) + 1:-len("}:events")]


def list_key(owner: str | None) -> str:
    """Jobs of one owner (or of the open service), scored by creation time."""
    return f"{PREFIX}jobs:{owner or '-'}"


def rate_key(client: str) -> str:
    """One client's submit bucket (its token, else its address)."""
    return f"{PREFIX}rate:{client}"


def idempotency_key(owner: str | None, key_hash: str) -> str:
    return f"{PREFIX}idem:{owner or '-'}:{key_hash}"


_COMMON = """
local function terminal(status)
  return status == 'succeeded' or status == 'failed' or status == 'cancelled'
end
local function append(job_key, log_key, job_id, etype, data)
  local n = redis.call('XLEN', log_key) + 1
  redis.call('XADD', log_key, '0-' .. n, 't', etype, 'd', data)
  redis.call('PUBLISH', '""" + PREFIX + """{' .. job_id .. '}:events', n .. '\\n' .. etype .. '\\n' .. data)
  return n
end
-- nil when the caller may write the job: it is neither gone nor ended, and it is unclaimed
-- or claimed by this caller's token.
local function refusal(job_key, token)
  local status = redis.call('HGET', job_key, 'status')
  if not status then return 'gone' end
  if terminal(status) then return 'ended' end
  local runner = redis.call('HGET', job_key, 'runner')
  if runner and runner ~= token then return 'lease' end
  return nil
end
local function hset_pairs(key, argv, from)
  if #argv >= from then redis.call('HSET', key, unpack(argv, from)) end
end
"""

#: KEYS job, log, queue, queued, list, idem. ARGV id, score, max_queued, idem value, idem ttl,
#: first event data, fields...
ADD = _COMMON + """
if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[3]) then return {'full'} end
if ARGV[4] ~= '' then
  if not redis.call('SET', KEYS[6], ARGV[4], 'NX', 'EX', ARGV[5]) then
    return {'taken', redis.call('GET', KEYS[6])}
  end
  redis.call('HSET', KEYS[1], 'idem', KEYS[6])
end
hset_pairs(KEYS[1], ARGV, 7)
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
redis.call('INCR', KEYS[4])
append(KEYS[1], KEYS[2], ARGV[1], 'status', ARGV[6])
redis.call('XADD', KEYS[3], '*', 'job', ARGV[1])
return {'ok'}
"""

#: KEYS job, queued. ARGV token, fields...
SAVE = _COMMON + """
local refused = refusal(KEYS[1], ARGV[1])
if refused then return refused end
local before = redis.call('HGET', KEYS[1], 'status')
hset_pairs(KEYS[1], ARGV, 2)
if before == 'queued' and redis.call('HGET', KEYS[1], 'status') ~= 'queued' then
  redis.call('DECR', KEYS[2])
end
return 'ok'
"""

#: KEYS job, log, queued. ARGV token, job id, type, data, the id expected ('' for any),
#: fields of the job to save with the event...
APPEND = _COMMON + """
local refused = refusal(KEYS[1], ARGV[1])
if refused then return {refused} end
-- Still this runner's job: an id the log has already is its own write, retried.
local expected = tonumber(ARGV[5])
if expected and expected <= redis.call('XLEN', KEYS[2]) then return {'ok', expected} end
if #ARGV >= 6 then
  local before = redis.call('HGET', KEYS[1], 'status')
  hset_pairs(KEYS[1], ARGV, 6)
  if before == 'queued' and redis.call('HGET', KEYS[1], 'status') ~= 'queued' then
    redis.call('DECR', KEYS[3])
  end
end
return {'ok', append(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4])}
"""

#: KEYS job, log, queued, finished. ARGV token, only_if, ttl, now, max stored, member, type,
#: data, fields...
FINISH = _COMMON + """
local status = redis.call('HGET', KEYS[1], 'status')
if terminal(status) and ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'runner') == ARGV[1] then
  return 'ok'  -- this runner's own finish, retried after a lost reply
end
if ARGV[2] ~= '' then
  -- Only from this status, and only while no instance has claimed the job.
  if status ~= ARGV[2] or redis.call('HEXISTS', KEYS[1], 'runner') == 1 then return 'ended' end
else
  local refused = refusal(KEYS[1], ARGV[1])
  if refused then return refused end
end
if status == 'queued' then redis.call('DECR', KEYS[3]) end
hset_pairs(KEYS[1], ARGV, 9)
append(KEYS[1], KEYS[2], string.match(ARGV[6], '^%S+'), ARGV[7], ARGV[8])
local ttl = tonumber(ARGV[3])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('EXPIRE', idem, ttl) end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[6])
-- Over MAX_STORED_JOBS: forget the jobs that finished first.
while redis.call('ZCARD', KEYS[4]) > tonumber(ARGV[5]) do
  local member = redis.call('ZPOPMIN', KEYS[4])[1]
  local id, list = string.match(member, '^(%S+) (%S+)$')
  local job = '""" + PREFIX + """{' .. id .. '}:job'
  local old_idem = redis.call('HGET', job, 'idem')
  if old_idem then redis.call('DEL', old_idem) end
  redis.call('DEL', job, '""" + PREFIX + """{' .. id .. '}:log')
  redis.call('ZREM', list, id)
end
return 'ok'
"""

#: KEYS job, log. ARGV token, max claims. Takes the job for this runner.
CLAIM = _COMMON + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'gone', 0, 0} end
if terminal(status) then return {'ended', 0, 0} end
local claims = redis.call('HINCRBY', KEYS[1], 'claims', 1)
redis.call('HSET', KEYS[1], 'runner', ARGV[1])
local next_id = redis.call('XLEN', KEYS[2]) + 1
if status == 'queued' then return {'start', claims, next_id} end
if claims > tonumber(ARGV[2]) then return {'lost', claims, next_id} end
return {'resume', claims, next_id}
"""

#: KEYS job. ARGV job id. Asks whoever runs the job to stop it.
REQUEST_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1')
redis.call('PUBLISH', '""" + CANCEL_CHANNEL + """', ARGV[1])
return 1
"""
