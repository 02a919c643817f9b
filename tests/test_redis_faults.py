"""Redis faults, end to end: real `python app.py` instances sharing one real redis-server.

Each test breaks something (an instance killed mid-job, Redis restarted, hung, stopped, keys
left to expire) and checks what a client sees over HTTP and SSE: every stream ends with one
terminal event, its ids are 1..n with no gap and no repeat, the live text a client builds
from `delta` events (honouring `reset`) is exactly each section and the article, and GET
agrees. Redis itself is looked at only to check that nothing of a job is left behind, and
to see how many times a job has been claimed (which instance death a test is at).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families

from api.routes import READY_TIMEOUT_S
from pipeline import redis_keys as keys
from pipeline.contract import JobStatus, Stage
from pipeline.errors import LeaseLost, StoreUnavailable
from pipeline.job import Job
from pipeline.payloads import ProgressEvent, StatusEvent
from pipeline.redis_log import LogHub
from pipeline.redis_store import COMMAND_TIMEOUT_S, MAX_CLAIMS, RedisJobStore, connect

from .redis_server import RedisServer
from .sse_client import TERMINAL, Event, get_job, part_texts, read_stream, submit
from .waiting import wait_for

StartServer = Callable[..., Any]
LEASE_S = 2
#: the most one instance needs to notice a lapsed lease and take the job: the lease, the
#: look for abandoned jobs every LEASE_SECONDS/2, and a margin for a loaded machine
TAKEOVER_S = LEASE_S * 1.5 + 5
#: how long a stream may stay open in these tests
STREAM_S = 45.0


def shared(redis_server: RedisServer, **env: str) -> dict[str, str]:
    """One instance's environment: the test's Redis, a short lease, and `env`."""
    return {"REDIS_URL": redis_server.url, "LEASE_SECONDS": str(LEASE_S), **env}


class Subscriber:
    """A client reading a job's stream in a thread of its own; `events` grows as they come."""

    def __init__(self, base_url: str, job_id: str) -> None:
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(base_url, job_id), daemon=True)
        self._thread.start()

    def _read(self, base_url: str, job_id: str) -> None:
        try:
            with httpx.Client(timeout=STREAM_S) as client:
                with connect_sse(client, "GET", f"{base_url}/api/jobs/{job_id}/events") as source:
                    source.response.raise_for_status()
                    for sse in source.iter_sse():
                        if not sse.data:
                            continue  # `retry:` and comments (httpx-sse#35, as in sse_client)
                        self.events.append(Event(int(sse.id), sse.event, json.loads(sse.data)))
                        if sse.event in TERMINAL:
                            return
        except Exception as exc:  # handed to the test in `result()`
            self.error = exc

    def saw(self, event: str) -> bool:
        return any(e.event == event for e in list(self.events))

    def result(self, timeout_s: float = STREAM_S) -> list[Event]:
        """Every event, once the stream has ended."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the stream was still open after {timeout_s} s"
        if self.error is not None:
            raise self.error
        return self.events


def assert_whole_article(events: list[Event]) -> None:
    """Ids 1..n, one `done` at the end, every section once, and live text equal to the result."""
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert [e.event for e in events if e.event in TERMINAL] == ["done"]
    assert events[-1].event == "done"
    outline = next(e.data["sections"] for e in events if e.event == "outline")
    sections = [e.data for e in events if e.event == "section"]
    assert sorted(s["index"] for s in sections) == list(range(len(outline)))
    texts = part_texts(events)
    for section in sections:
        assert texts[("content", section["index"])] == section["content"]
    assert texts[("style", None)] == events[-1].data["article"]


def running_jobs(url: str) -> float:
    """What the instance's /metrics says it runs now."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "articlestream_running_jobs")
    return family.samples[0].value


def assert_nothing_left_running(redis_server: RedisServer) -> None:
    """No queue entry is pending (no lease left to take over) and no job waits."""
    client = redis_server.client()
    try:
        assert client.xpending(keys.QUEUE, keys.GROUP)["pending"] == 0
        assert int(client.get(keys.QUEUED) or 0) == 0
    finally:
        client.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def stores(redis_server: RedisServer, count: int) -> AsyncIterator[list[RedisJobStore]]:
    """`count` instances' stores on the test's Redis (each keeps its own claims)."""
    client, subscriber = connect(redis_server.url), connect(redis_server.url, timeout_s=15)
    hub = LogHub(client, subscriber)
    try:
        yield [RedisJobStore(client, hub, ttl_s=60, max_jobs=10, max_queued=10, job_timeout_s=60,
                             write_patience_s=1) for _ in range(count)]
    finally:
        await client.aclose()
        await subscriber.aclose()


async def add_job(store: RedisJobStore) -> Job:
    job = Job(topic="Home composting")
    first = StatusEvent(status=JobStatus.queued, stage=job.stage, progress=0)
    assert await store.add(job, None, first) == job.id
    return job


# -- an instance dies -------------------------------------------------------------------------


def test_a_job_whose_instance_is_killed_is_resumed_by_another(
        start_server: StartServer, redis_server: RedisServer) -> None:
    # Sections one at a time on A, so A dies with one section done and one half written.
    a = start_server(**shared(redis_server, OFFLINE_LLM_DELAY_MS="1500", SECTION_CONCURRENCY="1"))
    job = submit(a.url)
    wait_for(lambda: get_job(a.url, job["id"])["status"] == "running", 10, "A to start the job")
    b = start_server(**shared(redis_server, OFFLINE_LLM_DELAY_MS="200"))  # after: A has it
    stream = Subscriber(b.url, job["id"])
    wait_for(lambda: any(e.event == "delta" and e.data["index"] == 1 for e in list(stream.events)),
             15, "A to stream the second section's text")
    a.proc.kill()
    a.proc.wait(timeout=10)

    events = stream.result()
    assert_whole_article(events)
    first = [e for e in events if e.event == "section"][0]
    assert first.data["index"] == 0, "the section A finished is kept, not written again"
    resets = [e.data["index"] for e in events if e.event == "delta" and e.data["reset"]]
    assert 1 in resets, "the text A streamed of the unfinished section is voided"
    finished = get_job(b.url, job["id"])
    assert finished["status"] == "succeeded"
    assert finished["article"] == events[-1].data["article"]
    assert_nothing_left_running(redis_server)


def test_without_live_text_a_resumed_job_sends_no_delta(
        start_server: StartServer, redis_server: RedisServer) -> None:
    env = shared(redis_server, SECTION_CONCURRENCY="1", STREAM_DELTAS="0")
    a = start_server(**env, OFFLINE_LLM_DELAY_MS="1500")
    job = submit(a.url)
    b = start_server(**env, OFFLINE_LLM_DELAY_MS="200")
    stream = Subscriber(b.url, job["id"])
    wait_for(lambda: any(e.event == "section" for e in list(stream.events)), 15,
             "A to finish its first section")
    a.proc.kill()
    a.proc.wait(timeout=10)

    events = stream.result()
    assert events[-1].event == "done"
    assert "delta" not in {e.event for e in events}, "no delta, not even a reset, without live text"


def test_a_job_whose_instances_keep_dying_fails_worker_lost(
        start_server: StartServer, redis_server: RedisServer) -> None:
    env = shared(redis_server, OFFLINE_LLM_DELAY_MS="20000")  # never finishes by itself
    client = redis_server.client()

    def claims() -> int:
        return int(client.hget(keys.job_key(job["id"]), "claims") or 0)

    runner = start_server(**env)
    job = submit(runner.url)
    wait_for(lambda: claims() == 1, 10, "the first instance to take the job")
    # Each instance that takes the job dies, once the next one is up to take it over.
    for claim in range(2, MAX_CLAIMS + 2):
        successor = start_server(**env)
        runner.proc.kill()
        runner.proc.wait(timeout=10)
        wait_for(lambda: claims() == claim, TAKEOVER_S, f"claim {claim} of the job")
        runner = successor
    client.close()

    events = read_stream(runner.url, job["id"], timeout=STREAM_S)
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "error"
    assert events[-1].data["code"] == "worker_lost"
    failed = get_job(runner.url, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "worker_lost"
    assert_nothing_left_running(redis_server)


def test_an_instance_that_stalled_leaves_the_job_to_the_one_that_took_it_over(
        start_server: StartServer, redis_server: RedisServer) -> None:
    # One instance stalls (a frozen VM, a long pause) past its lease, and the other takes the
    # job over. The stalled one must let the job go when it wakes, and leave the new lease
    # alone: when the second instance dies too, the job is taken over once more and finishes.
    env = shared(redis_server, OFFLINE_LLM_DELAY_MS="1000")
    servers = [start_server(**env), start_server(**env)]
    job = submit(servers[0].url)
    wait_for(lambda: any(running_jobs(s.url) == 1 for s in servers), 10, "an instance to start it")
    stalled, taker = sorted(servers, key=lambda s: -running_jobs(s.url))
    client = redis_server.client()

    def claims() -> int:
        return int(client.hget(keys.job_key(job["id"]), "claims") or 0)

    os.kill(stalled.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: claims() == 2, TAKEOVER_S, "the other instance to take the job over")
    finally:
        os.kill(stalled.proc.pid, signal.SIGCONT)
    client.close()
    wait_for(lambda: running_jobs(stalled.url) == 0, 10, "the stalled instance to let the job go")
    stream = Subscriber(stalled.url, job["id"])
    taker.proc.kill()
    taker.proc.wait(timeout=10)

    events = stream.result(TAKEOVER_S + 15)
    assert_whole_article(events)
    assert get_job(stalled.url, job["id"])["status"] == "succeeded"
    assert_nothing_left_running(redis_server)


# -- Redis goes away --------------------------------------------------------------------------


def test_streams_on_two_instances_survive_a_redis_restart(
        start_server: StartServer, redis_server: RedisServer) -> None:
    env = shared(redis_server, OFFLINE_LLM_DELAY_MS="600")
    a, b = start_server(**env), start_server(**env)
    job = submit(a.url)
    streams = [Subscriber(a.url, job["id"]), Subscriber(b.url, job["id"])]
    wait_for(lambda: all(s.saw("outline") for s in streams), 10, "both streams to get the outline")
    redis_server.restart()

    on_a, on_b = (s.result() for s in streams)
    assert_whole_article(on_a)
    assert on_b == on_a, "both subscribers see the same events"
    wait_for(lambda: get_job(b.url, job["id"])["status"] == "succeeded", 10, "GET to show the end")
    assert_nothing_left_running(redis_server)


def test_a_hung_redis_is_answered_with_503_and_streams_go_on_after(
        start_server: StartServer, redis_server: RedisServer) -> None:
    server = start_server(**shared(redis_server, OFFLINE_LLM_DELAY_MS="300"))
    job = submit(server.url)
    stream = Subscriber(server.url, job["id"])
    wait_for(lambda: stream.saw("outline"), 10, "the outline")
    redis_server.hang()
    try:
        started = time.monotonic()
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert time.monotonic() - started < READY_TIMEOUT_S + 2
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "not_ready"

        started = time.monotonic()
        refused = httpx.post(f"{server.url}/api/jobs", json={"topic": "Bees"}, timeout=20)
        assert time.monotonic() - started < COMMAND_TIMEOUT_S + 3  # one command's timeout
        assert refused.status_code == 503
        assert refused.headers["content-type"].startswith("application/json")
        assert refused.json()["error"]["code"] == "store_unavailable"
        assert int(refused.headers["retry-after"]) > 0
    finally:
        redis_server.resume()

    wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200, 10,
             "/readyz to answer 200 again")
    assert_whole_article(stream.result())
    assert get_job(server.url, job["id"])["status"] == "succeeded"


def test_a_job_ends_once_redis_is_back_after_being_stopped(
        start_server: StartServer, redis_server: RedisServer) -> None:
    env = shared(redis_server, OFFLINE_LLM_DELAY_MS="600")
    a, b = start_server(**env), start_server(**env)
    job = submit(a.url)
    stream = Subscriber(b.url, job["id"])
    wait_for(lambda: stream.saw("outline"), 10, "the outline")
    redis_server.stop()
    time.sleep(2)  # the fault itself: Redis away while the job writes
    redis_server.start()

    assert_whole_article(stream.result())
    wait_for(lambda: get_job(a.url, job["id"])["status"] == "succeeded", 10, "GET to show the end")
    assert_nothing_left_running(redis_server)


def test_a_job_that_outlives_its_patience_still_ends_once_redis_is_back(
        start_server: StartServer, redis_server: RedisServer) -> None:
    # Writes are retried for JOB_TIMEOUT_SECONDS; here Redis stays away longer than that.
    server = start_server(**shared(redis_server, OFFLINE_LLM_DELAY_MS="400",
                                   JOB_TIMEOUT_SECONDS="2"))
    job = submit(server.url)
    stream = Subscriber(server.url, job["id"])
    wait_for(lambda: stream.saw("outline"), 10, "the outline")
    redis_server.stop()
    time.sleep(3)  # the fault itself: longer than the job may take
    redis_server.start()

    events = stream.result()
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "error"
    assert events[-1].data["code"] == "timeout"
    wait_for(lambda: get_job(server.url, job["id"])["status"] == "failed", 10, "GET to show the end")
    assert_nothing_left_running(redis_server)


# -- a finished job is forgotten --------------------------------------------------------------


def test_a_finished_job_leaves_nothing_behind_after_its_ttl(
        start_server: StartServer, redis_server: RedisServer) -> None:
    server = start_server(**shared(redis_server, JOB_TTL_SECONDS="2"))
    job = submit(server.url, headers={"Idempotency-Key": "ttl-test"})
    assert read_stream(server.url, job["id"])[-1].event == "done"
    client = redis_server.client()
    try:
        listed = client.zscore(keys.list_key(None), job["id"])
        assert listed is not None, "a finished job is listed until its TTL"

        def forgotten() -> bool:
            return (client.exists(keys.job_key(job["id"]), keys.log_key(job["id"])) == 0
                    and client.zscore(keys.list_key(None), job["id"]) is None
                    and not any(member.decode().startswith(job["id"] + " ")
                                for member in client.zrange(keys.FINISHED, 0, -1)))

        wait_for(forgotten, 10, "the job's keys to expire and the sweep to tidy the lists")
        # Nothing else of it either: its Idempotency-Key went with it, the queue is empty.
        assert sorted(client.keys("*")) == sorted(k.encode() for k in (keys.QUEUE, keys.QUEUED))
        assert client.xlen(keys.QUEUE) == 0
    finally:
        client.close()
    assert httpx.get(f"{server.url}/api/jobs/{job['id']}", timeout=10).status_code == 404
    listed_now = httpx.get(f"{server.url}/api/jobs", timeout=10).json()["jobs"]
    assert job["id"] not in [j["id"] for j in listed_now]


# -- the store's side of a takeover -----------------------------------------------------------


@pytest.mark.anyio
async def test_the_claim_after_max_claims_is_lost(redis_server: RedisServer) -> None:
    async with stores(redis_server, 1) as [store]:
        job = await add_job(store)
        verdicts = [await store.claim(job.id, "instance-1")]
        job.start()
        await store.save(job)  # running, as the first instance left it
        for n in range(2, MAX_CLAIMS + 2):
            verdicts.append(await store.claim(job.id, f"instance-{n}"))
    assert verdicts == [("start", 1), *[("resume", n) for n in range(2, MAX_CLAIMS + 1)],
                        ("lost", MAX_CLAIMS + 1)]


@pytest.mark.anyio
async def test_a_runner_whose_job_was_taken_over_cannot_append(redis_server: RedisServer) -> None:
    async with stores(redis_server, 2) as [stalled, taker]:
        job = await add_job(stalled)
        assert await stalled.claim(job.id, "stalled") == ("start", 1)
        job.start()
        await stalled.save(job)
        progress = ProgressEvent(stage=Stage.outline, progress=5, message="Planning the outline")
        assert (await stalled.append(job.id, progress)).id == 2
        assert await taker.claim(job.id, "taker") == ("resume", 2)
        assert (await taker.append(job.id, progress)).id == 3
        # The stalled runner's next event would be 3, which the log has now: not a retry of
        # its own write, and refused like any other write of a runner that lost its job.
        with pytest.raises(LeaseLost):
            await stalled.append(job.id, progress)


@pytest.mark.anyio
async def test_every_reader_of_a_job_hears_that_redis_is_away(redis_server: RedisServer) -> None:
    # Two streams open on one job at once: one builds the job's follower, the other waits for
    # it. When the first one's catch-up fails, the second must not wait forever.
    async with stores(redis_server, 1) as (store,):
        job = await add_job(store)
        redis_server.stop()
        refused: list[str] = []

        async def read() -> None:
            with pytest.raises(StoreUnavailable):
                await store.read(job.id, 0, timeout_s=1)
            refused.append(job.id)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                tg.start_soon(read)
        assert refused == [job.id, job.id]
