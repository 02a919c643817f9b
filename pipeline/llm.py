"""The LLM seen by the workflow: a provider that streams text, and calls with a deadline.

A provider is anything with `stream(prompt, max_tokens=...)`, an async generator of
text chunks (and, between them, the `TokenCount` the API reported so far), and `aclose()`.
Providers raise `LLMError` (mapped from their own exceptions) and `LLMStreamBroken` when a
reply breaks off midway.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import TYPE_CHECKING, Protocol

import anyio

from .errors import LLMError, LLMStreamBroken
from .tracing import Tracing
from .usage import CallUsage, Pricing, TokenCount

if TYPE_CHECKING:
    from .metrics import Metrics
    from .settings import Settings

logger = logging.getLogger(__name__)


class Provider(Protocol):
    name: str

    def stream(self, prompt: str, *,
               max_tokens: int) -> AsyncGenerator[str | TokenCount, None]: ...

    async def aclose(self) -> None: ...


class LLM:
    """Calls a provider with a deadline per call and retries replies that broke off.

    At most `max_calls` calls stream at once, service-wide; the rest wait their turn (the
    deadline starts once a call has its place). Each attempt's usage (the tokens the provider
    reported, priced) goes to the caller's `on_usage`, to /metrics and to its trace span,
    however the attempt ended.
    """

    def __init__(self, provider: Provider, *, timeout_s: float, stream_attempts: int,
                 max_calls: int, metrics: Metrics | None = None, model: str | None = None,
                 pricing: Pricing | None = None, tracing: Tracing | None = None) -> None:
        self.provider = provider
        self.timeout_s = timeout_s
        self.stream_attempts = stream_attempts
        self.metrics = metrics
        #: the model asked for: the price, the metrics' label and the span's attribute
        self.model = model or provider.name
        self.pricing = pricing or Pricing()
        self.tracing = tracing or Tracing()
        self._places = anyio.Semaphore(max_calls)

    @classmethod
    def from_settings(cls, provider: Provider, settings: Settings, metrics: Metrics | None = None,
                      tracing: Tracing | None = None) -> LLM:
        model = settings.anthropic_model if provider.name == "anthropic" else None
        return cls(provider, timeout_s=settings.llm_timeout_s,
                   stream_attempts=settings.llm_stream_attempts,
                   max_calls=settings.max_llm_calls, metrics=metrics, model=model,
                   pricing=Pricing(settings.llm_price_per_mtok), tracing=tracing)

    async def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 1024,
        on_text: Callable[[str], Awaitable[None]] | None = None,
        on_reset: Callable[[], Awaitable[None]] | None = None,
        on_usage: Callable[[CallUsage], None] | None = None,
        node: str = "",
    ) -> str:
        """The whole reply; `on_text` sees each chunk, `on_reset` a broken attempt's end,
        `on_usage` each attempt's usage as it ends; `node` labels the call's metrics."""
        for attempt in range(1, self.stream_attempts + 1):
            parts: list[str] = []
            tokens = TokenCount(0, 0)
            started = time.perf_counter()
            code: str | None = "cancelled"  # until the attempt ends otherwise
            with self.tracing.llm_call(system=self.provider.name, model=self.model,
                                       max_tokens=max_tokens) as span:
                try:
                    async with self._place():
                        started = time.perf_counter()  # the wait for a place has its own metric
                        with anyio.fail_after(self.timeout_s):
                            async with aclosing(self.provider.stream(
                                    prompt, max_tokens=max_tokens)) as chunks:
                                async for chunk in chunks:
                                    if isinstance(chunk, TokenCount):
                                        tokens = chunk
                                        continue
                                    parts.append(chunk)
                                    if on_text is not None:
                                        await on_text(chunk)
                    code = None
                except TimeoutError:
                    code = "llm_timeout"
                    raise LLMError(
                        f"The LLM call ran past LLM_TIMEOUT_SECONDS ({self.timeout_s:g} s).",
                        code="llm_timeout",
                    ) from None
                except LLMStreamBroken as exc:
                    code = exc.code
                    if attempt == self.stream_attempts:
                        raise
                    logger.warning("LLM stream broke (attempt %d of %d): %s",
                                   attempt, self.stream_attempts, exc.message)
                except LLMError as exc:
                    code = exc.code
                    raise
                finally:
                    usage = self.pricing.call(self.model, tokens.input_tokens,
                                              tokens.output_tokens)
                    span.ended(usage, code)
                    self._observe(started, node, code, usage)
                    if on_usage is not None:
                        on_usage(usage)
            if code is None:
                return "".join(parts)
            if parts and on_reset is not None:
                await on_reset()
            await anyio.sleep(backoff_s(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    @asynccontextmanager
    async def _place(self) -> AsyncIterator[None]:
        """Hold one of the MAX_LLM_CALLS places for the length of one attempt."""
        if self._places.value == 0 and self.metrics is not None:
            waited = time.perf_counter()
            with self.metrics.llm_calls_waiting.track_inprogress():
                await self._places.acquire()
            self.metrics.llm_place_wait_seconds.observe(time.perf_counter() - waited)
        else:
            await self._places.acquire()
        try:
            yield
        finally:
            self._places.release()

    def _observe(self, started: float, node: str, code: str | None, usage: CallUsage) -> None:
        if self.metrics is None:
            return
        self.metrics.observe_usage(self.provider.name, usage)
        if code != "cancelled":  # a cancelled job's call did not end on its own
            self.metrics.observe_llm_call(self.provider.name, node,
                                          time.perf_counter() - started, code)


async def call_llm(llm: LLM, prompt: str) -> str:
    """The reply to `prompt` as one string, for callers that do not stream."""
    return await llm.generate(prompt)


def backoff_s(attempt: int, base_s: float = 0.25, cap_s: float = 4.0) -> float:
    """Exponential backoff with full jitter: a random wait up to base * 2**(attempt-1)."""
    return random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))


def build_provider(settings: Settings) -> Provider:
    """The provider that `settings` asks for; the anthropic SDK is imported only if used."""
    if settings.provider == "anthropic":
        from .llm_anthropic import AnthropicProvider

        logger.info("LLM provider: anthropic, model %s", settings.anthropic_model)
        return AnthropicProvider.from_settings(settings)
    from .llm_offline import OfflineProvider

    logger.info("LLM provider: offline writer (no ANTHROPIC_API_KEY), %d ms per call",
                settings.offline_llm_delay_ms)
    return OfflineProvider(delay_ms=settings.offline_llm_delay_ms)
