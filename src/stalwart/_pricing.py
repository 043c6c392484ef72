"""What a model call costs: USD per million input and output tokens, by model name.

A leaf: the run limits (``Limits.cost``), the step telemetry and the run history all price a
call the same way, and none of them has to import the others for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

# USD per million tokens (input, output), from the providers' public price lists (2026).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-haiku-4": (1.00, 5.00),
}


def price_of(prices: Mapping[str, tuple[float, float]], model: str) -> tuple[float, float] | None:
    """The (input, output) price of ``model`` in ``prices``, or None when it is not listed.

    Provider-prefixed or dated names (``openai:gpt-4o``, ``gpt-4o-mini-2024-07-18``) take the
    longest listed name inside them, so ``gpt-4o-mini`` is not priced as ``gpt-4o``.
    """
    price = prices.get(model)
    if price is None:
        known = sorted((n for n in prices if n in model), key=len, reverse=True)
        price = prices[known[0]] if known else None
    return price


def cost(
    prices: Mapping[str, tuple[float, float]] | None,
    model: str,
    input_tokens: int,
    output_tokens: int,
) -> float:
    """USD for one call (``prices`` None: :data:`DEFAULT_PRICES`); unlisted models cost 0."""
    price = price_of(DEFAULT_PRICES if prices is None else prices, model)
    if price is None:
        return 0.0
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
