"""Reading and checking a submit's body: JSON or a form, size-capped, with a valid topic."""

from __future__ import annotations

import json
import unicodedata
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request

from pipeline.settings import Settings

from .errors import ApiError

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
# Line and paragraph separators break lines as surely as CR and LF do.
_FORBIDDEN = {"\u2028", "\u2029"}


async def read_submit(request: Request, settings: Settings) -> dict[str, Any]:
    """The submit's fields, from a JSON object or a form."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in (_JSON, _FORM):
        raise ApiError(415, "unsupported_media_type",
                       f"Send the job as {_JSON} or {_FORM}, not {media_type or 'no content type'}.")
    body = await _read_capped(request, settings.max_body_bytes)
    if media_type == _JSON:
        try:
            fields = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "malformed_body", "The body is not valid JSON.") from None
        if not isinstance(fields, dict):
            raise ApiError(400, "malformed_body", 'The body must be a JSON object like {"topic": "..."}.')
        return fields
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                        max_num_fields=20)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed_body", "The body is not a valid UTF-8 form.") from None
    return {name: values[0] for name, values in form.items()}


def valid_topic(value: Any, settings: Settings) -> str:
    """The topic, trimmed; 422 if it is missing, empty, too long or holds control characters."""
    if not isinstance(value, str):
        raise ApiError(422, "invalid_topic", "The body needs a `topic` string.")
    topic = value.strip()
    if not topic:
        raise ApiError(422, "invalid_topic", "The topic is empty.")
    if len(topic) > settings.max_topic_chars:
        raise ApiError(422, "invalid_topic", f"The topic has {len(topic)} characters; the limit "
                                             f"is {settings.max_topic_chars}.")
    for char in topic:
        if unicodedata.category(char) in ("Cc", "Cs") or char in _FORBIDDEN:
            raise ApiError(422, "invalid_topic",
                           f"The topic holds a control or invalid character (U+{ord(char):04X}).")
    return topic


async def _read_capped(request: Request, limit: int) -> bytes:
    too_large = ApiError(413, "body_too_large", f"The body is larger than {limit} bytes.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
