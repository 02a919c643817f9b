"""Anthropic's Messages API through the official SDK, its exceptions mapped to job error codes."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import anthropic
import httpx2

from .errors import LLMError, LLMStreamBroken
from .usage import TokenCount

if TYPE_CHECKING:
    from .settings import Settings


class AnthropicProvider:
    """Streams replies with `messages.stream`; the SDK retries 408/409/429/5xx/529 itself."""

    name = "anthropic"

    def __init__(self, client: anthropic.AsyncAnthropic, *, model: str) -> None:
        self.client = client
        self.model = model

    @classmethod
    def from_settings(cls, settings: Settings, *, http_client: httpx2.AsyncClient | None = None) -> AnthropicProvider:
        client = anthropic.AsyncAnthropic(
            api_key=settings.anthropic_api_key,
            base_url=settings.anthropic_base_url,
            timeout=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            http_client=http_client,
        )
        return cls(client, model=settings.anthropic_model)

    async def stream(self, prompt: str, *,
                     max_tokens: int) -> AsyncGenerator[str | TokenCount, None]:
        """The reply's text, and the usage as the API reports it: `message_start` has the
        input tokens, each `message_delta` the output so far. A stream cut midway has
        reported what it got; the SDK's own retries happen before a reply's body, on error
        answers that carry no usage."""
        received = False
        try:
            async with self.client.messages.stream(
                model=self.model,
                max_tokens=max_tokens,
                messages=[{"role": "user", "content": prompt}],
            ) as stream:
                usage: TokenCount | None = None
                async for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        received = True
                        yield event.delta.text
                    elif event.type == "message_start":
                        usage = TokenCount(event.message.usage.input_tokens,
                                           event.message.usage.output_tokens)
                        yield usage
                    elif event.type == "message_delta" and usage is not None:
                        # Cumulative totals; input_tokens only when the API repeats it.
                        usage = TokenCount(event.usage.input_tokens or usage.input_tokens,
                                           event.usage.output_tokens)
                        yield usage
                await stream.get_final_message()  # raises if no message came at all
        except anthropic.APIError as exc:
            raise map_api_error(exc, received=received) from exc
        except (ValueError, TypeError, AssertionError, RuntimeError) as exc:
            # The SDK's stream parser raises these for a body that is not the Messages API's
            # event stream: an event that is not JSON, events out of order, no message at all.
            raise LLMError(
                f"The Anthropic API sent a reply that could not be read ({type(exc).__name__})."
            ) from exc
        except httpx2.TransportError as exc:
            # A body cut midway escapes the SDK as httpx2's own error, not an APIError.
            raise LLMStreamBroken(
                f"The connection to the Anthropic API broke mid-reply ({type(exc).__name__})."
            ) from exc

    async def aclose(self) -> None:
        await self.client.close()


def map_api_error(exc: anthropic.APIError, *, received: bool) -> LLMError:
    """The job error for an SDK exception, raised after the SDK's own retries."""
    if isinstance(exc, anthropic.APITimeoutError):
        return LLMError("The Anthropic API did not answer in time.", code="llm_timeout")
    if isinstance(exc, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
        return LLMError(
            f"The Anthropic API refused the API key ({exc.status_code}); check ANTHROPIC_API_KEY.",
            code="llm_auth",
        )
    if isinstance(exc, anthropic.RateLimitError):
        return LLMError("The Anthropic API kept answering 429 (rate limited) after retries.",
                        code="llm_rate_limited")
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code == 529:
        error = LLMError("The Anthropic API kept answering 529 (overloaded) after retries.",
                         code="llm_overloaded")
    elif isinstance(exc, anthropic.APIStatusError):
        error = LLMError(f"The Anthropic API answered {exc.status_code}.")
    elif isinstance(exc, anthropic.APIConnectionError):
        error = LLMError("The Anthropic API could not be reached.")
    else:
        error = LLMError(f"The Anthropic API sent a reply that could not be read "
                         f"({type(exc).__name__}).")
    if received:
        # Text already went out; trying the call again is the caller's choice.
        return LLMStreamBroken(error.message + " The reply broke off midway.", code=error.code)
    return error
