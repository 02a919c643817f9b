"""Scheduling: capacity that costs nothing until used, and a service-wide cap on LLM calls."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx

from app import create_app
from pipeline.settings import Settings

from .scripted import ScriptedProvider
from .test_limits import _new_event, _set, metric
from .waiting import wait_for


def test_idle_capacity_costs_no_tasks(start_server: Callable[..., Any]) -> None:
    small = start_server(MAX_RUNNING_JOBS="1")
    large = start_server(MAX_RUNNING_JOBS="100000", MAX_STORED_JOBS="200000")
    tasks = metric(small.url, "articlestream_asyncio_tasks")
    assert metric(large.url, "articlestream_asyncio_tasks") == tasks
    assert tasks < 20


def test_llm_calls_wait_for_a_place_and_the_wait_shows_in_metrics(
        serve_app: Callable[..., Any]) -> None:
    provider = ScriptedProvider()
    settings = Settings(llm_provider="offline", max_llm_calls=2, max_running_jobs=10)
    served = serve_app(create_app(settings, provider=provider))
    provider.gate = served.run(_new_event())
    with httpx.Client(base_url=served.url, timeout=30) as client:
        ids = [client.post("/api/jobs", json={"topic": f"Topic {n}"}).json()["id"]
               for n in range(3)]
        # Three outline calls: two hold the places, the third waits for one.
        wait_for(lambda: metric(served.url, "articlestream_llm_calls_waiting") == 1, 10,
                 "the third call to wait for a place")
        assert sum(provider.calls.values()) == 2
        served.run(_set(provider.gate))
        for job_id in ids:
            wait_for(lambda: client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded",
                     20, f"job {job_id} to succeed")
    assert metric(served.url, "articlestream_llm_calls_waiting") == 0
    assert metric(served.url, "articlestream_llm_place_wait_seconds_count") >= 1


def test_without_redis_url_redis_is_not_even_imported() -> None:
    # Start-up pays for Redis (about a tenth of a second to import) only when it is used.
    check = "import sys, app; print('redis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
