"""Bench: what tracing costs. N jobs with tracing off, then N with it on, against one server each.

Run from the repository root: `.venv/bin/python bench/tracing.py --jobs 1000`.

Each run starts `python app.py` (the offline writer, OFFLINE_LLM_DELAY_MS=0 by default, so the
server's CPU, not the writer's pacing, bounds the rate) on a free 127.0.0.1 port, warms it up,
then submits N jobs, `--concurrency` at a time, each with `Prefer: wait` so its answer is the
ended job. With tracing on, OTEL_EXPORTER_OTLP_ENDPOINT points at a receiver in this process
that accepts every OTLP/HTTP request, counts its spans and drops them; the server's CPU is read
once the receiver has had every span, so the exporter's work is counted. It prints jobs/s and the
server's CPU per job (utime + stime from /proc) for both, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from _measure import wait_for
from _server import free_port, run_server
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

WARMUP_JOBS = 20
#: spans of one job: the submit, the job, three nodes, five LLM calls (three sections)
SPANS_PER_JOB = 10
EXPORT_WAIT_S = 30.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Receiver:
    """An OTLP/HTTP endpoint that accepts everything, counts the spans, and drops them."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.spans = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.spans += sum(len(scope_spans.spans) for resource in request.resource_spans
                          for scope_spans in resource.scope_spans)
        self.requests += 1
        self.bytes += len(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-protobuf")]})
        await send({"type": "http.response.body", "body": b""})


def serve_receiver(receiver: Receiver) -> tuple[str, uvicorn.Server]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server


async def run_jobs(url: str, count: int, concurrency: int) -> int:
    """Submit `count` jobs, `concurrency` at a time; how many succeeded."""
    places = asyncio.Semaphore(concurrency)
    succeeded = 0

    async def one(client: httpx.AsyncClient, n: int) -> None:
        nonlocal succeeded
        async with places:
            response = await client.post("/api/jobs", json={"topic": f"Bench topic {n}"},
                                         headers={"Prefer": "wait=60"})
        if response.status_code == 201 and response.json()["status"] == "succeeded":
            succeeded += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(one(client, n) for n in range(count)))
    return succeeded


@dataclass
class Result:
    jobs_per_s: float
    cpu_ms_per_job: float
    succeeded: int


def measure(jobs: int, concurrency: int, delay_ms: int, receiver: Receiver | None,
            endpoint: str | None) -> Result:
    env = {
        "OFFLINE_LLM_DELAY_MS": str(delay_ms),
        "MAX_RUNNING_JOBS": str(max(100, concurrency)),
        "MAX_QUEUED_JOBS": str(max(1000, jobs)),
        "MAX_STORED_JOBS": str(max(5000, jobs * 2)),
        "MAX_LLM_CALLS": str(max(100, concurrency * 4)),
    }
    if endpoint is not None:
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with run_server(**env) as server:
        asyncio.run(run_jobs(server.url, WARMUP_JOBS, concurrency))
        if receiver is not None:
            receiver.spans = 0
            wait_for_spans(receiver, WARMUP_JOBS * SPANS_PER_JOB)
            receiver.spans -= WARMUP_JOBS * SPANS_PER_JOB
        cpu_before, started = server.cpu_seconds(), time.perf_counter()
        succeeded = asyncio.run(run_jobs(server.url, jobs, concurrency))
        elapsed = time.perf_counter() - started
        if receiver is not None:
            # The exporter's CPU counts too: measured once every span has gone out.
            wait_for_spans(receiver, jobs * SPANS_PER_JOB)
        cpu = server.cpu_seconds() - cpu_before
    return Result(jobs / elapsed, cpu / jobs * 1000, succeeded)


def wait_for_spans(receiver: Receiver, least: int) -> None:
    if wait_for(lambda: receiver.spans >= least, EXPORT_WAIT_S, 0.05) is None:
        raise RuntimeError(f"the receiver had {receiver.spans} spans of {least} after "
                           f"{EXPORT_WAIT_S:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--delay-ms", type=int, default=0, help="OFFLINE_LLM_DELAY_MS")
    args = parser.parse_args()

    receiver = Receiver()
    endpoint, receiver_server = serve_receiver(receiver)
    try:
        off = measure(args.jobs, args.concurrency, args.delay_ms, None, None)
        on = measure(args.jobs, args.concurrency, args.delay_ms, receiver, endpoint)
    finally:
        receiver_server.should_exit = True
    print(f"jobs: {args.jobs} per run, {args.concurrency} at a time, "
          f"OFFLINE_LLM_DELAY_MS={args.delay_ms}")
    for name, result in (("tracing off", off), ("tracing on", on)):
        print(f"{name}: {result.jobs_per_s:.1f} jobs/s, server CPU {result.cpu_ms_per_job:.2f} "
              f"ms/job, {result.succeeded} of {args.jobs} succeeded")
    print(f"tracing on / off: throughput {on.jobs_per_s / off.jobs_per_s:.3f}, "
          f"CPU per job {on.cpu_ms_per_job / off.cpu_ms_per_job:.3f}")
    print(f"receiver: {receiver.requests} requests, {receiver.bytes / 1024:.0f} KiB")
    print("throughput: jobs answered per second; CPU: the server's, once every span was sent")


if __name__ == "__main__":
    main()
