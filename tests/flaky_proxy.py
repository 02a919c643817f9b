"""A loopback TCP proxy that cuts every event stream partway, as a flaky network does.

It forwards bytes both ways untouched and reads just enough HTTP/1.1 to tell where each
response starts. Ordinary responses pass whole; an event stream (`text/event-stream`) is cut,
sockets closed both ways, once `budget()` bytes of it, counted from its status line, have gone
to the client: a budget shorter than the head cuts the stream before the client knows what it
is. A stream that ends first (the server closes it after the terminal event) is not cut.
Each stream is recorded: where it resumed and exactly what was forwarded.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_HEAD_END = b"\r\n\r\n"
_RECV_BYTES = 64 * 1024


@dataclass
class Stream:
    """One event-stream response as the client got it."""

    target: str  # the request's path and query
    last_event_id: str | None  # the request's Last-Event-ID header
    budget: int
    head_size: int  # bytes of the response's head, its blank line included
    sent: bytearray = field(default_factory=bytearray)  # bytes forwarded, head and chunked body
    cut_at: float | None = None  # time.time() of the cut; None when the server ended it

    @property
    def body(self) -> bytes:
        """The body as far as it was forwarded, chunked as it was sent."""
        return bytes(self.sent[self.head_size:])

    def cut_in_head(self) -> bool:
        return self.cut_at is not None and len(self.sent) < self.head_size

    def events(self) -> list[dict[str, str]]:
        """The complete frames forwarded, as fields (`retry:`-only frames too)."""
        text = _unchunk(self.body).decode("utf-8", "replace")
        frames = text.split("\n\n")[:-1]  # the last piece is an unfinished frame or ""
        events = []
        for frame in frames:
            fields = {}
            for line in frame.split("\n"):
                name, _, value = line.partition(":")
                if name:
                    fields[name] = value.removeprefix(" ")
            events.append(fields)
        return events

    def cut_mid_frame(self) -> bool:
        return self.cut_at is not None and not self.cut_in_head() and not _unchunk(self.body).endswith(b"\n\n")


class FlakyProxy:
    """`FlakyProxy(port, budget)` listens on a free loopback port and forwards to `port`."""

    def __init__(self, upstream_port: int, budget: Callable[[], int]) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.budget = budget
        self.streams: list[Stream] = []
        self.requests: list[str] = []  # every request line, in the order they came
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._spawn(self._accept)

    def close(self) -> None:
        _shut(self._listener)  # wakes the accept() below
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            _shut(sock)
        for thread in threads:
            thread.join(timeout=5)

    def cuts(self) -> list[Stream]:
        with self._lock:
            return [s for s in self.streams if s.cut_at is not None]

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                self._sockets += [client, upstream]
            requests: list[tuple[str, str | None]] = []
            ready = threading.Condition()
            self._spawn(self._requests, client, upstream, requests, ready)
            self._spawn(self._responses, upstream, client, requests, ready)

    def _requests(self, client: socket.socket, upstream: socket.socket,
                  requests: list[tuple[str, str | None]], ready: threading.Condition) -> None:
        """Client to server: forward, noting each request's target and Last-Event-ID."""
        buffer = b""
        skip = 0  # request body bytes still to pass before the next head
        while data := _recv(client):
            if not _send(upstream, data):
                break
            buffer += data
            while True:
                if skip:
                    taken = min(skip, len(buffer))
                    buffer, skip = buffer[taken:], skip - taken
                    if skip:
                        break
                head, found, rest = buffer.partition(_HEAD_END)
                if not found:
                    break
                buffer = rest
                lines = head.decode("latin-1").split("\r\n")
                headers = _headers(lines[1:])
                skip = int(headers.get("content-length", "0"))
                with ready:
                    requests.append((lines[0].split(" ")[1], headers.get("last-event-id")))
                    ready.notify_all()
                with self._lock:
                    self.requests.append(lines[0])
        _shut(upstream)

    def _responses(self, upstream: socket.socket, client: socket.socket,
                   requests: list[tuple[str, str | None]], ready: threading.Condition) -> None:
        """Server to client: pass ordinary responses whole, cut event streams."""
        self._pass_responses(upstream, client, requests, ready)
        _shut(client)
        _shut(upstream)

    def _pass_responses(self, upstream: socket.socket, client: socket.socket,
                        requests: list[tuple[str, str | None]], ready: threading.Condition) -> None:
        pending = b""  # received from the server, not yet forwarded
        served = 0  # final responses so far on this connection
        skip = 0  # body bytes of an ordinary response still to pass
        stream: Stream | None = None
        while data := _recv(upstream):
            pending += data
            while pending:
                if stream is not None:
                    if not self._forward_stream(stream, pending, client):
                        return
                    pending = b""
                    break
                if skip:
                    passed, pending = pending[:skip], pending[skip:]
                    skip -= len(passed)
                    if not _send(client, passed):
                        return
                    continue
                head, found, rest = pending.partition(_HEAD_END)
                if not found:
                    break
                head += _HEAD_END
                lines = head.decode("latin-1").split("\r\n")
                headers = _headers(lines[1:])
                final = int(lines[0].split(" ")[1]) >= 200  # else an interim one; the real one follows
                served += final
                if final and "text/event-stream" in headers.get("content-type", ""):
                    with ready:
                        ready.wait_for(lambda: len(requests) >= served, timeout=5)
                        target, last_id = requests[served - 1]
                    stream = Stream(target, last_id, self.budget(), len(head))
                    with self._lock:
                        self.streams.append(stream)
                    continue  # the head goes out with the stream's bytes, against its budget
                pending = rest
                if not _send(client, head):
                    return
                if not final:
                    continue
                if "content-length" in headers:
                    skip = int(headers["content-length"])
                elif "chunked" in headers.get("transfer-encoding", ""):
                    skip = 1 << 62  # some other streamed body: pass it all

    def _forward_stream(self, stream: Stream, data: bytes, client: socket.socket) -> bool:
        """Forward event-stream bytes up to its budget; False once it is cut or gone."""
        part = data[:stream.budget - len(stream.sent)]
        if not _send(client, part):
            return False
        stream.sent += part
        if len(stream.sent) < stream.budget:
            return True
        stream.cut_at = time.time()
        return False


def _headers(lines: list[str]) -> dict[str, str]:
    pairs = (line.partition(":") for line in lines)
    return {name.strip().lower(): value.strip() for name, _, value in pairs}


def _unchunk(body: bytes) -> bytes:
    """The data of a chunked body as far as it goes (a cut one included)."""
    out = b""
    while True:
        match = re.match(rb"([0-9a-fA-F]+)[^\r\n]*\r\n", body)
        if not match:
            return out
        size = int(match.group(1), 16)
        out += body[match.end():match.end() + size]
        body = body[match.end() + size + 2:]
        if size == 0:
            return out


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(_RECV_BYTES)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
