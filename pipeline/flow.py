"""The article workflow: outline, then the sections, then the style pass."""

from __future__ import annotations

import asyncio
from typing import Any

from pocketflow import AsyncFlow

from .llm import LLM
from .messages import Report
from .nodes import ApplyStyle, GenerateOutline, WriteContent
from .settings import Settings


def build_flow(llm: LLM, settings: Settings) -> AsyncFlow:
    outline = GenerateOutline(llm, settings)
    outline >> WriteContent(llm, settings) >> ApplyStyle(llm, settings)
    return AsyncFlow(start=outline)


def new_shared(topic: str, queue: asyncio.Queue[Report]) -> dict[str, Any]:
    """The shared store the nodes read and write."""
    return {"topic": topic, "sse_queue": queue, "sections": None, "draft": None,
            "final_article": None}
