"""Bench: N jobs submitted and streamed at once, each by its own client.

Run from the repository root: `.venv/bin/python bench/concurrent_jobs.py --jobs 100`.
It starts the service itself on a free 127.0.0.1 port and prints one `name: value` line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import httpx
from _server import (
    STOP_TIMEOUT_S,
    TERMINAL_EVENTS,
    Server,
    load_average,
    machine_cpu_seconds,
    percentile,
    run_server,
    sse_events,
)

RUN_TIMEOUT_S = 120.0


@dataclass
class JobResult:
    terminal: str
    events: int
    submitted_at: float
    ended_at: float
    #: seconds after the submit at which the last event of each type arrived
    marks: dict[str, float]


async def one_job(client: httpx.AsyncClient, index: int) -> JobResult:
    """Submit a job and read its stream to the terminal event."""
    submitted_at = time.perf_counter()
    response = await client.post("/api/jobs", json={"topic": f"Bench topic {index}"})
    response.raise_for_status()
    job_id = response.json()["id"]
    events, terminal, marks = 0, "none", {}
    async with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        stream.raise_for_status()
        async for event, _data in sse_events(stream):
            events += 1
            marks[event] = time.perf_counter() - submitted_at
            if event in TERMINAL_EVENTS:
                terminal = event
                break
    return JobResult(terminal, events, submitted_at, time.perf_counter(), marks)


@dataclass
class Usage:
    """What the run cost, read around it."""

    server_cpu_s: float
    client_cpu_s: float
    machine_busy_s: float
    machine_total_s: float
    load_before: str
    rss_before_mib: float
    rss_after_mib: float


Round = tuple[list[JobResult | BaseException], Usage]


async def one_round(server: Server, clients: list[httpx.AsyncClient], jobs: int) -> Round:
    """`jobs` jobs at once, one per client, with what they cost."""
    rss_before = server.rss_mib()
    load_before = load_average()
    server_cpu = server.cpu_seconds()
    client_cpu = time.process_time()
    machine_busy, machine_total = machine_cpu_seconds()
    results = await asyncio.wait_for(
        asyncio.gather(*(one_job(clients[i], i) for i in range(jobs)), return_exceptions=True),
        RUN_TIMEOUT_S,
    )
    server_cpu = server.cpu_seconds() - server_cpu
    client_cpu = time.process_time() - client_cpu
    busy_after, total_after = machine_cpu_seconds()
    usage = Usage(server_cpu, client_cpu, busy_after - machine_busy,
                  total_after - machine_total, load_before, rss_before, server.rss_mib())
    return results, usage


async def run(server: Server, jobs: int, rounds: int) -> list[Round]:
    timeout = httpx.Timeout(30.0, connect=10.0)
    # One client per job, built before the clock starts: building one loads the CA bundle
    # (~10 ms of CPU), a cost of this bench, not of the service.
    clients = [httpx.AsyncClient(base_url=server.url, timeout=timeout) for _ in range(jobs + 1)]
    try:
        await one_job(clients[-1], -1)  # warm-up: first-request paths off the clock
        return [await one_round(server, clients, jobs) for _ in range(rounds)]
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


#: event type whose last arrival marks each step: start, outline, sections, style (done)
STEPS = {"running": "status", "outline": "outline", "last_section": "section", "done": "done"}


def report(jobs: int, results: list[JobResult | BaseException], usage: Usage) -> None:
    finished = [r for r in results if isinstance(r, JobResult)]
    failures = [r for r in results if not isinstance(r, JobResult)]
    terminals = Counter(r.terminal for r in finished)
    print(f"jobs: {jobs}")
    print(f"done: {terminals['done']}")
    print(f"terminals: {dict(terminals)}")
    print(f"client_failures: {len(failures)}")
    for failure in failures[:3]:
        print(f"client_failure: {failure!r}")
    if finished:
        wall = max(r.ended_at for r in finished) - min(r.submitted_at for r in finished)
        latencies = [r.ended_at - r.submitted_at for r in finished]
        events = sum(r.events for r in finished)
        print(f"wall_s: {wall:.3f}")
        print(f"latency_p50_s: {percentile(latencies, 0.50):.3f}")
        print(f"latency_p95_s: {percentile(latencies, 0.95):.3f}")
        print(f"latency_max_s: {max(latencies):.3f}")
        for step, event in STEPS.items():
            if times := [r.marks[event] for r in finished if event in r.marks]:
                print(f"p50_s_to_{step}: {percentile(times, 0.50):.3f}")
        print(f"events_total: {events}")
        print(f"events_per_job: {events / len(finished):.1f}")
        print(f"events_per_s: {events / wall:.0f}")
    print(f"server_cpu_s: {usage.server_cpu_s:.2f}")
    print(f"server_cpu_ms_per_job: {usage.server_cpu_s * 1000 / jobs:.1f}")
    # The bench shares the machine's cores with the server, and so may anything else running:
    # wall time means little unless the other processes left the cores mostly idle.
    others = usage.machine_busy_s - usage.server_cpu_s - usage.client_cpu_s
    print(f"bench_client_cpu_s: {usage.client_cpu_s:.2f}")
    print(f"other_processes_cpu_s: {max(0.0, others):.2f}")
    if usage.machine_total_s > 0:
        print(f"machine_busy_pct: {100 * usage.machine_busy_s / usage.machine_total_s:.0f}")
    print(f"load_average_before: {usage.load_before}")
    print(f"server_rss_mib_before: {usage.rss_before_mib:.1f}")
    print(f"server_rss_mib_after: {usage.rss_after_mib:.1f}")


def report_rounds(jobs: int, rounds: list[Round]) -> None:
    """RSS after each round, and what each job finished after the first round added to it."""
    for number, (results, usage) in enumerate(rounds, 1):
        done = sum(1 for r in results if isinstance(r, JobResult) and r.terminal == "done")
        print(f"round{number}_done: {done}")
        print(f"round{number}_server_rss_mib_after: {usage.rss_after_mib:.1f}")
    growth_mib = rounds[-1][1].rss_after_mib - rounds[0][1].rss_after_mib
    print(f"rss_kib_per_job_after_round1: {growth_mib * 1024 / (jobs * (len(rounds) - 1)):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--delay-ms", type=int, default=200, help="OFFLINE_LLM_DELAY_MS")
    parser.add_argument("--deltas", choices=["on", "off"], default="on", help="STREAM_DELTAS")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of --jobs jobs on one server; the first is reported in full, "
                             "then RSS after each (finished jobs stay stored for JOB_TTL_SECONDS)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds is {args.rounds}; it must be at least 1")
    env = {
        "OFFLINE_LLM_DELAY_MS": str(args.delay_ms),
        "STREAM_DELTAS": "1" if args.deltas == "on" else "0",
        "MAX_RUNNING_JOBS": str(args.jobs),
        "MAX_QUEUED_JOBS": str(max(1000, args.jobs * 10)),
        "MAX_STREAMS": str(max(1000, args.jobs * 2)),
        "RATE_LIMIT_PER_MINUTE": "0",
    }
    print(f"delay_ms: {args.delay_ms}")
    print(f"deltas: {args.deltas}")
    with run_server(**env) as server:
        rounds = asyncio.run(run(server, args.jobs, args.rounds))
    report(args.jobs, *rounds[0])
    if len(rounds) > 1:
        report_rounds(args.jobs, rounds)
    print(f"server_stop_after_sigterm_s: {server.stop_s:.2f}" if server.stop_s is not None
          else f"server_stop_after_sigterm_s: over {STOP_TIMEOUT_S:.0f}, killed")


if __name__ == "__main__":
    main()
