"""The article workflow: outline, then the sections, then the style pass."""

from __future__ import annotations

import asyncio
from typing import Any

from pocketflow import AsyncFlow

from .contract import Stage, WorkStage
from .llm import LLM
from .messages import Report
from .nodes import ApplyStyle, GenerateOutline, WriteContent
from .prompts import draft_text
from .settings import Settings


def build_flow(llm: LLM, settings: Settings, start: WorkStage = Stage.outline) -> AsyncFlow:
    """The workflow, starting at `start` (a resumed job skips the stages it has finished)."""
    outline = GenerateOutline(llm, settings)
    content = WriteContent(llm, settings)
    style = ApplyStyle(llm, settings)
    outline >> content >> style
    return AsyncFlow(start={Stage.outline: outline, Stage.content: content, Stage.style: style}[start])


def new_shared(topic: str, queue: asyncio.Queue[Report], *, sections: list[str] | None = None,
               contents: dict[int, str] | None = None) -> dict[str, Any]:
    """The shared store the nodes read and write, holding what a resumed job has already."""
    contents = dict(contents or {})
    draft = None
    if sections is not None and len(contents) == len(sections):
        draft = draft_text(topic, sections, [contents[index] for index in range(len(sections))])
    return {"topic": topic, "sse_queue": queue, "sections": sections, "contents": contents,
            "draft": draft, "final_article": None}


def resume_stage(sections: list[str] | None, contents: dict[int, str]) -> WorkStage:
    """The first stage a job with this much done still has to run."""
    if sections is None:
        return Stage.outline
    if len(contents) < len(sections):
        return Stage.content
    return Stage.style
