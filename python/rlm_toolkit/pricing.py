"""USD prices per million tokens (prompt, completion) for common OpenAI models.

Dated model names match by prefix: ``gpt-4o-2024-08-06`` is priced as ``gpt-4o``. A model that is not
here has an unknown cost (``None``), never 0.
"""

from __future__ import annotations

PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


def price_for(model: str | None, prices: dict[str, tuple[float, float]] = PRICES_PER_MILLION) -> tuple[float, float] | None:
    """Exact name, else the longest priced name that ``model`` starts with followed by ``-``."""
    if model is None:
        return None
    if model in prices:
        return prices[model]
    candidates = [name for name in prices if model.startswith(name + "-")]
    return prices[max(candidates, key=len)] if candidates else None


def cost_usd(model: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    price = price_for(model)
    if price is None:
        return None
    return prompt_tokens * price[0] / 1e6 + completion_tokens * price[1] / 1e6
