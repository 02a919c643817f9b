"""Bench part: open many streams on a few slow running jobs, abandon them, watch the server let go.

Run alone from the repository root: `.venv/bin/python bench/abandoned_streams.py --streams 1000`
(bench/run.py runs it as the `abandon` part). It starts the service itself on a free 127.0.0.1
port; client processes open the streams and close them mid-stream, while the harness reads
the open-streams gauge and polls /healthz from a thread of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from dataclasses import dataclass

import httpx
from _clients import Clients, Gate, split
from _measure import Figures
from _server import Server, run_server
from _sse import RawStream
from concurrent_jobs import DEFAULT_CLIENTS, stop_figure

OPEN_CONCURRENCY = 100
OPEN_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
# other samples worth a before/after look, when the service exposes them
WATCHED_METRICS = ("task", "open_fds")


def gauge_lines(metrics: str, needle: str) -> dict[str, float]:
    """Samples (name with labels -> value) whose name contains `needle`."""
    samples: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if needle in name.split("{", 1)[0]:
            samples[name] = float(value)
    return samples


def open_streams_gauge(probe: httpx.Client) -> float | None:
    samples = {
        name: value
        for name, value in gauge_lines(probe.get("/metrics").text, "open_streams").items()
        if not name.split("{", 1)[0].endswith(("_created", "_total"))
    }
    return sum(samples.values()) if samples else None


@dataclass(frozen=True)
class AbandonShard:
    url: str
    #: stream i watches job_ids[i % len]
    job_ids: tuple[str, ...]
    indices: range


async def abandon_worker(shard: AbandonShard, gate: Gate) -> list[str]:
    """Open the shard's streams and wait for their first bytes; at the start, close them all
    mid-stream without reading the rest. Returns the failures to open."""
    gate_open = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_one(index: int) -> RawStream:
        async with gate_open:
            stream = await RawStream.open(shard.url, f"/api/jobs/{shard.job_ids[index % len(shard.job_ids)]}/events")
            try:
                await stream.chunks().__anext__()
            except BaseException:
                stream.close()
                raise
            return stream

    opened = await asyncio.wait_for(
        asyncio.gather(*(open_one(i) for i in shard.indices), return_exceptions=True), OPEN_TIMEOUT_S)
    await gate()
    for stream in opened:
        if isinstance(stream, RawStream):
            stream.close()
    await asyncio.sleep(0)  # let the transports send their FINs
    return [repr(r) for r in opened if not isinstance(r, RawStream)]


def add_watched(figures: Figures, label: str, metrics: str) -> None:
    for needle in WATCHED_METRICS:
        for name, value in gauge_lines(metrics, needle).items():
            figures.add(f"{label}:{name}", value, "g")


def one_round(server: Server, probe: httpx.Client, job_ids: tuple[str, ...], streams: int,
              clients: int, round_no: int, figures: Figures) -> None:
    """Open `streams` streams spread over the jobs, abandon them all, wait for the gauge."""
    prefix = f"round{round_no}"
    shards = [AbandonShard(server.url, job_ids, indices) for indices in split(streams, clients)]
    with Clients(abandon_worker, shards, timeout_s=OPEN_TIMEOUT_S + 30) as procs:
        procs.ready()
        opened_s = procs.ready_s
        figures.add(f"{prefix}_gauge_while_open", str(open_streams_gauge(probe)))
        add_watched(figures, f"{prefix}_metric_while_open", probe.get("/metrics").text)
        figures.add(f"{prefix}_server_rss_mib_while_open", server.rss_mib(), ".1f")
        statuses = [probe.get(f"/api/jobs/{j}").json()["status"] for j in job_ids]
        figures.add(f"{prefix}_job_statuses_at_abandon", json.dumps(statuses))
        abandoned_at = time.perf_counter()
        failures = [f for shard in procs.go().results for f in shard]
    figures.add(f"{prefix}_streams_opened", f"{streams - len(failures)} of {streams} in {opened_s:.2f}s")
    for number, failure in enumerate(failures[:3], 1):
        figures.add(f"{prefix}_open_failure_{number}", failure[:200])
    gauge = open_streams_gauge(probe)
    deadline = abandoned_at + DRAIN_TIMEOUT_S
    while gauge and time.perf_counter() < deadline:
        time.sleep(POLL_INTERVAL_S)
        gauge = open_streams_gauge(probe)
    figures.add(f"{prefix}_gauge_after_abandon", str(gauge))
    figures.add(f"{prefix}_gauge_zero_after_s", time.perf_counter() - abandoned_at if gauge == 0
                else f"not within {DRAIN_TIMEOUT_S:.0f}s", ".2f")
    add_watched(figures, f"{prefix}_metric_after", probe.get("/metrics").text)
    figures.add(f"{prefix}_server_rss_mib_after", server.rss_mib(), ".1f")


@dataclass
class Health:
    """What /healthz answered while the bench ran."""

    polls: int = 0
    ok: int = 0
    slowest_s: float = 0.0


def poll_healthz(url: str, stop: threading.Event, health: Health) -> None:
    """GET /healthz every POLL_INTERVAL_S until `stop` is set (in a thread of its own)."""
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                answered = client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                answered = False
            health.polls += 1
            health.ok += int(answered)
            health.slowest_s = max(health.slowest_s, time.perf_counter() - started)
            stop.wait(POLL_INTERVAL_S)


def part_abandon(*, streams: int, jobs: int, rounds: int, clients: int,
                 delay_ms: int = 20000) -> Figures:
    """Open and abandon the streams `rounds` times on `jobs` running jobs, then cancel them."""
    figures = Figures()
    env = {
        "OFFLINE_LLM_DELAY_MS": str(delay_ms),
        "MAX_RUNNING_JOBS": str(max(jobs, 4)),
        "MAX_QUEUED_JOBS": "100",
        "MAX_STREAMS": str(streams + 100),
        "DRAIN_SECONDS": "1",
    }
    for name, value in (("streams", streams), ("jobs", jobs), ("rounds", rounds), ("delay_ms", delay_ms)):
        figures.add(name, value)
    health, stop = Health(), threading.Event()
    with run_server(**env) as server, httpx.Client(base_url=server.url, timeout=10.0) as probe:
        metrics_before = probe.get("/metrics").text
        figures.add("open_streams_metric", ", ".join(sorted(gauge_lines(metrics_before, "open_streams")))
                    or "(none)")
        add_watched(figures, "metric_before", metrics_before)
        figures.add("server_rss_mib_before", server.rss_mib(), ".1f")
        job_ids = tuple(probe.post("/api/jobs", json={"topic": f"Abandon topic {i}"}).raise_for_status()
                        .json()["id"] for i in range(jobs))
        poller = threading.Thread(target=poll_healthz, args=(server.url, stop, health), daemon=True)
        poller.start()
        try:
            for round_no in range(1, rounds + 1):
                one_round(server, probe, job_ids, streams, clients, round_no, figures)
        finally:
            stop.set()
            poller.join()
        cancels = [probe.delete(f"/api/jobs/{j}").status_code for j in job_ids]
        figures.add("cancel_statuses", json.dumps(cancels))
        add_watched(figures, "metric_after_cancel", probe.get("/metrics").text)
    figures.add("healthz_200_while_running", f"{health.ok} of {health.polls}")
    figures.add("healthz_slowest_s", health.slowest_s, ".3f")
    stop_figure(server, figures)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2,
                        help="open-and-abandon rounds; RSS that keeps growing would be a leak")
    parser.add_argument("--delay-ms", type=int, default=20000,
                        help="OFFLINE_LLM_DELAY_MS: slow enough that jobs outlive the bench")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="client processes")
    args = parser.parse_args()
    part_abandon(streams=args.streams, jobs=args.jobs, rounds=args.rounds, clients=args.clients,
                 delay_ms=args.delay_ms).print()


if __name__ == "__main__":
    main()
