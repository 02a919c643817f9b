"""Bench part: one job watched by many subscribers, against sse-starlette serving the same events.

Run alone from the repository root: `.venv/bin/python bench/fanout.py --subscribers 1000`.

ArticleStream: `MAX_RUNNING_JOBS=1`; a queue of blocker jobs holds the place while the client
processes subscribe to one more job, queued behind them. Once every subscriber has that job's
first event (`queued`), the harness cancels the blockers, the job runs, and each subscriber
reads it to the end. The baseline (bench/sse_starlette_app.py) replays the events of a job this
service wrote, on the timeline it wrote them, to as many subscribers, once they have all
subscribed.

For both, from the trigger to the last subscriber's terminal event: events delivered per second
(every event to every subscriber), and the lag of each arrival behind the first arrival of the
same event at any subscriber (the spread of each event across subscribers). Arrival times are
CLOCK_MONOTONIC, one clock for all the client processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _clients import Clients, Gate, split
from _measure import Figures, Meter, RssSampler, Usage
from _server import ROOT, TERMINAL_EVENTS, Server, percentile, run_server
from _sse import RawStream
from concurrent_jobs import DEFAULT_CLIENTS, jobs_env

OPEN_CONCURRENCY = 100
TIMEOUT_S = 120.0
BASELINE_APP = ROOT / "bench" / "sse_starlette_app.py"
#: (id, event, data, seconds after the second event)
Recorded = tuple[int, str, str, float]


@dataclass(frozen=True)
class RecordShard:
    url: str


async def record_worker(shard: RecordShard, gate: Gate) -> list[Recorded]:
    """Submit one job and keep every event of its stream with its arrival time."""
    await gate()
    async with httpx.AsyncClient(base_url=shard.url, timeout=60.0, verify=False) as client:
        job_id = (await client.post("/api/jobs", json={"topic": "Fan-out topic"})).raise_for_status().json()["id"]
    stream = await RawStream.open(shard.url, f"/api/jobs/{job_id}/events")
    frames = []
    try:
        async for frame in stream.frames():
            if frame.data is not None and frame.event is not None and frame.id is not None:
                frames.append(frame)
                if frame.event in TERMINAL_EVENTS:
                    break
    finally:
        stream.close()
    origin = frames[1].at if len(frames) > 1 else frames[0].at
    return [(int(f.id or 0), f.event or "", f.data or "", f.at - origin) for f in frames]


def record_job(server: Server) -> list[Recorded]:
    """One job's events as a lone client received them, read in a client process."""
    with Clients(record_worker, [RecordShard(server.url)], timeout_s=TIMEOUT_S) as procs:
        procs.ready()
        events = procs.go().results[0]
    if not events or events[-1][1] != "done":
        raise RuntimeError(f"the recorded job did not end done: {events[-1:]!r}")
    return events


@dataclass(frozen=True)
class FanoutShard:
    url: str
    path: str
    subscribers: int


async def fanout_worker(shard: FanoutShard, gate: Gate) -> list[list[tuple[int, float]] | str]:
    """Subscribe; once each has its first event, pass the gate; read every stream to its end."""
    gate_open = asyncio.Semaphore(OPEN_CONCURRENCY)
    subscribed = [asyncio.Event() for _ in range(shard.subscribers)]

    async def follow(slot: int) -> list[tuple[int, float]]:
        async with gate_open:
            stream = await RawStream.open(shard.url, shard.path)
        arrivals: list[tuple[int, float]] = []
        try:
            async for frame in stream.frames():
                if frame.data is None or frame.id is None:
                    continue
                arrivals.append((int(frame.id), frame.at))
                subscribed[slot].set()
                if frame.event in TERMINAL_EVENTS:
                    break
        finally:
            stream.close()
            subscribed[slot].set()
        return arrivals

    tasks = [asyncio.create_task(follow(slot)) for slot in range(shard.subscribers)]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in subscribed)), TIMEOUT_S)
    await gate()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT_S)
    return [o if isinstance(o, list) else repr(o) for o in outcomes]


@dataclass
class FanoutRun:
    subscribers: int
    arrivals: list[list[tuple[int, float]] | str]
    triggered_at: float
    usage: Usage
    rss_peak_mib: float


def report(run: FanoutRun, figures: Figures) -> float | None:
    """The run's figures; returns its events per second."""
    streams = [a for a in run.arrivals if isinstance(a, list) and a]
    figures.add("subscriber_failures", run.subscribers - len(streams))
    if not streams:
        return None
    last_id = max(event_id for arrivals in streams for event_id, _ in arrivals)
    figures.add("subscribers_with_terminal_event", sum(1 for a in streams if a[-1][0] == last_id))
    live = [(event_id, at) for arrivals in streams for event_id, at in arrivals if event_id >= 2]
    window = max(at for _, at in live) - run.triggered_at
    first: dict[int, float] = {}
    for event_id, at in live:
        first[event_id] = min(at, first.get(event_id, at))
    lags = [(at - first[event_id]) * 1000 for event_id, at in live]
    figures.add("events_per_subscriber", len(live) / len(streams), ".1f")
    figures.add("deliveries", len(live))
    figures.add("window_s", window, ".3f")
    events_per_s = len(live) / window
    figures.add("events_per_s", events_per_s, ".0f")
    figures.add("lag_p50_ms", percentile(lags, 0.5), ".1f")
    figures.add("lag_p99_ms", percentile(lags, 0.99), ".1f")
    figures.add("lag_max_ms", max(lags), ".1f")
    figures.add("server_cpu_us_per_delivery", run.usage.server_cpu_s * 1e6 / len(live), ".1f")
    figures.add("server_rss_mib_peak", run.rss_peak_mib, ".1f")
    run.usage.add_to(figures)
    return events_per_s


def _drive(server: Server, path: str, subscribers: int, clients: int,
           trigger: object) -> FanoutRun:
    shards = [FanoutShard(server.url, path, len(indices)) for indices in split(subscribers, clients)]
    meter = Meter([server.pid])
    with Clients(fanout_worker, shards, timeout_s=TIMEOUT_S + 30) as procs:
        procs.ready()
        with RssSampler([server.pid]) as rss:
            meter.start()
            triggered_at = trigger()  # type: ignore[operator]
            outcome = procs.go()
            usage = meter.stop(outcome.cpu_s)
    return FanoutRun(subscribers, [a for shard in outcome.results for a in shard], triggered_at,
                     usage, rss.peak_mib[server.pid])


def fan_out_articlestream(*, subscribers: int, delay_ms: int, clients: int,
                          blockers: int) -> tuple[FanoutRun, list[Recorded]]:
    env = {**jobs_env(1, delay_ms), "MAX_RUNNING_JOBS": "1", "MAX_QUEUED_JOBS": str(blockers + 10),
           "MAX_STREAMS": str(subscribers + 200)}
    with run_server(**env) as server, httpx.Client(base_url=server.url, timeout=30.0) as http:
        recorded = record_job(server)  # also the warm-up
        held = [http.post("/api/jobs", json={"topic": f"Blocker {i}"}).raise_for_status().json()["id"]
                for i in range(blockers)]
        target = http.post("/api/jobs", json={"topic": "Fan-out topic"}).raise_for_status().json()["id"]

        def trigger() -> float:
            status = http.get(f"/api/jobs/{target}").json()["status"]
            if status != "queued":
                raise RuntimeError(f"the watched job is {status} before the trigger; add blockers")
            statuses = {job_id: http.get(f"/api/jobs/{job_id}").json()["status"] for job_id in held}
            for job_id in reversed(held):  # the queued ones first, so none of them takes the place
                if statuses[job_id] == "queued":
                    http.delete(f"/api/jobs/{job_id}")
            triggered_at = time.perf_counter()
            for job_id in held:
                if statuses[job_id] == "running":
                    http.delete(f"/api/jobs/{job_id}")
            return triggered_at

        run = _drive(server, f"/api/jobs/{target}/events", subscribers, clients, trigger)
    return run, recorded


def fan_out_baseline(*, recorded: list[Recorded], subscribers: int, clients: int) -> FanoutRun:
    with tempfile.TemporaryDirectory(prefix="articlestream-bench-") as folder:
        events_file = Path(folder) / "events.json"
        events_file.write_text(json.dumps(recorded))
        with run_server(script=BASELINE_APP, BENCH_EVENTS_FILE=str(events_file)) as server, \
                httpx.Client(base_url=server.url, timeout=30.0) as http:

            def trigger() -> float:
                triggered_at = time.perf_counter()
                http.post("/start").raise_for_status()
                return triggered_at

            return _drive(server, "/events", subscribers, clients, trigger)


def part_fanout(*, subscribers: int, delay_ms: int, clients: int, blockers: int) -> Figures:
    figures = Figures()
    figures.add("subscribers", subscribers)
    figures.add("delay_ms", delay_ms)
    ours, recorded = fan_out_articlestream(subscribers=subscribers, delay_ms=delay_ms,
                                           clients=clients, blockers=blockers)
    figures.add("job_events", len(recorded))
    figures.add("recorded_job_s", recorded[-1][3], ".3f")
    baseline = fan_out_baseline(recorded=recorded, subscribers=subscribers, clients=clients)
    ours_figures, baseline_figures = Figures(), Figures()
    ours_rate = report(ours, ours_figures)
    baseline_rate = report(baseline, baseline_figures)
    figures.extend(ours_figures)
    for figure in baseline_figures:
        figure.name = f"sse_starlette_{figure.name}"
        figures.append(figure)
    if ours_rate and baseline_rate:
        figures.add("events_per_s_over_sse_starlette", ours_rate / baseline_rate, ".2f")
    ours_cpu = ours_figures.get("server_cpu_us_per_delivery")
    baseline_cpu = baseline_figures.get("server_cpu_us_per_delivery")
    if ours_cpu and baseline_cpu and ours_cpu.number:
        figures.add("sse_starlette_cpu_per_delivery_over_ours", (baseline_cpu.number or 0) / ours_cpu.number,
                    ".2f")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--delay-ms", type=int, default=200, help="OFFLINE_LLM_DELAY_MS")
    parser.add_argument("--blockers", type=int, default=60, help="jobs that hold the place meanwhile")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="client processes")
    args = parser.parse_args()
    part_fanout(subscribers=args.subscribers, delay_ms=args.delay_ms, clients=args.clients,
                blockers=args.blockers).print()


if __name__ == "__main__":
    main()
