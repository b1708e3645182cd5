"""Billed usage as the providers report it, read field by field.

Usage fields are read by an explicit list per provider (`OPENAI_USAGE_FIELDS`,
`ANTHROPIC_USAGE_FIELDS`, `*_USAGE_LABELS`): priced, included in a priced total, or
refused. A response carrying anything billed that lanewise cannot price raises
`UnpricedUsageError` naming the field, instead of pricing it at 0. Prices are applied
in `lanewise.pricing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lanewise.errors import ConfigurationError


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
