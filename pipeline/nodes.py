"""The three workflow nodes. They read and write the shared store and report only through
`shared["sse_queue"]`, as the records of `messages.py`, which `events.py` turns into the
job's numbered events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
from pocketflow import AsyncNode

from .contract import Stage
from .errors import BadOutline, LLMError
from .llm import LLM, backoff_s
from .messages import CallEnded, OutlineReady, Report, SectionWritten, StageStarted, TextDelta, TextReset
from .outline import parse_outline
from .prompts import draft_text, outline_prompt, section_prompt, style_prompt
from .settings import Settings
from .usage import CallUsage

Shared = dict[str, Any]


Reports = asyncio.Queue[Report]


def _first_error(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first section's failure stands for the node's (siblings were cancelled)."""
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


class TracedNode(AsyncNode):
    """A node whose run is a span of the job's trace, named after its stage."""

    stage: str
    llm: LLM

    async def _run_async(self, shared: Shared) -> Any:
        with self.llm.tracing.node(self.stage):
            return await super()._run_async(shared)


def usage_reporter(queue: Reports) -> Callable[[CallUsage], None]:
    """What an LLM call's `on_usage` does: report it to the job (the queue is unbounded)."""
    return lambda usage: queue.put_nowait(CallEnded(usage))


class GenerateOutline(TracedNode):
    """Asks for a YAML outline and validates it; PocketFlow retries malformed replies."""

    stage = Stage.outline.value

    def __init__(self, llm: LLM, settings: Settings) -> None:
        super().__init__(max_retries=settings.outline_attempts)
        self.llm = llm
        self.sections = settings.outline_sections
        self.attempt = 0

    async def prep_async(self, shared: Shared) -> tuple[str, Reports]:
        await shared["sse_queue"].put(StageStarted(Stage.outline, "Planning the outline"))
        return str(shared["topic"]), shared["sse_queue"]

    async def exec_async(self, prep: tuple[str, Reports]) -> list[str] | LLMError:
        topic, queue = prep
        self.attempt += 1
        if self.attempt > 1:
            await anyio.sleep(backoff_s(self.attempt - 1))
        try:
            reply = await self.llm.generate(outline_prompt(topic, self.sections), max_tokens=512,
                                            on_usage=usage_reporter(queue), node=self.stage)
        except LLMError as exc:
            # Returned, not raised: the SDK has already retried provider failures, and
            # PocketFlow's retries are for malformed outlines only.
            return exc
        return parse_outline(reply)

    async def exec_fallback_async(self, prep: tuple[str, Reports], exc: Exception) -> list[str]:
        if isinstance(exc, BadOutline):
            raise BadOutline(
                f"The outline was still invalid after {self.max_retries} attempts: {exc.message}"
            ) from exc
        raise exc

    async def post_async(self, shared: Shared, prep: tuple[str, Reports],
                         result: list[str] | LLMError) -> None:
        if isinstance(result, LLMError):
            raise result
        shared["sections"] = result
        await shared["sse_queue"].put(OutlineReady(tuple(result)))


class WriteContent(TracedNode):
    """Writes every section not yet written, concurrently (bounded per job); each is reported
    once written."""

    stage = Stage.content.value

    def __init__(self, llm: LLM, settings: Settings) -> None:
        super().__init__()
        self.llm = llm
        self.concurrency = settings.section_concurrency
        self.words = settings.section_words
        self.live_text = settings.stream_deltas

    async def prep_async(self, shared: Shared) -> tuple[str, list[str], dict[int, str], Reports]:
        queue: Reports = shared["sse_queue"]
        await queue.put(StageStarted(Stage.content, "Writing the sections"))
        return str(shared["topic"]), list(shared["sections"]), dict(shared["contents"]), queue

    async def exec_async(self, prep: tuple[str, list[str], dict[int, str], Reports]) -> list[str]:
        topic, sections, written, queue = prep
        contents = [written.get(index, "") for index in range(len(sections))]
        limiter = anyio.CapacityLimiter(self.concurrency)

        async def write(index: int, title: str) -> None:
            async def on_text(text: str) -> None:
                await queue.put(TextDelta(Stage.content, index, text))

            async def on_reset() -> None:
                await queue.put(TextReset(Stage.content, index))

            async with limiter:
                prompt = section_prompt(topic, title, sections, self.words)
                contents[index] = await self.llm.generate(
                    prompt, max_tokens=600, on_text=on_text if self.live_text else None,
                    on_reset=on_reset if self.live_text else None,
                    on_usage=usage_reporter(queue), node=self.stage,
                )
            await queue.put(SectionWritten(index, title, contents[index]))

        # A task group, not asyncio.gather: one failed section cancels its siblings.
        try:
            async with anyio.create_task_group() as tg:
                for index, title in enumerate(sections):
                    if index not in written:  # a resumed job keeps the sections it has
                        tg.start_soon(write, index, title)
        except ExceptionGroup as group:
            raise _first_error(group) from None
        return contents

    async def post_async(self, shared: Shared, prep: Any, contents: list[str]) -> None:
        shared["draft"] = draft_text(shared["topic"], shared["sections"], contents)


class ApplyStyle(TracedNode):
    """Rewrites the whole draft in a conversational, engaging voice."""

    stage = Stage.style.value

    def __init__(self, llm: LLM, settings: Settings) -> None:
        super().__init__()
        self.llm = llm
        self.live_text = settings.stream_deltas

    async def prep_async(self, shared: Shared) -> tuple[str, str, Reports]:
        queue: Reports = shared["sse_queue"]
        await queue.put(StageStarted(Stage.style, "Polishing the style"))
        return str(shared["topic"]), str(shared["draft"]), queue

    async def exec_async(self, prep: tuple[str, str, Reports]) -> str:
        topic, draft, queue = prep

        async def on_text(text: str) -> None:
            await queue.put(TextDelta(Stage.style, None, text))

        async def on_reset() -> None:
            await queue.put(TextReset(Stage.style, None))

        return await self.llm.generate(
            style_prompt(topic, draft), max_tokens=4096,
            on_text=on_text if self.live_text else None,
            on_reset=on_reset if self.live_text else None,
            on_usage=usage_reporter(queue), node=self.stage,
        )

    async def post_async(self, shared: Shared, prep: Any, article: str) -> None:
        shared["final_article"] = article
