"""Coalescing live text: at most one `delta` per part every interval, however fast text comes.

A part is (stage, index): (content, i) for section i, (style, None) for the article.
Time is passed in, so the rule is testable without a clock.

Under load the interval widens: all the parts streaming in the process together send at
most `LiveParts.per_s` deltas a second. A busy service sends coarser live text rather than
more events, which would make it busier still (a slow loop stretches every call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .contract import TextStage
from .payloads import DeltaEvent

Part = tuple[TextStage, "int | None"]


class LiveParts:
    """How many parts stream live text in this process, shared by every job's coalescer."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self.count = 0

    def spacing_s(self, interval_s: float) -> float:
        """The time between two deltas of one part: the interval, or wider under load."""
        return max(interval_s, self.count / self.per_s)


@dataclass
class _Buffer:
    text: str = ""
    reset: bool = False
    sent: bool = False
    live: bool = False
    last_flush: float = float("-inf")


class DeltaCoalescer:
    def __init__(self, interval_s: float, live: LiveParts | None = None) -> None:
        self.interval_s = interval_s
        self.live = live or LiveParts(math.inf)
        self._parts: dict[Part, _Buffer] = {}

    def add(self, part: Part, text: str, now: float) -> DeltaEvent | None:
        """Buffer `text`; the delta to send now, if the part's interval has passed."""
        buffer = self._parts.get(part) or self._parts.setdefault(part, _Buffer())
        if not buffer.live:
            buffer.live = True
            self.live.count += 1
        buffer.text += text
        if now - buffer.last_flush >= self.live.spacing_s(self.interval_s):
            return self._flush(part, buffer, now)
        return None

    def reset(self, part: Part) -> None:
        """Void the part's text: what was sent is dropped by clients, what is held never goes."""
        buffer = self._parts.setdefault(part, _Buffer())
        buffer.text = ""
        buffer.reset = buffer.reset or buffer.sent

    def void(self, part: Part) -> None:
        """Mark the part's next delta `reset`, whatever was sent (text from an earlier run)."""
        self._parts.setdefault(part, _Buffer()).reset = True

    def flush(self, part: Part, now: float) -> DeltaEvent | None:
        """The part's held text as a delta, whatever the interval (before its final event):
        the part has ended."""
        buffer = self._parts.get(part)
        if buffer is None:
            return None
        self._release(buffer)
        return self._flush(part, buffer, now)

    def flush_all(self, now: float) -> list[DeltaEvent]:
        """Every part's held text, before the job's final event."""
        self.close()
        return [delta for part, buffer in list(self._parts.items())
                if (delta := self._flush(part, buffer, now))]

    def close(self) -> None:
        """No part of this job streams any more (it ended, or stopped midway)."""
        for buffer in self._parts.values():
            self._release(buffer)

    def due(self, now: float) -> list[DeltaEvent]:
        """Deltas for every part whose interval has passed with text held."""
        spacing_s = self.live.spacing_s(self.interval_s)
        return [delta for part, buffer in list(self._parts.items())
                if buffer.text and now - buffer.last_flush >= spacing_s
                and (delta := self._flush(part, buffer, now))]

    def next_due(self, now: float) -> float | None:
        """Seconds until some held text may go out, or None when nothing is held."""
        spacing_s = self.live.spacing_s(self.interval_s)
        waits = [buffer.last_flush + spacing_s - now
                 for buffer in self._parts.values() if buffer.text]
        return max(0.0, min(waits)) if waits else None

    def _release(self, buffer: _Buffer) -> None:
        if buffer.live:
            buffer.live = False
            self.live.count -= 1

    def _flush(self, part: Part, buffer: _Buffer, now: float) -> DeltaEvent | None:
        # A pending reset goes out even with no text, so clients drop the void attempt.
        if not buffer.text and not buffer.reset:
            return None
        stage, index = part
        delta = DeltaEvent(stage=stage, index=index, text=buffer.text, reset=buffer.reset)
        buffer.text, buffer.reset, buffer.sent, buffer.last_flush = "", False, True, now
        return delta
