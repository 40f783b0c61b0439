"""USD prices per million tokens for common OpenAI models: (prompt, completion) or, for a model with
prompt caching, (prompt, completion, cached prompt).

OpenAI's standard-tier list prices per 1M tokens. The GPT-5 family (``gpt-5``, ``gpt-5.2``, ``gpt-5.4``,
``gpt-5.5`` and their ``-mini``/``-nano``) was taken 2026-06-21 from public copies of OpenAI's pricing page
that agree with each other (GitHub Copilot's model table and two price trackers); the older models on
2025-06-10 (after that day's o3 price change). Prices change: pass ``MetricsCallback(prices=...)`` with
your own table when the bill matters. A call's cached prompt tokens (``Usage.cached_tokens``) are billed at the cached prompt price when the
model has one, the rest of its prompt at the prompt price. Dated model names match by prefix:
``gpt-4o-2024-08-06`` is priced as ``gpt-4o``. A model that is not here has an unknown cost (``None``),
never 0.
"""

from __future__ import annotations

ModelPrice = tuple[float, float] | tuple[float, float, float]
"""USD per million tokens: (prompt, completion) or (prompt, completion, cached prompt)."""

PRICES_PER_MILLION: dict[str, ModelPrice] = {
    "gpt-5.5": (5.00, 30.00, 0.50),
    "gpt-5.4": (2.50, 15.00, 0.25),
    "gpt-5.4-mini": (0.75, 4.50, 0.075),
    "gpt-5.4-nano": (0.20, 1.25, 0.02),
    "gpt-5.2": (1.75, 14.00, 0.175),
    "gpt-5": (1.25, 10.00, 0.125),
    "gpt-5-mini": (0.25, 2.00, 0.025),
    "gpt-5-nano": (0.05, 0.40, 0.005),
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00, 7.50),
    "o1-mini": (1.10, 4.40, 0.55),
    "o3": (2.00, 8.00, 0.50),
    "o3-mini": (1.10, 4.40, 0.55),
    "o4-mini": (1.10, 4.40, 0.275),
}

def price_for(model: str | None, prices: dict[str, ModelPrice] = PRICES_PER_MILLION) -> ModelPrice | None:
    """Exact name, else the longest priced name that ``model`` starts with followed by ``-``."""
    if model is None:
        return None
    if model in prices:
        return prices[model]
    candidates = [name for name in prices if model.startswith(name + "-")]
    return prices[max(candidates, key=len)] if candidates else None


def cost_usd(model: str | None, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float | None:
    price = price_for(model)
    if price is None:
        return None
    return call_cost(price, prompt_tokens, completion_tokens, cached_tokens)


def call_cost(price: ModelPrice, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float:
    """The USD cost of one call; ``cached_tokens`` (at most ``prompt_tokens`` of them) are billed at the
    cached prompt price when ``price`` has one."""
    if len(price) == 2:
        return float(prompt_tokens) * price[0] / 1e6 + float(completion_tokens) * price[1] / 1e6
    cached = min(cached_tokens, prompt_tokens)
    return (float(prompt_tokens - cached) * price[0] / 1e6 + float(cached) * price[2] / 1e6
            + float(completion_tokens) * price[1] / 1e6)
