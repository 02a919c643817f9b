"""The three prompts. Each opens with a `Task:` line so a reply can be matched to its request."""

from __future__ import annotations

from collections.abc import Sequence


def outline_prompt(topic: str, sections: int) -> str:
    return (
        "Task: outline\n"
        f"Topic: {topic}\n\n"
        "Plan a short article about the topic above. Reply with YAML only, in a fenced block:\n"
        "```yaml\nsections:\n  - First section title\n  - Second section title\n```\n"
        f"Give exactly {sections} sections with short, distinct titles and nothing else."
    )


def section_prompt(topic: str, title: str, outline: Sequence[str], words: int) -> str:
    return (
        "Task: section\n"
        f"Topic: {topic}\n"
        f"Section: {title}\n"
        f"Outline: {' | '.join(outline)}\n\n"
        f"Write about {words} words for this one section of the article. Plain prose in one or "
        "two paragraphs, no heading, no preamble."
    )


def style_prompt(topic: str, draft: str) -> str:
    return (
        "Task: style\n"
        f"Topic: {topic}\n\n"
        "Rewrite the draft below in a conversational, engaging voice: speak to the reader, keep "
        "every fact, keep the `## ` section headings and their order. Reply with the article in "
        "Markdown only.\n\n"
        f"Draft:\n{draft}"
    )


def draft_text(topic: str, sections: Sequence[str], contents: Sequence[str]) -> str:
    """The draft as Markdown: the topic as title, then each section under its heading."""
    parts = [f"# {topic}"]
    parts.extend(f"## {title}\n\n{content.strip()}" for title, content in zip(sections, contents))
    return "\n\n".join(parts) + "\n"
