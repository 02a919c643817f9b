"""Property: a parser we did not write (httpx-sse) reads back exactly what the encoder writes.

The bytes go through httpx itself (a MockTransport response, cut into arbitrary chunks), so
UTF-8 characters and frames split across reads are part of what is checked.

httpx-sse 0.4.3 departs from the WHATWG rules in ways these properties step around:
- A blank line dispatches an event whenever the last event id is non-empty, even with no data
  field in between (https://github.com/florimondmanca/httpx-sse/issues/35). So once an event
  with an id has gone out, every `: keep-alive` comment would come back as an extra, empty
  "message" event. Comments are therefore only placed before the first frame.
- A frame with only a `retry:` field is dispatched as an event carrying `.retry`, where the spec
  sets the reconnection time and dispatches nothing. The retry property reads it from there.
Its line splitting (CR, LF, CRLF only; not str.splitlines) does follow the spec.
"""

from __future__ import annotations

import re
from itertools import pairwise

import httpx
from httpx_sse import ServerSentEvent, connect_sse
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.sse import FrameError, comment, encode, retry

# Pieces that the wire format treats specially, or that a careless splitter breaks on, drawn
# often; any other code point now and then. Joined from a list because `st.text(alphabet=...)`
# merges its alphabet into one flat set of characters and would make the special ones rare.
# Lone surrogates are left out: they are not text a UTF-8 stream can carry (test_sse.py pins
# down what the encoder does with them).
_SPECIAL = st.sampled_from(
    ["\r", "\n", "\r\n", "\0", " ", ":", "\ufeff", "\u2028", "\x85", "\x0b", "é", "🚀"]
)
TEXT = st.lists(st.one_of(_SPECIAL, st.characters(codec="utf-8")), max_size=40).map("".join)
# Mostly plain names, so that most frames are accepted, with the awkward ones mixed in.
FIELD = st.none() | st.text(max_size=20) | TEXT

SETTINGS = settings(max_examples=300, deadline=None)


def can_carry(event: str | None, id: str | None) -> bool:
    """The spec's and the contract's limits (no CR, LF or NUL in `id` or `event`), written
    apart from the encoder's own checks."""
    id_ok = id is None or not any(char in id for char in "\r\n\0")
    event_ok = event is None or (event != "" and not any(char in event for char in "\r\n\0"))
    return id_ok and event_ok


def as_lf(data: str) -> str:
    return re.sub(r"\r\n|\r", "\n", data)


def chunked(wire: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(cuts), len(wire)]
    return [wire[start:end] for start, end in pairwise(edges) if end > start]


def parse(chunks: list[bytes]) -> list[ServerSentEvent]:
    """Serve the chunks as one streamed text/event-stream response and read it with httpx-sse."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream; charset=utf-8"}, content=iter(chunks)
        )

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        with connect_sse(client, "GET", "http://127.0.0.1/api/jobs/j_x/events") as source:
            return list(source.iter_sse())


@SETTINGS
@given(
    notes=st.lists(st.text(max_size=20) | TEXT, max_size=2),
    frames=st.lists(st.tuples(TEXT, FIELD, FIELD), min_size=1, max_size=4),
    chunking=st.data(),
)
def test_httpx_sse_reads_back_every_frame(
    notes: list[str], frames: list[tuple[str, str | None, str | None]], chunking: st.DataObject
) -> None:
    wire = b""
    for note in notes:
        breaks = "\r" in note or "\n" in note
        try:
            wire += comment(note)
        except FrameError:
            assert breaks, f"refused a comment it can carry: {note!r}"
            continue
        assert not breaks, f"wrote a comment it cannot carry: {note!r}"
    expected: list[tuple[str, str, str]] = []
    last_id = ""
    for text, event, id in frames:
        try:
            wire += encode(text, event=event, id=id)
        except FrameError:
            assert not can_carry(event, id), f"refused a frame it can carry: {event=!r} {id=!r}"
            continue
        assert can_carry(event, id), f"wrote a frame it cannot carry: {event=!r} {id=!r}"
        # The id persists from frame to frame, as the spec says; resume relies on it.
        last_id = last_id if id is None else id
        expected.append((event or "message", last_id, as_lf(text)))

    cuts = chunking.draw(st.lists(st.integers(0, len(wire)), max_size=6), label="cuts")
    parsed = parse(chunked(wire, cuts))
    assert [(sse.event, sse.id, sse.data) for sse in parsed] == expected


@SETTINGS
@given(milliseconds=st.integers())
@example(milliseconds=-1)
@example(milliseconds=0)
def test_httpx_sse_reads_back_retry(milliseconds: int) -> None:
    try:
        wire = retry(milliseconds)
    except FrameError:
        assert milliseconds < 0
        return
    # httpx-sse reads the value with int(), which would also take "-5"; the spec wants digits only.
    assert milliseconds >= 0
    [parsed] = parse([wire])
    assert parsed.retry == milliseconds
