"""The job store: ids from the log, newest-first lists, and memory bounded by count and time."""

from __future__ import annotations

import time

import pytest

from pipeline.contract import JobStatus
from pipeline.job import Job
from pipeline.payloads import CancelledEvent, StatusEvent
from pipeline.store import MemoryJobStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def add_job(store: MemoryJobStore, topic: str, *, finished: bool = False) -> Job:
    job = Job(topic=topic)
    await store.add(job)
    await store.append(job.id, StatusEvent(status=JobStatus.queued, stage=job.stage, progress=0))
    if finished:
        await finish(store, job)
    return job


async def finish(store: MemoryJobStore, job: Job) -> None:
    job.finish(JobStatus.cancelled)
    assert await store.finish(job, CancelledEvent(code="cancelled", message="Cancelled."))


async def test_ids_count_from_one_without_gaps() -> None:
    store = MemoryJobStore(ttl_s=60, max_jobs=10)
    job = await add_job(store, "a")
    await finish(store, job)
    events = await store.read(job.id, 0, timeout_s=0)
    assert events is not None
    assert [event.id for event in events] == [1, 2]
    assert events[1].frame.startswith(b"id: 2\nevent: cancelled\ndata: {")
    assert await store.read(job.id, 2, timeout_s=0) is None  # the log is closed


async def test_the_list_is_newest_first_and_pages_after_a_cursor() -> None:
    store = MemoryJobStore(ttl_s=60, max_jobs=10)
    jobs = [await add_job(store, f"t{n}", finished=n % 2 == 0) for n in range(5)]
    newest_first = [job.id for job in reversed(jobs)]
    listed = await store.list_jobs(None, status=None, limit=10, before=None)
    assert [job.id for job in listed] == newest_first
    page = await store.list_jobs(None, status=None, limit=2, before=newest_first[1])
    assert [job.id for job in page] == newest_first[2:4]
    cancelled = await store.list_jobs(None, status=JobStatus.cancelled, limit=10, before=None)
    assert [job.id for job in cancelled] == [jobs[4].id, jobs[2].id, jobs[0].id]
    assert await store.list_jobs(None, status=None, limit=10, before="j_unknown") == []


async def test_a_full_store_forgets_the_job_that_finished_first() -> None:
    store = MemoryJobStore(ttl_s=3600, max_jobs=2)
    first, second, third = [await add_job(store, topic) for topic in ("a", "b", "c")]
    await finish(store, second)
    await finish(store, first)  # finished after `second`, though created before it
    await finish(store, third)  # a third finished job: one must go
    assert await store.get(second.id) is None
    assert await store.read(second.id, 0, timeout_s=0) is None
    assert [await store.get(job.id) for job in (first, third)] == [first, third]


async def test_queued_and_running_jobs_are_never_forgotten() -> None:
    store = MemoryJobStore(ttl_s=3600, max_jobs=1)
    unfinished = [await add_job(store, topic) for topic in ("a", "b", "c")]
    assert len(store) == 3  # over the cap, but none has finished
    await finish(store, unfinished[1])
    assert len(store) == 3
    await finish(store, unfinished[0])
    assert [await store.get(job.id) is not None for job in unfinished] == [True, False, True]


async def test_expire_forgets_finished_jobs_past_their_ttl_only() -> None:
    store = MemoryJobStore(ttl_s=10, max_jobs=10)
    done = await add_job(store, "done", finished=True)
    running = await add_job(store, "running")
    assert await store.expire(time.time()) == 0
    assert await store.expire(time.time() + 11) == 1
    assert await store.get(done.id) is None
    assert await store.get(running.id) == running


async def test_finish_happens_once_and_only_from_the_status_asked_for() -> None:
    store = MemoryJobStore(ttl_s=60, max_jobs=10)
    job = await add_job(store, "a")
    running = job.copy()
    running.start()
    await store.save(running)
    cancelled = job.copy()
    cancelled.finish(JobStatus.cancelled)
    event = CancelledEvent(code="cancelled", message="Cancelled.")
    assert not await store.finish(cancelled, event, only_if=JobStatus.queued)
    assert (await store.get(job.id)).status is JobStatus.running  # type: ignore[union-attr]
    assert await store.finish(cancelled, event, only_if=JobStatus.running)
    assert not await store.finish(cancelled, event)
    events = await store.read(job.id, 0, timeout_s=0)
    assert [e.type for e in events or ()] == ["status", "cancelled"]


async def test_the_store_hands_out_copies() -> None:
    store = MemoryJobStore(ttl_s=60, max_jobs=10)
    job = await add_job(store, "a")
    fetched = await store.get(job.id)
    assert fetched is not None and fetched is not job
    fetched.start()
    assert (await store.get(job.id)).status is JobStatus.queued  # type: ignore[union-attr]
