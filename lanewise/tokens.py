"""The one tokens-from-text rule, used by the emulator and by lanewise's estimates.

A token is four characters, rounded up: `ceil(len(text) / 4)`. Every chat message
adds a fixed overhead of 3 tokens and every request 3 more for the reply's priming,
mirroring the usual tiktoken rule of thumb. Real tokenizers differ by a few percent;
`tiktoken` cannot fetch its encodings offline, so nothing here depends on it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lanewise.memo import per_object

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 3
REQUEST_OVERHEAD_TOKENS = 3

# Anthropic adds a tool-use system prompt, billed as input, to every request that
# carries `tools`. Per model (looked up by the longest name prefix, so dated snapshots
# and aliases find their family): (tokens with tool_choice auto or none, tokens with
# tool_choice any or tool), as published in the table "Tool use system prompt token
# count" of https://platform.claude.com/docs/en/agents-and-tools/tool-use/overview
# (Pricing). Earlier editions of that page gave the 4.5 models 346 / 313; the current
# one gives 496 / 588. The emulator keeps its own copy on purpose (a provider's figure
# is not lanewise's estimate); a test holds the two equal.
TOOL_USE_SYSTEM_TOKENS: dict[str, tuple[int, int]] = {
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
TOOL_USE_SYSTEM_TOKENS_SOURCE = (
    "https://platform.claude.com/docs/en/agents-and-tools/tool-use/overview#pricing")
# For a model missing from the table: the largest figure the page publishes (Claude
# Opus 4.7's), so an estimate is never low.
TOOL_USE_SYSTEM_TOKENS_UNKNOWN = (675, 804)

# Reasoning models bill their hidden reasoning tokens as output (OpenAI's gpt-5 family
# except the chat models, and the o series: `completion_tokens_details.reasoning_tokens`,
# part of `completion_tokens`; https://platform.openai.com/docs/guides/reasoning).
REASONING_MODEL = re.compile(r"^(gpt-5(?!-chat)|o[1-9])")


def tool_use_system_tokens(model: str, tool_choice: str = "tool") -> int:
    """Tokens of Anthropic's tool-use system prompt for `model`; `tool_choice` is the
    request's tool_choice type (`auto`, `none`, `any` or `tool`; lanewise's JSON tasks
    force one tool: `tool`)."""
    family = max((name for name in TOOL_USE_SYSTEM_TOKENS if model.startswith(name)),
                 key=len, default=None)
    auto, forced = TOOL_USE_SYSTEM_TOKENS[family] if family else TOOL_USE_SYSTEM_TOKENS_UNKNOWN
    if tool_choice in ("auto", "none"):
        return auto
    if tool_choice in ("any", "tool"):
        return forced
    raise ValueError(f"unknown tool_choice {tool_choice!r} (auto, none, any or tool)")


def is_reasoning_model(model: str) -> bool:
    """Whether `model` spends reasoning tokens, billed as output."""
    return REASONING_MODEL.match(model) is not None


def reasoning_budget_tokens(model: str, max_output_tokens: int) -> int:
    """Reasoning tokens to budget for one request: a reasoning model gets as many as
    its visible answer may have (`max_output_tokens`), any other model none."""
    return max_output_tokens if is_reasoning_model(model) else 0


def count_text_tokens(text: str) -> int:
    """Tokens in a piece of text under the four-characters rule."""
    return -(-len(text) // CHARS_PER_TOKEN)


def content_text(content: Any) -> str:
    """Flatten a message `content` (string or list of blocks) into plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if "text" in block and isinstance(block["text"], str):
                    parts.append(block["text"])
                elif "content" in block:
                    parts.append(content_text(block["content"]))
                elif "input" in block:
                    parts.append(json.dumps(block["input"], sort_keys=True))
            elif isinstance(block, str):
                parts.append(block)
        return "\n".join(parts)
    return str(content)


def count_prompt_tokens(
    messages: list[dict[str, Any]],
    *,
    system: Any = None,
    schema: Any = None,
) -> int:
    """Input tokens of a chat request: messages, optional system text, optional schema."""
    total = REQUEST_OVERHEAD_TOKENS
    if system:
        total += MESSAGE_OVERHEAD_TOKENS + count_text_tokens(content_text(system))
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + count_text_tokens(content_text(message.get("content")))
    if schema is not None:
        total += schema_tokens(schema)
    return total


@per_object
def schema_tokens(schema: Any) -> int:
    """Tokens of a schema's compact JSON (once per schema: dumping it for every row
    would dominate planning)."""
    return count_text_tokens(json.dumps(schema, sort_keys=True, separators=(",", ":")))
