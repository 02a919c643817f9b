"""Webhooks on Redis: pending deliveries live there, so a killed instance loses none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from .redis_server import RedisServer
from .sse_client import get_job
from .test_webhooks import submit, wait_delivered
from .waiting import wait_for
from .webhook_receiver import Receiver

Start = Callable[..., Any]


def test_a_delivery_pending_on_a_killed_instance_is_delivered_by_another(
        start_server: Start, redis_server: RedisServer, receiver: tuple[Receiver, str]) -> None:
    hooks, base = receiver
    env = {"REDIS_URL": redis_server.url, "WEBHOOK_SECRET": hooks.secret,
           "WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_TIMEOUT_SECONDS": "1",
           "WEBHOOK_BACKOFF_SECONDS": "1", "WEBHOOK_MAX_ATTEMPTS": "50", "LEASE_SECONDS": "2"}
    a = start_server(**env)
    job = submit(a.url, f"{base}/down")
    wait_for(lambda: get_job(a.url, job["id"])["webhook"]["last_error"] is not None, 30,
             "a failed attempt")
    a.proc.kill()
    a.proc.wait(timeout=10)
    hooks.open()
    b = start_server(**env)
    shown = wait_delivered(b.url, job["id"], 1)["webhook"]
    assert shown["delivered"][0]["type"] == "job.completed"
    assert shown["delivered"][0]["attempts"] >= 2
    ids = {r.id for r in hooks.at("/down")}
    assert ids == {shown["delivered"][0]["id"]}  # every attempt carried the one webhook-id
    assert httpx.get(f"{b.url}/api/jobs/{job['id']}").json()["status"] == "succeeded"


def test_both_instances_show_the_same_webhook_status(
        start_server: Start, redis_server: RedisServer, receiver: tuple[Receiver, str]) -> None:
    hooks, base = receiver
    env = {"REDIS_URL": redis_server.url, "WEBHOOK_SECRET": hooks.secret,
           "WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_BACKOFF_SECONDS": "0.05"}
    a, b = start_server(**env), start_server(**env)
    job = submit(a.url, f"{base}/flaky", ["start", "completed"])
    shown = wait_delivered(b.url, job["id"], 2)["webhook"]
    assert get_job(a.url, job["id"])["webhook"] == shown
    assert sorted(d["type"] for d in shown["delivered"]) == ["job.completed", "job.started"]
    assert all(d["attempts"] == 3 for d in shown["delivered"])
    assert len(hooks.taken("/flaky")) == 2
