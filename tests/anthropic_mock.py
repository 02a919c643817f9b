"""A scripted stand-in for Anthropic's POST /v1/messages, served through httpx2.MockTransport.

The real SDK talks to it: its retries, timeouts, stream parsing and exception types all run.
Replies are built from canned Messages API streaming events (message_start, content_block_*,
message_delta, message_stop), the shapes `anthropic.lib.streaming` accumulates.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx2

from pipeline.llm_anthropic import AnthropicProvider
from pipeline.llm_offline import OfflineProvider
from pipeline.settings import Settings

API_KEY = "sk-ant-test-SECRET123"
MODEL = "claude-test-model"
INPUT_TOKENS = 12
#: how the SDK is told to wait before its own retries, so tests stay fast
FAST_RETRY = {"retry-after-ms": "1"}


def settings(**overrides: Any) -> Settings:
    """Settings for the anthropic provider against the mock; keyword args override."""
    values: dict[str, Any] = {
        "llm_provider": "anthropic",
        "anthropic_api_key": API_KEY,
        "anthropic_model": MODEL,
        "llm_max_retries": 2,
        "llm_timeout_s": 5.0,
        "rate_limit_per_minute": 0,
        "drain_s": 1.0,
        "max_running_jobs": 2,
        **overrides,
    }
    return Settings(**values)


# -- replies ----------------------------------------------------------------------------------


def chunks_of(text: str, count: int = 4) -> list[str]:
    """`text` cut into about `count` pieces that join back to it exactly."""
    size = max(1, -(-len(text) // count))
    return [text[start:start + size] for start in range(0, len(text), size)]


def sse_events(chunks: Iterable[str], *, model: str = MODEL) -> list[bytes]:
    """One reply as a list of SSE frames; usage reports as many output tokens as chunks."""
    chunks = list(chunks)

    def frame(event: str, data: dict[str, Any]) -> bytes:
        return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()

    frames = [
        frame("message_start", {"type": "message_start", "message": {
            "id": "msg_test", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
        }}),
        frame("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}),
        frame("ping", {"type": "ping"}),
    ]
    frames += [frame("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": chunk}})
               for chunk in chunks]
    frames += [
        frame("content_block_stop", {"type": "content_block_stop", "index": 0}),
        frame("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": len(chunks)}}),
        frame("message_stop", {"type": "message_stop"}),
    ]
    return frames


def reply(text: str, *, pieces: int = 4) -> httpx2.Response:
    """A whole streamed reply of `text`."""
    return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                           content=b"".join(sse_events(chunks_of(text, pieces))))


def cut_reply(text: str, *, pieces: int = 4, keep: int = 2) -> httpx2.Response:
    """A streamed reply that breaks off after `keep` text chunks, as a dropped connection does."""
    frames = sse_events(chunks_of(text, pieces))
    # message_start, content_block_start and ping come before the first text chunk.
    head = frames[:3 + keep]

    async def body() -> AsyncIterator[bytes]:
        for frame in head:
            yield frame
        raise httpx2.RemoteProtocolError("peer closed connection without a complete body")

    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def malformed_reply() -> httpx2.Response:
    """A 200 event stream whose event is not JSON."""
    return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                           content=b"event: message_start\ndata: {\"type\": \"message_st\n\n")


def status(code: int, *, headers: dict[str, str] | None = None,
           message: str = "test failure") -> httpx2.Response:
    """An API error answer, in the Messages API's error body shape."""
    kinds = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error",
             500: "api_error", 529: "overloaded_error"}
    body = {"type": "error", "error": {"type": kinds.get(code, "api_error"), "message": message}}
    return httpx2.Response(code, headers=headers or {}, json=body)


# -- the scripted server ----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One HTTP request the SDK made."""

    number: int  # 1-based, over all calls
    task: str  # outline, section or style (the prompt's `Task:` line)
    attempt: int  # 1-based, over calls with the same prompt
    prompt: str
    body: dict[str, Any]
    headers: httpx2.Headers


Answer = Callable[[Call], "httpx2.Response | Awaitable[httpx2.Response]"]


def good_answer(call: Call) -> httpx2.Response:
    """What a healthy API would say: the offline writer's deterministic text for the prompt."""
    return reply(expected_text(call.prompt))


def expected_text(prompt: str) -> str:
    return OfflineProvider(delay_ms=0).reply(prompt)


@dataclass
class FakeAnthropic:
    """Answers each request with `answer(call)` (a response, or an awaitable of one)."""

    answer: Answer = good_answer
    calls: list[Call] = field(default_factory=list)

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        prompt = body["messages"][0]["content"]
        match = re.match(r"Task: (\w+)", prompt)
        call = Call(
            number=len(self.calls) + 1,
            task=match.group(1) if match else "",
            attempt=1 + sum(1 for earlier in self.calls if earlier.prompt == prompt),
            prompt=prompt,
            body=body,
            headers=request.headers,
        )
        self.calls.append(call)
        answer = self.answer(call)
        return await answer if inspect.isawaitable(answer) else answer

    def count(self, task: str | None = None) -> int:
        return sum(1 for call in self.calls if task is None or call.task == task)

    def provider(self, settings: Settings) -> AnthropicProvider:
        client = httpx2.AsyncClient(transport=httpx2.MockTransport(self))
        return AnthropicProvider.from_settings(settings, http_client=client)
