"""A scripted LLM provider: replies per task (`outline`, `section`, `style`), on cue."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import anyio

from pipeline.errors import LLMStreamBroken
from pipeline.llm_offline import OfflineProvider

GOOD_OUTLINE = "```yaml\nsections:\n  - Alpha\n  - Beta\n  - Gamma\n```\n"


@dataclass
class Broken:
    """A reply that breaks off after `text` has streamed."""

    text: str


Reply = str | Exception | Broken | Callable[[str], str]


@dataclass
class ScriptedProvider:
    """Answers each task from its script in turn (the last entry repeats); else like the
    offline writer. `gate`, when set, holds every call until it is set."""

    script: dict[str, list[Reply]] = field(default_factory=dict)
    chunk_words: int = 1
    gate: anyio.Event | None = None
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    prompts: list[str] = field(default_factory=list)
    name: str = "scripted"

    async def stream(self, prompt: str, *, max_tokens: int) -> AsyncGenerator[str, None]:
        task = re.match(r"Task: (\w+)", prompt).group(1)  # type: ignore[union-attr]
        self.prompts.append(prompt)
        turn = self.calls[task]
        self.calls[task] += 1
        if self.gate is not None:
            await self.gate.wait()
        replies = self.script.get(task)
        reply: Reply = replies[min(turn, len(replies) - 1)] if replies else \
            OfflineProvider(delay_ms=0).reply(prompt)
        if isinstance(reply, Exception):
            raise reply
        text = reply.text if isinstance(reply, Broken) else \
            reply(prompt) if callable(reply) else reply
        words = re.findall(r"\S+\s*|\s+", text)
        for start in range(0, len(words), self.chunk_words):
            await anyio.lowlevel.checkpoint()
            yield "".join(words[start:start + self.chunk_words])
        if isinstance(reply, Broken):
            raise LLMStreamBroken("The scripted stream broke off.")

    async def aclose(self) -> None:
        pass
