"""The price table and the one way lanewise turns billed usage into money.

The table is a file in LiteLLM's model-price format (`model_prices_and_context_window.json`:
one JSON object keyed by model name, USD per token in keys such as
`input_cost_per_token`, `output_cost_per_token`, `input_cost_per_token_batches`,
`output_cost_per_token_batches`, `cache_read_input_token_cost`,
`cache_creation_input_token_cost`, `cache_creation_input_token_cost_above_1hr`). lanewise
ships a snapshot of the entries of its catalog's models (`data/prices.json`); a team can
point `LANEWISE_PRICES_PATH` at the newest published LiteLLM table instead. Unknown keys
and models are ignored; a model lanewise prices that lacks a rate it needs is a
`ConfigurationError` naming the model and the key.

Numbers are read from the JSON text as exact `Decimal`s (never floats), and every rate
must be a whole number of picodollars (1e-12 USD) per token, so every cost is a whole
number of picodollars and sums in SQL stay exact.

Rates a table may leave out are derived by rules (docs/costs.md):

* batch cached input: `cache_read_input_token_cost_batches` when given; otherwise
  Anthropic: cache read x 0.5 (the cache and batch discounts stack, as Anthropic
  publishes); OpenAI: the batch input rate, the conservative bound, marked unconfirmed
  (OpenAI publishes no batch cached-input rate for the 4o and 4.1 families).
* batch cache writes (5 minutes, 1 hour): the `..._batches` key when given; otherwise
  Anthropic: the live write rate x 0.5; OpenAI: the batch input rate when the model's
  write rate is its input rate (no write surcharge), else the live write rate, marked
  unconfirmed.

Usage (what each response billed, field by field, priced / included / refused) is
read in `lanewise.usage`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from lanewise.errors import ConfigurationError

# Re-exported: callers price and read usage through this module.
from lanewise.usage import UnpricedUsageError, Usage  # noqa: F401

PICODOLLARS_PER_DOLLAR = Decimal(10) ** 12
TOKENS_PER_MILLION = Decimal(1_000_000)
PROVIDERS = ("openai", "anthropic")


class Lane(StrEnum):
    """Which price applies: the live (standard) API or the batch API."""

    LIVE = "live"
    BATCH = "batch"


# --- rates ----------------------------------------------------------------------------

#: LiteLLM keys of the live rates lanewise applies, by LaneRates field.
LIVE_KEYS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cached_input": "cache_read_input_token_cost",
    "cache_write_5m": "cache_creation_input_token_cost",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr",
}
#: The batch rates' keys: the live key plus `_batches`.
BATCH_KEYS = {name: f"{key}_batches" for name, key in LIVE_KEYS.items()}
#: Rates a model lanewise prices must have, per provider (the rest may be derived or
#: left out, and usage that needs a left-out rate is refused).
REQUIRED_KEYS = {
    "openai": ("input_cost_per_token", "output_cost_per_token", "input_cost_per_token_batches",
               "output_cost_per_token_batches", "cache_read_input_token_cost"),
    "anthropic": ("input_cost_per_token", "output_cost_per_token",
                  "input_cost_per_token_batches", "output_cost_per_token_batches",
                  "cache_read_input_token_cost", "cache_creation_input_token_cost"),
}
HALF = Decimal("0.5")
_TIERED = re.compile(r"^(input|output|cache_read_input|cache_creation_input)_\w*?"
                     r"above_(\d+)k_tokens$")

UNCONFIRMED_NOTES = {
    "cache_read_input_token_cost_batches":
        "no public batch cached-input rate (OpenAI's Batch price table and LiteLLM show "
        "none for this model); charged at the batch input rate, the most it can be",
    "cache_creation_input_token_cost_batches":
        "no public batch cache-write rate; charged at the live cache-write rate",
    "cache_creation_input_token_cost_above_1hr_batches":
        "no public batch 1-hour cache-write rate; charged at the live 1-hour rate",
}


@dataclass(frozen=True)
class LaneRates:
    """USD per token on one lane; `None`: the table has no such rate (usage refused)."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write_5m: Decimal | None
    cache_write_1h: Decimal | None


@dataclass(frozen=True)
class ModelPrice:
    """One model's rates, live and batch, with where they come from."""

    model: str
    provider: str
    live: LaneRates
    batch: LaneRates
    source: str = ""
    checked: str = ""
    #: Rates (LiteLLM key names) charged conservatively, each with why.
    unconfirmed: dict[str, str] = field(default_factory=dict)
    #: Rates lanewise derived by a published rule, each with the rule.
    derived: dict[str, str] = field(default_factory=dict)
    #: Prompt sizes above which the table has other rates lanewise does not apply.
    tier_limits: dict[str, int] = field(default_factory=dict)
    #: A separate reasoning-token rate, when the table gives one unlike output's.
    reasoning_rate: Decimal | None = None
    #: OpenAI writes whose price depends on a TTL the chat usage does not report.
    write_ttl_key: str | None = None

    def rates(self, lane: Lane) -> LaneRates:
        """The rates of `lane`."""
        return self.batch if lane is Lane.BATCH else self.live

    def rate_of(self, key: str) -> Decimal | None:
        """The rate lanewise applies for a LiteLLM key (a live one or its `_batches`)."""
        for name, live_key in LIVE_KEYS.items():
            if key == live_key:
                return getattr(self.live, name)
            if key == BATCH_KEYS[name]:
                return getattr(self.batch, name)
        raise KeyError(key)

    def check(self, usage: Usage, lane: Lane) -> None:
        """Refuse usage that needs a rate this model's table entry cannot give."""
        rates = self.rates(lane)
        keys = BATCH_KEYS if lane is Lane.BATCH else LIVE_KEYS
        for field_name, rate_name in (("cache_write_tokens", "cache_write_5m"),
                                      ("cache_write_1h_tokens", "cache_write_1h")):
            count = getattr(usage, field_name)
            if count and getattr(rates, rate_name) is None:
                raise UnpricedUsageError(field_name, count, f"the price table has no "
                                         f"{keys[rate_name]} (nor a rule to derive it)",
                                         model=self.model)
        if self.write_ttl_key and (usage.cache_write_tokens or usage.cache_write_1h_tokens):
            raise UnpricedUsageError(
                "cache_write_tokens", usage.cache_write_tokens, f"the table prices writes by "
                f"TTL ({self.write_ttl_key}) and the usage does not say which",
                model=self.model)
        for key, limit in self.tier_limits.items():
            if usage.prompt_tokens > limit:
                raise UnpricedUsageError("prompt tokens", usage.prompt_tokens,
                                         f"above {limit:,} the table bills {key}",
                                         model=self.model)
        if usage.reasoning_tokens and self.reasoning_rate is not None:
            raise UnpricedUsageError("reasoning_tokens", usage.reasoning_tokens,
                                     "the table bills reasoning apart from output "
                                     "(output_cost_per_reasoning_token)", model=self.model)

    def cost_picodollars(self, usage: Usage, lane: Lane) -> int:
        """`cost_usd` in whole picodollars, with integers only: every rate is a whole
        number of picodollars per token (`_rate` refuses any other), so the result is
        the same, exactly, and cheap enough for every answer of a large run."""
        rates = self._picodollar_rates[lane is Lane.BATCH]
        if rates is None:  # a rate that is not a whole number of picodollars
            return to_picodollars(self.cost_usd(usage, lane))
        self.check(usage, lane)
        return (usage.input_tokens * rates[0] + usage.cached_input_tokens * rates[1]
                + usage.cache_write_tokens * rates[2]
                + usage.cache_write_1h_tokens * rates[3] + usage.output_tokens * rates[4])

    @cached_property
    def _picodollar_rates(self) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
        """(live, batch) rates in picodollars per token, in `cost_picodollars` order;
        None for a lane with a rate that is not a whole number of them."""
        def whole(rates: LaneRates) -> tuple[int, ...] | None:
            scaled = [(rate or 0) * PICODOLLARS_PER_DOLLAR for rate in (
                rates.input, rates.cached_input, rates.cache_write_5m, rates.cache_write_1h,
                rates.output)]
            return None if any(value % 1 for value in scaled) else tuple(map(int, scaled))

        return whole(self.live), whole(self.batch)

    def cost_usd(self, usage: Usage, lane: Lane) -> Decimal:
        """Exact USD cost of `usage` at this model's `lane` rates."""
        self.check(usage, lane)
        rates = self.rates(lane)
        return (usage.input_tokens * rates.input
                + usage.cached_input_tokens * rates.cached_input
                + usage.cache_write_tokens * (rates.cache_write_5m or 0)
                + usage.cache_write_1h_tokens * (rates.cache_write_1h or 0)
                + usage.output_tokens * rates.output)


def per_million(rate: Decimal | None) -> Decimal | None:
    """A per-token rate as USD per million tokens (how pricing pages show it)."""
    return None if rate is None else (rate * TOKENS_PER_MILLION).normalize()


def _rate(model: str, key: str, value: Any, origin: str) -> Decimal:
    try:
        if isinstance(value, bool):
            raise TypeError(value)
        rate = value if isinstance(value, Decimal) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ConfigurationError(f"price table {origin}: model {model!r}: {key} is not a "
                                 f"number ({value!r})") from None
    if not rate.is_finite() or rate < 0:
        raise ConfigurationError(f"price table {origin}: model {model!r}: {key} = {rate} "
                                 "is not a price")
    if (rate * PICODOLLARS_PER_DOLLAR) % 1:
        raise ConfigurationError(
            f"price table {origin}: model {model!r}: {key} = {rate} USD per token is not a "
            "whole number of picodollars, so costs would not be exact")
    return rate


def build_model_price(model: str, entry: dict[str, Any], origin: str = "(table)") -> ModelPrice:
    """A ModelPrice from one LiteLLM-format entry (rates derived by the module's rules)."""
    provider = entry.get("litellm_provider")
    if provider not in PROVIDERS:
        raise ConfigurationError(f"price table {origin}: model {model!r} has litellm_provider "
                                 f"{provider!r}; lanewise prices {', '.join(PROVIDERS)}")
    missing = [k for k in REQUIRED_KEYS[provider] if entry.get(k) is None]
    if missing:
        raise ConfigurationError(f"price table {origin}: model {model!r} lacks "
                                 f"{', '.join(missing)} (needed to price {provider} usage)")

    def get(key: str) -> Decimal | None:
        value = entry.get(key)
        return None if value is None else _rate(model, key, value, origin)

    live = {name: get(key) for name, key in LIVE_KEYS.items()}
    derived: dict[str, str] = {}
    unconfirmed: dict[str, str] = {}
    batch: dict[str, Decimal | None] = {}
    for name, key in BATCH_KEYS.items():
        given = get(key)
        if given is not None or name in ("input", "output"):
            batch[name] = given
            continue
        base = live[name]
        if base is None:
            batch[name] = None
        elif provider == "anthropic":
            batch[name] = _rate(model, key, base * HALF, origin)
            derived[key] = "Anthropic: cache multipliers stack with the 50% batch discount"
        elif name != "cached_input" and base == live["input"]:
            batch[name] = batch["input"]
            derived[key] = "OpenAI: no write surcharge, so writes cost the batch input rate"
        else:
            batch[name] = batch["input"] if name == "cached_input" else base
            unconfirmed[key] = UNCONFIRMED_NOTES[key]
    for key, why in (entry.get("lanewise_added") or {}).items():
        derived[key] = f"added by lanewise {why}"
    listed = entry.get("lanewise_unconfirmed") or []
    note = entry.get("lanewise_note")
    for key in listed:
        unconfirmed[key] = note or unconfirmed.get(key) or "charged conservatively"
    tiers = {}
    for key, value in entry.items():
        match = _TIERED.match(key)
        if match and value is not None:
            tiers[key] = int(match.group(2)) * 1000
    reasoning = get("output_cost_per_reasoning_token")
    ttl_keys = sorted(k for k in entry if k.startswith("cache_creation_input_token_cost_above_")
                      and "hr" in k and k != LIVE_KEYS["cache_write_1h"] and entry[k] is not None)
    return ModelPrice(
        model=model, provider=provider,
        live=LaneRates(**live),
        batch=LaneRates(**batch),
        source=str(entry.get("lanewise_source") or entry.get("source") or ""),
        checked=str(entry.get("lanewise_checked") or ""),
        unconfirmed=unconfirmed, derived=derived,
        tier_limits=dict(sorted(tiers.items(), key=lambda kv: kv[1])[:1]),
        reasoning_rate=reasoning if reasoning is not None and reasoning != live["output"]
        else None,
        write_ttl_key=ttl_keys[0] if provider == "openai" and ttl_keys else None,
    )


class PriceTable:
    """Per-model prices from a LiteLLM-format table (entries parsed when first used)."""

    def __init__(self, entries: dict[str, dict[str, Any]], origin: str = "(table)") -> None:
        self.entries = entries
        self.origin = origin
        self._prices: dict[str, ModelPrice] = {}

    @classmethod
    def from_text(cls, text: str, origin: str = "(table)") -> PriceTable:
        """A table from JSON text in LiteLLM's format (numbers read as exact decimals)."""
        try:
            raw = json.loads(text, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"cannot read price table {origin}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigurationError(f"price table {origin} is not a JSON object keyed by "
                                     "model name (LiteLLM's model_prices format)")
        old = raw.get("models")
        if isinstance(old, dict) and any(isinstance(v, dict) and "batch_input" in v
                                         for v in old.values()):
            raise ConfigurationError(
                f"price table {origin} is in lanewise's old format ('models' with USD per "
                "million); write it in LiteLLM's format (USD per token; see data/prices.json)")
        return cls({k: v for k, v in raw.items() if isinstance(v, dict)}, origin)

    @classmethod
    def from_file(cls, path: Path) -> PriceTable:
        """Load a price table JSON file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read price table {path}: {exc}") from exc
        return cls.from_text(text, str(path))

    def model_names(self) -> list[str]:
        """Every model name the table has an entry for (priced or not)."""
        return sorted(self.entries)

    def annotated_models(self) -> list[str]:
        """Models whose entries carry lanewise's source notes (a lanewise snapshot)."""
        return sorted(m for m, e in self.entries.items() if "lanewise_checked" in e)

    def price(self, model: str) -> ModelPrice:
        """The prices of `model`, or a ConfigurationError (unknown model, missing rate)."""
        if model not in self._prices:
            entry = self.entries.get(model)
            if entry is None:
                shown = self.annotated_models() or self.model_names()
                known = ", ".join(shown[:30]) + (", ..." if len(shown) > 30 else "")
                raise ConfigurationError(
                    f"model {model!r} is not in the price table {self.origin} (known: {known})")
            self._prices[model] = build_model_price(model, entry, self.origin)
        return self._prices[model]

    def cost_usd(self, model: str, usage: Usage, lane: Lane) -> Decimal:
        """Exact USD cost of `usage` for `model` on `lane`."""
        return self.price(model).cost_usd(usage, lane)

    def cost_picodollars(self, model: str, usage: Usage, lane: Lane) -> int:
        """Exact cost of `usage` for `model` on `lane`, in whole picodollars."""
        return self.price(model).cost_picodollars(usage, lane)


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
