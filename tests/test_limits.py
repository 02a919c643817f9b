"""Every refusal in the contract's tables, and the limits that stop one client hurting others."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from pipeline.settings import Settings

from .scripted import ScriptedProvider
from .waiting import wait_for


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The contract's error shape: JSON `{"error": {"code", "message"}}`, never a 500."""
    assert response.status_code == status, f"{response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]


def assert_retry_after(response: httpx.Response, most: int = 3600) -> None:
    assert 1 <= int(response.headers["retry-after"]) <= most, response.headers


def metric(url: str, name: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return sum(sample.value for family in families for sample in family.samples
               if sample.name == name)



def job_status(client: httpx.Client, job_id: str) -> str:
    return str(client.get(f"/api/jobs/{job_id}").json()["status"])


# ----- POST /api/jobs: the body ----------------------------------------------------------------

LIMIT_BYTES = 1024
LIMIT_CHARS = 50

# (case, body, content type, status, code)
BAD_BODIES = [
    ("bad-json", b'{"topic": ', "application/json", 400, "malformed_body"),
    ("array", b'["Home composting"]', "application/json", 400, "malformed_body"),
    ("json-string", b'"Home composting"', "application/json", 400, "malformed_body"),
    ("not-utf8", b'{"topic": "\xff\xfe"}', "application/json", 400, "malformed_body"),
    ("empty-json", b"", "application/json", 400, "malformed_body"),
    ("text-plain", b"topic=Compost", "text/plain", 415, "unsupported_media_type"),
    ("xml", b"<topic/>", "application/xml", 415, "unsupported_media_type"),
    ("no-content-type", b'{"topic": "x"}', None, 415, "unsupported_media_type"),
    ("empty", b'{"topic": ""}', "application/json", 422, "invalid_topic"),
    ("whitespace", b'{"topic": " \\t  "}', "application/json", 422, "invalid_topic"),
    ("too-long", b'{"topic": "%s"}' % (b"x" * (LIMIT_CHARS + 1)), "application/json", 422,
     "invalid_topic"),
    ("nul", b'{"topic": "a\\u0000b"}', "application/json", 422, "invalid_topic"),
    ("newline", b'{"topic": "a\\nb"}', "application/json", 422, "invalid_topic"),
    ("escape", b'{"topic": "a\\u001bb"}', "application/json", 422, "invalid_topic"),
    ("line-separator", b'{"topic": "a\\u2028b"}', "application/json", 422, "invalid_topic"),
    ("number", b'{"topic": 42}', "application/json", 422, "invalid_topic"),
    ("null", b'{"topic": null}', "application/json", 422, "invalid_topic"),
    ("list", b'{"topic": ["a"]}', "application/json", 422, "invalid_topic"),
    ("missing", b"{}", "application/json", 422, "invalid_topic"),
    ("empty-form", b"topic=", "application/x-www-form-urlencoded", 422, "invalid_topic"),
    ("form-nul", b"topic=a%00b", "application/x-www-form-urlencoded", 422, "invalid_topic"),
    # Left open to fit the 1 KiB cap: too deep for the stack, and invalid JSON where it is not.
    ("deep-array", b'{"topic": ' + b"[" * 1000, "application/json", 400, "malformed_body"),
    ("nan", b'{"topic": NaN}', "application/json", 400, "malformed_body"),
    ("utf-16", '{"topic": "x"}'.encode("utf-16"), "application/json", 400, "malformed_body"),
    ("utf8-surrogate", b'{"topic": "a\xed\xa0\x80b"}', "application/json", 400, "malformed_body"),
    ("lone-surrogate-escape", b'{"topic": "a\\ud800b"}', "application/json", 422, "invalid_topic"),
    ("form-not-utf8", b"topic=\xff", "application/x-www-form-urlencoded", 400, "malformed_body"),
    ("form-escape-not-utf8", b"topic=%ff", "application/x-www-form-urlencoded", 400,
     "malformed_body"),
    ("form-surrogate-escape", b"topic=%ED%A0%80", "application/x-www-form-urlencoded", 400,
     "malformed_body"),
    ("form-no-equals", b"topic", "application/x-www-form-urlencoded", 400, "malformed_body"),
    ("form-many-fields", b"&".join([b"a=1"] * 21), "application/x-www-form-urlencoded", 400,
     "malformed_body"),
]


@pytest.fixture
def small_server(start_server: Callable[..., Any]) -> Any:
    return start_server(MAX_BODY_BYTES=str(LIMIT_BYTES), MAX_TOPIC_CHARS=str(LIMIT_CHARS))


def test_bad_submits_are_refused(small_server: Any, subtests: pytest.Subtests) -> None:
    with httpx.Client(base_url=small_server.url) as client:
        for case, body, content_type, status, code in BAD_BODIES:
            with subtests.test(case):
                headers = {"Content-Type": content_type} if content_type else {}
                assert_error(client.post("/api/jobs", content=body, headers=headers), status, code)
        with subtests.test("too-large-with-content-length"):
            body = b'{"topic": "%s"}' % (b"x" * LIMIT_BYTES)
            assert_error(client.post("/api/jobs", content=body,
                                     headers={"Content-Type": "application/json"}),
                         413, "body_too_large")

        def chunks() -> Iterator[bytes]:
            yield b'{"topic": "'
            for _ in range(8):
                yield b"x" * 256
            yield b'"}'

        with subtests.test("too-large-chunked"):
            response = client.post("/api/jobs", content=chunks(),
                                   headers={"Content-Type": "application/json"})
            assert "content-length" not in response.request.headers
            assert_error(response, 413, "body_too_large")
        assert client.get("/api/jobs").json()["jobs"] == [], "a refused submit made a job"


def test_good_submits_at_the_limits(small_server: Any) -> None:
    with httpx.Client(base_url=small_server.url) as client:
        form = client.post("/api/jobs", data={"topic": "  Home composting "})
        assert form.status_code == 202, form.text
        assert form.json()["topic"] == "Home composting"
        assert form.headers["location"] == f"/api/jobs/{form.json()['id']}"
        longest = client.post("/api/jobs", json={"topic": "é" * LIMIT_CHARS})
        assert longest.status_code == 202, longest.text


# ----- queue, streams and rate limits -----------------------------------------------------------


def test_queue_full_and_too_many_streams(start_server: Callable[..., Any]) -> None:
    server = start_server(MAX_RUNNING_JOBS="1", MAX_QUEUED_JOBS="1", MAX_STREAMS="2",
                          OFFLINE_LLM_DELAY_MS="10000")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        running = client.post("/api/jobs", json={"topic": "First"}).json()["id"]
        wait_for(lambda: job_status(client, running) == "running", 5, "the first job to run")
        queued = client.post("/api/jobs", json={"topic": "Second"})
        assert queued.status_code == 202
        assert job_status(client, queued.json()["id"]) == "queued"
        full = client.post("/api/jobs", json={"topic": "Third"})
        assert_error(full, 429, "queue_full")
        assert_retry_after(full)

        events = f"/api/jobs/{running}/events"
        with client.stream("GET", events) as first, client.stream("GET", events) as second:
            # Keep the iterators: dropping one closes its connection.
            readers = [stream.iter_raw() for stream in (first, second)]
            for stream, reader in zip((first, second), readers):
                assert stream.status_code == 200
                assert next(reader).startswith(b"retry:")
            assert metric(server.url, "articlestream_open_streams") == 2
            refused = client.get(events)
            assert_error(refused, 429, "too_many_streams")
            assert_retry_after(refused)
        # Once those two are gone, streams are served again.
        wait_for(lambda: metric(server.url, "articlestream_open_streams") == 0, 5,
                 "the closed streams to be released")
        with client.stream("GET", events) as again:
            assert again.status_code == 200


def post_from(client: httpx.Client, forwarded_for: str) -> httpx.Response:
    return client.post("/api/jobs", json={"topic": "Rate"},
                       headers={"X-Forwarded-For": forwarded_for})


def test_rate_limit_ignores_forwarded_for_from_untrusted_peers(
        start_server: Callable[..., Any]) -> None:
    server = start_server(RATE_LIMIT_PER_MINUTE="2", RATE_LIMIT_BURST="2")
    with httpx.Client(base_url=server.url) as client:
        assert post_from(client, "203.0.113.1").status_code == 202
        assert post_from(client, "203.0.113.1").status_code == 202
        # The peer is 127.0.0.1 whatever the header says, so its budget is spent.
        limited = post_from(client, "203.0.113.2")
        assert_error(limited, 429, "rate_limited")
        assert_retry_after(limited, most=30)
        assert_error(client.post("/api/jobs", json={"topic": "Rate"}), 429, "rate_limited")


def test_rate_limit_per_forwarded_client_behind_a_trusted_proxy(
        start_server: Callable[..., Any]) -> None:
    server = start_server(RATE_LIMIT_PER_MINUTE="2", RATE_LIMIT_BURST="2",
                          TRUSTED_PROXIES="127.0.0.1/32")
    with httpx.Client(base_url=server.url) as client:
        for client_ip in ("203.0.113.1", "203.0.113.2"):
            assert post_from(client, client_ip).status_code == 202
            assert post_from(client, client_ip).status_code == 202
            limited = post_from(client, client_ip)
            assert_error(limited, 429, "rate_limited")
            assert_retry_after(limited, most=30)
        # Hops a client writes itself, left of the last untrusted one, change nothing.
        assert_error(post_from(client, "198.51.100.7, 203.0.113.1"), 429, "rate_limited")
        assert post_from(client, "203.0.113.3, 127.0.0.1").status_code == 202


# ----- idempotency, waiting, cancelling, looking up ---------------------------------------------


def test_idempotency_wait_cancel_and_lookup(start_server: Callable[..., Any]) -> None:
    server = start_server()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        key = {"Idempotency-Key": "order-42"}
        first = client.post("/api/jobs", json={"topic": "Bees"}, headers=key)
        assert first.status_code == 202
        again = client.post("/api/jobs", json={"topic": "Bees"}, headers=key)
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        assert_error(client.post("/api/jobs", json={"topic": "Wasps"}, headers=key),
                     409, "idempotency_conflict")
        assert len(client.get("/api/jobs").json()["jobs"]) == 1

        waited = client.post("/api/jobs", json={"topic": "Honey"}, headers={"Prefer": "wait=5"})
        assert waited.status_code == 201, waited.text
        job = waited.json()
        assert job["status"] == "succeeded" and job["article"]
        assert waited.headers["location"] == f"/api/jobs/{job['id']}"
        assert_error(client.delete(f"/api/jobs/{job['id']}"), 409, "not_cancellable")

        unknown = "j_" + "A" * 22
        for method, path in (("GET", f"/api/jobs/{unknown}"), ("DELETE", f"/api/jobs/{unknown}"),
                             ("GET", f"/api/jobs/{unknown}/events"), ("GET", "/api/jobs/x%2F..")):
            assert_error(client.request(method, path), 404, "not_found")
        assert_error(client.put("/api/jobs"), 405, "method_not_allowed")


def test_list_parameters_and_paging(start_server: Callable[..., Any]) -> None:
    server = start_server()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for limit in ("0", "abc", "101", "-1", "2.5"):
            assert_error(client.get("/api/jobs", params={"limit": limit}), 400, "invalid_limit")
        assert_error(client.get("/api/jobs", params={"cursor": "j_nope"}), 400, "invalid_cursor")
        assert_error(client.get("/api/jobs", params={"status": "done"}), 400, "invalid_status")

        made = [client.post("/api/jobs", json={"topic": f"Page {n}"}).json()["id"]
                for n in range(5)]
        seen: list[str] = []
        cursor = None
        for _ in range(5):
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/jobs", params=params).json()
            assert len(page["jobs"]) <= 2
            seen += [job["id"] for job in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == made[::-1], "each job once, newest first"
        wait_for(lambda: all(job_status(client, job_id) == "succeeded" for job_id in made), 10,
                 "the jobs to finish")
        done = client.get("/api/jobs", params={"status": "succeeded", "limit": "100"}).json()
        assert [job["id"] for job in done["jobs"]] == made[::-1]
        assert client.get("/api/jobs", params={"status": "queued"}).json()["jobs"] == []


# ----- streams that clients abandon or stop reading -------------------------------------------


def test_a_thousand_abandoned_streams_are_released(start_server: Callable[..., Any]) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="20000")
    job_id = httpx.post(f"{server.url}/api/jobs", json={"topic": "Crowds"}).json()["id"]
    request = f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    sockets = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
            sock.sendall(request)
            sockets.append(sock)
        wait_for(lambda: metric(server.url, "articlestream_open_streams") == 1000, 30,
                 "all 1,000 streams to open")
        for n, sock in enumerate(sockets):
            if n % 3 == 1:
                sock.recv(64)  # read a little, then walk away
            elif n % 3 == 2:  # reset rather than close
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: metric(server.url, "articlestream_open_streams") == 0, 30,
             "the abandoned streams to be released")
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/api/jobs/{job_id}").json()["status"] == "running"


@pytest.mark.parametrize("when", ["live", "replay"])
def test_a_client_that_stops_reading_is_dropped(serve_app: Callable[..., Any], when: str) -> None:
    # About 12 MB of events: far more than the loopback socket buffers (~2 MB) can absorb.
    provider = ScriptedProvider(script={"section": ["compost " * 125_000]}, chunk_words=25_000)
    settings = Settings(llm_provider="offline", send_timeout_s=1, rate_limit_per_minute=0)
    served = serve_app(create_app(settings, provider=provider))
    provider.gate = served.run(_new_event())
    client = httpx.Client(base_url=served.url, timeout=30)
    job_id = client.post("/api/jobs", json={"topic": "Backpressure"}).json()["id"]
    if when == "replay":
        served.run(_set(provider.gate))
        wait_for(lambda: job_status(client, job_id) == "succeeded", 20, "the big job to finish")

    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.connect(("127.0.0.1", int(served.url.rsplit(":", 1)[1])))
    stuck.sendall(f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    try:
        if when == "live":
            wait_for(lambda: metric(served.url, "articlestream_open_streams") == 1, 5,
                     "the stream to open")
            served.run(_set(provider.gate))
        wait_for(lambda: metric(served.url, "articlestream_streams_dropped_total") == 1, 15,
                 "the stuck stream to be dropped")
        wait_for(lambda: metric(served.url, "articlestream_open_streams") == 0, 5,
                 "the dropped stream to be released")
        assert client.get("/healthz").status_code == 200
    finally:
        stuck.close()
        client.close()


async def _new_event() -> anyio.Event:
    return anyio.Event()


async def _set(event: anyio.Event) -> None:
    event.set()
