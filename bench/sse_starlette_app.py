"""The fan-out part's baseline: the same events to every subscriber, served with sse-starlette.

`BENCH_EVENTS_FILE=events.json HOST=127.0.0.1 PORT=8123 python bench/sse_starlette_app.py`.
The file holds a job's events as ArticleStream sent them, `[[id, event, data, offset_s], ...]`,
each offset counted from the second event. It is built the way sse-starlette is used for
broadcasts: one `asyncio.Queue` per subscriber, one async generator per response yielding a
`ServerSentEvent`, which `EventSourceResponse` encodes and sends for each subscriber.

- `GET /events` subscribes: the first event at once, then the others as they are broadcast.
- `POST /start` broadcasts the other events on their recorded timeline.
- `GET /healthz` answers 200.

uvicorn serves it with its defaults (uvloop and httptools when installed), as it serves app.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

Recorded = tuple[int, str, str, float]

TERMINAL = {"done", "error", "cancelled"}


def build(events: list[Recorded]) -> Starlette:
    subscribers: set[asyncio.Queue[Recorded]] = set()

    def frame(item: Recorded) -> ServerSentEvent:
        event_id, event, data, _ = item
        return ServerSentEvent(data=data, event=event, id=str(event_id))

    async def subscribe(request: Request) -> Response:
        queue: asyncio.Queue[Recorded] = asyncio.Queue()
        subscribers.add(queue)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            try:
                yield frame(events[0])
                while True:
                    item = await queue.get()
                    yield frame(item)
                    if item[1] in TERMINAL:
                        return
            finally:
                subscribers.discard(queue)

        return EventSourceResponse(stream())

    async def replay() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for item in events[1:]:
            await asyncio.sleep(max(0.0, started + item[3] - loop.time()))
            for queue in list(subscribers):
                queue.put_nowait(item)

    async def start(request: Request) -> Response:
        return PlainTextResponse("started\n", status_code=202, background=BackgroundTask(replay))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse(f"ok {len(subscribers)}\n")

    return Starlette(routes=[
        Route("/events", subscribe),
        Route("/start", start, methods=["POST"]),
        Route("/healthz", healthz),
    ])


def main() -> None:
    events = [tuple(item) for item in json.loads(Path(os.environ["BENCH_EVENTS_FILE"]).read_text())]
    uvicorn.run(build(events), host=os.environ.get("HOST", "127.0.0.1"),  # type: ignore[arg-type]
                port=int(os.environ["PORT"]), log_level="warning")


if __name__ == "__main__":
    main()
