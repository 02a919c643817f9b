"""The event stream of one job, as an ASGI response.

Three things race in one task group, and the first to finish ends the others: the
event pump, a listener for the client's disconnect, and a watcher for shutdown.
Every `send` carries whole frames, so cancelling one never leaves half a frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import anyio
from starlette.types import Receive, Scope, Send

from pipeline import sse
from pipeline.errors import StoreUnavailable
from pipeline.job import Event
from pipeline.metrics import Metrics
from pipeline.settings import Settings
from pipeline.store import JobStore

logger = logging.getLogger(__name__)

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
_KEEP_ALIVE = sse.comment("keep-alive")
WRITE_BYTES = 64 * 1024


class EventStream:
    """Replays the job's events after `after`, then follows it live until its terminal event."""

    def __init__(self, store: JobStore, job_id: str, after: int, *, settings: Settings,
                 metrics: Metrics, closing: asyncio.Event) -> None:
        self.store = store
        self.job_id = job_id
        self.after = after
        self.settings = settings
        self.metrics = metrics
        self.closing = closing
        self.dropped = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.stream_opened()
        try:
            await self._serve(receive, send)
        finally:
            self.metrics.stream_closed()

    async def _serve(self, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        # The first bytes go out at once, before any event exists.
        if not await self._send(send, sse.retry(self.settings.retry_hint_ms)):
            return
        finished = False
        async with anyio.create_task_group() as tg:

            async def pump() -> None:
                nonlocal finished
                finished = await self._pump(send)
                tg.cancel_scope.cancel()

            async def on_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.dropped = True
                tg.cancel_scope.cancel()

            async def on_closing() -> None:
                await self.closing.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(pump)
            tg.start_soon(on_disconnect)
            tg.start_soon(on_closing)
        if self.dropped:
            return
        if not finished:
            # Shutting down: tell the client to come back (elsewhere) soon, then close cleanly.
            await self._send(send, sse.retry(self.settings.retry_hint_ms))
        with anyio.move_on_after(self.settings.send_timeout_s) as scope:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if scope.cancelled_caught:
            self.metrics.streams_dropped.inc()

    async def _pump(self, send: Send) -> bool:
        """Send events until the log ends (True) or the client is dropped (False)."""
        after = self.after
        while True:
            try:
                events = await self.store.read(self.job_id, after,
                                               timeout_s=self.settings.heartbeat_s)
            except StoreUnavailable:
                # Redis is away: the stream stays open on keep-alives until it is back.
                await anyio.sleep(min(1.0, self.settings.heartbeat_s))
                events = []
            if events is None:
                return True
            if not events:
                if not await self._send(send, _KEEP_ALIVE):
                    return False
                continue
            for batch in _batches(events):
                if not await self._send(send, b"".join(event.frame for event in batch)):
                    return False
                self.metrics.events_sent.inc(len(batch))
            after = events[-1].id
            if events[-1].terminal:
                return True

    async def _send(self, send: Send, body: bytes) -> bool:
        """Write `body`; a client that has not taken it within SEND_TIMEOUT_SECONDS is dropped."""
        try:
            with anyio.move_on_after(self.settings.send_timeout_s) as scope:
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except OSError:  # the server noticed the disconnect first
            self.dropped = True
            return False
        if scope.cancelled_caught:
            logger.info("dropped a stream of job %s: the client stopped reading", self.job_id,
                        extra={"job_id": self.job_id})
            self.metrics.streams_dropped.inc()
            self.dropped = True
            return False
        return True


def _batches(events: list[Event]) -> Iterator[list[Event]]:
    """Ready events in writes of about WRITE_BYTES: few syscalls, yet a long replay to a slow
    client is held to SEND_TIMEOUT_SECONDS per write rather than buffered whole."""
    batch: list[Event] = []
    size = 0
    for event in events:
        batch.append(event)
        size += len(event.frame)
        if size >= WRITE_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
