"""Reading and checking a submit's body: JSON or a form, size-capped, with a valid topic."""

from __future__ import annotations

import json
import unicodedata
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request

from pipeline.contract import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS
from pipeline.job import WebhookSpec
from pipeline.settings import Settings
from pipeline.webhook_target import InvalidWebhook, parse, resolve

from .errors import ApiError

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_MAX_FORM_FIELDS = 20
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
        fields = _parse_json(body)
        if not isinstance(fields, dict):
            raise _malformed('The body must be a JSON object like {"topic": "..."}.')
        return fields
    return _parse_form(body)


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




def valid_webhook(fields: dict[str, Any], settings: Settings) -> WebhookSpec | None:
    """The submit's webhook, its URL checked as written; 422 `invalid_webhook` naming what is
    wrong. Where its host resolves is `check_webhook_host`'s, once the submit is sure to go on."""
    if "webhook" not in fields and "webhook_events_filter" not in fields:
        return None
    url, events = fields.get("webhook"), fields.get("webhook_events_filter", list(DEFAULT_WEBHOOK_EVENTS))
    if "webhook" not in fields:
        raise _invalid_webhook("`webhook_events_filter` needs a `webhook` URL.")
    if not isinstance(url, str):
        raise _invalid_webhook("`webhook` must be a URL string.")
    if settings.webhook_secret is None:
        raise _invalid_webhook("Webhooks are off: the service has no WEBHOOK_SECRET to sign them.")
    if isinstance(events, str):  # a form's comma-separated list
        events = [name.strip() for name in events.split(",") if name.strip()]
    if not isinstance(events, list) or not events or not all(
            isinstance(name, str) and name in WEBHOOK_EVENTS for name in events):
        raise _invalid_webhook("`webhook_events_filter` must be a non-empty list of "
                               + ", ".join(WEBHOOK_EVENTS) + ".")
    try:
        parse(url, allow_private=settings.webhook_allow_private)
    except InvalidWebhook as exc:
        raise _invalid_webhook(str(exc)) from None
    return WebhookSpec(url=url, events=tuple(name for name in WEBHOOK_EVENTS if name in events))


async def check_webhook_host(webhook: WebhookSpec, settings: Settings) -> None:
    """422 `invalid_webhook` unless every address the URL's host resolves to now may be used
    (each delivery checks again: DNS can change)."""
    allow_private = settings.webhook_allow_private
    try:
        await resolve(parse(webhook.url, allow_private=allow_private), allow_private=allow_private)
    except InvalidWebhook as exc:
        raise _invalid_webhook(str(exc)) from None


def _invalid_webhook(message: str) -> ApiError:
    return ApiError(422, "invalid_webhook", message)


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


def _malformed(message: str) -> ApiError:
    return ApiError(400, "malformed_body", message)


def _parse_json(body: bytes) -> Any:
    try:
        # RFC 8259: JSON travels as UTF-8, and a reader may skip a byte order mark. json.loads
        # on bytes would also take UTF-16 and UTF-32, and UTF-8-encoded lone surrogates.
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _malformed("The body is not valid UTF-8.") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        # The decoder recurses once per [ or {, so a few KiB of them exhaust the stack limit.
        raise _malformed("The body is nested too deeply to read.") from None
    except json.JSONDecodeError as exc:
        raise _malformed(f"The body is not valid JSON: {exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno}.") from None
    except ValueError:
        # int() refuses numbers longer than sys.get_int_max_str_digits() (4,300 digits).
        raise _malformed("The body holds a number with too many digits to read.") from None


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and a response could not carry them back (allow_nan=False).
    raise _malformed(f"The body is not valid JSON: {name} is not a JSON number.")


def _parse_form(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("The body is not valid UTF-8.") from None
    if text.count("&") >= _MAX_FORM_FIELDS:
        raise _malformed(f"The form has more than {_MAX_FORM_FIELDS} fields.")
    try:
        # errors="strict": a %-escape that is not UTF-8 is refused, not turned into U+FFFD.
        form = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except UnicodeDecodeError:
        raise _malformed("The form holds a %-escape that is not UTF-8.") from None
    except ValueError:
        raise _malformed("The body is not a form of name=value pairs joined by &.") from None
    return {name: values[0] for name, values in form.items()}
