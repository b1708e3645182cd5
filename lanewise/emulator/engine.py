"""What the emulated models answer and what each answer costs; no HTTP here."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from lanewise.emulator.answers import instance_of, subject_text, summarize
from lanewise.errors import ConfigurationError
from lanewise.pricing import Lane, PriceTable, Usage
from lanewise.tokens import CHARS_PER_TOKEN, content_text, count_prompt_tokens, count_text_tokens

CACHE_MIN_TOKENS = 1024
OPENAI_CACHE_STEP_TOKENS = 128


class InvalidRequest(Exception):  # noqa: N818 - an HTTP answer, not a lanewise error
    """A request the emulated API rejects; the HTTP layer renders it per provider."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Answer:
    """One generated answer: the provider-shaped body and what it bills."""

    body: dict[str, Any]
    usage: Usage
    model: str


class PromptCache:
    """Remembers prompt prefixes per model, as the providers' prompt caches do.

    Bounded (least recently used entries go first), so memory stays flat however
    many requests pass through.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def _seen(self, key: bytes) -> bool:
        if key in self._entries:
            self._entries.move_to_end(key)
            return True
        return False

    def _remember(self, key: bytes) -> None:
        self._entries[key] = None
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def openai_cached_tokens(self, model: str, prompt: str, prompt_tokens: int) -> int:
        """Automatic caching: the longest seen prefix, in 128-token steps, from 1024."""
        if prompt_tokens < CACHE_MIN_TOKENS:
            return 0
        step_chars = OPENAI_CACHE_STEP_TOKENS * CHARS_PER_TOKEN
        digest = hashlib.blake2b(model.encode(), digest_size=16)
        cached_steps = 0
        matching = True
        with self._lock:
            for step, start in enumerate(range(0, len(prompt) - step_chars + 1, step_chars), 1):
                digest.update(prompt[start : start + step_chars].encode())
                key = digest.copy().digest()
                if matching and self._seen(key):
                    cached_steps = step
                else:
                    matching = False
                    self._remember(key)
        cached = cached_steps * OPENAI_CACHE_STEP_TOKENS
        if cached < CACHE_MIN_TOKENS:
            return 0
        return min(cached, prompt_tokens - 1)

    def anthropic_prefix(self, model: str, prefix: str) -> bool:
        """Explicit caching: True if this exact prefix was written before (a read)."""
        key = hashlib.blake2b((model + "\x00" + prefix).encode(), digest_size=16).digest()
        with self._lock:
            if self._seen(key):
                return True
            self._remember(key)
            return False


def _truncate(text: str, max_tokens: int | None) -> tuple[str, bool]:
    if max_tokens is None or count_text_tokens(text) <= max_tokens:
        return text, False
    return text[: max_tokens * CHARS_PER_TOKEN], True


class ModelEngine:
    """Generates deterministic answers with usage for OpenAI and Anthropic requests."""

    def __init__(self, prices: PriceTable, cache: PromptCache | None = None) -> None:
        self.prices = prices
        self.cache = cache or PromptCache()
        self._ids = itertools.count(1)

    def _check_model(self, body: dict[str, Any], provider: str) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest(400, "you must provide a model parameter", param="model")
        try:
            price = self.prices.price(model)
        except ConfigurationError:
            price = None
        if price is None or price.provider != provider:
            kind = "invalid_request_error" if provider == "openai" else "not_found_error"
            raise InvalidRequest(404, f"The model `{model}` does not exist.", kind=kind,
                                 param="model", code="model_not_found")
        return model

    @staticmethod
    def _check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest(400, "messages: must be a non-empty array", param="messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise InvalidRequest(400, f"messages.{index}: needs 'role' and 'content'",
                                     param=f"messages.{index}")
        return messages

    # --- OpenAI -------------------------------------------------------------------

    def openai_chat(self, body: dict[str, Any], lane: Lane) -> Answer:
        """Answer a chat.completions request body."""
        model = self._check_model(body, "openai")
        messages = self._check_messages(body)
        if body.get("stream"):
            raise InvalidRequest(400, "stream is not supported by the emulator", param="stream")
        response_format = body.get("response_format") or {}
        schema = None
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise InvalidRequest(400, "response_format.json_schema.schema is required",
                                     param="response_format")
        subject = subject_text(messages, content_text)
        if schema is not None:
            text = json.dumps(instance_of(schema, subject), separators=(",", ":"))
        elif response_format.get("type") == "json_object":
            text = json.dumps({"answer": summarize(subject)})
        else:
            text = summarize(subject)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        text, truncated = _truncate(text, max_tokens)
        prompt_tokens = count_prompt_tokens(messages, schema=schema)
        serialized = "".join(f"{m['role']}\n{content_text(m['content'])}\n" for m in messages)
        cached = self.cache.openai_cached_tokens(model, serialized, prompt_tokens)
        completion_tokens = count_text_tokens(text)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        }
        response = {
            "id": f"chatcmpl-emu{next(self._ids):010d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None,
                            "annotations": []},
                "logprobs": None,
                "finish_reason": "length" if truncated else "stop",
            }],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_lanewise_emulator",
        }
        return Answer(response, Usage.from_openai(usage), model)

    # --- Anthropic ----------------------------------------------------------------

    def anthropic_message(self, body: dict[str, Any], lane: Lane) -> Answer:
        """Answer a Messages API request body."""
        model = self._check_model(body, "anthropic")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidRequest(400, "max_tokens: Field required (a positive integer)",
                                 param="max_tokens")
        messages = self._check_messages(body)
        if body.get("stream"):
            raise InvalidRequest(400, "stream: streaming is not supported here", param="stream")
        system = body.get("system")
        tool = self._forced_tool(body)
        subject = subject_text(messages, content_text)
        if tool is not None:
            payload = instance_of(tool.get("input_schema") or {}, subject)
            output_text = json.dumps(payload, separators=(",", ":"))
            content = [{"type": "tool_use", "id": f"toolu_emu{next(self._ids):010d}",
                        "name": tool["name"], "input": payload}]
            truncated = count_text_tokens(output_text) > max_tokens
            stop_reason = "max_tokens" if truncated else "tool_use"
        else:
            output_text, truncated = _truncate(summarize(subject), max_tokens)
            content = [{"type": "text", "text": output_text}]
            stop_reason = "max_tokens" if truncated else "end_turn"
        schemas = [t.get("input_schema") for t in body.get("tools") or []] or None
        total_input = count_prompt_tokens(messages, system=system, schema=schemas)
        cache_read, cache_write = self._anthropic_cache(model, body, messages, system)
        usage = {
            "input_tokens": total_input - cache_read - cache_write,
            "output_tokens": count_text_tokens(output_text),
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
            "service_tier": "batch" if lane is Lane.BATCH else "standard",
        }
        response = {
            "id": f"msg_emu{next(self._ids):012d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        return Answer(response, Usage.from_anthropic(usage), model)

    @staticmethod
    def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {}
        if not tools or choice.get("type") not in ("tool", "any"):
            return None
        if choice.get("type") == "any":
            return tools[0]
        for tool in tools:
            if tool.get("name") == choice.get("name"):
                return tool
        raise InvalidRequest(400, f"tool_choice names unknown tool {choice.get('name')!r}",
                             param="tool_choice")

    def _anthropic_cache(self, model: str, body: dict[str, Any],
                         messages: list[dict[str, Any]], system: Any) -> tuple[int, int]:
        """(read, write) tokens for the prefix up to the last `cache_control` mark."""
        parts: list[tuple[str, Any, bool]] = []
        if system:
            marked = isinstance(system, list) and any(
                isinstance(b, dict) and b.get("cache_control") for b in system)
            parts.append(("system", system, marked))
        for message in messages:
            content = message.get("content")
            marked = isinstance(content, list) and any(
                isinstance(b, dict) and b.get("cache_control") for b in content)
            parts.append((message.get("role", ""), content, marked))
        last_mark = max((i for i, (_, _, marked) in enumerate(parts) if marked), default=-1)
        if last_mark < 0:
            return 0, 0
        prefix_parts = parts[: last_mark + 1]
        prefix_system = prefix_parts[0][1] if prefix_parts[0][0] == "system" else None
        prefix_messages = [{"role": r, "content": c} for r, c, _ in prefix_parts if r != "system"]
        tokens = count_prompt_tokens(prefix_messages, system=prefix_system)
        if tokens < CACHE_MIN_TOKENS:
            return 0, 0
        serialized = "".join(f"{r}\n{content_text(c)}\n" for r, c, _ in prefix_parts)
        if self.cache.anthropic_prefix(model, serialized):
            return tokens, 0
        return 0, tokens
