"""Two instances behind one address, sharing a real Redis: any instance serves any job."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from .redis_server import RedisServer
from .sse_client import read_stream, submit
from .test_limits import assert_error, metric
from .waiting import wait_for

Start = Callable[..., Any]


@pytest.fixture
def pair(start_server: Start, redis_server: RedisServer) -> Callable[..., tuple[Any, Any]]:
    """`pair(**env)`: instances A and B on one Redis, with the same settings."""

    def start(**env: str) -> tuple[Any, Any]:
        return (start_server(REDIS_URL=redis_server.url, **env),
                start_server(REDIS_URL=redis_server.url, **env))
    return start


def test_a_job_submitted_on_one_instance_is_served_by_the_other(pair: Any) -> None:
    a, b = pair()
    job = submit(a.url)
    events = read_stream(b.url, job["id"])
    assert [event.id for event in events] == list(range(1, len(events) + 1))
    assert [events[0].event, events[-1].event] == ["status", "done"]
    assert httpx.get(f"{b.url}/api/jobs/{job['id']}").json()["status"] == "succeeded"
    assert httpx.get(f"{a.url}/readyz").status_code == 200


def test_the_list_is_newest_first_whichever_instance_took_each_job(pair: Any) -> None:
    a, b = pair()
    ids = [submit(server.url, f"Topic {n}")["id"] for n, server in enumerate((a, b, a, b))]
    for server in (a, b):
        listed = httpx.get(f"{server.url}/api/jobs", params={"limit": 3}).json()
        assert [job["id"] for job in listed["jobs"]] == ids[::-1][:3]
        rest = httpx.get(f"{server.url}/api/jobs", params={"cursor": listed["next_cursor"]}).json()
        assert [job["id"] for job in rest["jobs"]] == ids[:1]


def test_a_cancel_on_one_instance_stops_the_job_running_on_the_other(pair: Any) -> None:
    a, b = pair(OFFLINE_LLM_DELAY_MS="30000")
    job = submit(a.url)
    wait_for(lambda: httpx.get(f"{a.url}/api/jobs/{job['id']}").json()["status"] == "running",
             10, "the job to start")
    seen: list[Any] = []
    reader = threading.Thread(target=lambda: seen.extend(read_stream(a.url, job["id"])))
    reader.start()
    response = httpx.delete(f"{b.url}/api/jobs/{job['id']}", timeout=10)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    reader.join(timeout=10)
    assert seen[-1].event == "cancelled"


def test_idempotency_keys_hold_across_instances(pair: Any) -> None:
    a, b = pair()
    headers = {"Idempotency-Key": "order-42"}
    first = httpx.post(f"{a.url}/api/jobs", json={"topic": "Bees"}, headers=headers)
    again = httpx.post(f"{b.url}/api/jobs", json={"topic": "Bees"}, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    other = httpx.post(f"{b.url}/api/jobs", json={"topic": "Wasps"}, headers=headers)
    assert_error(other, 409, "idempotency_conflict")


def test_the_rate_limit_is_shared_by_the_instances(pair: Any) -> None:
    a, b = pair(RATE_LIMIT_PER_MINUTE="1", RATE_LIMIT_BURST="2")
    assert [submit(server.url)["status"] for server in (a, b)] == ["queued", "queued"]
    response = httpx.post(f"{a.url}/api/jobs", json={"topic": "Third"})
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1


def test_work_goes_to_the_instance_with_a_free_place(pair: Any) -> None:
    a, b = pair(OFFLINE_LLM_DELAY_MS="1000", MAX_RUNNING_JOBS="1")
    jobs = [submit(a.url, f"Topic {n}")["id"] for n in range(2)]
    # Each instance has one place, so the two jobs run at once, one on each.
    wait_for(lambda: metric(a.url, "articlestream_running_jobs")
             + metric(b.url, "articlestream_running_jobs") == 2, 10, "both jobs to run")
    assert metric(a.url, "articlestream_running_jobs") == 1
    for job_id in jobs:
        assert read_stream(b.url, job_id)[-1].event == "done"


def test_many_streams_of_one_job_share_one_reader(pair: Any, redis_server: RedisServer) -> None:
    a, _ = pair(OFFLINE_LLM_DELAY_MS="3000")
    job = submit(a.url)
    redis = redis_server.client()
    before = len(redis.client_list())
    streams = [httpx.Client(base_url=a.url, timeout=20) for _ in range(50)]
    opened = [client.stream("GET", f"/api/jobs/{job['id']}/events") for client in streams]
    responses = [stream.__enter__() for stream in opened]
    try:
        wait_for(lambda: metric(a.url, "articlestream_open_streams") == 50, 10, "50 open streams")
        # 50 subscribers, and no more connections to Redis than before they came.
        assert len(redis.client_list()) <= before + 1
        assert all(response.status_code == 200 for response in responses)
    finally:
        for stream in opened:
            stream.__exit__(None, None, None)
        for client in streams:
            client.close()
        redis.close()


def test_readyz_names_the_backend_it_waits_for(start_server: Start,
                                               redis_server: RedisServer) -> None:
    server = start_server(REDIS_URL=redis_server.url)
    redis_server.stop()
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    assert_error(response, 503, "not_ready")
    assert "Redis" in json.loads(response.text)["error"]["message"]
    assert_error(httpx.post(f"{server.url}/api/jobs", json={"topic": "x"}, timeout=10), 503,
                 "store_unavailable")
    redis_server.start()
    wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 10, "ready again")
