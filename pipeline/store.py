"""Where jobs and their event logs live: one small interface, and the in-process backend.

The runner and the HTTP layer see only `JobStore`; `redis_store.RedisJobStore` is the other
backend, with the log's stream entry ids as SSE ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

from . import payloads, sse
from .contract import JobStatus
from .job import Event, Job


class JobStore(Protocol):
    async def add(self, job: Job, idempotency: tuple[str, str] | None = None,
                  first: payloads.Event | None = None) -> str:
        """Store a new job with its `first` event; `idempotency` is (key, body fingerprint)
        within its owner. Returns the id of the job holding that key: another job's when an
        earlier request took it, and then nothing is stored."""

    async def get(self, job_id: str) -> Job | None:
        """A copy of the stored job: changing it changes nothing until it is saved."""

    async def save(self, job: Job) -> None:
        """Store the running job's new state (the runner's only)."""

    async def finish(self, job: Job, data: payloads.Event, *,
                     only_if: JobStatus | None = None) -> bool:
        """Store the ended job and append its terminal event, as one step; False (and nothing
        written) if the job has already ended, or its stored status is not `only_if`."""

    async def find_idempotent(self, owner: str | None, key: str) -> tuple[Job, str] | None:
        """The job made earlier with this key, and the fingerprint of its body."""

    async def list_jobs(self, owner: str | None, *, status: JobStatus | None, limit: int,
                   before: str | None) -> list[Job]:
        """Jobs newest first, after the job `before` in that order."""

    async def append(self, job_id: str, data: payloads.Event, *, save: Job | None = None) -> Event:
        """Add an event; the log assigns its id, 1, 2, 3 ... per job. A terminal event
        closes the log. `save`, the job's new state, is stored with it in one step."""

    async def read(self, job_id: str, after: int, *, timeout_s: float) -> list[Event] | None:
        """Events with id > `after`, waiting up to `timeout_s` for one ([] if none came).

        None means there will never be more: the job is gone, or its log ended at or
        before `after`.
        """

    async def expire(self, now: float) -> int:
        """Forget finished jobs past their TTL, with their events; how many went."""


@dataclass
class _Entry:
    job: Job
    events: list[Event] = field(default_factory=list)
    #: set and cleared on every append, so the readers waiting then wake together
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    idempotency: tuple[str, str] | None = None


class MemoryJobStore:
    """Jobs and event logs in this process's memory.

    At most `max_jobs` finished jobs are kept: past that, the job that finished first is
    forgotten. Queued and running jobs are never forgotten (the runner bounds their number).
    """

    def __init__(self, *, ttl_s: float, max_jobs: int) -> None:
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        # Both dicts keep insertion order: jobs by creation, finished ones by their end.
        self._entries: dict[str, _Entry] = {}
        self._finished: dict[str, float] = {}
        self._idempotency: dict[tuple[str | None, str], str] = {}

    async def add(self, job: Job, idempotency: tuple[str, str] | None = None,
                  first: payloads.Event | None = None) -> str:
        if idempotency is not None and (job.owner, idempotency[0]) in self._idempotency:
            return self._idempotency[(job.owner, idempotency[0])]
        self._entries[job.id] = _Entry(job.copy(), idempotency=idempotency)
        if idempotency is not None:
            self._idempotency[(job.owner, idempotency[0])] = job.id
        if first is not None:
            await self.append(job.id, first)
        return job.id

    async def get(self, job_id: str) -> Job | None:
        entry = self._entries.get(job_id)
        return entry.job.copy() if entry else None

    async def save(self, job: Job) -> None:
        self._entries[job.id].job = job.copy()

    async def finish(self, job: Job, data: payloads.Event, *,
                     only_if: JobStatus | None = None) -> bool:
        entry = self._entries.get(job.id)
        if entry is None or entry.job.terminal or only_if not in (None, entry.job.status):
            return False
        entry.job = job.copy()
        await self.append(job.id, data)
        return True

    async def find_idempotent(self, owner: str | None, key: str) -> tuple[Job, str] | None:
        job_id = self._idempotency.get((owner, key))
        entry = self._entries.get(job_id) if job_id else None
        if entry is None or entry.idempotency is None:
            return None
        return entry.job.copy(), entry.idempotency[1]

    async def list_jobs(self, owner: str | None, *, status: JobStatus | None, limit: int,
                        before: str | None) -> list[Job]:
        if before is not None and before not in self._entries:
            return []
        jobs = (job for job in self._newest_first(before)
                if job.owner == owner and (status is None or job.status is status))
        return [job.copy() for job in islice(jobs, limit)]

    def _newest_first(self, before: str | None) -> Iterator[Job]:
        """Jobs newest first, starting after `before`: a walk, never a sort."""
        entries = reversed(self._entries.values())
        if before is not None:
            for entry in entries:
                if entry.job.id == before:
                    break
        return (entry.job for entry in entries)

    async def append(self, job_id: str, data: payloads.Event, *, save: Job | None = None) -> Event:
        if save is not None:
            await self.save(save)
        entry = self._entries[job_id]
        event_id = len(entry.events) + 1
        event = Event(event_id, data.event,
                      sse.encode(data.model_dump_json(), event=data.event, id=str(event_id)))
        entry.events.append(event)
        if event.terminal:
            self._finished[job_id] = time.time()  # the TTL runs from the log's close
            while len(self._finished) > self.max_jobs:
                self._forget(next(iter(self._finished)))
        # Wakes every reader waiting now; cleared at once, as each woken reader has its event.
        entry.changed.set()
        entry.changed.clear()
        return event

    async def read(self, job_id: str, after: int, *, timeout_s: float) -> list[Event] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            entry = self._entries.get(job_id)
            if entry is None:
                return None
            if len(entry.events) > after:
                return entry.events[after:]
            if entry.events and entry.events[-1].terminal:
                return None  # the log is closed and the reader has all of it
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            try:
                # asyncio.timeout, not wait_for: no extra task for each waiting reader.
                async with asyncio.timeout(remaining):
                    await entry.changed.wait()
            except TimeoutError:
                return []

    async def expire(self, now: float) -> int:
        # Finished jobs are in the order they ended, so the expired ones come first.
        expired = 0
        for job_id, finished_at in list(self._finished.items()):
            if finished_at + self.ttl_s > now:
                break
            self._forget(job_id)
            expired += 1
        return expired

    def _forget(self, job_id: str) -> None:
        del self._finished[job_id]
        entry = self._entries.pop(job_id)
        if entry.idempotency is not None:
            self._idempotency.pop((entry.job.owner, entry.idempotency[0]), None)
        entry.changed.set()  # readers waiting on it learn it is gone
