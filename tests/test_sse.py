"""The SSE frame encoder: byte-exact frames, and round trips through a WHATWG reference parser."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from pipeline.sse import FrameError, comment, encode, retry

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    type: str
    data: str
    last_event_id: str


@dataclass
class Interpreted:
    events: list[Event] = field(default_factory=list)
    retry_ms: int | None = None


def interpret(stream: bytes) -> Interpreted:
    """Read a whole stream as the WHATWG "interpret an event stream" steps do.

    https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
    Written apart from the encoder, so that the two can check each other. Decoding is strict
    where a browser would substitute U+FFFD, so that a bad byte fails the test instead.
    """
    text = stream.decode("utf-8").removeprefix("\ufeff")
    # The last piece has no line terminator yet: at end of stream a parser discards it.
    *lines, _unterminated = _LINE_BREAK.split(text)
    result = Interpreted()
    event_type, data, last_event_id = "", "", ""
    for line in lines:
        if line == "":
            # A frame without any data field is not dispatched, but an empty data field is.
            if data:
                data = data.removesuffix("\n")
                result.events.append(Event(event_type or "message", data, last_event_id))
            event_type, data = "", ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                last_event_id = value
        elif name == "retry":
            if value and all("0" <= char <= "9" for char in value):
                result.retry_ms = int(value)
    return result


@pytest.mark.parametrize(
    ("stream", "events"),
    [
        pytest.param(
            b": test stream\n\n"
            b"data: first event\nid: 1\n\n"
            b"data:second event\nid\n\n"
            b"data:  third event\n",
            [Event("message", "first event", "1"), Event("message", "second event", "")],
            id="ids-and-unterminated-last-block",
        ),
        pytest.param(
            b"data\n\ndata\ndata\n\ndata:",
            [Event("message", "", ""), Event("message", "\n", "")],
            id="bare-data-fields",
        ),
        pytest.param(
            b"data:test\n\ndata: test\n\n",
            [Event("message", "test", ""), Event("message", "test", "")],
            id="one-space-stripped",
        ),
        pytest.param(
            b"event: x\n\ndata: y\r\n\r\n", [Event("message", "y", "")], id="no-data-no-event"
        ),
    ],
)
def test_reference_parser_reads_the_spec_examples(stream: bytes, events: list[Event]) -> None:
    # The first three are the examples of the WHATWG section itself: the oracle is checked too.
    assert interpret(stream).events == events


def roundtrip(data: str, *, event: str | None = None, id: str | None = None) -> Event:
    """Encode one frame and read it back; the frame must yield exactly one event."""
    [parsed] = interpret(encode(data, event=event, id=id)).events
    return parsed


# ----- the bytes on the wire -------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        pytest.param(encode("hello"), b"data: hello\n\n", id="plain"),
        pytest.param(encode(""), b"data: \n\n", id="empty"),
        pytest.param(encode("a\nb"), b"data: a\ndata: b\n\n", id="lf"),
        pytest.param(encode("a\r\nb"), b"data: a\ndata: b\n\n", id="crlf"),
        pytest.param(encode("a\rb"), b"data: a\ndata: b\n\n", id="cr"),
        # LF then CR is two line breaks, not one CRLF.
        pytest.param(encode("a\n\rb"), b"data: a\ndata: \ndata: b\n\n", id="lf-cr"),
        pytest.param(encode("a\n"), b"data: a\ndata: \n\n", id="trailing-lf"),
        pytest.param(encode("\r\n"), b"data: \ndata: \n\n", id="only-crlf"),
        pytest.param(encode(" x"), b"data:  x\n\n", id="leading-space"),
        pytest.param(encode(":x"), b"data: :x\n\n", id="leading-colon"),
        pytest.param(encode("é"), b"data: \xc3\xa9\n\n", id="utf-8"),
        # Only CR and LF end an SSE line; other Unicode line breaks are plain text.
        pytest.param(
            encode("a\u2028b\x85c\x0bd"),
            "data: a\u2028b\x85c\x0bd\n\n".encode(),
            id="unicode-breaks",
        ),
        pytest.param(encode("x", event="status"), b"event: status\ndata: x\n\n", id="event"),
        pytest.param(encode("x", id="7"), b"id: 7\ndata: x\n\n", id="id"),
        pytest.param(encode("x", id=""), b"id: \ndata: x\n\n", id="empty-id"),
        pytest.param(
            encode('{"index": 1, "title": "Why"}', event="section", id="7"),
            b'id: 7\nevent: section\ndata: {"index": 1, "title": "Why"}\n\n',
            id="contract-example",
        ),
        pytest.param(comment(), b":\n\n", id="comment-empty"),
        pytest.param(comment("keep-alive"), b": keep-alive\n\n", id="heartbeat"),
        pytest.param(retry(0), b"retry: 0\n\n", id="retry-zero"),
        pytest.param(retry(2000), b"retry: 2000\n\n", id="retry-first-bytes"),
    ],
)
def test_wire_format(frame: bytes, wire: bytes) -> None:
    assert frame == wire


# ----- round trips through the reference parser --------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param("hello", "hello", id="plain"),
        pytest.param("", "", id="empty"),
        pytest.param("a\nb", "a\nb", id="lf"),
        pytest.param("a\rb", "a\nb", id="cr"),
        pytest.param("a\r\nb", "a\nb", id="crlf"),
        pytest.param("a\r\n\rb\n\nc\r", "a\n\nb\n\nc\n", id="mixed-breaks"),
        pytest.param("line\n", "line\n", id="trailing-lf"),
        pytest.param("line\r\n", "line\n", id="trailing-crlf"),
        pytest.param("\n", "\n", id="only-lf"),
        pytest.param(" x", " x", id="leading-space"),
        pytest.param("  x ", "  x ", id="two-leading-spaces"),
        pytest.param(":x", ":x", id="leading-colon"),
        pytest.param("a\n:not a comment", "a\n:not a comment", id="colon-after-break"),
        pytest.param("a\nid: 5\nevent: x\n\nb", "a\nid: 5\nevent: x\n\nb", id="fields-inside-data"),
        pytest.param("a\0b", "a\0b", id="nul"),
        pytest.param("👩‍🚀 🚀 🇺🇦", "👩‍🚀 🚀 🇺🇦", id="emoji"),
        pytest.param("שלום עולם، مرحبا", "שלום עולם، مرحبا", id="rtl"),
        pytest.param("e\u0301 a\u030a\u0323", "e\u0301 a\u030a\u0323", id="combining-marks"),
        pytest.param("\ufeffx", "\ufeffx", id="bom-inside-data"),
        pytest.param(
            "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg",
            "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg",
            id="unicode-breaks",
        ),
        pytest.param('{"text": "a\\nb"}', '{"text": "a\\nb"}', id="json-line"),
    ],
)
def test_data_round_trip(data: str, expected: str) -> None:
    assert roundtrip(data) == Event("message", expected, "")


@pytest.mark.parametrize(
    ("event", "id"),
    [
        pytest.param("status", "1", id="ascii"),
        pytest.param(" spaced ", " 7 ", id="surrounding-spaces"),
        pytest.param(":colon", ":1", id="leading-colon"),
        pytest.param("ünïcødé 🚀", "j_é🚀", id="unicode"),
        pytest.param("message", "", id="default-name-empty-id"),
        pytest.param("a\u2028b", "a\u2028b", id="unicode-line-separator"),
    ],
)
def test_event_and_id_round_trip(event: str, id: str) -> None:
    assert roundtrip("x", event=event, id=id) == Event(event, "x", id)


def test_frames_compose_into_a_stream() -> None:
    stream = (
        retry(2000)
        + encode("a", event="status", id="1")
        + comment("keep-alive")
        + encode("b\nc")
        + comment()
        + encode("", event="done", id="2")
    )
    parsed = interpret(stream)
    assert parsed.retry_ms == 2000
    # An event without its own id keeps the last one seen: the spec's rule, relied on by resume.
    assert parsed.events == [
        Event("status", "a", "1"),
        Event("message", "b\nc", "1"),
        Event("done", "", "2"),
    ]


def test_comment_and_retry_dispatch_nothing() -> None:
    assert interpret(comment("keep-alive") + comment() + retry(5)) == Interpreted([], 5)


# ----- values no frame can carry -------------------------------------------------------------


def test_frame_error_is_a_value_error() -> None:
    assert issubclass(FrameError, ValueError)


@pytest.mark.parametrize("bad_id", ["1\n2", "1\r2", "1\r\n", "\0", "j_1\0"])
def test_id_with_line_break_or_nul_is_refused(bad_id: str) -> None:
    with pytest.raises(FrameError, match="event id cannot hold CR, LF or NUL") as caught:
        encode("x", id=bad_id)
    assert repr(bad_id) in str(caught.value)


@pytest.mark.parametrize("bad_event", ["", "a\nb", "a\rb", "done\r\n", "a\0b"])
def test_event_name_empty_or_with_line_break_or_nul_is_refused(bad_event: str) -> None:
    message = "event name must be non-empty, without CR, LF or NUL"
    with pytest.raises(FrameError, match=message) as caught:
        encode("x", event=bad_event)
    assert repr(bad_event) in str(caught.value)


@pytest.mark.parametrize("bad_text", ["a\nb", "a\rb", "keep-alive\r\n"])
def test_comment_with_line_break_is_refused(bad_text: str) -> None:
    with pytest.raises(FrameError, match="comment cannot hold CR or LF") as caught:
        comment(bad_text)
    assert repr(bad_text) in str(caught.value)


@pytest.mark.parametrize("milliseconds", [-1, -2000])
def test_negative_retry_is_refused(milliseconds: int) -> None:
    with pytest.raises(FrameError, match=f"retry delay cannot be negative: {milliseconds}"):
        retry(milliseconds)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: encode("a\ud800b"), id="data"),
        pytest.param(lambda: encode("x", event="\udfff"), id="event"),
        pytest.param(lambda: encode("x", id="\ud83d"), id="id"),
        pytest.param(lambda: comment("\ud800"), id="comment"),
    ],
)
def test_lone_surrogate_is_refused(make: Callable[[], bytes]) -> None:
    # json.loads('"\\ud800"') yields such a string. The API refuses it in a topic, but a frame
    # that cannot be UTF-8 should fail as FrameError wherever the text comes from.
    with pytest.raises(FrameError, match="surrogate"):
        make()
