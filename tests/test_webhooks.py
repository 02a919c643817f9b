"""Signed webhooks end to end: the service as a subprocess, a real receiver on loopback.

Every target here is http://127.0.0.1:<port> (WEBHOOK_ALLOW_PRIVATE=1), so no packet leaves
the loopback interface; the address rules themselves are in test_webhook_target.py.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from .sse_client import get_job, read_stream
from .test_limits import assert_error, metric
from .waiting import wait_for
from .webhook_receiver import Receiver

Start = Callable[..., Any]


@pytest.fixture
def service(start_server: Start, receiver: tuple[Receiver, str]) -> Callable[..., Any]:
    def start(**env: str) -> Any:
        return start_server(WEBHOOK_SECRET=receiver[0].secret, WEBHOOK_ALLOW_PRIVATE="1",
                            WEBHOOK_BACKOFF_SECONDS="0.05", **env)
    return start


def submit(url: str, hook: str, events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"topic": "Bees", "webhook": hook, **extra}
    if events is not None:
        body["webhook_events_filter"] = events
    response = httpx.post(f"{url}/api/jobs", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_delivered(url: str, job_id: str, count: int) -> dict[str, Any]:
    wait_for(lambda: (job := get_job(url, job_id))["webhook"]["pending"] == 0
             and len(job["webhook"]["delivered"]) >= count, 30, f"{count} deliveries")
    return get_job(url, job_id)


def test_by_default_only_the_completed_job_is_delivered(service: Start,
                                                        receiver: tuple[Receiver, str]) -> None:
    hooks, base = receiver
    app = service()
    job = submit(app.url, f"{base}/ok")
    assert job["webhook"] == {"url": f"{base}/ok", "delivered": [], "pending": 0,
                              "last_error": None}
    read_stream(app.url, job["id"])
    shown = wait_delivered(app.url, job["id"], 1)["webhook"]
    taken = hooks.taken()
    assert [r.payload["type"] for r in taken] == ["job.completed"]
    data = taken[0].payload["data"]
    assert (data["id"], data["status"], data["article"]) == (job["id"], "succeeded",
                                                              get_job(app.url, job["id"])["article"])
    assert taken[0].payload["timestamp"].endswith("Z")
    assert shown["delivered"] == [{"type": "job.completed", "id": taken[0].id, "attempts": 1}]
    assert shown["last_error"] is None
    assert metric(app.url, "articlestream_webhook_deliveries_total") == 1
    assert metric(app.url, "articlestream_webhook_delivery_latency_seconds_count") == 1


def test_the_filter_sends_all_three_and_progress_is_throttled(service: Start,
                                                              receiver: tuple[Receiver, str]) -> None:
    hooks, base = receiver
    # Seven reports of progress (three stages, the outline, three sections): at most one
    # delivery of them a second.
    app = service(OFFLINE_LLM_DELAY_MS="20")
    job = submit(app.url, f"{base}/ok", ["start", "progress", "completed"])
    events = read_stream(app.url, job["id"])
    wait_delivered(app.url, job["id"], 3)
    types = [r.payload["type"] for r in hooks.taken()]
    assert types[0] == "job.started" and types[-1] == "job.completed"
    assert "job.progress" in types
    # At most one a second: the first, then one per whole second the job ran after it.
    finished = events[-1].data
    ran_s = (datetime.fromisoformat(finished["finished_at"])
             - datetime.fromisoformat(finished["started_at"])).total_seconds()
    assert types.count("job.progress") <= 1 + int(ran_s)
    assert {r.payload["data"]["id"] for r in hooks.taken()} == {job["id"]}


def test_a_failing_receiver_gets_the_delivery_on_the_third_try_with_one_id(
        service: Start, receiver: tuple[Receiver, str]) -> None:
    hooks, base = receiver
    app = service()
    job = submit(app.url, f"{base}/flaky")
    shown = wait_delivered(app.url, job["id"], 1)["webhook"]
    attempts = hooks.at("/flaky")
    assert len(attempts) == 3
    assert len({r.id for r in attempts}) == 1
    assert shown["delivered"] == [{"type": "job.completed", "id": attempts[0].id, "attempts": 3}]
    assert shown["last_error"] == "the receiver answered 500"
    assert metric(app.url, "articlestream_webhook_attempts_total") == 3


def test_a_hanging_receiver_is_timed_out_and_retried_and_the_job_ends_regardless(
        service: Start, receiver: tuple[Receiver, str]) -> None:
    hooks, base = receiver
    app = service(WEBHOOK_TIMEOUT_SECONDS="1")
    job = submit(app.url, f"{base}/hang", ["start", "completed"])
    events = read_stream(app.url, job["id"])
    assert events[-1].event == "done"  # the job did not wait for its receiver
    shown = wait_delivered(app.url, job["id"], 2)["webhook"]
    assert sorted(d["type"] for d in shown["delivered"]) == ["job.completed", "job.started"]
    assert all(d["attempts"] == 2 for d in shown["delivered"])
    assert shown["last_error"] == "no answer within 1 s"


def test_a_redirect_is_not_followed(service: Start, receiver: tuple[Receiver, str]) -> None:
    hooks, base = receiver
    app = service(WEBHOOK_MAX_ATTEMPTS="2")
    job = submit(app.url, f"{base}/redirect")
    wait_for(lambda: get_job(app.url, job["id"])["webhook"]["last_error"] is not None
             and get_job(app.url, job["id"])["webhook"]["pending"] == 0, 30, "the delivery to fail")
    shown = get_job(app.url, job["id"])["webhook"]
    assert shown["delivered"] == []
    assert "307" in shown["last_error"] and "not followed" in shown["last_error"]
    assert len(hooks.at("/redirect")) == 2
    assert hooks.at("/ok") == []
    assert metric(app.url, "articlestream_webhook_deliveries_total") == 1  # failed


def test_a_webhook_without_a_secret_is_refused(start_server: Start) -> None:
    app = start_server()
    response = httpx.post(f"{app.url}/api/jobs", json={"topic": "Bees",
                                                       "webhook": "https://example.com/hook"})
    assert_error(response, 422, "invalid_webhook")
    assert "WEBHOOK_SECRET" in response.json()["error"]["message"]


@pytest.mark.parametrize("body", [
    {"webhook": 42},
    {"webhook_events_filter": ["completed"]},
    {"webhook": "http://127.0.0.1:9/x", "webhook_events_filter": ["finished"]},
    {"webhook": "http://127.0.0.1:9/x", "webhook_events_filter": []},
    {"webhook": "ftp://127.0.0.1/x"},
])
def test_bad_webhook_fields_are_refused(service: Start, body: dict[str, Any]) -> None:
    app = service()
    assert_error(httpx.post(f"{app.url}/api/jobs", json={"topic": "Bees", **body}), 422,
                 "invalid_webhook")


def test_the_idempotency_fingerprint_covers_the_webhook(service: Start,
                                                        receiver: tuple[Receiver, str]) -> None:
    _, base = receiver
    app = service()
    headers = {"Idempotency-Key": "order-7"}
    body = {"topic": "Bees", "webhook": f"{base}/ok"}
    first = httpx.post(f"{app.url}/api/jobs", json=body, headers=headers)
    again = httpx.post(f"{app.url}/api/jobs", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    for other in ({"topic": "Bees"}, {**body, "webhook": f"{base}/flaky"},
                  {**body, "webhook_events_filter": ["start", "completed"]}):
        assert_error(httpx.post(f"{app.url}/api/jobs", json=other, headers=headers), 409,
                     "idempotency_conflict")


def test_a_form_submit_takes_a_comma_separated_filter(service: Start,
                                                      receiver: tuple[Receiver, str]) -> None:
    hooks, base = receiver
    app = service()
    response = httpx.post(f"{app.url}/api/jobs", data={
        "topic": "Bees", "webhook": f"{base}/ok", "webhook_events_filter": "start,completed"})
    assert response.status_code == 202
    wait_delivered(app.url, response.json()["id"], 2)
    assert [r.payload["type"] for r in hooks.taken()] == ["job.started", "job.completed"]


def test_jobs_without_a_webhook_show_none(service: Start) -> None:
    app = service()
    job = httpx.post(f"{app.url}/api/jobs", json={"topic": "Bees"}).json()
    assert job["webhook"] is None
    assert httpx.get(f"{app.url}/api/jobs").json()["jobs"][0]["webhook"] is None


def stop(app: Any, timeout_s: float = 20) -> str:
    """SIGTERM the service, wait for it to exit, and return its log."""
    app.proc.send_signal(signal.SIGTERM)
    app.proc.wait(timeout=timeout_s)
    log: str = app.log()
    return log


def test_on_sigterm_a_pending_delivery_gets_the_drain_budget(service: Start,
                                                             receiver: tuple[Receiver, str]) -> None:
    hooks, base = receiver
    app = service(DRAIN_SECONDS="5")
    job = submit(app.url, f"{base}/down")
    read_stream(app.url, job["id"])
    wait_for(lambda: len(hooks.at("/down")) >= 2, 30, "the delivery being retried")
    app.proc.send_signal(signal.SIGTERM)
    hooks.open()  # the receiver comes back while the service drains
    app.proc.wait(timeout=20)
    assert [r.answered for r in hooks.at("/down")][-1] == 200
    assert {r.id for r in hooks.at("/down")} == {hooks.at("/down")[0].id}, "one webhook-id"
    assert "lost at shutdown" not in app.log()


def test_without_redis_a_delivery_still_pending_after_the_drain_is_logged_lost(
        service: Start, receiver: tuple[Receiver, str]) -> None:
    hooks, base = receiver
    app = service(DRAIN_SECONDS="1")
    job = submit(app.url, f"{base}/down")
    read_stream(app.url, job["id"])
    wait_for(lambda: len(hooks.at("/down")) >= 1, 30, "a first attempt")
    log = stop(app)
    assert all(r.answered == 503 for r in hooks.at("/down"))
    assert "webhook job.completed lost at shutdown" in log
