"""Graceful shutdown: SIGTERM lets running jobs finish within DRAIN_SECONDS, ends the rest
`shutdown`, closes every stream on a frame boundary, and the process exits soon after."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from app import create_app
from pipeline.settings import Settings

from .sse_client import TERMINAL

pytestmark = pytest.mark.anyio

DRAIN_S = 2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Frame:
    fields: dict[str, str]

    @property
    def event(self) -> str | None:
        return self.fields.get("event")

    @property
    def data(self) -> Any:
        return json.loads(self.fields["data"])


def read_frames(raw: bytes) -> list[Frame]:
    """The stream's frames (comments dropped); each frame must be complete."""
    assert raw.endswith(b"\n\n"), f"the stream was cut mid-frame: ...{raw[-120:]!r}"
    frames = []
    for block in raw.decode().split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        if fields:
            frames.append(Frame(fields))
    return frames


@dataclass
class Stream:
    """One subscriber's view of one job's stream, as it arrived on the wire."""

    job_id: str
    raw: bytearray = field(default_factory=bytearray)
    running: anyio.Event = field(default_factory=anyio.Event)
    failure: BaseException | None = None

    async def follow(self, client: httpx.AsyncClient) -> None:
        try:
            async with client.stream("GET", f"/api/jobs/{self.job_id}/events") as response:
                assert response.status_code == 200
                async for chunk in response.aiter_raw():
                    self.raw += chunk
                    if b'"status":"running"' in self.raw:
                        self.running.set()
        except httpx.HTTPError as exc:  # e.g. the connection dropped inside the chunked body
            self.failure = exc

    def last(self) -> str:
        """What the stream saw last: its last event's type (and code), or its last field."""
        frames = read_frames(bytes(self.raw))
        last = frames[-1]
        if last.event == "error":
            return f"error/{last.data['code']}"
        return last.event or next(iter(last.fields))


async def test_sigterm_drains_jobs_and_streams(start_server: Callable[..., Any]) -> None:
    # Three calls per job: at 300 ms a call the jobs end well inside the drain, at 3 s they cannot.
    fast = start_server(OFFLINE_LLM_DELAY_MS="300", DRAIN_SECONDS=str(DRAIN_S))
    slow = start_server(OFFLINE_LLM_DELAY_MS="3000", DRAIN_SECONDS=str(DRAIN_S))
    streams: dict[str, list[Stream]] = {fast.url: [], slow.url: []}
    exit_s: dict[str, float] = {}

    async def stop(server: Any) -> None:
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(server.proc.wait, DRAIN_S + 10)
        exit_s[server.url] = time.monotonic() - started

    clients = [httpx.AsyncClient(base_url=s.url, timeout=DRAIN_S + 10) for s in (fast, slow)]
    async with clients[0], clients[1], anyio.create_task_group() as tg:
        for server, client in zip((fast, slow), clients):
            for n in range(2):
                response = await client.post("/api/jobs", json={"topic": f"Drain test {n}"})
                assert response.status_code == 202, response.text
                for _ in range(2):
                    stream = Stream(response.json()["id"])
                    streams[server.url].append(stream)
                    tg.start_soon(stream.follow, client)
        with anyio.fail_after(10):
            for stream in streams[fast.url] + streams[slow.url]:
                await stream.running.wait()
        tg.start_soon(stop, fast)
        tg.start_soon(stop, slow)

    for server, expected in ((fast, "done"), (slow, "error/shutdown")):
        assert all(s.failure is None for s in streams[server.url]), \
            [repr(s.failure) for s in streams[server.url]]
        seen = [(s.job_id[-6:], s.last()) for s in streams[server.url]]
        # A stream that ended without a terminal event must at least tell the client to retry.
        for stream in streams[server.url]:
            frames = read_frames(bytes(stream.raw))
            if not any(frame.event in TERMINAL for frame in frames):
                assert "retry" in frames[-1].fields, f"{stream.job_id} ended with {stream.last()}"
        assert {last for _, last in seen} == {expected}, (server.url, seen)
        assert exit_s[server.url] <= DRAIN_S + 3, \
            f"{server.url} took {exit_s[server.url]:.2f} s to exit after SIGTERM"
        assert server.proc.returncode in (0, -signal.SIGTERM)
        messages = [json.loads(line)["message"] for line in server.log().splitlines()]
        assert "received SIGTERM: draining" in messages
        assert "draining: 2 running, 0 queued" in messages
        assert "drained: 0 jobs still running" in messages
        print(f"{server.url}: 2 jobs running, 4 streams, exit after {exit_s[server.url]:.2f} s,"
              f" last events {seen}")


async def test_draining_refuses_work_and_fails_queued_jobs(serve_app: Callable[..., Any]) -> None:
    settings = Settings(llm_provider="offline", offline_llm_delay_ms=3000, max_running_jobs=1,
                        drain_s=1, rate_limit_per_minute=0)
    served = serve_app(create_app(settings))
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        ids = []
        for n in range(3):
            response = await client.post("/api/jobs", json={"topic": f"Queued {n}"})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        running, queued = ids[0], ids[1:]
        streams = [Stream(job_id) for job_id in queued]
        async with anyio.create_task_group() as tg:
            for stream in streams:
                tg.start_soon(stream.follow, client)
            with anyio.fail_after(5):
                while not all(b"event: status" in stream.raw for stream in streams):
                    await anyio.sleep(0.02)
            assert (await client.get(f"/api/jobs/{running}")).json()["status"] == "running"

            served.request_shutdown()
            with anyio.fail_after(5):
                while (ready := await client.get("/readyz")).status_code != 503:
                    await anyio.sleep(0.02)
            assert ready.json()["error"]["code"] == "not_ready"
            refused = await client.post("/api/jobs", json={"topic": "Too late"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "shutting_down"
            assert int(refused.headers["retry-after"]) >= 1

        for stream in streams:
            assert stream.failure is None, repr(stream.failure)
            assert stream.last() == "error/shutdown"
        # The running job has DRAIN_SECONDS (1 s here) before it is ended too.
        with anyio.fail_after(5):
            while (job := (await client.get(f"/api/jobs/{running}")).json())["status"] == "running":
                await anyio.sleep(0.05)
        jobs = [(await client.get(f"/api/jobs/{job_id}")).json() for job_id in queued] + [job]
    for job in jobs:
        assert (job["status"], job["error"]["code"]) == ("failed", "shutdown"), job
