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

Usage fields are read by an explicit list per provider (`OPENAI_USAGE_FIELDS`,
`ANTHROPIC_USAGE_FIELDS`, `*_USAGE_LABELS`): priced, included in a priced total, or
refused. A response carrying anything billed that lanewise cannot price raises
`UnpricedUsageError` naming the field, instead of pricing it at 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from lanewise.errors import ConfigurationError

PICODOLLARS_PER_DOLLAR = Decimal(10) ** 12
TOKENS_PER_MILLION = Decimal(1_000_000)
PROVIDERS = ("openai", "anthropic")


class Lane(StrEnum):
    """Which price applies: the live (standard) API or the batch API."""

    LIVE = "live"
    BATCH = "batch"


class UnpricedUsageError(ConfigurationError):
    """A response's usage carries something billed that the price table cannot price."""

    def __init__(self, field_name: str, value: Any, why: str, *, model: str | None = None):
        where = f" (model {model})" if model else ""
        super().__init__(
            f"usage field {field_name}={value!r}{where} cannot be priced: {why}. lanewise "
            "refuses it rather than bill it at 0 (see docs/costs.md)")
        self.field = field_name
        self.value = value


# --- usage ----------------------------------------------------------------------------

PRICED = "priced"      # becomes a Usage field and is billed at a table rate
INCLUDED = "included"  # part of a priced total (billed inside it) or information only
REFUSED = "refused"    # billed in a way the table cannot price: any non-zero value refuses

#: OpenAI chat `usage` (openai 3.54 `CompletionUsage`), by dotted path.
OPENAI_USAGE_FIELDS: dict[str, str] = {
    "prompt_tokens": PRICED,  # minus cached and cache-write tokens: input
    "completion_tokens": PRICED,  # output (reasoning included)
    "total_tokens": INCLUDED,
    "prompt_tokens_details.cached_tokens": PRICED,  # cached input
    "prompt_tokens_details.cache_write_tokens": PRICED,  # cache writes
    "prompt_tokens_details.text_tokens": INCLUDED,
    # Images are metered as prompt tokens at the input rate on chat models.
    "prompt_tokens_details.image_tokens": INCLUDED,
    "prompt_tokens_details.audio_tokens": REFUSED,  # audio has its own rates
    "completion_tokens_details.reasoning_tokens": PRICED,  # kept; billed inside output
    "completion_tokens_details.text_tokens": INCLUDED,
    # Predicted Outputs: both are counted in completion_tokens and billed as output.
    "completion_tokens_details.accepted_prediction_tokens": INCLUDED,
    "completion_tokens_details.rejected_prediction_tokens": INCLUDED,
    "completion_tokens_details.audio_tokens": REFUSED,
}

#: The OpenAI response's `service_tier` (beside `usage`; pass it to `from_openai`).
OPENAI_USAGE_LABELS: dict[str, frozenset[str]] = {
    "service_tier": frozenset({"default"}),  # flex, scale, priority: other rates
}

#: Anthropic `usage` (anthropic 2.12 `Usage`), by dotted path.
ANTHROPIC_USAGE_FIELDS: dict[str, str] = {
    "input_tokens": PRICED,
    "output_tokens": PRICED,
    "cache_read_input_tokens": PRICED,
    "cache_creation_input_tokens": PRICED,  # all writes; split by the two below
    "cache_creation.ephemeral_5m_input_tokens": PRICED,
    "cache_creation.ephemeral_1h_input_tokens": PRICED,
    "output_tokens_details.thinking_tokens": PRICED,  # kept; billed inside output
    # Web fetch costs nothing beyond the tokens it adds; web search is billed per search.
    "server_tool_use.web_fetch_requests": INCLUDED,
    "server_tool_use.web_search_requests": REFUSED,
}

#: Anthropic usage labels and the values lanewise prices (others are refused).
ANTHROPIC_USAGE_LABELS: dict[str, frozenset[str]] = {
    "service_tier": frozenset({"standard", "batch"}),  # priority: other rates
    "speed": frozenset({"standard"}),  # fast mode: premium rates
    "inference_geo": frozenset({"global"}),  # "us": a 1.1x multiplier
}


def _count(path: str, value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnpricedUsageError(path, value, "a token count must be a whole number >= 0")
    return value


def _holds_count(value: Any) -> bool:
    """Whether a value is (or contains) a positive number: a possibly billed count."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value > 0
    if isinstance(value, dict):
        return any(_holds_count(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_count(v) for v in value)
    return False


def read_usage(usage: dict[str, Any], fields: dict[str, str],
               labels: dict[str, frozenset[str]]) -> dict[str, int]:
    """The counts of a usage object by dotted path, refusing what cannot be priced.

    Refused: a REFUSED field above 0; a label outside its priced values; any field not
    in `fields` that holds a positive number (a count lanewise does not know may be
    billed). Unknown fields holding text, booleans, null or zero are ignored.
    """
    counts: dict[str, int] = {}
    for key, value in usage.items():
        if key in labels:
            if value is not None and not (isinstance(value, str) and value in labels[key]):
                raise UnpricedUsageError(key, value, f"lanewise prices only "
                                         f"{', '.join(sorted(labels[key]))}")
            continue
        items = ([(f"{key}.{sub}", v) for sub, v in value.items()]
                 if isinstance(value, dict) else [(key, value)])
        for path, item in items:
            kind = fields.get(path)
            if kind is None:
                if _holds_count(item):
                    raise UnpricedUsageError(path, item, "an unknown usage field that may "
                                             "be billed")
                continue
            n = _count(path, item)
            if kind == REFUSED and n:
                raise UnpricedUsageError(path, n, "the price table has no rate lanewise "
                                         "applies to it")
            counts[path] = n
    return counts


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
    def from_openai(cls, usage: dict[str, Any], *, service_tier: str | None = None) -> Usage:
        """Usage from an OpenAI chat `usage` object (prompt tokens include cached ones
        and cache writes). `service_tier` is the response's, beside `usage`."""
        labelled = dict(usage)
        if service_tier is not None:
            labelled["service_tier"] = service_tier
        counts = read_usage(labelled, OPENAI_USAGE_FIELDS, OPENAI_USAGE_LABELS)
        prompt = counts.get("prompt_tokens", 0)
        cached = counts.get("prompt_tokens_details.cached_tokens", 0)
        writes = counts.get("prompt_tokens_details.cache_write_tokens", 0)
        output = counts.get("completion_tokens", 0)
        reasoning = counts.get("completion_tokens_details.reasoning_tokens", 0)
        if cached + writes > prompt:
            raise UnpricedUsageError("prompt_tokens_details", usage.get("prompt_tokens_details"),
                                     f"cached plus cache-write tokens exceed prompt_tokens "
                                     f"({prompt})")
        if reasoning > output:
            raise UnpricedUsageError("completion_tokens_details.reasoning_tokens", reasoning,
                                     f"more than completion_tokens ({output})")
        return cls(input_tokens=prompt - cached - writes, cached_input_tokens=cached,
                   cache_write_tokens=writes, output_tokens=output, reasoning_tokens=reasoning)

    @classmethod
    def from_anthropic(cls, usage: dict[str, Any]) -> Usage:
        """Usage from an Anthropic `usage` object; cache writes split by TTL when the
        `cache_creation` breakdown is there, else all counted as 5-minute writes."""
        counts = read_usage(usage, ANTHROPIC_USAGE_FIELDS, ANTHROPIC_USAGE_LABELS)
        writes = counts.get("cache_creation_input_tokens", 0)
        if isinstance(usage.get("cache_creation"), dict):
            writes_5m = counts.get("cache_creation.ephemeral_5m_input_tokens", 0)
            writes_1h = counts.get("cache_creation.ephemeral_1h_input_tokens", 0)
            if usage.get("cache_creation_input_tokens") is not None \
                    and writes_5m + writes_1h != writes:
                raise UnpricedUsageError(
                    "cache_creation", usage["cache_creation"],
                    f"the TTL split does not add up to cache_creation_input_tokens ({writes})")
        else:
            writes_5m, writes_1h = writes, 0
        output = counts.get("output_tokens", 0)
        reasoning = counts.get("output_tokens_details.thinking_tokens", 0)
        if reasoning > output:
            raise UnpricedUsageError("output_tokens_details.thinking_tokens", reasoning,
                                     f"more than output_tokens ({output})")
        return cls(input_tokens=counts.get("input_tokens", 0),
                   cached_input_tokens=counts.get("cache_read_input_tokens", 0),
                   cache_write_tokens=writes_5m, output_tokens=output,
                   cache_write_1h_tokens=writes_1h, reasoning_tokens=reasoning)

    @property
    def prompt_tokens(self) -> int:
        """Every input token of the request: uncached, cached and written to cache."""
        return (self.input_tokens + self.cached_input_tokens + self.cache_write_tokens
                + self.cache_write_1h_tokens)

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, ...]:
        """Every field in declaration order."""
        return (self.input_tokens, self.cached_input_tokens, self.cache_write_tokens,
                self.output_tokens, self.cache_write_1h_tokens, self.reasoning_tokens)


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
