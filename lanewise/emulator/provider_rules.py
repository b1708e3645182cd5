"""The providers' published per-model billing rules, as data, each with its source.

The emulator bills like a provider: the figures below are what the vendors publish
(each table names its page); `docs/emulator.md` shows them and how they are applied.
They are the provider's side on purpose: lanewise's own estimates (`lanewise.tokens`)
keep their own copy, so a wrong figure on either side shows up as a difference.
A model is looked up by the longest name prefix in a table, so dated snapshots
(`claude-sonnet-4-5-20250929`) and aliases (`claude-opus-4-0`) find their family.
"""

from __future__ import annotations

import re
from typing import TypeVar

T = TypeVar("T")

# --- Anthropic: the tool-use system prompt ------------------------------------------

TOOL_USE_SOURCE = (
    "https://platform.claude.com/docs/en/agents-and-tools/tool-use/overview#pricing "
    "(table 'Tool use system prompt token count', edition of 2026-07; it assumes at least "
    "one tool, and with no tools tool_choice none adds 0)"
)
# Model prefix -> (tokens for tool_choice auto or none, tokens for any or tool). The
# current edition of the table; its late-2025 edition (docs.claude.com) gave every
# Claude 4.x model 346 / 313, and the retired Claude 3 rows come from there.
TOOL_USE_SYSTEM_PROMPT_TOKENS: dict[str, tuple[int, int]] = {
    "claude-opus-4-8": (290, 410),
    "claude-opus-4-7": (675, 804),
    "claude-opus-4-6": (497, 589),
    "claude-opus-4-5": (496, 588),
    "claude-opus-4-1": (313, 315),
    "claude-opus-4": (313, 315),
    "claude-sonnet-5": (354, 474),
    "claude-sonnet-4-6": (497, 589),
    "claude-sonnet-4-5": (496, 588),
    "claude-sonnet-4": (313, 315),
    "claude-haiku-4-5": (496, 588),
    "claude-3-5-haiku": (264, 355),
    "claude-3-7-sonnet": (346, 313),
    "claude-3-opus": (530, 281),
    "claude-3-sonnet": (159, 235),
    "claude-3-haiku": (264, 340),
}
TOOL_USE_DEFAULT = (496, 588)  # a Claude model not listed: the 4.5 generation's figure

# --- Prompt caching: the minimum cacheable prompt --------------------------------------

ANTHROPIC_CACHE_MIN_SOURCE = (
    "https://platform.claude.com/docs/en/build-with-claude/prompt-caching#cache-limitations "
    "('The minimum cacheable prompt length is: ...'; shorter prefixes are processed "
    "without caching, and no error is returned)"
)
ANTHROPIC_CACHE_MIN_TOKENS: dict[str, int] = {
    "claude-opus-4-8": 1024,
    "claude-opus-4-7": 2048,
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-opus-4-1": 1024,
    "claude-opus-4": 1024,
    "claude-sonnet-5": 1024,
    "claude-sonnet-4-6": 1024,
    "claude-sonnet-4-5": 1024,
    "claude-sonnet-4": 1024,
    "claude-haiku-4-5": 4096,
    "claude-3-7-sonnet": 1024,
    "claude-3-5-sonnet": 1024,
    "claude-3-opus": 1024,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}
ANTHROPIC_CACHE_MIN_DEFAULT = 1024
OPENAI_CACHE_SOURCE = (
    "https://platform.openai.com/docs/guides/prompt-caching (automatic for prompts of "
    "1,024 tokens or more, hits in 128-token increments)"
)
OPENAI_CACHE_MIN_TOKENS = 1024
OPENAI_CACHE_STEP_TOKENS = 128
# Anthropic cache lifetimes by `cache_control.ttl` (refreshed on every hit).
CACHE_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}

# --- OpenAI: reasoning tokens -----------------------------------------------------------

REASONING_SOURCE = (
    "https://platform.openai.com/docs/guides/reasoning (reasoning tokens are billed as "
    "output tokens, count against max_completion_tokens and are reported in "
    "usage.completion_tokens_details.reasoning_tokens)"
)
REASONING_MODEL = re.compile(r"^(gpt-5(?!-chat)|o[1-9])")
# The emulator's deterministic stand-in for how long a model thinks: this share of the
# prompt's tokens, rounded up to whole 64-token steps (real counts come in such steps).
REASONING_SHARE = {"none": (0, 1), "minimal": (0, 1), "low": (1, 4), "medium": (1, 2),
                   "high": (1, 1)}
REASONING_DEFAULT_EFFORT = "medium"
REASONING_STEP_TOKENS = 64


def by_prefix(table: dict[str, T], model: str, default: T) -> T:
    """The entry of the longest key that `model` starts with, else `default`."""
    best = max((key for key in table if model.startswith(key)), key=len, default=None)
    return default if best is None else table[best]


def tool_use_system_prompt_tokens(model: str, tools: object, tool_choice: object) -> int:
    """Input tokens Anthropic adds for the tool-use system prompt of a request."""
    if not tools:
        return 0
    kind = tool_choice.get("type") if isinstance(tool_choice, dict) else None
    auto_or_none, forced = by_prefix(TOOL_USE_SYSTEM_PROMPT_TOKENS, model, TOOL_USE_DEFAULT)
    return forced if kind in ("any", "tool") else auto_or_none


def anthropic_cache_min_tokens(model: str) -> int:
    """The shortest prefix Anthropic caches for `model`."""
    return by_prefix(ANTHROPIC_CACHE_MIN_TOKENS, model, ANTHROPIC_CACHE_MIN_DEFAULT)


def is_reasoning_model(model: str) -> bool:
    """gpt-5, gpt-5-mini, gpt-5-nano (not gpt-5-chat) and the o-series think first."""
    return bool(REASONING_MODEL.match(model))


def reasoning_tokens(model: str, prompt_tokens: int, effort: str | None) -> int:
    """The emulator's reasoning tokens for a prompt: 0 for models that do not reason."""
    if not is_reasoning_model(model):
        return 0
    numerator, denominator = REASONING_SHARE[effort or REASONING_DEFAULT_EFFORT]
    if numerator == 0:
        return 0
    step = REASONING_STEP_TOKENS
    steps = -(-prompt_tokens * numerator // (denominator * step))
    return max(steps, 1) * step
