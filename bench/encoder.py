"""Bench part: the SSE frame encoder alone, against sse-starlette's, on a real job's events.

Run alone from the repository root: `.venv/bin/python bench/encoder.py`.
It records one job's events from the service (offline writer), then, in this process, encodes
those same payloads over and over:

- ours: `pipeline.sse.encode(data, event=..., id=...)`, as the store encodes each event once;
- sse-starlette: `ServerSentEvent(data, event=..., id=...).encode()`, what `EventSourceResponse`
  does (through `ensure_bytes`) for each event its generator yields, for each subscriber;
- sse-starlette's whole `EventSourceResponse` sending the same events to an ASGI `send` that
  does nothing (the encoding plus its per-event send path), for context.

The two encoders take turns, several rounds each, and the median rate of each is reported.
Both outputs are parsed back and must carry the same events.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from _measure import Figures
from _server import run_server
from _sse import FrameParser
from concurrent_jobs import jobs_env
from fanout import Recorded, record_job
from sse_starlette import EventSourceResponse, ServerSentEvent

from pipeline import sse

ROUNDS = 7


def ours(events: list[Recorded]) -> list[bytes]:
    return [sse.encode(data, event=event, id=str(event_id)) for event_id, event, data, _ in events]


def theirs(events: list[Recorded]) -> list[bytes]:
    return [ServerSentEvent(data, event=event, id=str(event_id)).encode() for event_id, event, data, _ in events]


def rate(encode: Callable[[list[Recorded]], list[bytes]], events: list[Recorded], loops: int) -> float:
    """Events encoded per second over `loops` passes."""
    started = time.perf_counter()
    for _ in range(loops):
        encode(events)
    return loops * len(events) / (time.perf_counter() - started)


async def response_rate(events: list[Recorded], loops: int) -> float:
    """Events per second through a whole EventSourceResponse into a no-op send."""

    async def body() -> AsyncIterator[ServerSentEvent]:
        for _ in range(loops):
            for event_id, event, data, _ in events:
                yield ServerSentEvent(data, event=event, id=str(event_id))

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    started = time.perf_counter()
    await EventSourceResponse(body(), ping=0)(scope, receive, send)
    return loops * len(events) / (time.perf_counter() - started)


def same_events(a: list[bytes], b: list[bytes]) -> bool:
    def parsed(frames: list[bytes]) -> list[tuple[str | None, str | None, str | None]]:
        parser = FrameParser()
        return [(f.id, f.event, f.data) for frame in frames for f in parser.feed(frame, 0.0)]

    return parsed(a) == parsed(b)


def part_encoder(*, delay_ms: int, loops: int) -> Figures:
    figures = Figures()
    with run_server(**jobs_env(1, delay_ms)) as server:
        events = record_job(server)
    figures.add("events", len(events))
    figures.add("payload_bytes_mean", sum(len(e[2].encode()) for e in events) / len(events), ".0f")
    if not same_events(ours(events), theirs(events)):
        raise RuntimeError("the two encoders disagree on the events they carry")
    ours_rates, theirs_rates = [], []
    for _ in range(ROUNDS):
        ours_rates.append(rate(ours, events, loops))
        theirs_rates.append(rate(theirs, events, loops))
    ours_rate, theirs_rate = statistics.median(ours_rates), statistics.median(theirs_rates)
    figures.add("rounds", ROUNDS)
    figures.add("events_per_round", loops * len(events))
    figures.add("ours_events_per_s", ours_rate, ".0f")
    figures.add("sse_starlette_events_per_s", theirs_rate, ".0f")
    figures.add("ours_over_sse_starlette", ours_rate / theirs_rate, ".2f")
    response = asyncio.run(response_rate(events, loops))
    figures.add("sse_starlette_response_events_per_s", response, ".0f")
    figures.add("ours_over_sse_starlette_response", ours_rate / response, ".2f")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=int, default=200, help="OFFLINE_LLM_DELAY_MS")
    parser.add_argument("--loops", type=int, default=300, help="passes over the events per round")
    args = parser.parse_args()
    part_encoder(delay_ms=args.delay_ms, loops=args.loops).print()


if __name__ == "__main__":
    main()
