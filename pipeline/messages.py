"""What the nodes report on `shared["sse_queue"]`: one small record per kind.

The nodes only say what happened; `events.JobEvents.pump` turns these into the job's state
and its numbered events, matching on their types.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contract import TextStage, WorkStage
from .usage import CallUsage


@dataclass(frozen=True, slots=True)
class StageStarted:
    """A node began its stage."""

    stage: WorkStage
    message: str


@dataclass(frozen=True, slots=True)
class OutlineReady:
    """The outline parsed and validated: the section titles, in order."""

    sections: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A chunk of live text for a part: a section (`content`, its index) or the article
    (`style`, None)."""

    stage: TextStage
    index: int | None
    text: str


@dataclass(frozen=True, slots=True)
class TextReset:
    """The part's LLM stream broke and is tried again: the text so far is void."""

    stage: TextStage
    index: int | None


@dataclass(frozen=True, slots=True)
class SectionWritten:
    """A section is final."""

    index: int
    title: str
    content: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """An LLM call ended (done, failed or broken off): what it used."""

    usage: CallUsage


@dataclass(frozen=True, slots=True)
class FlowEnded:
    """The workflow stopped, however it ended; the runner puts this, never a node."""


@dataclass(frozen=True, slots=True)
class DeltasDue:
    """Held live text may go out now; the pump's own timer puts this, never a node."""


Report = (StageStarted | OutlineReady | TextDelta | TextReset | SectionWritten | CallEnded
          | FlowEnded | DeltasDue)
