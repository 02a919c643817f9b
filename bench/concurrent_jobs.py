"""Bench part: N jobs submitted and streamed at once, each by its own client; and one job alone.

Run alone from the repository root: `.venv/bin/python bench/concurrent_jobs.py --jobs 100`
(bench/run.py runs it as the `one_job` and `jobs` parts). It starts the service itself on a free
127.0.0.1 port; the jobs are split over client processes, each an asyncio loop with one httpx
client (one connection) per job, and it prints one `name: value` line per figure.

Event latency is measured on each `done` event: from its data's `finished_at` (ISO, whole
milliseconds, set as the event is written) to the moment the client has parsed it, both read from
the same machine's wall clock. `finished_at` is cut to the millisecond, so a figure may read up
to 1 ms high.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import httpx
from _clients import Clients, Gate, split
from _measure import Figures, Meter, RssSampler, Usage, wait_for
from _server import TERMINAL_EVENTS, Server, metric, percentile, run_server
from _sse import FrameParser

DEFAULT_CLIENTS = 2
#: the calls a job makes one after another: the outline, the sections side by side, the style
IDEAL_CALLS = 3
#: event type whose last arrival marks each step: start, outline, sections, style (done)
STEPS = {"running": "status", "outline": "outline", "last_section": "section", "done": "done"}
SETTLE_TIMEOUT_S = 30.0


def ideal_s(delay_ms: int) -> float:
    return IDEAL_CALLS * delay_ms / 1000


def jobs_env(jobs: int, delay_ms: int, deltas: bool = True) -> dict[str, str]:
    """Limits high enough that `jobs` jobs at once all run at once, streamed by their clients."""
    return {
        "OFFLINE_LLM_DELAY_MS": str(delay_ms),
        "STREAM_DELTAS": "1" if deltas else "0",
        "MAX_RUNNING_JOBS": str(max(100, jobs)),
        "MAX_QUEUED_JOBS": str(max(1000, jobs * 2)),
        "MAX_LLM_CALLS": str(max(100, jobs * 4)),
        "MAX_STREAMS": str(max(1000, jobs * 2 + 100)),
        "MAX_STORED_JOBS": str(max(5000, jobs * 4)),
    }


@dataclass
class JobResult:
    terminal: str
    events: int
    submitted_at: float
    ended_at: float
    #: from sending the stream's GET to the first byte of its body
    first_byte_s: float | None
    #: from the done event's `finished_at` to its parse, on the wall clock
    done_latency_s: float | None
    #: seconds after the submit at which the last event of each type arrived
    marks: dict[str, float]
    #: the `code` of an `error` or `cancelled` terminal event
    code: str | None = None


@dataclass(frozen=True)
class JobsShard:
    #: job i is submitted to urls[i % len] and streamed from urls[(i + 1) % len]
    urls: tuple[str, ...]
    indices: range
    timeout_s: float
    #: connect each client (GET /healthz) before the start, so the clock starts on a warm client
    warm: bool = False


async def one_job(client: httpx.AsyncClient, submit_url: str, stream_url: str,
                  index: int) -> JobResult:
    """Submit a job and read its stream to the terminal event."""
    submitted_at = time.perf_counter()
    response = await client.post(f"{submit_url}/api/jobs", json={"topic": f"Bench topic {index}"})
    response.raise_for_status()
    job_id = response.json()["id"]
    result = JobResult("none", 0, submitted_at, 0.0, None, None, {})
    parser = FrameParser()
    asked_at = time.perf_counter()
    async with client.stream("GET", f"{stream_url}/api/jobs/{job_id}/events") as stream:
        stream.raise_for_status()
        async for chunk in stream.aiter_raw():
            at = time.perf_counter()
            if result.first_byte_s is None:
                result.first_byte_s = at - asked_at
            for frame in parser.feed(chunk, at):
                if frame.data is None or frame.event is None:
                    continue
                result.events += 1
                result.marks[frame.event] = at - submitted_at
                if frame.event in TERMINAL_EVENTS:
                    data = json.loads(frame.data)
                    finished_at, result.code = data.get("finished_at"), data.get("code")
                    if finished_at:
                        result.done_latency_s = time.time() - datetime.fromisoformat(finished_at).timestamp()
                    result.terminal = frame.event
                    result.ended_at = time.perf_counter()
                    return result
    result.ended_at = time.perf_counter()
    return result


async def jobs_worker(shard: JobsShard, gate: Gate) -> list[JobResult | str]:
    """One client (one connection) per job of the shard, built before the start."""
    timeout = httpx.Timeout(shard.timeout_s, connect=30.0)
    # Each client would otherwise load the CA bundle (~10 ms of CPU): the streams are plain HTTP.
    clients = [httpx.AsyncClient(timeout=timeout, verify=False) for _ in shard.indices]
    try:
        count = len(shard.urls)
        if shard.warm:
            await asyncio.gather(*(client.get(f"{shard.urls[i % count]}/healthz")
                                   for client, i in zip(clients, shard.indices)))
        await gate()
        tasks = [asyncio.create_task(one_job(client, shard.urls[i % count], shard.urls[(i + 1) % count], i))
                 for client, i in zip(clients, shard.indices)]
        # Jobs still running at the deadline are reported as such, with what did finish.
        _, late = await asyncio.wait(tasks, timeout=shard.timeout_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    return [f"not finished within {shard.timeout_s:.0f} s" if task in late
            else task.result() if task.exception() is None else repr(task.exception())
            for task in tasks]


def warm_up(server: Server) -> None:
    """One job, submitted and streamed to its end, off the clock: first-request paths."""
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        job_id = client.post("/api/jobs", json={"topic": "Warm-up"}).raise_for_status().json()["id"]
        with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for _ in stream.iter_raw():
                pass


def open_streams(server: Server) -> float:
    """The service's open-streams gauge."""
    return metric(server.url, "articlestream_open_streams")


def settle(servers: Sequence[Server]) -> None:
    """Wait until no stream is open, so that an RSS read after a run sees the run's end."""
    for server in servers:
        wait_for(lambda s=server: open_streams(s) == 0, SETTLE_TIMEOUT_S)  # type: ignore[misc]


@dataclass
class JobsRun:
    jobs: int
    results: list[JobResult | str]
    usage: Usage
    rss_before_mib: list[float]
    rss_peak_mib: list[float]
    rss_after_mib: list[float]


def run_jobs(servers: Sequence[Server], jobs: int, clients: int, timeout_s: float,
             extra_pids: Sequence[int] = (), *, warm: bool = False) -> JobsRun:
    """`jobs` jobs at once over `clients` client processes, and what they cost the servers."""
    shards = [JobsShard(tuple(s.url for s in servers), indices, timeout_s, warm)
              for indices in split(jobs, clients)]
    rss_before = [server.rss_mib() for server in servers]
    meter = Meter([s.pid for s in servers], extra_pids)
    with Clients(jobs_worker, shards, timeout_s=timeout_s + 60) as procs:
        procs.ready()
        with RssSampler([s.pid for s in servers]) as rss:
            meter.start()
            outcome = procs.go()
            usage = meter.stop(outcome.cpu_s)
    settle(servers)
    return JobsRun(jobs, [r for shard in outcome.results for r in shard], usage, rss_before,
                   [rss.peak_mib[s.pid] for s in servers], [s.rss_mib() for s in servers])


def report(run: JobsRun, delay_ms: int, figures: Figures) -> None:
    """Every figure of one run of jobs at once."""
    finished = [r for r in run.results if isinstance(r, JobResult)]
    failures = [r for r in run.results if not isinstance(r, JobResult)]
    terminals = Counter(r.terminal for r in finished)
    figures.add("jobs", run.jobs)
    figures.add("delay_ms", delay_ms)
    figures.add("done", terminals["done"])
    figures.add("terminals", json.dumps(dict(terminals)))
    if codes := Counter(r.code for r in finished if r.code):
        figures.add("terminal_error_codes", json.dumps(dict(codes)))
    figures.add("client_failures", len(failures))
    if failures:
        kinds = Counter(failure.split("(", 1)[0] if "(" in failure else failure for failure in failures)
        figures.add("client_failure_kinds", json.dumps(dict(kinds)))
    for number, failure in enumerate(failures[:3], 1):
        figures.add(f"client_failure_{number}", failure[:200])
    if finished:
        wall = max(r.ended_at for r in finished) - min(r.submitted_at for r in finished)
        completions = [r.ended_at - r.submitted_at for r in finished]
        figures.add("wall_s", wall, ".3f")
        for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            figures.add(f"completion_{name}_s", percentile(completions, fraction), ".3f")
        figures.add("completion_max_s", max(completions), ".3f")
        figures.add("ideal_s", ideal_s(delay_ms), ".3f")
        figures.add("completion_p95_over_ideal", percentile(completions, 0.95) / ideal_s(delay_ms), ".3f")
        for step, event in STEPS.items():
            if times := [r.marks[event] for r in finished if event in r.marks]:
                figures.add(f"p50_s_to_{step}", percentile(times, 0.50), ".3f")
        if first_bytes := [r.first_byte_s * 1000 for r in finished if r.first_byte_s is not None]:
            figures.add("stream_first_byte_p50_ms", percentile(first_bytes, 0.5), ".1f")
            figures.add("stream_first_byte_p99_ms", percentile(first_bytes, 0.99), ".1f")
        if latencies := [r.done_latency_s * 1000 for r in finished if r.done_latency_s is not None]:
            figures.add("done_event_latency_p50_ms", percentile(latencies, 0.5), ".1f")
            figures.add("done_event_latency_p99_ms", percentile(latencies, 0.99), ".1f")
        events = sum(r.events for r in finished)
        figures.add("events_total", events)
        figures.add("events_per_job", events / len(finished), ".1f")
        figures.add("events_per_s", events / wall, ".0f")
    run.usage.add_to(figures, per=run.jobs)
    for number, (before, peak, after) in enumerate(
            zip(run.rss_before_mib, run.rss_peak_mib, run.rss_after_mib), 1):
        suffix = "" if len(run.rss_before_mib) == 1 else f"_instance{number}"
        figures.add(f"server_rss_mib_before{suffix}", before, ".1f")
        figures.add(f"server_rss_mib_peak{suffix}", peak, ".1f")
        figures.add(f"server_rss_mib_after{suffix}", after, ".1f")


def stop_figure(server: Server, figures: Figures) -> None:
    figures.add("server_stop_after_sigterm_s",
                server.stop_s if server.stop_s is not None else "over the stop timeout, killed",
                ".2f")


def part_one_job(*, delay_ms: int, runs: int) -> Figures:
    """One job alone, `runs` times one after another: its wall time against the ideal."""
    figures = Figures()
    walls: list[float] = []
    with run_server(**jobs_env(1, delay_ms)) as server:
        warm_up(server)
        for _ in range(runs):
            # On a connected client: the figure is what the service adds to 3 D, not what a
            # new client process spends on its first request (imports, connect).
            run = run_jobs([server], 1, 1, timeout_s=60.0, warm=True)
            result = run.results[0]
            if not isinstance(result, JobResult) or result.terminal != "done":
                raise RuntimeError(f"the lone job did not end done: {result!r}")
            walls.append(result.ended_at - result.submitted_at)
        last = result
    ideal = ideal_s(delay_ms)
    figures.add("delay_ms", delay_ms)
    figures.add("runs", runs)
    figures.add("ideal_s", ideal, ".3f")
    figures.add("wall_p50_s", percentile(walls, 0.5), ".3f")
    figures.add("wall_max_s", max(walls), ".3f")
    figures.add("wall_p50_over_ideal", percentile(walls, 0.5) / ideal, ".3f")
    figures.add("wall_max_over_ideal", max(walls) / ideal, ".3f")
    figures.add("last_run_s_to_running", last.marks.get("status", 0.0), ".3f")
    figures.add("last_run_events", last.events)
    stop_figure(server, figures)
    return figures


def part_jobs(*, jobs: int, delay_ms: int, clients: int, deltas: bool = True) -> Figures:
    """`jobs` jobs at once on a fresh server, each streamed to its end by its own client."""
    figures = Figures()
    with run_server(**jobs_env(jobs, delay_ms, deltas)) as server:
        warm_up(server)
        run = run_jobs([server], jobs, clients, timeout_s=120.0 + jobs * 0.1)
    figures.add("client_processes", min(clients, jobs))
    figures.add("deltas", "on" if deltas else "off")
    report(run, delay_ms, figures)
    stop_figure(server, figures)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--delay-ms", type=int, default=200, help="OFFLINE_LLM_DELAY_MS")
    parser.add_argument("--deltas", choices=["on", "off"], default="on", help="STREAM_DELTAS")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="client processes")
    args = parser.parse_args()
    part_jobs(jobs=args.jobs, delay_ms=args.delay_ms, clients=args.clients,
              deltas=args.deltas == "on").print()


if __name__ == "__main__":
    main()
