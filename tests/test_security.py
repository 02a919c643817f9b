"""Access control, token hygiene, CORS, the demo page's headers, Last-Event-ID and job ids."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

TOKENS = ("tok-a", "tok-b")
WRONG = "tok-wrong"
ALLOWED_ORIGIN = "https://app.example"
OTHER_ORIGIN = "https://evil.example"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


@pytest.fixture
def tokened(start_server: Callable[..., Any]) -> Any:
    return start_server(API_TOKENS=",".join(TOKENS), OFFLINE_LLM_DELAY_MS="1")


def test_every_api_route_needs_a_valid_token(tokened: Any) -> None:
    with httpx.Client(base_url=tokened.url) as client:
        job = client.post("/api/jobs", json={"topic": "Locks"}, headers=bearer("tok-a"))
        assert job.status_code == 202
        job_id = job.json()["id"]
        calls = [
            ("POST", "/api/jobs", {"json": {"topic": "Keys"}}),
            ("GET", "/api/jobs", {}),
            ("GET", f"/api/jobs/{job_id}", {}),
            ("DELETE", f"/api/jobs/{job_id}", {}),
            ("GET", f"/api/jobs/{job_id}/events", {}),
            ("GET", "/api/jobs/j_unknownunknownunknown1/events", {}),
        ]
        for method, path, kwargs in calls:
            for headers in ({}, bearer(WRONG), {"Authorization": "tok-a"},
                            {"Authorization": "Basic dG9rLWE6"}):
                response = client.request(method, path, headers=headers, **kwargs)
                assert_error(response, 401, "unauthorized")
                assert "tok-" not in response.text
        # ?token= is for EventSource, which cannot send headers; other routes ignore it.
        assert_error(client.get("/api/jobs", params={"token": "tok-a"}), 401, "unauthorized")
        assert_error(client.get(f"/api/jobs/{job_id}/events", params={"token": WRONG}),
                     401, "unauthorized")
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path


def test_jobs_are_private_to_their_token(tokened: Any) -> None:
    with httpx.Client(base_url=tokened.url) as client:
        response = client.post("/api/jobs", json={"topic": "Secrets"}, headers=bearer("tok-a"),
                               params={"token": "tok-b"})  # a query token never counts here
        assert response.status_code == 202
        job_id = response.json()["id"]
        events = f"/api/jobs/{job_id}/events"

        for method, path in (("GET", f"/api/jobs/{job_id}"), ("DELETE", f"/api/jobs/{job_id}"),
                             ("GET", events)):
            assert_error(client.request(method, path, headers=bearer("tok-b")), 404, "not_found")
        assert_error(client.get(events, params={"token": "tok-b"}), 404, "not_found")
        assert client.get("/api/jobs", headers=bearer("tok-b")).json()["jobs"] == []
        mine = client.get("/api/jobs", headers=bearer("tok-a")).json()["jobs"]
        assert [job["id"] for job in mine] == [job_id]

        # The stream takes ?token= (EventSource cannot send headers) and plays the whole job.
        with client.stream("GET", events, params={"token": "tok-a"}, timeout=10) as stream:
            assert stream.status_code == 200
            body = stream.read()
        assert b"event: done" in body
        assert client.get(f"/api/jobs/{job_id}", headers=bearer("tok-a")).status_code == 200

        metrics = client.get("/metrics").text
    log = tokened.log()
    for secret in (*TOKENS, WRONG):
        assert secret not in log, f"{secret} leaked into the server log"
        assert secret not in metrics, f"{secret} leaked into /metrics"


def test_token_hygiene_in_the_log_covers_failures(tokened: Any) -> None:
    with httpx.Client(base_url=tokened.url) as client:
        client.get("/api/jobs/nope/events", params={"token": WRONG, "last_event_id": "x"})
        client.get("/api/jobs/nope/events", params={"token": "tok-a", "last_event_id": "x"})
        client.post("/api/jobs", content=b"{", headers={**bearer("tok-b"),
                                                        "Content-Type": "application/json"})
        client.get("/nowhere", params={"token": "tok-a"})
    log = tokened.log()
    for secret in (*TOKENS, WRONG):
        assert secret not in log


def test_cors_is_same_origin_unless_configured(start_server: Callable[..., Any]) -> None:
    preflight = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    closed = start_server()
    with httpx.Client(base_url=closed.url) as client:
        assert "access-control-allow-origin" not in client.options("/api/jobs",
                                                                  headers=preflight).headers
        response = client.get("/api/jobs", headers={"Origin": ALLOWED_ORIGIN})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers

    opened = start_server(CORS_ORIGINS=ALLOWED_ORIGIN)
    with httpx.Client(base_url=opened.url) as client:
        allowed = client.options("/api/jobs", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        refused = client.options("/api/jobs", headers={**preflight, "Origin": OTHER_ORIGIN})
        assert refused.headers.get("access-control-allow-origin") in (None, "null")
        assert refused.status_code == 400
        assert refused.json()["error"] == {"code": "cors_refused",
                                           "message": "Disallowed CORS origin."}
        assert client.get("/api/jobs", headers={"Origin": ALLOWED_ORIGIN}).headers[
            "access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "access-control-allow-origin" not in client.get(
            "/api/jobs", headers={"Origin": OTHER_ORIGIN}).headers


def test_demo_page_headers(start_server: Callable[..., Any]) -> None:
    server = start_server()
    response = httpx.get(f"{server.url}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"


def test_bad_last_event_id_is_400(start_server: Callable[..., Any]) -> None:
    server = start_server()
    with httpx.Client(base_url=server.url) as client:
        job_id = client.post("/api/jobs", json={"topic": "Ids"}).json()["id"]
        events = f"/api/jobs/{job_id}/events"
        for value in ("abc", "-1", "1e3", "1.5", "0x10"):
            assert_error(client.get(events, headers={"Last-Event-ID": value}),
                         400, "invalid_last_event_id")
        for value in ("x", "-1"):
            assert_error(client.get(events, params={"last_event_id": value}),
                         400, "invalid_last_event_id")


def test_job_ids_are_long_and_random(start_server: Callable[..., Any]) -> None:
    server = start_server(MAX_QUEUED_JOBS="100")
    with httpx.Client(base_url=server.url) as client:
        ids = [client.post("/api/jobs", json={"topic": f"Id {n}"}).json()["id"] for n in range(30)]
    assert len(set(ids)) == len(ids)
    for job_id in ids:
        # 22 url-safe base64 characters carry 132 bits.
        assert re.fullmatch(r"j_[A-Za-z0-9_-]{22,}", job_id), job_id
    # Not a counter or a clock: the characters in every position vary across ids.
    for position in range(2, 23):
        assert len({job_id[position] for job_id in ids}) > 5, (position, ids)
