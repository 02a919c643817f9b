"""What LLM calls used and cost: one call's tokens, a job's totals, and the price table."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: dollars per million tokens: (input, output)
Price = tuple[float, float]

# US dollars per million tokens, from Anthropic's pricing page
# (platform.claude.com/docs/en/about-claude/pricing and each model's overview page),
# as read on 2026-11-30. Keys match the model id and its dated or `-latest` variants.
PRICES_PER_MTOK: dict[str, Price] = {
    "claude-fable-5-1": (10.0, 50.0),
    "claude-fable-5": (10.0, 50.0),
    "claude-opus-5-5": (4.0, 20.0),
    "claude-opus-5": (5.0, 25.0),
    "claude-opus-4-8": (5.0, 25.0),
    "claude-opus-4-7": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-5-5": (2.0, 10.0),
    "claude-sonnet-5": (2.0, 10.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    # Haiku 5.5's price for prompts up to 100,000 tokens; longer ones are in LONG_PROMPT.
    "claude-haiku-5-5": (0.10, 0.50),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.80, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    # The built-in offline writer calls no LLM.
    "offline": (0.0, 0.0),
}
#: models billed at a higher price on every token of a call whose prompt is over a threshold
LONG_PROMPT: dict[str, tuple[int, Price]] = {
    "claude-haiku-5-5": (100_000, (0.50, 2.50)),
}
_VARIANT = re.compile(r"(-\d{8}|-latest)?")


def table_price(model: str) -> str | None:
    """The price table's key for `model` (`claude-sonnet-4-5-20250929` -> `claude-sonnet-4-5`)."""
    for key in PRICES_PER_MTOK:
        if model.startswith(key) and _VARIANT.fullmatch(model[len(key):]):
            return key
    return None


@dataclass(frozen=True, slots=True)
class TokenCount:
    """What a provider's stream yields between text chunks: the request's token totals so
    far, as the API reported them (each report replaces the one before)."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class CallUsage:
    """One LLM call (one attempt at the provider) as it ended: the tokens the provider
    reported, and their cost in billionths of a dollar (None when the model has no known
    price). Whole nano-dollars add up exactly, where dollars as floats would gather noise
    (0.00031999999999999997); the cheapest token in the table is 100 of them."""

    model: str
    input_tokens: int
    output_tokens: int
    cost_nanousd: int | None

    @property
    def cost_usd(self) -> float | None:
        return None if self.cost_nanousd is None else self.cost_nanousd / 1e9


@dataclass(frozen=True, slots=True)
class Usage:
    """A job's LLM calls so far, added up."""

    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    #: None once any call had no known price: a partial sum would understate the bill
    cost_nanousd: int | None = 0

    @property
    def cost_usd(self) -> float | None:
        return None if self.cost_nanousd is None else self.cost_nanousd / 1e9

    def add(self, call: CallUsage) -> Usage:
        cost = None if self.cost_nanousd is None or call.cost_nanousd is None \
            else self.cost_nanousd + call.cost_nanousd
        return Usage(self.llm_calls + 1, self.input_tokens + call.input_tokens,
                     self.output_tokens + call.output_tokens, cost)


class Pricing:
    """Prices calls: `override` (LLM_PRICE_PER_MTOK) for every model, else the table."""

    def __init__(self, override: Price | None = None) -> None:
        self.override = override

    def cost_nanousd(self, model: str, input_tokens: int, output_tokens: int) -> int | None:
        price = self.override
        if price is None:
            key = table_price(model)
            if key is None:
                return None
            price = PRICES_PER_MTOK[key]
            threshold, long_price = LONG_PROMPT.get(key, (0, price))
            if threshold and input_tokens > threshold:
                price = long_price
        # dollars per million tokens = thousandths of a nano-dollar per token
        return round(input_tokens * price[0] * 1000 + output_tokens * price[1] * 1000)

    def call(self, model: str, input_tokens: int, output_tokens: int) -> CallUsage:
        return CallUsage(model, input_tokens, output_tokens,
                         self.cost_nanousd(model, input_tokens, output_tokens))
