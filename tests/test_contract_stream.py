"""The contract's "The event stream" section, one test per promise, against a real server.

Each test is named after the promise it holds. Four promises already have a test elsewhere
that fails when they are broken, so they are not tested twice here:

- the headers, with no compression:
  test_observability.py::test_stream_headers_first_bytes_and_heartbeat
- the frame encoder reads back as the WHATWG parser reads it (CR, LF, CRLF; no CR, LF or NUL
  in `id` or `event`): test_sse.py and test_sse_property.py, byte-exact on the pure encoder
- a part's deltas, applied in order, give its section's text or the article:
  test_stream.py::test_deltas_concatenate_to_each_section_and_to_the_article
- a Last-Event-ID that is not a number gets 400: test_security.py::test_bad_last_event_id_is_400

Streams are read off a socket as bytes, chunk by chunk, so what is checked is what a client
receives. Nothing sleeps to wait: the provider holds a task's LLM calls behind a gate until
the test opens it, and every read has a timeout.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from app import create_app
from pipeline.errors import LLMError, LLMStreamBroken
from pipeline.settings import Settings

from .scripted import GOOD_OUTLINE, Broken
from .sse_client import TERMINAL, submit

#: how long any one read off a stream may wait
READ_TIMEOUT_S = 5.0
#: the event types the contract names, and nothing else
EVENT_TYPES = {"status", "outline", "section", "progress", "delta", "done", "error", "cancelled"}
RETRY_LINE = b"retry: 2000\n\n"
KEEP_ALIVE = b": keep-alive\n\n"
TITLES = ("Alpha", "Beta", "Gamma")  # what GOOD_OUTLINE plans


# ----- a provider that answers per part, on cue --------------------------------------------------


def words_of(part: str) -> str:
    """A reply whose every word names its part, so a delta shows which part its text is from."""
    return f"{part}-1 {part}-2 {part}-3\n{part}-4 {part}-5 {part}-6 {part}-7 {part}-8"


@dataclass
class PartsProvider:
    """Replies per part: `outline`, each section by its title, `style`; the last entry repeats.

    A reply streams a word at a time. A `Broken` one breaks off after its text (the LLM layer
    then tries the call again), an exception is raised at once. A task's gate, when set, holds
    that task's calls until it is opened; `shielded` makes them ignore cancellation too.
    """

    replies: dict[str, list[str | Broken | Exception]] = field(default_factory=dict)
    gates: dict[str, anyio.Event] = field(default_factory=dict)
    shielded: bool = False
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    name: str = "contract"

    async def stream(self, prompt: str, *, max_tokens: int) -> AsyncGenerator[str, None]:
        task = re.match(r"Task: (\w+)", prompt).group(1)  # type: ignore[union-attr]
        part = task
        if task == "section":
            part = re.search(r"^Section: (.+)$", prompt, re.MULTILINE).group(1)  # type: ignore[union-attr]
        turn = self.calls[part]
        self.calls[part] += 1
        if (gate := self.gates.get(task)) is not None:
            with anyio.CancelScope(shield=self.shielded):
                await gate.wait()
        default = GOOD_OUTLINE if task == "outline" else words_of(part)
        replies = self.replies.get(part) or [default]
        reply = replies[min(turn, len(replies) - 1)]
        if isinstance(reply, Exception):
            raise reply
        text = reply.text if isinstance(reply, Broken) else reply
        for word in re.findall(r"\S+\s*|\s+", text):
            await anyio.lowlevel.checkpoint()
            yield word
        if isinstance(reply, Broken):
            raise LLMStreamBroken("The scripted stream broke off.")

    async def aclose(self) -> None:
        pass


def serve(serve_app: Callable[[Any], Any], provider: PartsProvider, **overrides: Any) -> Any:
    # No service-wide budget spacing deltas out: these few jobs are not a load.
    settings = Settings(**{"llm_provider": "offline", "rate_limit_per_minute": 0, "drain_s": 1,
                           "deltas_per_s": 10**9, **overrides})
    return serve_app(create_app(settings, provider=provider))


def gate(served: Any, provider: PartsProvider, task: str) -> anyio.Event:
    """Hold `task`'s calls from now on (the event is made in the server's loop)."""
    provider.gates[task] = served.run(_new_event())
    return provider.gates[task]


def open_gate(served: Any, event: anyio.Event) -> None:
    served.loop.call_soon_threadsafe(event.set)


async def _new_event() -> anyio.Event:
    return anyio.Event()


# ----- a stream as it arrives on the wire ---------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One blank-line-ended block of a stream: an event frame, a `retry:` line or a comment."""

    raw: bytes
    read_at: float  # time.monotonic() when the test read it

    @property
    def lines(self) -> list[str]:
        return self.raw.decode().removesuffix("\n\n").split("\n")

    @property
    def fields(self) -> dict[str, str]:
        return dict(line.split(": ", 1) for line in self.lines if not line.startswith(":"))

    @property
    def event(self) -> str | None:
        return self.fields.get("event")

    @property
    def id(self) -> int | None:
        value = self.fields.get("id")
        return None if value is None else int(value)

    @property
    def data(self) -> Any:
        return json.loads(self.fields["data"])

    def __repr__(self) -> str:
        return f"Block({self.raw[:160]!r})"


class WireStream:
    """`GET path` on a socket of its own: the status, the headers, then the body block by block.

    The body is read as HTTP/1.1 chunks, so the end of the response (its last, empty chunk) is
    told apart from a dropped connection, and a body that ends short of a blank line was cut
    mid-frame.
    """

    def __init__(self, url: str, path: str, headers: dict[str, str] | None = None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=READ_TIMEOUT_S)
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
                          f"{extra}\r\n".encode())
        self._buffer = b""  # bytes off the socket, not yet parsed as HTTP
        self._body = b""  # body bytes, not yet a whole block
        self.ended = False
        head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        self.status = int(head[0].split(" ")[1])
        self.headers = {name.lower(): value.strip()
                        for name, value in (line.split(":", 1) for line in head[1:])}

    def __enter__(self) -> WireStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def _recv(self) -> None:
        try:
            received = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"nothing arrived for {READ_TIMEOUT_S} s; body so far "
                                 f"unparsed: {self._body!r}") from None
        assert received, "the server closed the connection before the response ended"
        self._buffer += received

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._recv()
        part, self._buffer = self._buffer.split(marker, 1)
        return part

    def _read_chunk(self) -> bytes:
        size = int(self._read_until(b"\r\n"), 16)
        while len(self._buffer) < size + 2:
            self._recv()
        chunk, self._buffer = self._buffer[:size], self._buffer[size + 2:]
        return chunk

    def next_block(self) -> Block | None:
        """The next block, or None once the response has ended (on a block boundary)."""
        while b"\n\n" not in self._body:
            if self.ended:
                assert not self._body, f"the stream ended mid-frame: {self._body!r}"
                return None
            chunk = self._read_chunk()
            self.ended = not chunk  # the last, empty chunk ends the response
            self._body += chunk
        raw, self._body = self._body.split(b"\n\n", 1)
        return Block(raw + b"\n\n", time.monotonic())

    def until(self, done: Callable[[Block], bool]) -> list[Block]:
        """Blocks up to and including the first one `done` accepts."""
        blocks: list[Block] = []
        while True:
            block = self.next_block()
            assert block is not None, f"the stream ended first, after {blocks[-3:]}"
            blocks.append(block)
            if done(block):
                return blocks

    def rest(self, within_s: float = 10.0) -> list[Block]:
        """Every block until the response ends, which it must within `within_s`."""
        deadline = time.monotonic() + within_s
        blocks: list[Block] = []
        while (block := self.next_block()) is not None:
            blocks.append(block)
            assert time.monotonic() < deadline, \
                f"the stream was still open after {within_s} s, last {blocks[-3:]}"
        return blocks


def events_path(job_id: str) -> str:
    return f"/api/jobs/{job_id}/events"


def events(blocks: list[Block]) -> list[Block]:
    """The job events among the blocks (no `retry:` lines, no comments)."""
    return [block for block in blocks if block.event is not None]


def entering(stage: str) -> Callable[[Block], bool]:
    return lambda block: block.event == "progress" and block.data["stage"] == stage


def with_id(event_id: int) -> Callable[[Block], bool]:
    return lambda block: block.id == event_id



# ----- the promises ----------------------------------------------------------------------------


def test_the_first_bytes_are_a_retry_line_before_there_is_any_event_to_send(serve_app) -> None:
    provider = PartsProvider()
    served = serve(serve_app, provider, heartbeat_s=60)
    outline = gate(served, provider, "outline")
    job_id = submit(served.url)["id"]
    with WireStream(served.url, events_path(job_id)) as first:
        seen = events(first.until(entering("outline")))[-1].id
    # The job now waits at its outline call: this client has every event there is, and no
    # new one comes until the gate opens. The retry line must not wait for one.
    with WireStream(served.url, events_path(job_id), {"Last-Event-ID": str(seen)}) as again:
        assert again.status == 200
        block = again.next_block()
        assert block is not None and block.raw == RETRY_LINE
        open_gate(served, outline)
        block = again.next_block()
        assert block is not None and block.id == seen + 1


def test_ids_run_1_2_3_without_gaps_and_are_the_same_for_every_subscriber(serve_app) -> None:
    provider = PartsProvider()
    served = serve(serve_app, provider)
    style = gate(served, provider, "style")
    job_id = submit(served.url)["id"]
    with WireStream(served.url, events_path(job_id)) as first:
        head = events(first.until(entering("style")))
        middle = head[len(head) // 2].id
        with WireStream(served.url, events_path(job_id), {"Last-Event-ID": str(middle)}) as joined:
            resumed = events(joined.until(with_id(head[-1].id)))
            open_gate(served, style)
            whole = head + events(first.rest())
            resumed += events(joined.rest())
    assert [event.id for event in whole] == list(range(1, len(whole) + 1))
    assert whole[-1].event == "done"
    # The subscriber that joined at `middle` sees each later event under the same id.
    assert [(e.id, e.raw) for e in resumed] == [(e.id, e.raw) for e in whole if e.id > middle]


AWKWARD = "one\ntwo\r\nthree\rfour\n\ndata: five\nid: 99\nevent: done\n\n\u2028six\x85seven\0eight\t"


def test_each_event_is_one_frame_whose_data_is_one_line_of_json(serve_app) -> None:
    provider = PartsProvider({"Beta": [AWKWARD], "style": [AWKWARD]})
    served = serve(serve_app, provider)
    job_id = submit(served.url)["id"]
    with WireStream(served.url, events_path(job_id)) as stream:
        blocks = stream.rest()
    frames = [block for block in blocks if block.raw not in (RETRY_LINE, KEEP_ALIVE)]
    assert frames
    for frame in frames:
        # Exactly the contract's frame: an id line, an event line, one data line of JSON.
        assert len(frame.lines) == 3, frame
        id_line, event_line, data_line = frame.lines
        assert re.fullmatch(r"id: [1-9][0-9]*", id_line), frame
        assert re.fullmatch(r"event: [a-z]+", event_line), frame
        assert data_line.startswith("data: {"), frame
        assert isinstance(json.loads(data_line.removeprefix("data: ")), dict), frame
    beta = next(f.data for f in frames if f.event == "section" and f.data["title"] == "Beta")
    assert beta["content"] == AWKWARD
    assert frames[-1].event == "done" and frames[-1].data["article"] == AWKWARD


@pytest.mark.parametrize("ending", ["done", "error", "cancelled"])
def test_events_come_in_the_contract_order_and_end_with_exactly_one_terminal_event(
        serve_app, ending: str) -> None:
    replies: dict[str, list[str | Broken | Exception]] = {}
    if ending == "error":
        replies["style"] = [LLMError("The provider is overloaded.", code="llm_overloaded")]
    provider = PartsProvider(replies)
    served = serve(serve_app, provider)
    style = gate(served, provider, "style") if ending == "cancelled" else None
    job_id = submit(served.url)["id"]
    with WireStream(served.url, events_path(job_id)) as stream:
        blocks = stream.until(entering("style"))
        if style is not None:
            response = httpx.delete(f"{served.url}/api/jobs/{job_id}", timeout=10)
            assert response.status_code == 202, response.text
        blocks += stream.rest()
    got = events(blocks)
    names = [event.event for event in got]
    assert set(names) <= EVENT_TYPES, names
    # Whatever the ending, exactly one terminal event, and it is the last.
    assert [name for name in names if name in TERMINAL] == [ending], names
    assert names[-1] == ending
    assert [n for n in names if n != "delta"] == [
        "status", "status", "progress", "outline", "progress", "section", "section", "section",
        "progress", ending]
    assert [e.data["status"] for e in got if e.event == "status"] == ["queued", "running"]
    stages = [e.data["stage"] for e in got if e.event == "progress"]
    assert stages == ["outline", "content", "style"]
    assert all(set(e.data) == {"stage", "progress", "message"} for e in got if e.event == "progress")
    # Live text comes within its stage: a section's after `content` began, the article's after
    # `style` began.
    content_at, style_at = (n for n, e in enumerate(got) if e.event == "progress"
                            and e.data["stage"] in ("content", "style"))
    for n, event in enumerate(got):
        if event.event == "delta":
            assert (content_at < n < style_at if event.data["stage"] == "content"
                    else style_at < n), (n, event)
    if ending == "error":
        assert got[-1].data["code"] == "llm_overloaded"
    if ending == "cancelled":
        assert got[-1].data["code"] == "cancelled"


def test_a_delta_names_its_part_content_and_the_section_index_or_style_and_null(serve_app) -> None:
    served = serve(serve_app, PartsProvider(), delta_interval_ms=0)
    job_id = submit(served.url)["id"]
    with WireStream(served.url, events_path(job_id)) as stream:
        got = events(stream.rest())
    outline = next(e.data["sections"] for e in got if e.event == "outline")
    assert outline == list(TITLES)
    parts = set()
    for delta in (e.data for e in got if e.event == "delta"):
        assert set(delta) == {"stage", "index", "text", "reset"}, delta
        if delta["stage"] == "content":
            assert delta["index"] in range(len(outline)), delta
            part = outline[delta["index"]]
        else:
            assert delta["stage"] == "style" and delta["index"] is None, delta
            part = "style"
        # Every word of the reply names the part it was written for.
        assert all(word.startswith(f"{part}-") for word in delta["text"].split()), (part, delta)
        parts.add((delta["stage"], delta["index"]))
    assert parts == {("content", 0), ("content", 1), ("content", 2), ("style", None)}


def test_after_a_broken_llm_stream_the_next_delta_of_that_part_carries_reset(serve_app) -> None:
    broken = {"Beta": "Beta-1 Beta-2 ", "style": "style-1 style-2 "}
    whole = {"Beta": "Beta-3 Beta-4 Beta-5", "style": "style-3 style-4"}
    provider = PartsProvider({part: [Broken(broken[part]), whole[part]] for part in broken})
    served = serve(serve_app, provider, delta_interval_ms=0)  # every chunk is a delta at once
    job_id = submit(served.url)["id"]
    with WireStream(served.url, events_path(job_id)) as stream:
        got = events(stream.rest())
    assert got[-1].event == "done"
    assert provider.calls["Beta"] == 2 and provider.calls["style"] == 2
    by_part: dict[tuple[str, int | None], list[dict[str, Any]]] = defaultdict(list)
    for event in got:
        if event.event == "delta":
            by_part[(event.data["stage"], event.data["index"])].append(event.data)
    for part, name in ((("content", TITLES.index("Beta")), "Beta"), (("style", None), "style")):
        deltas = by_part.pop(part)
        resets = [n for n, delta in enumerate(deltas) if delta["reset"]]
        assert len(resets) == 1, (part, deltas)
        # The first delta after the break is the one that resets; the text after it is whole.
        assert "".join(d["text"] for d in deltas[:resets[0]]) == broken[name], (part, deltas)
        assert "".join(d["text"] for d in deltas[resets[0]:]) == whole[name], (part, deltas)
    # The parts whose streams never broke are never reset.
    assert len(by_part) == 2 and not any(d["reset"] for ds in by_part.values() for d in ds)


def test_all_of_a_parts_deltas_come_before_its_section_event_or_the_done_event(serve_app) -> None:
    # With a long delta interval each part's first chunk goes out at once and the rest is
    # held: only the flush before the part's final event can bring it.
    served = serve(serve_app, PartsProvider(), delta_interval_ms=60_000)
    job_id = submit(served.url)["id"]
    with WireStream(served.url, events_path(job_id)) as stream:
        got = events(stream.rest())
    held: dict[tuple[str, int | None], str] = {}
    final: set[tuple[str, int | None]] = set()
    for event in got:
        data = event.data
        if event.event == "delta":
            part = (data["stage"], data["index"])
            assert part not in final, f"a delta for {part} came after the part's final event"
            held[part] = ("" if data["reset"] else held.get(part, "")) + data["text"]
        elif event.event == "section":
            part = ("content", data["index"])
            assert held.get(part) == data["content"], \
                f"when section {data['index']} came, the client held {held.get(part)!r}"
            final.add(part)
        elif event.event == "done":
            assert held.get(("style", None)) == data["article"], \
                f"when done came, the client held {held.get(('style', None))!r}"
    assert len(final) == len(TITLES) and got[-1].event == "done"


def test_the_server_ends_the_response_after_the_terminal_event(serve_app) -> None:
    served = serve(serve_app, PartsProvider())
    job_id = submit(served.url)["id"]
    with WireStream(served.url, events_path(job_id)) as live:
        blocks = live.rest()
    assert blocks[-1].event == "done", blocks[-3:]
    # A late subscriber's replay ends the same way.
    with WireStream(served.url, events_path(job_id)) as late:
        assert [b.raw for b in events(late.rest())] == [b.raw for b in events(blocks)]


def test_every_subscriber_of_a_job_gets_every_event(serve_app) -> None:
    provider = PartsProvider()
    served = serve(serve_app, provider)
    outline = gate(served, provider, "outline")
    job_id = submit(served.url)["id"]
    with WireStream(served.url, events_path(job_id)) as one, \
            WireStream(served.url, events_path(job_id)) as two:
        # Both tabs are open before the job gets past its outline call: the rest is live.
        heads = [events(tab.until(entering("outline"))) for tab in (one, two)]
        open_gate(served, outline)
        first, second = (head + events(tab.rest()) for head, tab in zip(heads, (one, two)))
    assert [e.raw for e in first] == [e.raw for e in second]
    assert [e.id for e in first] == list(range(1, len(first) + 1))
    names = [e.event for e in first]
    assert names.count("outline") == 1 and names.count("section") == 3 and names[-1] == "done"


def test_a_late_or_reconnecting_client_gets_every_missed_event_then_the_live_ones(serve_app) -> None:
    provider = PartsProvider()
    served = serve(serve_app, provider)
    style = gate(served, provider, "style")
    job_id = submit(served.url)["id"]
    path = events_path(job_id)
    with WireStream(served.url, path) as first, ExitStack() as stack:
        head = events(first.until(entering("style")))
        stored = head[-1].id
        seen = head[len(head) // 2].id  # what a client got before its connection dropped
        ways = {
            "Last-Event-ID": (path, {"Last-Event-ID": str(seen)}, seen),
            "?last_event_id": (f"{path}?last_event_id={seen}", {}, seen),
            "late": (path, {}, 0),
        }
        streams = {way: stack.enter_context(WireStream(served.url, p, headers))
                   for way, (p, headers, _) in ways.items()}
        # Each has been sent every stored event before anything new happens ...
        replayed = {way: events(stream.until(with_id(stored))) for way, stream in streams.items()}
        open_gate(served, style)
        # ... and then gets the live ones.
        live = {way: events(stream.rest()) for way, stream in streams.items()}
        whole = head + events(first.rest())
    assert whole[-1].event == "done"
    for way, (_, _, after) in ways.items():
        assert [e.raw for e in replayed[way] + live[way]] == [e.raw for e in whole[after:]], way
        assert [e.id for e in live[way]] == list(range(stored + 1, whole[-1].id + 1)), way


def test_a_last_event_id_past_the_end_never_leaves_a_stream_open_after_the_job_ended(
        serve_app) -> None:
    provider = PartsProvider()
    served = serve(serve_app, provider, heartbeat_s=60)
    style = gate(served, provider, "style")
    job_id = submit(served.url)["id"]
    beyond = {"Last-Event-ID": "1000"}
    with WireStream(served.url, events_path(job_id)) as first:
        first.until(entering("style"))
        with WireStream(served.url, events_path(job_id), beyond) as waiting:
            block = waiting.next_block()  # open while the job runs
            assert waiting.status == 200 and block is not None and block.raw == RETRY_LINE
            open_gate(served, style)
            assert events(first.rest())[-1].event == "done"
            assert events(waiting.rest(within_s=READ_TIMEOUT_S)) == []
    # Once the job has ended, such a request does not open a stream at all.
    after = httpx.get(f"{served.url}{events_path(job_id)}", headers=beyond, timeout=READ_TIMEOUT_S)
    assert after.status_code in (200, 204) and "event:" not in after.text


def test_a_quiet_stream_gets_a_keep_alive_comment_every_heartbeat_seconds(serve_app) -> None:
    heartbeat_s = 1.0
    provider = PartsProvider()
    served = serve(serve_app, provider, heartbeat_s=heartbeat_s)
    outline = gate(served, provider, "outline")
    job_id = submit(served.url)["id"]
    with WireStream(served.url, events_path(job_id)) as stream:
        last_event = stream.until(entering("outline"))[-1]  # then nothing happens
        beats = [stream.next_block() for _ in range(3)]
        open_gate(served, outline)
        assert events(stream.rest())[-1].event == "done"
    assert all(beat is not None and beat.raw == KEEP_ALIVE for beat in beats), beats
    times = [last_event.read_at] + [beat.read_at for beat in beats if beat is not None]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert all(0.75 * heartbeat_s <= gap <= 1.75 * heartbeat_s for gap in gaps), gaps


def test_on_shutdown_an_open_stream_ends_with_a_retry_hint_never_mid_frame(serve_app) -> None:
    # The job's call ignores cancellation, so the drain gives up on it and the stream is
    # still open, with no terminal event, when the service closes its streams.
    provider = PartsProvider(shielded=True)
    served = serve(serve_app, provider, drain_s=0.1, delta_interval_ms=0)
    outline = gate(served, provider, "outline")
    job_id = submit(served.url)["id"]
    try:
        with WireStream(served.url, events_path(job_id)) as stream:
            stream.until(entering("outline"))
            served.request_shutdown()
            # `rest` fails on a dropped connection or a body that stops inside a frame.
            blocks = stream.rest()
    finally:
        open_gate(served, outline)
    assert blocks, "the stream ended without a retry hint"
    assert blocks[-1].raw == RETRY_LINE, blocks[-3:]
    assert not any(block.event in TERMINAL for block in blocks), blocks
