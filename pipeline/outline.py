"""Reading the model's outline: YAML with a `sections:` list, fenced or bare, then checked."""

from __future__ import annotations

import re

import yaml

from .errors import BadOutline

MIN_SECTIONS = 2
MAX_SECTIONS = 8
MAX_TITLE_CHARS = 200

# libyaml's loader when PyYAML has it (the wheels do): the pure-Python one was 3 % of the CPU
# under load. Both are safe loaders: plain data, no Python objects.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_FENCE = re.compile(r"```(?:ya?ml)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


def parse_outline(text: str) -> list[str]:
    """The section titles in `text`, or `BadOutline` saying what was wrong with it."""
    fenced = _FENCE.search(text)
    source = fenced.group(1) if fenced else text
    try:
        document = yaml.load(source, Loader=_Loader)
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadOutline(f"The outline was not valid YAML ({reason}).") from None
    if not isinstance(document, dict) or not isinstance(document.get("sections"), list):
        raise BadOutline("The outline had no `sections:` list.")
    titles: list[str] = []
    for item in document["sections"]:
        if not isinstance(item, str) or not item.strip():
            raise BadOutline(f"An outline section is not a non-empty title: {item!r:.60}.")
        title = " ".join(item.split())
        if len(title) > MAX_TITLE_CHARS:
            raise BadOutline(f"An outline title is longer than {MAX_TITLE_CHARS} characters.")
        if title.casefold() in (seen.casefold() for seen in titles):
            raise BadOutline(f"The outline repeats the title {title!r}.")
        titles.append(title)
    if not MIN_SECTIONS <= len(titles) <= MAX_SECTIONS:
        raise BadOutline(
            f"The outline has {len(titles)} sections; it needs {MIN_SECTIONS} to {MAX_SECTIONS}."
        )
    return titles
