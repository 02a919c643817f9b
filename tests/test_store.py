"""The job store's interface, one suite for both backends: in memory, and on a real Redis.

Ids from the log, newest-first lists, one end per job, copies, and memory bounded by count
and by time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import pytest

from pipeline.contract import JobStatus
from pipeline.job import Job
from pipeline.payloads import CancelledEvent, StatusEvent
from pipeline.redis_log import LogHub
from pipeline.redis_store import RedisJobStore, connect
from pipeline.store import JobStore, MemoryJobStore

from .redis_server import RedisServer

pytestmark = pytest.mark.anyio
StoreFactory = Callable[..., AbstractAsyncContextManager[JobStore]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "redis"])
def open_store(request: pytest.FixtureRequest) -> StoreFactory:
    """`async with open_store(ttl_s=..., max_jobs=...) as store`, for each backend."""
    if request.param == "memory":
        @asynccontextmanager
        async def memory(*, ttl_s: float, max_jobs: int) -> AsyncIterator[JobStore]:
            yield MemoryJobStore(ttl_s=ttl_s, max_jobs=max_jobs)
        return memory
    server: RedisServer = request.getfixturevalue("redis_server")

    @asynccontextmanager
    async def on_redis(*, ttl_s: float, max_jobs: int) -> AsyncIterator[JobStore]:
        client, subscriber = connect(server.url), connect(server.url, timeout_s=15)
        hub = LogHub(client, subscriber)
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            yield RedisJobStore(client, hub, ttl_s=ttl_s, max_jobs=max_jobs, max_queued=100,
                                job_timeout_s=60, write_patience_s=1)
            tg.cancel_scope.cancel()
        await client.aclose()
        await subscriber.aclose()
    return on_redis


async def add_job(store: JobStore, topic: str, *, finished: bool = False) -> Job:
    job = Job(topic=topic)
    first = StatusEvent(status=JobStatus.queued, stage=job.stage, progress=0)
    assert await store.add(job, None, first) == job.id
    if finished:
        await finish(store, job)
    return job


async def finish(store: JobStore, job: Job) -> None:
    job.finish(JobStatus.cancelled)
    assert await store.finish(job, CancelledEvent(code="cancelled", message="Cancelled."))


async def test_an_event_appended_with_the_jobs_state_stores_both(open_store: StoreFactory) -> None:
    async with open_store(ttl_s=60, max_jobs=10) as store:
        job = await add_job(store, "a")
        job.start()
        running = StatusEvent(status=JobStatus.running, stage=job.stage, progress=0)
        assert (await store.append(job.id, running, save=job)).id == 2
        stored = await store.get(job.id)
        assert stored is not None and stored.status is JobStatus.running
        events = await store.read(job.id, 1, timeout_s=0)
        assert events is not None and [event.type for event in events] == ["status"]


async def test_ids_count_from_one_without_gaps(open_store: StoreFactory) -> None:
    async with open_store(ttl_s=60, max_jobs=10) as store:
        job = await add_job(store, "a")
        await finish(store, job)
        events = await store.read(job.id, 0, timeout_s=0)
        assert events is not None
        assert [event.id for event in events] == [1, 2]
        assert events[1].frame.startswith(b"id: 2\nevent: cancelled\ndata: {")
        assert await store.read(job.id, 2, timeout_s=0) is None  # the log is closed


async def test_the_list_is_newest_first_and_pages_after_a_cursor(open_store: StoreFactory) -> None:
    async with open_store(ttl_s=60, max_jobs=10) as store:
        jobs = [await add_job(store, f"t{n}", finished=n % 2 == 0) for n in range(5)]
        newest_first = [job.id for job in reversed(jobs)]
        listed = await store.list_jobs(None, status=None, limit=10, before=None)
        assert [job.id for job in listed] == newest_first
        page = await store.list_jobs(None, status=None, limit=2, before=newest_first[1])
        assert [job.id for job in page] == newest_first[2:4]
        cancelled = await store.list_jobs(None, status=JobStatus.cancelled, limit=10, before=None)
        assert [job.id for job in cancelled] == [jobs[4].id, jobs[2].id, jobs[0].id]
        assert await store.list_jobs(None, status=None, limit=10, before="j_unknown") == []


async def test_a_full_store_forgets_the_job_that_finished_first(open_store: StoreFactory) -> None:
    async with open_store(ttl_s=3600, max_jobs=2) as store:
        first, second, third = [await add_job(store, topic) for topic in ("a", "b", "c")]
        await finish(store, second)
        await finish(store, first)  # finished after `second`, though created before it
        await finish(store, third)  # a third finished job: one must go
        assert await store.get(second.id) is None
        assert await store.read(second.id, 0, timeout_s=0) is None
        assert [await store.get(job.id) for job in (first, third)] == [first, third]


async def test_queued_and_running_jobs_are_never_forgotten(open_store: StoreFactory) -> None:
    async with open_store(ttl_s=3600, max_jobs=1) as store:
        unfinished = [await add_job(store, topic) for topic in ("a", "b", "c")]
        await finish(store, unfinished[1])
        assert [await store.get(job.id) is not None for job in unfinished] == [True, True, True]
        await finish(store, unfinished[0])
        assert [await store.get(job.id) is not None for job in unfinished] == [True, False, True]


async def test_expire_forgets_finished_jobs_past_their_ttl_only(open_store: StoreFactory) -> None:
    async with open_store(ttl_s=10, max_jobs=10) as store:
        done = await add_job(store, "done", finished=True)
        running = await add_job(store, "running")
        assert await store.expire(time.time()) == 0
        assert await store.expire(time.time() + 11) == 1
        assert await store.get(done.id) is None
        assert await store.get(running.id) == running


async def test_finish_happens_once_and_only_from_the_status_asked_for(open_store: StoreFactory) -> None:
    async with open_store(ttl_s=60, max_jobs=10) as store:
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


async def test_the_store_hands_out_copies(open_store: StoreFactory) -> None:
    async with open_store(ttl_s=60, max_jobs=10) as store:
        job = await add_job(store, "a")
        fetched = await store.get(job.id)
        assert fetched is not None and fetched is not job
        fetched.start()
        assert (await store.get(job.id)).status is JobStatus.queued  # type: ignore[union-attr]
