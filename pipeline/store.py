"""Where jobs and their event logs live: one small interface, and the in-process backend.

The runner and the HTTP layer see only `JobStore`; a Redis backend can later take its
place, with the log's entry ids as SSE ids.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import sse
from .job import Event, Job, JobStatus


class JobStore(Protocol):
    async def add(self, job: Job, idempotency: tuple[str, str] | None = None) -> None:
        """Store a new job; `idempotency` is (key, body fingerprint) within its owner."""

    async def get(self, job_id: str) -> Job | None: ...

    async def save(self, job: Job) -> None: ...

    async def find_idempotent(self, owner: str | None, key: str) -> tuple[Job, str] | None:
        """The job made earlier with this key, and the fingerprint of its body."""

    async def list_jobs(self, owner: str | None, *, status: JobStatus | None, limit: int,
                   before: str | None) -> list[Job]:
        """Jobs newest first, after the job `before` in that order."""

    async def append(self, job_id: str, type: str, data: dict[str, Any]) -> Event:
        """Add an event; the log assigns its id, 1, 2, 3 ... per job."""

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
    #: set (and replaced) on every append, so waiting readers wake together
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    idempotency: tuple[str, str] | None = None
    seq: int = 0


class MemoryJobStore:
    """Jobs and event logs in this process's memory."""

    def __init__(self, *, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, _Entry] = {}
        self._idempotency: dict[tuple[str | None, str], str] = {}
        self._seq = 0

    async def add(self, job: Job, idempotency: tuple[str, str] | None = None) -> None:
        self._seq += 1
        self._entries[job.id] = _Entry(job, idempotency=idempotency, seq=self._seq)
        if idempotency is not None:
            self._idempotency[(job.owner, idempotency[0])] = job.id

    async def get(self, job_id: str) -> Job | None:
        entry = self._entries.get(job_id)
        return entry.job if entry else None

    async def save(self, job: Job) -> None:
        # In memory the runner already holds the stored object; a shared backend writes here.
        self._entries[job.id].job = job

    async def find_idempotent(self, owner: str | None, key: str) -> tuple[Job, str] | None:
        job_id = self._idempotency.get((owner, key))
        entry = self._entries.get(job_id) if job_id else None
        if entry is None or entry.idempotency is None:
            return None
        return entry.job, entry.idempotency[1]

    async def list_jobs(self, owner: str | None, *, status: JobStatus | None, limit: int,
                   before: str | None) -> list[Job]:
        entries = sorted(self._entries.values(), key=lambda e: e.seq, reverse=True)
        if before is not None:
            cursor = self._entries.get(before)
            if cursor is None:
                return []
            entries = [e for e in entries if e.seq < cursor.seq]
        jobs = [e.job for e in entries
                if e.job.owner == owner and (status is None or e.job.status is status)]
        return jobs[:limit]

    async def append(self, job_id: str, type: str, data: dict[str, Any]) -> Event:
        entry = self._entries[job_id]
        event_id = len(entry.events) + 1
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        event = Event(event_id, type, sse.encode(payload, event=type, id=str(event_id)))
        entry.events.append(event)
        entry.changed.set()
        entry.changed = asyncio.Event()
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
        expired = [e for e in self._entries.values()
                   if e.job.finished_at is not None and e.job.finished_at + self.ttl_s <= now]
        for entry in expired:
            del self._entries[entry.job.id]
            if entry.idempotency is not None:
                self._idempotency.pop((entry.job.owner, entry.idempotency[0]), None)
            entry.changed.set()
        return len(expired)

    def __len__(self) -> int:
        return len(self._entries)
