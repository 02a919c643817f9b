"""Bench: N jobs on one in-process instance, then on two instances sharing one Redis.

Run from the repository root: `.venv/bin/python bench/instances.py --jobs 1000`.
It starts everything itself on free 127.0.0.1 ports (redis-server with an append-only file in a
temporary folder), and prints `name: value` lines for each setup. With two instances the
clients alternate: job i is submitted to instance i % 2 and streamed from the other one.
Event latency is measured on each `done` event: from its job's `finished_at` (set as the event
is written) to the moment the client has parsed it, on the same machine's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import redis
from _server import TERMINAL_EVENTS, Server, free_port, percentile, run_server, sse_events

RUN_TIMEOUT_S = 300.0


@contextmanager
def redis_server() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="articlestream-bench-redis-"))
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing (sh tests/install-system-deps.sh installs it)"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(folder), "--save", "", "--appendonly", "yes",
                             "--appendfsync", "everysec", "--logfile", str(folder / "log")])
    client = redis.Redis(port=port)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


async def one_job(submit_to: httpx.AsyncClient, stream_from: httpx.AsyncClient,
                  index: int) -> tuple[str, float, float]:
    """(terminal event, seconds from submit to done, done-event latency in seconds)."""
    started = time.perf_counter()
    response = await submit_to.post("/api/jobs", json={"topic": f"Bench topic {index}"})
    response.raise_for_status()
    job_id = response.json()["id"]
    async with stream_from.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        async for event, data in sse_events(stream):
            if event in TERMINAL_EVENTS:
                parsed = time.time()
                finished = datetime.fromisoformat(data.get("finished_at") or
                                                  datetime.now().astimezone().isoformat())
                return event, time.perf_counter() - started, parsed - finished.timestamp()
    return "none", time.perf_counter() - started, 0.0


async def sample_connections(client: redis.Redis, peak: Counter[str], stop: asyncio.Event) -> None:
    """The most connections each named instance held at once, sampled every 100 ms."""
    while not stop.is_set():
        now = Counter(entry["name"] for entry in await asyncio.to_thread(client.client_list)
                      if entry["name"])
        for name, count in now.items():
            peak[name] = max(peak[name], count)
        await asyncio.sleep(0.1)


async def drive(servers: list[Server], jobs: int, redis_url: str | None) -> None:
    timeout = httpx.Timeout(60.0, connect=20.0)
    clients = [httpx.AsyncClient(base_url=server.url, timeout=timeout,
                                 limits=httpx.Limits(max_connections=None))
               for server in servers]
    monitor = redis.Redis.from_url(redis_url) if redis_url else None
    memory_before = monitor.info("memory")["used_memory"] if monitor else 0
    peak: Counter[str] = Counter()
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_connections(monitor, peak, stop)) if monitor else None
    cpu_before = sum(server.cpu_seconds() for server in servers)
    try:
        results = await asyncio.wait_for(asyncio.gather(
            *(one_job(clients[i % len(clients)], clients[(i + 1) % len(clients)], i)
              for i in range(jobs)), return_exceptions=True), RUN_TIMEOUT_S)
    finally:
        stop.set()
        if sampler:
            await sampler
        await asyncio.gather(*(client.aclose() for client in clients))
    cpu = sum(server.cpu_seconds() for server in servers) - cpu_before
    finished = [r for r in results if isinstance(r, tuple)]
    print(f"instances: {len(servers)}")
    print(f"done: {sum(1 for r in finished if r[0] == 'done')} of {jobs}")
    print(f"terminals: {dict(Counter(r[0] for r in finished))}")
    print(f"client_failures: {len(results) - len(finished)}")
    if finished:
        completions = [r[1] for r in finished]
        latencies = [r[2] * 1000 for r in finished]
        print(f"completion_p50_s: {percentile(completions, 0.5):.3f}")
        print(f"completion_p95_s: {percentile(completions, 0.95):.3f}")
        print(f"done_event_latency_p50_ms: {percentile(latencies, 0.5):.1f}")
        print(f"done_event_latency_p99_ms: {percentile(latencies, 0.99):.1f}")
    print(f"server_cpu_ms_per_job: {cpu * 1000 / jobs:.2f}")
    if monitor:
        used = monitor.info("memory")["used_memory"] - memory_before
        print(f"redis_memory_kib_per_job: {used / 1024 / jobs:.1f}")
        for number, (name, count) in enumerate(sorted(peak.items()), 1):
            print(f"redis_connections_peak_instance{number}: {count}")
        monitor.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--delay-ms", type=int, default=200, help="OFFLINE_LLM_DELAY_MS")
    args = parser.parse_args()
    env = {"OFFLINE_LLM_DELAY_MS": str(args.delay_ms), "MAX_RUNNING_JOBS": str(args.jobs),
           "MAX_QUEUED_JOBS": str(args.jobs * 2), "MAX_LLM_CALLS": str(args.jobs * 4),
           "MAX_STREAMS": str(args.jobs * 2), "MAX_STORED_JOBS": str(args.jobs * 4)}
    print(f"jobs: {args.jobs}")
    print(f"delay_ms: {args.delay_ms}")
    print("# one instance, in process")
    with run_server(**env) as server:
        asyncio.run(drive([server], args.jobs, None))
    print("# two instances, one Redis")
    with redis_server() as url, ExitStack() as stack:
        servers = [stack.enter_context(run_server(REDIS_URL=url, **env)) for _ in range(2)]
        asyncio.run(drive(servers, args.jobs, url))


if __name__ == "__main__":
    main()
