"""The one tokens-from-text rule, used by the emulator and by lanewise's estimates.

A token is four characters, rounded up: `ceil(len(text) / 4)`. Every chat message
adds a fixed overhead of 3 tokens and every request 3 more for the reply's priming,
mirroring the usual tiktoken rule of thumb. Real tokenizers differ by a few percent;
`tiktoken` cannot fetch its encodings offline, so nothing here depends on it.
"""

from __future__ import annotations

import json
from typing import Any

from lanewise.memo import per_object

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 3
REQUEST_OVERHEAD_TOKENS = 3


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
