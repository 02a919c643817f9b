"""A deterministic writer that needs no key and no network, for demos, tests and benches.

It reads the `Task:` line of our own prompts and answers each like a model would:
a YAML outline, a paragraph per section, a restyled article that says who wrote it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncGenerator

OFFLINE_LABEL = "*Written by ArticleStream's built-in offline writer: no LLM was called.*"

_TITLES = (
    "Why {topic} matters",
    "How {topic} works",
    "Getting started with {topic}",
    "Common mistakes with {topic}",
    "Tools that help with {topic}",
    "{topic} in everyday life",
    "What experts say about {topic}",
    "The future of {topic}",
)
_SENTENCES = (
    "{title} is a good place to begin, because {topic} rewards a little attention early on.",
    "Most people meet {topic} through small, practical steps rather than grand plans.",
    "The basics are simple: start small, watch what happens, and adjust as you learn.",
    "A common surprise is how much the details matter once the first results come in.",
    "It helps to keep notes, since patterns in {topic} only show up over weeks, not days.",
    "Friends, neighbours and local groups are often the best source of tested advice.",
    "Cost rarely decides success here; patience and steady habits matter far more.",
    "When something goes wrong, the cause is usually one of a few well-known issues.",
    "Each small improvement compounds, and the effort soon feels natural rather than forced.",
    "Above all, {topic} is something you learn by doing, not only by reading about it.",
)
_MIN_TICK_S = 0.01


class OfflineProvider:
    """Streams canned but topic-specific text over `delay_ms` per call."""

    name = "offline"

    def __init__(self, *, delay_ms: int) -> None:
        self.delay_s = delay_ms / 1000

    async def stream(self, prompt: str, *, max_tokens: int) -> AsyncGenerator[str, None]:
        words = self.reply(prompt).split(" ")
        # Word-sized chunks, but never more ticks than the clock can honour cheaply.
        ticks = max(1, min(len(words), int(self.delay_s / _MIN_TICK_S)))
        per_chunk = max(1, -(-len(words) // ticks))
        chunks = [" ".join(words[i:i + per_chunk]) + " " for i in range(0, len(words), per_chunk)]
        chunks[-1] = chunks[-1][:-1]  # the reply's own end, with no space added
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n, chunk in enumerate(chunks, 1):
            # Pace against the call's start, so a busy loop's late wake-ups do not add up.
            await asyncio.sleep(max(0.0, started + self.delay_s * n / len(chunks) - loop.time()))
            yield chunk

    async def aclose(self) -> None:
        pass

    def reply(self, prompt: str) -> str:
        fields: dict[str, str] = dict(re.findall(r"^(Task|Topic|Section): (.*)$", prompt, flags=re.MULTILINE))
        task, topic = fields.get("Task", ""), fields.get("Topic", "this topic")
        if task == "outline":
            count = int(re.search(r"exactly (\d+) sections", prompt).group(1))  # type: ignore[union-attr]
            return outline_yaml(topic, count)
        if task == "section":
            return section_text(topic, fields.get("Section", topic))
        if task == "style":
            return styled_text(topic, prompt.split("Draft:\n", 1)[-1])
        return f"The offline writer has no answer for this prompt about {topic}."


def outline_yaml(topic: str, count: int) -> str:
    start = _seed(topic) % len(_TITLES)
    titles = [_TITLES[(start + i) % len(_TITLES)].format(topic=topic) for i in range(count)]
    # Double-quoted scalars keep any topic valid YAML, colons and all.
    lines = "\n".join(f"  - {_yaml_quote(title)}" for title in titles)
    return f"```yaml\nsections:\n{lines}\n```\n"


def section_text(topic: str, title: str) -> str:
    seed = _seed(topic + "\0" + title)
    picked = [_SENTENCES[(seed + i * 3) % len(_SENTENCES)] for i in range(7)]
    return " ".join(s.format(topic=topic.lower(), title=title) for s in picked)


def styled_text(topic: str, draft: str) -> str:
    body = draft.strip()
    if body.startswith("# "):
        body = body.split("\n", 1)[-1].strip()
    return (
        f"# {topic}\n\n{OFFLINE_LABEL}\n\n"
        f"Ever wondered what {topic.lower()} is really about? Let's walk through it together.\n\n"
        f"{body}\n\n"
        f"That's the tour! Give {topic.lower()} a try and see what you discover.\n"
    )


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def _yaml_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
