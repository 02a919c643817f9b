"""Server-Sent Events frames, written to the letter of the WHATWG parsing rules.

A parser splits the stream into lines on CR, LF or CRLF, so `data` may hold any
text: each of its lines becomes one `data:` field and the parser joins them
back with LF. That makes CR and CRLF inside data come back as LF; this is the
format's own rule, not a loss we can avoid. `id` and `event` are single fields,
so a line break or a NUL (which makes a parser ignore an `id`, and which the
contract keeps out of both) is refused rather than silently changed.
"""

from __future__ import annotations

import re

from .errors import ArticleStreamError

__all__ = ["FrameError", "comment", "encode", "retry"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class FrameError(ArticleStreamError, ValueError):
    """A field value that no SSE frame can carry."""


def encode(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One event frame: optional `id` and `event`, then `data`, then a blank line."""
    if (id is not None and event and "\r" not in data and "\n" not in data
            and id.isdigit() and event.isidentifier()):
        # The hot path, every job event: a number, a plain name, one line of JSON.
        return _utf8(f"id: {id}\nevent: {event}\ndata: {data}\n\n")
    lines: list[str] = []
    if id is not None:
        if "\r" in id or "\n" in id or "\0" in id:
            raise FrameError(f"An event id cannot hold CR, LF or NUL: {id!r}")
        lines.append(f"id: {id}")
    if event is not None:
        if not event or "\r" in event or "\n" in event or "\0" in event:
            # An empty name would reach the client as "message".
            raise FrameError(f"An event name must be non-empty, without CR, LF or NUL: {event!r}")
        lines.append(f"event: {event}")
    # A space after the colon is always written, because a parser strips exactly
    # one leading space: data that itself starts with a space survives intact.
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return _utf8("\n".join(lines) + "\n\n")


def comment(text: str = "") -> bytes:
    """A comment line (a parser ignores it); used as a keep-alive."""
    if "\r" in text or "\n" in text:
        raise FrameError(f"A comment cannot hold CR or LF: {text!r}")
    return _utf8(f": {text}\n\n") if text else b":\n\n"


def retry(milliseconds: int) -> bytes:
    """A `retry:` field that sets the client's reconnection delay."""
    if milliseconds < 0:
        raise FrameError(f"A retry delay cannot be negative: {milliseconds}")
    return f"retry: {milliseconds}\n\n".encode()


def _utf8(frame: str) -> bytes:
    try:
        return frame.encode()
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end]
        raise FrameError(f"A frame must be UTF-8 text; it holds a lone surrogate: {bad!r}") from None
