"""The price table and the one way lanewise turns billed usage into money.

Prices are USD per million tokens, kept as `Decimal` so a run's cost adds up to the
provider's bill exactly. Costs are also expressed as integer picodollars
(1e-12 USD) for storage: every rate in the table times a whole number of tokens is a
whole number of picodollars, so sums in SQL stay exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from lanewise.errors import ConfigurationError

PICODOLLARS_PER_DOLLAR = Decimal(10) ** 12
TOKENS_PER_PRICE_UNIT = Decimal(1_000_000)


class Lane(StrEnum):
    """Which price applies: the live (standard) API or the batch API."""

    LIVE = "live"
    BATCH = "batch"


@dataclass(frozen=True)
class Usage:
    """Billed tokens of one request, split the way prices are.

    `input_tokens` excludes cache reads and cache writes (Anthropic's convention;
    OpenAI's `prompt_tokens` is converted with `from_openai`). `cache_write_tokens`
    are 5-minute cache writes, `cache_write_1h_tokens` 1-hour ones (priced apart).
    `output_tokens` includes `reasoning_tokens` (billed as output; kept apart only to
    be shown).
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: dict[str, Any]) -> Usage:
        """Usage from an OpenAI chat `usage` object (prompt tokens include cached ones)."""
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return cls(
            input_tokens=int(usage.get("prompt_tokens", 0)) - int(cached),
            cached_input_tokens=int(cached),
            output_tokens=int(usage.get("completion_tokens", 0)),
        )

    @classmethod
    def from_anthropic(cls, usage: dict[str, Any]) -> Usage:
        """Usage from an Anthropic `usage` object."""
        return cls(
            input_tokens=int(usage.get("input_tokens") or 0),
            cached_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
            cache_write_tokens=int(usage.get("cache_creation_input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, ...]:
        """Every field in declaration order."""
        return (self.input_tokens, self.cached_input_tokens, self.cache_write_tokens,
                self.output_tokens, self.cache_write_1h_tokens, self.reasoning_tokens)


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens for one model, live and batch."""

    provider: str
    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write_input: Decimal
    batch_input: Decimal
    batch_output: Decimal
    batch_cached_input: Decimal
    batch_cache_write_input: Decimal

    def cost_usd(self, usage: Usage, lane: Lane) -> Decimal:
        """Exact USD cost of `usage` at this model's `lane` rates."""
        if lane is Lane.BATCH:
            rates = (
                self.batch_input,
                self.batch_cached_input,
                self.batch_cache_write_input,
                self.batch_output,
            )
        else:
            rates = (self.input, self.cached_input, self.cache_write_input, self.output)
        tokens = (
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.cache_write_tokens,
            usage.output_tokens,
        )
        total = sum((Decimal(n) * rate for n, rate in zip(tokens, rates, strict=True)), Decimal(0))
        return total / TOKENS_PER_PRICE_UNIT


class PriceTable:
    """Per-model prices loaded from the price table file in `data/`."""

    def __init__(self, models: dict[str, ModelPrice]) -> None:
        self.models = models

    @classmethod
    def from_file(cls, path: Path) -> PriceTable:
        """Load and check a price table JSON file."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"cannot read price table {path}: {exc}") from exc
        models = {}
        for name, row in raw.get("models", {}).items():
            try:
                models[name] = ModelPrice(
                    provider=row["provider"],
                    input=Decimal(row["input"]),
                    output=Decimal(row["output"]),
                    cached_input=Decimal(row.get("cached_input", row["input"])),
                    cache_write_input=Decimal(row.get("cache_write_input", row["input"])),
                    batch_input=Decimal(row["batch_input"]),
                    batch_output=Decimal(row["batch_output"]),
                    batch_cached_input=Decimal(row.get("batch_cached_input", row["batch_input"])),
                    batch_cache_write_input=Decimal(
                        row.get("batch_cache_write_input", row["batch_input"])
                    ),
                )
            except (KeyError, ArithmeticError) as exc:
                raise ConfigurationError(
                    f"price table {path}: model {name!r} has a missing or bad field: {exc}"
                ) from exc
        return cls(models)

    def price(self, model: str) -> ModelPrice:
        """The prices of `model`, or a ConfigurationError naming the known models."""
        try:
            return self.models[model]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise ConfigurationError(
                f"model {model!r} is not in the price table (known: {known})"
            ) from None

    def cost_usd(self, model: str, usage: Usage, lane: Lane) -> Decimal:
        """Exact USD cost of `usage` for `model` on `lane`."""
        return self.price(model).cost_usd(usage, lane)


def to_picodollars(usd: Decimal) -> int:
    """Whole picodollars of an exact USD amount (exact for every rate in the table)."""
    return int((usd * PICODOLLARS_PER_DOLLAR).to_integral_value())


def from_picodollars(picodollars: int) -> Decimal:
    """USD from whole picodollars."""
    return Decimal(picodollars) / PICODOLLARS_PER_DOLLAR


@lru_cache(maxsize=8)
def load_price_table(path: Path) -> PriceTable:
    """The price table at `path`, loaded once per process."""
    return PriceTable.from_file(path)
