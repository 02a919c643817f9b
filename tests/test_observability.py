"""What an operator sees: Prometheus metrics, JSON log lines, and the stream's wire headers."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .waiting import wait_for


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, keyed by name and labels."""
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in found, f"{name}{labels} is not in /metrics"
    return found[key]



def status_of(client: httpx.Client, job_id: str) -> str:
    return str(client.get(f"/api/jobs/{job_id}").json()["status"])


def run_two_jobs(client: httpx.Client) -> tuple[str, str]:
    """One job that succeeds, one cancelled while it runs; returns their ids."""
    done = client.post("/api/jobs", json={"topic": "Metrics"}, headers={"Prefer": "wait=20"})
    assert done.status_code == 201, done.text
    cancelled = client.post("/api/jobs", json={"topic": "Cancel me"}).json()["id"]
    wait_for(lambda: status_of(client, cancelled) == "running", 5, "the second job to run")
    assert client.delete(f"/api/jobs/{cancelled}").status_code == 202
    assert status_of(client, cancelled) == "cancelled"
    return done.json()["id"], cancelled


def test_metrics_count_jobs_stages_llm_calls_and_events(start_server: Callable[..., Any]) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="200", MAX_RUNNING_JOBS="1")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        succeeded, _ = run_two_jobs(client)
        frames = client.get(f"/api/jobs/{succeeded}/events").text.count("\nevent: ")
    found = samples(server.url)

    assert value(found, "articlestream_jobs_submitted_total") == 2
    finished = "articlestream_jobs_finished_total"
    assert value(found, finished, status="succeeded", code="") == 1
    assert value(found, finished, status="cancelled", code="cancelled") == 1
    jobs = "articlestream_job_duration_seconds"
    for status in ("succeeded", "cancelled"):
        assert value(found, f"{jobs}_count", status=status) == 1
        assert value(found, f"{jobs}_bucket", status=status, le="+Inf") == 1
    assert value(found, f"{jobs}_sum", status="succeeded") > 0
    # The succeeded job went through every stage, so every stage was timed.
    for stage in ("outline", "content", "style"):
        assert value(found, "articlestream_stage_duration_seconds_count", stage=stage) >= 1, stage
    # Outline, three sections and the style pass of the succeeded job, at least, by node.
    calls = "articlestream_llm_call_duration_seconds"
    for node, least in (("outline", 1), ("content", 3), ("style", 1)):
        assert value(found, f"{calls}_count", provider="offline", node=node) >= least, node
        assert value(found, f"{calls}_sum", provider="offline", node=node) > 0, node
    assert value(found, "articlestream_events_sent_total") >= frames > 5


def test_metrics_gauges_follow_queue_runners_and_streams(start_server: Callable[..., Any]) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="10000", MAX_RUNNING_JOBS="1")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        running = client.post("/api/jobs", json={"topic": "Busy"}).json()["id"]
        waiting = client.post("/api/jobs", json={"topic": "Waiting"}).json()["id"]
        wait_for(lambda: status_of(client, running) == "running", 5, "the first job to run")
        with client.stream("GET", f"/api/jobs/{running}/events") as stream:
            reader = stream.iter_raw()  # kept, so the stream stays open while we look
            assert next(reader).startswith(b"retry:")
            live = samples(server.url)
        assert value(live, "articlestream_running_jobs") == 1
        assert value(live, "articlestream_queued_jobs") == 1
        assert value(live, "articlestream_open_streams") == 1

        # The waiting job is cancelled while it queues, then the running one.
        for job_id in (waiting, running):
            assert client.delete(f"/api/jobs/{job_id}").status_code == 202
            assert status_of(client, job_id) == "cancelled"
    for gauge in ("articlestream_running_jobs", "articlestream_queued_jobs",
                  "articlestream_open_streams"):
        wait_for(lambda: value(samples(server.url), gauge) == 0, 5, f"{gauge} to drop to 0")


def test_logs_are_json_lines_with_job_ids(start_server: Callable[..., Any]) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="100", LOG_LEVEL="INFO")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        succeeded, cancelled = run_two_jobs(client)
        client.get("/api/jobs/nope")
    lines = [json.loads(line) for line in server.log().splitlines()]
    assert all(isinstance(line, dict) and {"time", "level", "logger", "message"} <= line.keys()
               for line in lines)
    assert any(line["level"] == "INFO" for line in lines)

    def about(job_id: str) -> list[str]:
        return [line["message"] for line in lines if line.get("job_id") == job_id]

    assert about(succeeded) == ["job queued", "job running", "job succeeded"]
    assert about(cancelled) == ["job queued", "job running", "job cancelled (cancelled)"]
    for line in lines:
        if line["logger"].startswith("pipeline.") and line["message"].startswith("job "):
            assert "job_id" in line, line


def test_log_level_warning_silences_info(start_server: Callable[..., Any]) -> None:
    server = start_server(LOG_LEVEL="WARNING")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/api/jobs", json={"topic": "Quiet"}, headers={"Prefer": "wait=10"})
        assert response.status_code == 201
        client.get("/api/jobs/nope")
    for line in server.log().splitlines():
        assert json.loads(line)["level"] in ("WARNING", "ERROR", "CRITICAL"), line


class RawStream:
    """An HTTP/1.1 response read off a socket as `curl -N` would: headers, then each chunk."""

    def __init__(self, url: str, path: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
                          f"Accept-Encoding: gzip, deflate, br\r\n\r\n".encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        self.status = int(head[0].split(" ")[1])
        self.headers = {name.lower(): value.strip()
                        for name, value in (line.split(":", 1) for line in head[1:])}

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            received = self.sock.recv(65536)
            assert received, "the server closed the connection"
            self.buffer += received
        part, self.buffer = self.buffer.split(marker, 1)
        return part

    def chunk(self) -> bytes:
        """The next chunk of the chunked body, exactly as the server sent it."""
        size = int(self._until(b"\r\n"), 16)
        while len(self.buffer) < size + 2:
            received = self.sock.recv(65536)
            assert received, "the server closed the connection mid-chunk"
            self.buffer += received
        data, self.buffer = self.buffer[:size], self.buffer[size + 2:]
        return data

    def close(self) -> None:
        self.sock.close()


def test_stream_headers_first_bytes_and_heartbeat(start_server: Callable[..., Any]) -> None:
    server = start_server(MAX_RUNNING_JOBS="1", OFFLINE_LLM_DELAY_MS="10000",
                          HEARTBEAT_SECONDS="0.2")
    with httpx.Client(base_url=server.url) as client:
        ahead = client.post("/api/jobs", json={"topic": "In front"}).json()["id"]
        queued = client.post("/api/jobs", json={"topic": "Behind"}).json()["id"]
        wait_for(lambda: status_of(client, ahead) == "running", 5, "the first job to run")

        stream = RawStream(server.url, f"/api/jobs/{queued}/events")
        try:
            assert stream.status == 200
            assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert stream.headers["cache-control"] == "no-store"
            assert stream.headers["x-accel-buffering"] == "no"
            assert "content-encoding" not in stream.headers
            assert "content-length" not in stream.headers
            # The retry hint goes out alone and at once, before the first event.
            assert stream.chunk() == b"retry: 2000\n\n"
            seen = b""
            started = time.monotonic()
            while b": keep-alive\n\n" not in seen:
                assert time.monotonic() - started < 3, f"no heartbeat in 3 s: {seen!r}"
                seen += stream.chunk()
            assert b"event: status" in seen and b'"queued"' in seen
            assert b'"running"' not in seen
            assert status_of(client, queued) == "queued"
        finally:
            stream.close()
