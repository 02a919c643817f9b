"""Reading event streams in the benches: a frame parser, and a bare HTTP/1.1 stream reader.

The reader speaks just enough HTTP/1.1 for one GET of an event stream (status line, headers,
chunked body) on a connection of its own, so that thousands of streams in one client process
cost the machine little. Every frame carries the `time.perf_counter()` at which the bytes that
ended it arrived; on Linux that is CLOCK_MONOTONIC, one clock for every process of the machine.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

HEAD_LIMIT_BYTES = 64 * 1024


@dataclass(slots=True)
class Frame:
    #: time.perf_counter() when the chunk that completed the frame arrived
    at: float
    event: str | None
    id: str | None
    data: str | None
    #: nothing but `:` comment lines (a keep-alive)
    comment: bool


def _parse(block: str, at: float) -> Frame:
    event = id_ = None
    data: list[str] = []
    comment = True
    for line in block.split("\n"):
        if line.startswith(":"):
            continue
        comment = False
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "id":
            id_ = value
        elif name == "data":
            data.append(value)
    return Frame(at, event, id_, "\n".join(data) if data else None, comment)


class FrameParser:
    """Cuts a byte stream into frames at blank lines (LF or CRLF line ends)."""

    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, chunk: bytes, at: float) -> list[Frame]:
        self._buffer += self._decoder.decode(chunk).replace("\r\n", "\n")
        *blocks, self._buffer = self._buffer.split("\n\n")
        return [_parse(block, at) for block in blocks if block]


class StreamError(RuntimeError):
    """The server answered the stream's GET with something other than an event stream."""


class RawStream:
    """One `GET` of an event stream on a connection of its own."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 chunked: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.chunked = chunked

    @classmethod
    async def open(cls, url: str, path: str) -> RawStream:
        """Connect to `url` (http://host:port), send the GET, read the head; refuse a non-200."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        reader, writer = await asyncio.open_connection(host, port, limit=HEAD_LIMIT_BYTES)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         "Accept: text/event-stream\r\n\r\n".encode())
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status = int(head.split(" ", 2)[1])
            if status != 200:
                raise StreamError(f"GET {path} answered {status}")
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, "transfer-encoding: chunked" in head.lower())

    async def chunks(self) -> AsyncIterator[tuple[float, bytes]]:
        """(arrival time, bytes) of each chunk of the body, until its end."""
        while True:
            if not self.chunked:
                data = await self.reader.read(HEAD_LIMIT_BYTES)
                if not data:
                    return
                yield time.perf_counter(), data
                continue
            size_line = await self.reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                return
            data = await self.reader.readexactly(size + 2)  # the chunk and its CRLF
            yield time.perf_counter(), data[:-2]

    async def frames(self) -> AsyncIterator[Frame]:
        parser = FrameParser()
        async for at, chunk in self.chunks():
            for frame in parser.feed(chunk, at):
                yield frame

    def close(self) -> None:
        """Close the connection (a FIN), read or not."""
        self.writer.close()
