"""Bench: open many streams on a few slow running jobs, abandon them, and watch the server let go.

Run from the repository root: `.venv/bin/python bench/abandoned_streams.py --streams 1000`.
It starts the service itself on a free 127.0.0.1 port and prints one `name: value` line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from _server import STOP_TIMEOUT_S, Server, run_server

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


async def open_streams_gauge(client: httpx.AsyncClient) -> float | None:
    response = await client.get("/metrics")
    samples = {
        name: value
        for name, value in gauge_lines(response.text, "open_streams").items()
        if not name.split("{", 1)[0].endswith(("_created", "_total"))
    }
    return sum(samples.values()) if samples else None


@dataclass
class OpenStream:
    response: httpx.Response
    # held so that garbage collection cannot close the connection before we mean to
    chunks: AsyncIterator[bytes]

    async def abandon(self) -> None:
        """Close the connection mid-stream without reading the rest."""
        await self.chunks.aclose()  # type: ignore[attr-defined]
        await self.response.aclose()


async def open_one(
    client: httpx.AsyncClient, job_id: str, gate: asyncio.Semaphore
) -> OpenStream:
    """Open a stream and wait for its first bytes, so the server holds it as open."""
    async with gate:
        request = client.build_request("GET", f"/api/jobs/{job_id}/events")
        response = await client.send(request, stream=True)
        if response.status_code != 200:
            await response.aclose()
            raise RuntimeError(f"stream answered {response.status_code}")
        chunks = response.aiter_raw()
        await chunks.__anext__()
        return OpenStream(response, chunks)


def print_watched(label: str, metrics: str) -> None:
    for needle in WATCHED_METRICS:
        for name, value in gauge_lines(metrics, needle).items():
            print(f"{label}: {name} {value:g}")


async def one_round(server: Server, client: httpx.AsyncClient, probe: httpx.AsyncClient,
                    job_ids: list[str], streams: int, round_no: int) -> None:
    """Open `streams` streams spread over the jobs, abandon them all, wait for the gauge."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    started = time.perf_counter()
    opened = await asyncio.gather(
        *(open_one(client, job_ids[i % len(job_ids)], gate) for i in range(streams)),
        return_exceptions=True,
    )
    streams_open = [r for r in opened if isinstance(r, OpenStream)]
    failures = [r for r in opened if not isinstance(r, OpenStream)]
    prefix = f"round{round_no}"
    print(f"{prefix}_streams_opened: {len(streams_open)} of {streams} in "
          f"{time.perf_counter() - started:.2f}s")
    for failure in failures[:3]:
        print(f"{prefix}_open_failure: {failure!r}")
    print(f"{prefix}_gauge_while_open: {await open_streams_gauge(probe)}")
    print_watched(f"{prefix}_metric_while_open", (await probe.get("/metrics")).text)
    print(f"{prefix}_server_rss_mib_while_open: {server.rss_mib():.1f}")
    statuses = [(await probe.get(f"/api/jobs/{j}")).json()["status"] for j in job_ids]
    print(f"{prefix}_job_statuses_at_abandon: {statuses}")

    abandoned_at = time.perf_counter()
    await asyncio.gather(*(stream.abandon() for stream in streams_open))
    gauge = await open_streams_gauge(probe)
    deadline = abandoned_at + DRAIN_TIMEOUT_S
    while gauge and time.perf_counter() < deadline:
        await asyncio.sleep(POLL_INTERVAL_S)
        gauge = await open_streams_gauge(probe)
    print(f"{prefix}_gauge_after_abandon: {gauge}")
    print(f"{prefix}_gauge_zero_after_s: {time.perf_counter() - abandoned_at:.2f}"
          if gauge == 0 else f"{prefix}_gauge_zero_after_s: not within {DRAIN_TIMEOUT_S:.0f}s")
    print_watched(f"{prefix}_metric_after", (await probe.get("/metrics")).text)
    print(f"{prefix}_server_rss_mib_after: {server.rss_mib():.1f}")


@dataclass
class Health:
    """What /healthz answered while the bench ran."""

    polls: int = 0
    ok: int = 0
    slowest_s: float = 0.0


async def poll_healthz(client: httpx.AsyncClient, stop: asyncio.Event, health: Health) -> None:
    """GET /healthz every POLL_INTERVAL_S until `stop` is set."""
    while not stop.is_set():
        started = time.perf_counter()
        try:
            answered = (await client.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            answered = False
        health.polls += 1
        health.ok += int(answered)
        health.slowest_s = max(health.slowest_s, time.perf_counter() - started)
        await asyncio.sleep(POLL_INTERVAL_S)


async def run(server: Server, streams: int, jobs: int, rounds: int) -> None:
    limits = httpx.Limits(max_connections=streams + 20, max_keepalive_connections=20)
    timeout = httpx.Timeout(OPEN_TIMEOUT_S)
    health, stop = Health(), asyncio.Event()
    async with (
        httpx.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as client,
        # clients of their own, so polling never waits on the streaming client's pool
        httpx.AsyncClient(base_url=server.url, timeout=10.0) as probe,
        httpx.AsyncClient(base_url=server.url, timeout=10.0) as health_client,
        asyncio.TaskGroup() as tg,
    ):
        tg.create_task(poll_healthz(health_client, stop, health))
        try:
            await bench(server, client, probe, streams, jobs, rounds)
        finally:
            stop.set()
    print(f"healthz_200_while_running: {health.ok} of {health.polls}")
    print(f"healthz_slowest_s: {health.slowest_s:.3f}")


async def bench(server: Server, client: httpx.AsyncClient, probe: httpx.AsyncClient,
                streams: int, jobs: int, rounds: int) -> None:
    """Open and abandon the streams `rounds` times on `jobs` running jobs, then cancel them."""
    metrics_before = (await probe.get("/metrics")).text
    gauge_names = sorted(gauge_lines(metrics_before, "open_streams")) or ["(none)"]
    print(f"open_streams_metric: {', '.join(gauge_names)}")
    print_watched("metric_before", metrics_before)
    print(f"server_rss_mib_before: {server.rss_mib():.1f}")

    job_ids = []
    for index in range(jobs):
        response = await probe.post("/api/jobs", json={"topic": f"Abandon topic {index}"})
        response.raise_for_status()
        job_ids.append(response.json()["id"])
    for round_no in range(1, rounds + 1):
        await one_round(server, client, probe, job_ids, streams, round_no)

    cancels = [(await probe.delete(f"/api/jobs/{j}")).status_code for j in job_ids]
    print(f"cancel_statuses: {cancels}")
    print_watched("metric_after_cancel", (await probe.get("/metrics")).text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2,
                        help="open-and-abandon rounds; RSS that keeps growing would be a leak")
    parser.add_argument("--delay-ms", type=int, default=20000,
                        help="OFFLINE_LLM_DELAY_MS: slow enough that jobs outlive the bench")
    args = parser.parse_args()
    env = {
        "OFFLINE_LLM_DELAY_MS": str(args.delay_ms),
        "MAX_RUNNING_JOBS": str(max(args.jobs, 4)),
        "MAX_QUEUED_JOBS": "100",
        "MAX_STREAMS": str(args.streams + 100),
        "DRAIN_SECONDS": "1",
    }
    print(f"streams: {args.streams}")
    print(f"jobs: {args.jobs}")
    print(f"rounds: {args.rounds}")
    print(f"delay_ms: {args.delay_ms}")
    with run_server(**env) as server:
        asyncio.run(run(server, args.streams, args.jobs, args.rounds))
    print(f"server_stop_after_sigterm_s: {server.stop_s:.2f}" if server.stop_s is not None
          else f"server_stop_after_sigterm_s: over {STOP_TIMEOUT_S:.0f}, killed")


if __name__ == "__main__":
    main()
