"""The job store on Redis: a hash per job, a stream per job's events, shared by every instance.

Jobs are written by the scripts of `redis_keys.py`; each job's log is read through the
instance's `LogHub`, so one reader per job serves every local subscriber. Redis errors
become `StoreUnavailable`; a write refused because another instance claimed the job
becomes `LeaseLost`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import redis.asyncio as redis
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from . import payloads
from . import redis_keys as keys
from .contract import JobStatus, Stage
from .errors import LeaseLost, QueueFull, StoreUnavailable
from .job import Event, Job, WebhookSpec
from .payloads import JobErrorBody
from .redis_log import LogHub, frame
from .usage import Usage

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: seconds any one command may take before Redis counts as hung
COMMAND_TIMEOUT_S = 5.0
#: connections of the command pool; a burst of commands waits for one rather than opening more
POOL_SIZE = 128
#: a job claimed this many times (each time its instance died) fails with `worker_lost`
MAX_CLAIMS = 3
_LIST_BATCH = 50


@asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Redis failures as the service's own error, raised at this edge."""
    try:
        yield
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise StoreUnavailable("Redis cannot be reached.") from exc
    except RedisError as exc:
        raise StoreUnavailable(f"Redis refused a command: {exc}") from exc


def connect(url: str, *, timeout_s: float = COMMAND_TIMEOUT_S, connections: int = POOL_SIZE,
            name: str | None = None) -> redis.Redis:
    """A client of at most `connections` connections (more callers wait for one), whose
    commands time out: a hung Redis is an error, not a stuck request. `name` shows in
    Redis's CLIENT LIST, so an operator can tell instances apart."""
    # Waiting for a free connection is load, not Redis being away: callers queue for one as
    # long as it takes, and only a command that is sent has a deadline.
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=None, socket_timeout=timeout_s,
        socket_connect_timeout=2.0, health_check_interval=10, client_name=name)
    return redis.Redis.from_pool(pool)  # the client owns the pool, and closes it


def encode_job(job: Job) -> dict[str, str]:
    """The job as hash fields: plain strings where Lua reads them, JSON for the rest."""
    return {
        "id": job.id, "topic": job.topic, "owner": job.owner or "", "status": job.status.value,
        "stage": job.stage.value, "progress": str(job.progress), "created_at": repr(job.created_at),
        "started_at": json.dumps(job.started_at), "finished_at": json.dumps(job.finished_at),
        "sections": json.dumps(job.sections), "article": json.dumps(job.article),
        "error": job.error.model_dump_json() if job.error else "null",
        "contents": json.dumps(job.contents),
        "usage": json.dumps(dataclasses.asdict(job.usage)),
        "trace": job.trace or "",
        "webhook": json.dumps([job.webhook.url, job.webhook.events] if job.webhook else None),
    }


def decode_job(fields: Mapping[bytes, bytes]) -> Job:
    text = {key.decode(): value.decode() for key, value in fields.items()}
    error = json.loads(text["error"])
    return Job(
        id=text["id"], topic=text["topic"], owner=text["owner"] or None,
        status=JobStatus(text["status"]), stage=Stage(text["stage"]),
        progress=int(text["progress"]), created_at=float(text["created_at"]),
        started_at=json.loads(text["started_at"]), finished_at=json.loads(text["finished_at"]),
        sections=json.loads(text["sections"]), article=json.loads(text["article"]),
        error=JobErrorBody(**error) if error else None,
        contents={int(index): content for index, content in json.loads(text["contents"]).items()},
        # Absent from jobs stored before usage and traces were kept.
        usage=Usage(**json.loads(text["usage"])) if "usage" in text else Usage(),
        trace=text.get("trace") or None,
        webhook=WebhookSpec(webhook[0], tuple(webhook[1]))
        if (webhook := json.loads(text.get("webhook", "null"))) else None,
    )


def _pairs(fields: Mapping[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


async def patiently(write: Callable[[], Awaitable[T]], patience_s: float) -> T:
    """A write tried again while Redis is away (each must be safe to repeat), for up to
    `patience_s`: a job, or its webhook, waits out a Redis restart instead of failing."""
    deadline = time.monotonic() + patience_s
    pause = 0.05
    while True:
        try:
            async with redis_errors():
                return await write()
        except StoreUnavailable:
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("Redis is away; trying the write again in %.2f s", pause)
            await anyio.sleep(pause)
            pause = min(2.0, pause * 2)


class RedisJobStore:
    """Jobs and event logs in Redis, for every instance behind one address."""

    def __init__(self, client: redis.Redis, hub: LogHub, *, ttl_s: float, max_jobs: int,
                 max_queued: int, job_timeout_s: float, write_patience_s: float) -> None:
        self.client = client
        self.write_patience_s = write_patience_s
        self.hub = hub
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self.max_queued = max_queued
        self.job_timeout_s = job_timeout_s
        self._add = client.register_script(keys.ADD)
        self._save = client.register_script(keys.SAVE)
        self._append = client.register_script(keys.APPEND)
        self._finish = client.register_script(keys.FINISH)
        self._claim = client.register_script(keys.CLAIM)
        self._request_cancel = client.register_script(keys.REQUEST_CANCEL)
        #: for each job this instance runs: its claim token, what it last wrote of the job,
        #: and the id of the next event it writes
        self._tokens: dict[str, str] = {}
        self._saved: dict[str, dict[str, str]] = {}
        self._next_ids: dict[str, int] = {}

    async def add(self, job: Job, idempotency: tuple[str, str] | None = None,
                  first: payloads.Event | None = None) -> str:
        """Store a new job with its first event and queue it, all at once; the id of the job
        that holds the idempotency key, which is another job's if that one won the race."""
        fields = encode_job(job)
        idem_key = idem_value = ""
        if idempotency is not None:
            idem_key = keys.idempotency_key(job.owner, _digest(idempotency[0]))
            idem_value = f"{job.id} {idempotency[1]}"
        data = first.model_dump_json() if first else ""
        async with redis_errors():
            result = await self._add(
                keys=[keys.job_key(job.id), keys.log_key(job.id), keys.QUEUE, keys.QUEUED,
                      keys.list_key(job.owner), idem_key or keys.PREFIX + "no-idem"],
                args=[job.id, job.created_at, self.max_queued, idem_value,
                      int(self.ttl_s + 2 * self.job_timeout_s), data, *_pairs(fields)])
        if result[0] == b"full":
            raise QueueFull
        if result[0] == b"taken":
            return str(result[1].decode().split(" ")[0])
        return job.id

    async def get(self, job_id: str) -> Job | None:
        async with redis_errors():
            fields = await self.client.hgetall(keys.job_key(job_id))
        return decode_job(fields) if fields else None

    async def claim(self, job_id: str, token: str) -> tuple[str, int]:
        """Take the job for this instance: ("start" | "resume" | "lost" | "ended" | "gone",
        how many times it has been claimed). Writes from any earlier claimer are refused."""
        async with redis_errors():
            verdict, claims, next_id = await self._claim(
                keys=[keys.job_key(job_id), keys.log_key(job_id)], args=[token, MAX_CLAIMS])
        if verdict in (b"start", b"resume", b"lost"):
            self._tokens[job_id] = token
            self._next_ids[job_id] = int(next_id)
        return verdict.decode(), int(claims)

    def release(self, job_id: str) -> None:
        """Forget this instance's claim on the job (it ended, or another instance has it)."""
        self._tokens.pop(job_id, None)
        self._saved.pop(job_id, None)
        self._next_ids.pop(job_id, None)

    async def _patiently(self, write: Callable[[], Awaitable[T]]) -> T:
        return await patiently(write, self.write_patience_s)

    async def save(self, job: Job) -> None:
        fields, changed = self._changes(job)
        if not changed:
            return
        verdict = await self._patiently(lambda: self._save(
            keys=[keys.job_key(job.id), keys.QUEUED],
            args=[self._tokens.get(job.id, ""), *_pairs(changed)]))
        _check(verdict, job.id)
        self._saved[job.id] = fields

    def _changes(self, job: Job) -> tuple[dict[str, str], dict[str, str]]:
        """The job's fields, and those that differ from what this instance last saved."""
        fields = encode_job(job)
        saved = self._saved.get(job.id, {})
        return fields, {name: value for name, value in fields.items() if saved.get(name) != value}

    async def finish(self, job: Job, data: payloads.Event, *,
                     only_if: JobStatus | None = None) -> bool:
        member = f"{job.id} {keys.list_key(job.owner)}"
        args = [self._tokens.get(job.id, ""), only_if.value if only_if else "", int(self.ttl_s),
                time.time(), self.max_jobs, member, data.event, data.model_dump_json(),
                *_pairs(encode_job(job))]
        verdict = await self._patiently(lambda: self._finish(
            keys=[keys.job_key(job.id), keys.log_key(job.id), keys.QUEUED, keys.FINISHED],
            args=args))
        if verdict == b"lease":
            raise LeaseLost(f"Job {job.id} was claimed by another instance.")
        self.release(job.id)
        return bool(verdict == b"ok")

    async def append(self, job_id: str, data: payloads.Event, *, save: Job | None = None) -> Event:
        text = data.model_dump_json()
        expected = self._next_ids.get(job_id, "")
        # The job's new state goes in the same script: one round trip, not two.
        fields, changed = self._changes(save) if save is not None else ({}, {})
        result = await self._patiently(lambda: self._append(
            keys=[keys.job_key(job_id), keys.log_key(job_id), keys.QUEUED],
            args=[self._tokens.get(job_id, ""), job_id, data.event, text, expected,
                  *_pairs(changed)]))
        _check(result[0], job_id)
        if save is not None:
            self._saved[job_id] = fields
        event_id = int(result[1])
        if job_id in self._next_ids:
            self._next_ids[job_id] = event_id + 1
        return Event(event_id, data.event, frame(event_id, data.event, text))

    async def request_cancel(self, job_id: str) -> None:
        """Ask the instance running the job to stop it (state in Redis, and a message)."""
        async with redis_errors():
            await self._request_cancel(keys=[keys.job_key(job_id)], args=[job_id])

    async def cancel_requested(self, job_ids: list[str]) -> list[str]:
        """Those of `job_ids` whose cancel has been asked for."""
        async with redis_errors():
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(keys.job_key(job_id), "cancel")
                flags = await pipe.execute()
        return [job_id for job_id, flag in zip(job_ids, flags) if flag]

    async def find_idempotent(self, owner: str | None, key: str) -> tuple[Job, str] | None:
        async with redis_errors():
            value = await self.client.get(keys.idempotency_key(owner, _digest(key)))
        if value is None:
            return None
        job_id, fingerprint = value.decode().split(" ", 1)
        job = await self.get(job_id)
        return (job, fingerprint) if job else None

    async def list_jobs(self, owner: str | None, *, status: JobStatus | None, limit: int,
                        before: str | None) -> list[Job]:
        list_key = keys.list_key(owner)
        async with redis_errors():
            top = "+inf"
            if before is not None:
                score = await self.client.zscore(list_key, before)
                if score is None:
                    return []
                top = f"({score}"
            jobs: list[Job] = []
            while len(jobs) < limit:
                ids = await self.client.zrevrangebyscore(list_key, top, "-inf", start=0,
                                                         num=_LIST_BATCH, withscores=True)
                if not ids:
                    break
                async with self.client.pipeline(transaction=False) as pipe:
                    for job_id, _ in ids:
                        pipe.hgetall(keys.job_key(job_id.decode()))
                    found = await pipe.execute()
                gone = [job_id for (job_id, _), fields in zip(ids, found) if not fields]
                if gone:
                    await self.client.zrem(list_key, *gone)  # expired since: tidy the list
                jobs.extend(job for job in map(decode_job, filter(None, found))
                            if job.owner == owner and (status is None or job.status is status))
                top = f"({ids[-1][1]}"
        return jobs[:limit]

    async def read(self, job_id: str, after: int, *, timeout_s: float) -> list[Event] | None:
        return await self.hub.read(job_id, after, timeout_s=timeout_s)

    async def expire(self, now: float) -> int:
        """Tidy what the keys' own expiry leaves: the lists' entries of expired jobs."""
        async with redis_errors():
            members = await self.client.zrangebyscore(keys.FINISHED, "-inf", now - self.ttl_s)
            if not members:
                return 0
            async with self.client.pipeline(transaction=False) as pipe:
                for member in members:
                    job_id, list_key = member.decode().split(" ", 1)
                    pipe.zrem(keys.FINISHED, member)
                    pipe.zrem(list_key, job_id)
                    pipe.delete(keys.job_key(job_id), keys.log_key(job_id))
                await pipe.execute()
        return len(members)

    async def ping(self) -> None:
        async with redis_errors():
            await self.client.ping()


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _check(verdict: Any, job_id: str) -> None:
    if verdict == b"lease":
        raise LeaseLost(f"Job {job_id} was claimed by another instance.")
    if verdict in (b"ended", b"gone"):
        raise LeaseLost(f"Job {job_id} has ended or is gone; this runner lets it go.")
