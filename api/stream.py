"""The event stream of one job, as an ASGI response.

The pump runs in the request's own task beside one listener for the client's disconnect;
shutdown, a stalled write or the disconnect cancel the stream's scope. Every `send` carries
whole frames, so cancelling one never leaves half a frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
#: how often OpenStreams looks for stalled writes
SWEEP_S = 1.0


class OpenStreams:
    """Every open stream: ended together on shutdown, and cut when a write stalls.

    One sweep a second finds writes that have waited past SEND_TIMEOUT_SECONDS, so a
    write costs no timer of its own.
    """

    def __init__(self, send_timeout_s: float) -> None:
        self.send_timeout_s = send_timeout_s
        #: set once the drain is over: open streams send a retry hint and end
        self.closed = asyncio.Event()
        self._open: set[EventStream] = set()

    def add(self, stream: EventStream) -> None:
        self._open.add(stream)
        if self.closed.is_set():
            stream.scope.cancel()

    def discard(self, stream: EventStream) -> None:
        self._open.discard(stream)

    def close_all(self) -> None:
        self.closed.set()
        for stream in self._open:
            stream.scope.cancel()

    async def watch(self) -> None:
        """Cut streams whose client has stopped reading, for as long as the app runs."""
        while True:
            await anyio.sleep(SWEEP_S)
            now = time.monotonic()
            for stream in self._open:
                since = stream.writing_since
                if since is not None and now - since > self.send_timeout_s:
                    stream.stalled = True
                    stream.scope.cancel()


class EventStream:
    """Replays the job's events after `after`, then follows it live until its terminal event."""

    def __init__(self, store: JobStore, job_id: str, after: int, *, settings: Settings,
                 metrics: Metrics, streams: OpenStreams) -> None:
        self.store = store
        self.job_id = job_id
        self.after = after
        self.settings = settings
        self.metrics = metrics
        self.streams = streams
        #: cancelled on shutdown, on a stalled write, or when the client goes
        self.scope = anyio.CancelScope()
        #: when the write under way began, if one is
        self.writing_since: float | None = None
        self.stalled = False
        self.dropped = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.stream_opened()
        self.streams.add(self)
        try:
            await self._serve(receive, send)
        finally:
            self.streams.discard(self)
            self.metrics.stream_closed()

    async def _serve(self, receive: Receive, send: Send) -> None:
        finished = False
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        with self.scope:
            # The first bytes go out at once, before any event exists.
            if await self._send(send, sse.retry(self.settings.retry_hint_ms)):
                # A bare task, not a task group: it only waits, and at 5,000 idle streams
                # a group's own objects were a fifth of each stream's memory.
                listener = asyncio.get_running_loop().create_task(self._on_disconnect(receive))
                try:
                    finished = await self._pump(send)
                finally:
                    listener.cancel()
        if self.stalled:
            logger.info("dropped a stream of job %s: the client stopped reading", self.job_id,
                        extra={"job_id": self.job_id})
            self.metrics.streams_dropped.inc()
            return
        if self.dropped:
            return
        if not finished:
            # Shutting down: tell the client to come back (elsewhere) soon, then close cleanly.
            body = sse.retry(self.settings.retry_hint_ms)
            with anyio.move_on_after(self.settings.send_timeout_s) as timed:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if timed.cancelled_caught:
                self.metrics.streams_dropped.inc()
                return
        with anyio.move_on_after(self.settings.send_timeout_s) as timed:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if timed.cancelled_caught:
            self.metrics.streams_dropped.inc()

    async def _on_disconnect(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # the server's receive failed: the client is as good as gone
            logger.exception("reading the stream's request failed")
        self.dropped = True
        self.scope.cancel()

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
        """Write `body`; OpenStreams cuts a write that the client has not taken in time."""
        self.writing_since = time.monotonic()
        try:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        except OSError:  # the server noticed the disconnect first
            self.dropped = True
            return False
        finally:
            self.writing_since = None
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
