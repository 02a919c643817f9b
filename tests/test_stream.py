"""The event stream end to end, against `python app.py` on a free loopback port."""

from __future__ import annotations

import concurrent.futures
import socket

import httpx

from .sse_client import part_texts, read_stream, submit
from .waiting import wait_for


def test_a_topic_becomes_an_article_with_live_progress(start_server) -> None:
    server = start_server()
    job = submit(server.url, "Home composting")
    events = read_stream(server.url, job["id"])

    assert [e.id for e in events] == list(range(1, len(events) + 1))
    kinds = [e.event for e in events]
    assert kinds[:2] == ["status", "status"]
    assert [e.data["status"] for e in events[:2]] == ["queued", "running"]
    assert kinds[-1] == "done"
    assert kinds.count("outline") == 1 and kinds.count("section") == 3
    progress = [e.data["progress"] for e in events if "progress" in e.data]
    assert progress == sorted(progress) and progress[-1] == 100
    outline = next(e.data["sections"] for e in events if e.event == "outline")
    sections = {e.data["index"]: e.data for e in events if e.event == "section"}
    assert [sections[i]["title"] for i in range(3)] == outline
    done = events[-1].data
    assert done["status"] == "succeeded" and done["progress"] == 100
    assert "offline writer" in done["article"]
    assert all(title in done["article"] for title in outline)
    assert httpx.get(f"{server.url}/api/jobs/{job['id']}").json() == done


def test_deltas_concatenate_to_each_section_and_to_the_article(start_server) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="100")
    events = read_stream(server.url, submit(server.url)["id"])
    texts = part_texts(events)
    for section in (e.data for e in events if e.event == "section"):
        assert texts[("content", section["index"])] == section["content"]
    assert texts[("style", None)] == events[-1].data["article"]


def test_two_subscribers_get_the_same_events(start_server) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="100")
    job = submit(server.url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: read_stream(server.url, job["id"]), range(2))
    assert first == second
    assert first[-1].event == "done"


def test_a_late_subscriber_gets_every_event_from_id_1(start_server) -> None:
    server = start_server()
    job = submit(server.url)
    live = read_stream(server.url, job["id"])
    late = read_stream(server.url, job["id"])
    assert late == live
    assert late[0].id == 1


def test_last_event_id_replays_only_what_was_missed(start_server) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="100")
    job = submit(server.url)
    first = read_stream(server.url, job["id"], until=6)
    rest = read_stream(server.url, job["id"], headers={"Last-Event-ID": str(first[-1].id)})
    assert [e.id for e in first + rest] == list(range(1, rest[-1].id + 1))
    assert rest[-1].event == "done"
    assert first + rest == read_stream(server.url, job["id"])
    by_query = httpx.get(f"{server.url}/api/jobs/{job['id']}/events?last_event_id={rest[-2].id}")
    assert by_query.text.count("event: ") == 1 and "event: done" in by_query.text


def test_a_client_that_saw_the_terminal_event_gets_204(start_server) -> None:
    server = start_server()
    job = submit(server.url)
    last = read_stream(server.url, job["id"])[-1]
    url = f"{server.url}/api/jobs/{job['id']}/events"
    assert httpx.get(url, headers={"Last-Event-ID": str(last.id)}).status_code == 204
    # An id past the end of a finished job never leaves a stream open.
    assert httpx.get(url, headers={"Last-Event-ID": str(last.id + 50)}).status_code == 204


def test_an_unknown_job_is_a_json_404(start_server) -> None:
    server = start_server()
    for path in ("/api/jobs/j_nope", "/api/jobs/j_nope/events"):
        response = httpx.get(server.url + path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_cancel_mid_job_reaches_the_running_call(start_server) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="30000")
    job = submit(server.url)
    # Wait until the job runs (its outline call is under way), then cancel it.
    read_stream(server.url, job["id"], until=3)
    response = httpx.delete(f"{server.url}/api/jobs/{job['id']}", timeout=10)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    events = read_stream(server.url, job["id"])
    assert events[-1].event == "cancelled"
    assert events[-1].data["code"] == "cancelled"
    shown = httpx.get(f"{server.url}/api/jobs/{job['id']}").json()
    assert shown["status"] == "cancelled" and shown["error"]["code"] == "cancelled"
    again = httpx.delete(f"{server.url}/api/jobs/{job['id']}")
    assert again.status_code == 202 and again.json()["status"] == "cancelled"


def test_the_retry_hint_goes_out_first(start_server) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="30000", MAX_RUNNING_JOBS="1")
    submit(server.url)
    queued = submit(server.url)  # waits behind the first
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET /api/jobs/{queued['id']}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while b"id: 1\n" not in received:
            received += sock.recv(4096)
    assert 0 < received.index(b"retry: 2000\n\n") < received.index(b"id: 1\n")


def test_100_concurrent_jobs_each_streamed_all_finish(start_server) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="20", MAX_RUNNING_JOBS="100")
    jobs = [submit(server.url, f"Topic {n}") for n in range(100)]
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        streams = list(pool.map(lambda job: read_stream(server.url, job["id"], timeout=60), jobs))
    assert [events[-1].event for events in streams] == ["done"] * 100
    assert all(events[-1].data["topic"] == f"Topic {n}" for n, events in enumerate(streams))


def test_finished_jobs_and_their_events_are_forgotten_after_the_ttl(start_server) -> None:
    server = start_server(JOB_TTL_SECONDS="1")
    job = submit(server.url)
    read_stream(server.url, job["id"])
    url = f"{server.url}/api/jobs/{job['id']}"
    with httpx.Client(timeout=5) as client:
        wait_for(lambda: client.get(url).status_code == 404, 15, "the finished job to expire")
        assert client.get(url + "/events").status_code == 404
