"""The anthropic provider through the real SDK (httpx2 with a mock transport), and `LLM` on top.

Each failure is seen as the SDK sees it: a status code, a broken body, a timeout. The SDK's
own retries run (the handler counts them), and the provider maps what is left to job codes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.errors import LLMError, LLMStreamBroken
from pipeline.llm import LLM
from pipeline.metrics import Metrics

from .anthropic_mock import (
    API_KEY,
    FAST_RETRY,
    INPUT_TOKENS,
    MODEL,
    Call,
    FakeAnthropic,
    chunks_of,
    cut_reply,
    malformed_reply,
    reply,
    settings,
    status,
)

pytestmark = pytest.mark.anyio

PROMPT = "Task: section\nTopic: Home composting\n\nWrite about worms."
TEXT = "Worms turn scraps into rich, dark soil while you sleep."


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def llm_for(fake: FakeAnthropic, **overrides: Any) -> AsyncIterator[tuple[LLM, Metrics]]:
    """An `LLM` over the anthropic provider talking to `fake`; closed afterwards."""
    config = settings(**overrides)
    metrics = Metrics()
    provider = fake.provider(config)
    try:
        yield LLM.from_settings(provider, config, metrics), metrics
    finally:
        await provider.aclose()


def script(*answers: Callable[[], httpx2.Response]) -> Callable[[Call], httpx2.Response]:
    """Answer the n-th call with the n-th answer; the last one repeats."""
    return lambda call: answers[min(call.number, len(answers)) - 1]()


def metric(metrics: Metrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


# -- success ----------------------------------------------------------------------------------


async def test_streamed_chunks_join_into_the_reply() -> None:
    fake = FakeAnthropic(script(lambda: reply(TEXT, pieces=4)))
    seen: list[str] = []

    async def on_text(text: str) -> None:
        seen.append(text)

    async with llm_for(fake) as (llm, _):
        assert await llm.generate(PROMPT, max_tokens=300, on_text=on_text) == TEXT

    assert seen == chunks_of(TEXT, 4)
    [call] = fake.calls
    assert call.body["model"] == MODEL
    assert call.body["messages"] == [{"role": "user", "content": PROMPT}]
    assert call.body["max_tokens"] == 300
    assert call.body["stream"] is True
    assert "temperature" not in call.body
    # The SDK picks the header (this version: Authorization: Bearer); the key is in it.
    assert any(API_KEY in value for value in call.headers.values())


async def test_token_usage_is_counted_in_metrics() -> None:
    fake = FakeAnthropic(script(lambda: reply(TEXT, pieces=5)))
    async with llm_for(fake) as (llm, metrics):
        await llm.generate(PROMPT)
        await llm.generate(PROMPT)

    tokens = "articlestream_llm_tokens_total"
    assert metric(metrics, tokens, provider="anthropic", model=MODEL,
                  kind="input") == 2 * INPUT_TOKENS
    # The mock reports one output token per text chunk, in its final message_delta.
    assert metric(metrics, tokens, provider="anthropic", model=MODEL, kind="output") == 2 * 5


async def test_the_sdk_retries_529_and_the_reply_arrives() -> None:
    overloaded = lambda: status(529, headers=FAST_RETRY)  # noqa: E731
    fake = FakeAnthropic(script(overloaded, overloaded, lambda: reply(TEXT)))
    async with llm_for(fake) as (llm, metrics):
        assert await llm.generate(PROMPT) == TEXT
    assert fake.count() == 3
    assert metric(metrics, "articlestream_llm_errors_total",
                  provider="anthropic", code="llm_overloaded") is None


# -- failures after the SDK's retries -----------------------------------------------------------

# Error bodies quote the key, as a careless gateway might: it must not reach the job's message.
LEAKY = f"invalid x-api-key {API_KEY}"


@pytest.mark.parametrize(
    ("answer", "code", "calls"),
    [
        pytest.param(lambda: status(401, message=LEAKY), "llm_auth", 1, id="401-not-retried"),
        pytest.param(lambda: status(403, message=LEAKY), "llm_auth", 1, id="403-not-retried"),
        pytest.param(lambda: status(429, headers={"retry-after": "0.05"}, message=LEAKY),
                     "llm_rate_limited", 3, id="429-retry-after"),
        pytest.param(lambda: status(529, headers=FAST_RETRY, message=LEAKY),
                     "llm_overloaded", 3, id="529-forever"),
        pytest.param(lambda: status(500, headers=FAST_RETRY, message=LEAKY),
                     "llm_error", 3, id="500-forever"),
    ],
)
async def test_status_errors_map_to_job_codes(answer: Callable[[], httpx2.Response], code: str,
                                              calls: int) -> None:
    fake = FakeAnthropic(script(answer))
    async with llm_for(fake) as (llm, metrics):
        with pytest.raises(LLMError) as raised:
            await llm.generate(PROMPT)
    assert raised.value.code == code
    assert not isinstance(raised.value, LLMStreamBroken)
    assert fake.count() == calls  # 1 try + llm_max_retries (2) for retryable statuses
    assert API_KEY not in raised.value.message and API_KEY not in str(raised.value)
    assert metric(metrics, "articlestream_llm_errors_total", provider="anthropic", code=code) == 1


async def test_retry_after_is_honoured_instead_of_the_default_backoff() -> None:
    fake = FakeAnthropic(script(lambda: status(429, headers={"retry-after": "0.1"}),
                                lambda: reply(TEXT)))
    started = time.perf_counter()
    async with llm_for(fake) as (llm, _):
        assert await llm.generate(PROMPT) == TEXT
    elapsed = time.perf_counter() - started
    # The SDK's own backoff would wait 0.375 s or more; the header asked for 0.1 s.
    assert 0.1 <= elapsed < 0.375
    assert fake.count() == 2


async def test_read_timeouts_are_retried_then_end_llm_timeout() -> None:
    def time_out(call: Call) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out reading the response")

    fake = FakeAnthropic(time_out)
    async with llm_for(fake) as (llm, _):
        with pytest.raises(LLMError) as raised:
            await llm.generate(PROMPT)
    assert raised.value.code == "llm_timeout"
    assert fake.count() == 3


async def test_a_reply_slower_than_llm_timeout_ends_llm_timeout() -> None:
    async def never_answer(call: Call) -> httpx2.Response:
        await anyio.sleep(30)
        return reply(TEXT)

    fake = FakeAnthropic(never_answer)
    started = time.perf_counter()
    async with llm_for(fake, llm_timeout_s=0.5) as (llm, _):
        with pytest.raises(LLMError) as raised:
            await llm.generate(PROMPT)
    assert raised.value.code == "llm_timeout"
    assert "0.5 s" in raised.value.message
    assert time.perf_counter() - started < 5
    assert fake.count() == 1


# -- broken streams -----------------------------------------------------------------------------


async def test_a_stream_cut_midway_is_tried_again_and_reset() -> None:
    first = "This attempt breaks off somewhere in the middle of its reply."
    fake = FakeAnthropic(script(lambda: cut_reply(first, pieces=4, keep=2), lambda: reply(TEXT)))
    seen: list[str] = []
    resets = 0

    async def on_text(text: str) -> None:
        seen.append(text)

    async def on_reset() -> None:
        nonlocal resets
        resets += 1
        seen.clear()

    async with llm_for(fake) as (llm, _):
        assert await llm.generate(PROMPT, on_text=on_text, on_reset=on_reset) == TEXT
    assert resets == 1
    assert "".join(seen) == TEXT  # what a client holds after applying the reset
    assert fake.count() == 2


async def test_a_stream_cut_every_time_gives_up_after_the_stream_attempts() -> None:
    fake = FakeAnthropic(lambda call: cut_reply(TEXT, keep=1))
    resets = 0

    async def on_reset() -> None:
        nonlocal resets
        resets += 1

    async with llm_for(fake, llm_stream_attempts=3) as (llm, metrics):
        with pytest.raises(LLMStreamBroken) as raised:
            await llm.generate(PROMPT, on_reset=on_reset)
    assert raised.value.code == "llm_error"
    assert fake.count() == 3
    assert resets == 2  # between attempts, not after the last one
    assert metric(metrics, "articlestream_llm_errors_total",
                  provider="anthropic", code="llm_error") == 3


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(malformed_reply, id="event-not-json"),
        pytest.param(lambda: httpx2.Response(200, content=b"<html>gateway</html>"),
                     id="not-an-event-stream"),
    ],
)
async def test_a_malformed_reply_ends_llm_error(answer: Callable[[], httpx2.Response]) -> None:
    fake = FakeAnthropic(script(answer))
    async with llm_for(fake) as (llm, _):
        with pytest.raises(LLMError) as raised:
            await llm.generate(PROMPT)
    assert raised.value.code == "llm_error"
