"""Bench part: many idle open streams on a few running jobs: RSS per stream, heartbeats on time.

Run alone from the repository root: `.venv/bin/python bench/idle_streams.py --jobs 50 --per-job 100`.
A huge `OFFLINE_LLM_DELAY_MS` keeps the jobs running (in their outline call, which sends no
event) so the streams are quiet: only `: keep-alive` comments every `HEARTBEAT_SECONDS`. Client
processes open the streams, then watch them for a window; a stream is on time when no gap
between two arrivals on it (from the last one before the window, through each keep-alive in it,
to the window's end) is longer than HEARTBEAT_SECONDS + 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import httpx
from _clients import Clients, Gate, split
from _measure import Figures, Meter, RssSampler
from _server import percentile, run_server
from _sse import RawStream
from concurrent_jobs import DEFAULT_CLIENTS, open_streams, stop_figure

OPEN_CONCURRENCY = 100
OPEN_TIMEOUT_S = 120.0
LATE_MARGIN_S = 1.0
#: long enough that the jobs outlive the bench; the call and job deadlines are raised to match
QUIET_DELAY_MS = 3_600_000


@dataclass(frozen=True)
class IdleShard:
    url: str
    #: stream i watches job_ids[i % len]
    job_ids: tuple[str, ...]
    indices: range
    window_s: float
    heartbeat_s: float


@dataclass
class Beats:
    """One stream's window: its keep-alives and longest gap."""

    keep_alives: int
    events: int
    max_gap_s: float


async def idle_worker(shard: IdleShard, gate: Gate) -> list[Beats | str]:
    gate_open = asyncio.Semaphore(OPEN_CONCURRENCY)
    arrivals: list[list[float]] = [[] for _ in shard.indices]
    kinds: list[list[bool]] = [[] for _ in shard.indices]  # True for a keep-alive
    opened = [asyncio.Event() for _ in shard.indices]

    async def watch(slot: int, index: int) -> None:
        async with gate_open:
            stream = await RawStream.open(shard.url, f"/api/jobs/{shard.job_ids[index % len(shard.job_ids)]}/events")
        try:
            async for frame in stream.frames():
                arrivals[slot].append(frame.at)
                kinds[slot].append(frame.comment)
                opened[slot].set()  # the first frame is the `retry:` line, sent at once
        finally:
            stream.close()

    tasks = [asyncio.create_task(watch(slot, index)) for slot, index in enumerate(shard.indices)]
    await until_open(opened, tasks)
    await gate()
    started = time.perf_counter()
    await asyncio.sleep(shard.window_s)
    ended = time.perf_counter()
    for task in tasks:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    beats: list[Beats | str] = []
    for slot, outcome in enumerate(outcomes):
        if not arrivals[slot]:
            beats.append(repr(outcome))
            continue
        before = [t for t in arrivals[slot] if t < started]
        inside = [(t, k) for t, k in zip(arrivals[slot], kinds[slot]) if started <= t <= ended]
        times = [before[-1] if before else started] + [t for t, _ in inside] + [ended]
        gaps = [b - a for a, b in zip(times, times[1:])]
        beats.append(Beats(sum(1 for _, k in inside if k), sum(1 for _, k in inside if not k), max(gaps)))
    return beats


async def until_open(opened: list[asyncio.Event], tasks: list[asyncio.Task[None]]) -> None:
    """Wait until every stream has its first bytes, or has failed."""
    deadline = time.perf_counter() + OPEN_TIMEOUT_S
    while time.perf_counter() < deadline:
        if all(event.is_set() or task.done() for event, task in zip(opened, tasks)):
            return
        await asyncio.sleep(0.05)


def part_idle(*, jobs: int, per_job: int, heartbeat_s: float, window_s: float, clients: int) -> Figures:
    figures = Figures()
    streams = jobs * per_job
    env = {
        "OFFLINE_LLM_DELAY_MS": str(QUIET_DELAY_MS),
        "LLM_TIMEOUT_SECONDS": str(QUIET_DELAY_MS),
        "JOB_TIMEOUT_SECONDS": str(QUIET_DELAY_MS),
        "HEARTBEAT_SECONDS": f"{heartbeat_s:g}",
        "MAX_RUNNING_JOBS": str(max(100, jobs)),
        "MAX_LLM_CALLS": str(max(100, jobs * 4)),
        "MAX_STREAMS": str(streams + 100),
        "DRAIN_SECONDS": "1",
    }
    figures.add("jobs", jobs)
    figures.add("streams", streams)
    figures.add("heartbeat_s", heartbeat_s, "g")
    figures.add("window_s", window_s, "g")
    with run_server(**env) as server, httpx.Client(base_url=server.url, timeout=30.0) as http:
        job_ids = tuple(http.post("/api/jobs", json={"topic": f"Idle topic {i}"}).raise_for_status().json()["id"]
                        for i in range(jobs))
        statuses = [http.get(f"/api/jobs/{j}").json()["status"] for j in job_ids]
        figures.add("jobs_running", statuses.count("running"))
        rss_before = server.rss_mib()
        figures.add("server_rss_mib_before_streams", rss_before, ".1f")
        shards = [IdleShard(server.url, job_ids, indices, window_s, heartbeat_s)
                  for indices in split(streams, clients)]
        meter = Meter([server.pid])
        with Clients(idle_worker, shards, timeout_s=OPEN_TIMEOUT_S + window_s + 60) as procs:
            procs.ready()
            figures.add("open_all_s", procs.ready_s, ".2f")
            figures.add("open_streams_gauge", open_streams(server), "g")
            rss_open = server.rss_mib()
            with RssSampler([server.pid]) as rss:
                meter.start()
                outcome = procs.go()
                usage = meter.stop(outcome.cpu_s)
        for job_id in job_ids:
            http.delete(f"/api/jobs/{job_id}")
    beats = [b for shard in outcome.results for b in shard]
    watched = [b for b in beats if isinstance(b, Beats)]
    figures.add("streams_watched", len(watched))
    figures.add("stream_failures", len(beats) - len(watched))
    figures.add("server_rss_mib_with_streams", rss_open, ".1f")
    figures.add("server_rss_mib_peak", rss.peak_mib[server.pid], ".1f")
    figures.add("server_rss_kib_per_stream", (rss_open - rss_before) * 1024 / streams, ".1f")
    if watched:
        limit = heartbeat_s + LATE_MARGIN_S
        gaps = [b.max_gap_s for b in watched]
        figures.add("keep_alives_per_stream", sum(b.keep_alives for b in watched) / len(watched), ".2f")
        figures.add("events_in_window", sum(b.events for b in watched))
        figures.add("heartbeat_max_gap_p50_s", percentile(gaps, 0.5), ".2f")
        figures.add("heartbeat_max_gap_p99_s", percentile(gaps, 0.99), ".2f")
        figures.add("heartbeat_max_gap_s", max(gaps), ".2f")
        on_time = sum(1 for gap in gaps if gap <= limit) / streams
        figures.add("heartbeats_on_time_fraction", on_time, ".4f")
    usage.add_to(figures)
    figures.add("server_cpu_ms_per_stream_per_s", usage.server_cpu_s * 1000 / streams / window_s, ".4f")
    stop_figure(server, figures)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--per-job", type=int, default=100, help="streams per job")
    parser.add_argument("--heartbeat-s", type=float, default=2.0, help="HEARTBEAT_SECONDS")
    parser.add_argument("--window-s", type=float, default=12.0, help="how long the streams are watched")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="client processes")
    args = parser.parse_args()
    part_idle(jobs=args.jobs, per_job=args.per_job, heartbeat_s=args.heartbeat_s,
              window_s=args.window_s, clients=args.clients).print()


if __name__ == "__main__":
    main()
