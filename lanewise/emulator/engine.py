"""What the emulated models answer and what each answer costs; no HTTP here."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from lanewise.emulator.answers import instance_of, subject_text, summarize
from lanewise.emulator.provider_rules import (
    CACHE_TTL_SECONDS,
    OPENAI_CACHE_MIN_TOKENS,
    OPENAI_CACHE_STEP_TOKENS,
    REASONING_SHARE,
    anthropic_cache_min_tokens,
    is_reasoning_model,
    reasoning_tokens,
    tool_use_system_prompt_tokens,
)
from lanewise.errors import ConfigurationError
from lanewise.pricing import Lane, PriceTable, Usage
from lanewise.tokens import CHARS_PER_TOKEN, content_text, count_prompt_tokens, count_text_tokens

MAX_CACHE_BREAKPOINTS = 4


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


@dataclass(frozen=True)
class CacheUse:
    """What an Anthropic request read from and wrote to the prompt cache, in tokens."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0


class PromptCache:
    """Remembers prompt prefixes per model, as the providers' prompt caches do.

    Anthropic entries live for their TTL (5 minutes or 1 hour), refreshed by every
    hit; OpenAI's automatic cache does not expire here. Bounded (least recently used
    entries go first), so memory stays flat however many requests pass through.
    """

    def __init__(self, max_entries: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()

    def _seen(self, key: bytes, now: float) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        expires_at, ttl = entry
        if expires_at <= now:
            del self._entries[key]
            return False
        self._entries[key] = (now + ttl, ttl)  # a hit refreshes the entry
        self._entries.move_to_end(key)
        return True

    def _remember(self, key: bytes, now: float, ttl: float = math.inf) -> None:
        previous = self._entries.get(key)
        ttl = max(ttl, previous[1]) if previous is not None else ttl
        self._entries[key] = (now + ttl, ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def openai_cached_tokens(self, model: str, prompt: str, prompt_tokens: int) -> int:
        """Automatic caching: the longest seen prefix, in 128-token steps, from 1024."""
        if prompt_tokens < OPENAI_CACHE_MIN_TOKENS:
            return 0
        step_chars = OPENAI_CACHE_STEP_TOKENS * CHARS_PER_TOKEN
        digest = hashlib.blake2b(model.encode(), digest_size=16)
        cached_steps = 0
        matching = True
        with self._lock:
            now = self._clock()
            for step, start in enumerate(range(0, len(prompt) - step_chars + 1, step_chars), 1):
                digest.update(prompt[start : start + step_chars].encode())
                key = digest.copy().digest()
                if matching and self._seen(key, now):
                    cached_steps = step
                else:
                    matching = False
                    self._remember(key, now)
        cached = cached_steps * OPENAI_CACHE_STEP_TOKENS
        if cached < OPENAI_CACHE_MIN_TOKENS:
            return 0
        return min(cached, prompt_tokens - 1)

    def anthropic_prefixes(self, marks: list[tuple[bytes, int, str]]) -> CacheUse:
        """Explicit caching over a request's cacheable breakpoints, shortest first.

        `marks` holds (key, prefix tokens, ttl) per breakpoint long enough to cache.
        The longest prefix seen before is read; each later breakpoint writes the
        tokens between it and the one before, at its own TTL.
        """
        with self._lock:
            now = self._clock()
            hit = next((i for i in range(len(marks) - 1, -1, -1)
                        if self._seen(marks[i][0], now)), -1)
            read = marks[hit][1] if hit >= 0 else 0
            written = {"5m": 0, "1h": 0}
            previous = read
            for key, tokens, ttl in marks[hit + 1:]:
                written[ttl] += max(tokens - previous, 0)
                previous = max(tokens, previous)
                self._remember(key, now, CACHE_TTL_SECONDS[ttl])
        return CacheUse(read, written["5m"], written["1h"])


def _truncate(text: str, max_tokens: int | None) -> tuple[str, bool]:
    if max_tokens is None or count_text_tokens(text) <= max_tokens:
        return text, False
    return text[: max_tokens * CHARS_PER_TOKEN], True


def _provider_of(price: Any, model: str) -> str:
    """The provider a price-table entry names (`provider`, or LiteLLM's
    `litellm_provider`); by the model's name if it names none."""
    provider = getattr(price, "provider", None) or getattr(price, "litellm_provider", None)
    if provider:
        return str(provider)
    return "anthropic" if model.startswith("claude") else "openai"


def _without_cache_control(value: Any) -> Any:
    """`value` with every `cache_control` removed (a prefix's identity ignores it)."""
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value


def _cache_ttl(block: Any) -> str | None:
    """The TTL of a block's `cache_control` mark ("5m" by default), or None if unmarked."""
    mark = block.get("cache_control") if isinstance(block, dict) else None
    if not mark:
        return None
    if not isinstance(mark, dict) or mark.get("type") != "ephemeral":
        raise InvalidRequest(400, "cache_control.type: Input should be 'ephemeral'",
                             param="cache_control")
    ttl = mark.get("ttl") or "5m"
    if not isinstance(ttl, str) or ttl not in CACHE_TTL_SECONDS:
        raise InvalidRequest(400, "cache_control.ttl: Input should be '5m' or '1h'",
                             param="cache_control")
    return ttl


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
        if price is None or _provider_of(price, model) != provider:
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

    @staticmethod
    def _reasoning_effort(model: str, body: dict[str, Any]) -> str | None:
        """The request's `reasoning_effort`, refused where the real API refuses it."""
        effort = body.get("reasoning_effort")
        reasoning = is_reasoning_model(model)
        if effort is not None and not reasoning:
            raise InvalidRequest(400, "Unsupported parameter: 'reasoning_effort' is not "
                                 "supported with this model.", param="reasoning_effort",
                                 code="unsupported_parameter")
        if effort is not None and (not isinstance(effort, str) or effort not in REASONING_SHARE):
            raise InvalidRequest(400, f"Unsupported value: 'reasoning_effort' does not "
                                 f"support {effort!r} with this model. Supported values are: "
                                 "'minimal', 'low', 'medium', and 'high'.",
                                 param="reasoning_effort", code="unsupported_value")
        if reasoning and body.get("max_tokens") is not None:
            raise InvalidRequest(400, "Unsupported parameter: 'max_tokens' is not supported "
                                 "with this model. Use 'max_completion_tokens' instead.",
                                 param="max_tokens", code="unsupported_parameter")
        return effort

    def openai_chat(self, body: dict[str, Any], lane: Lane) -> Answer:
        """Answer a chat.completions request body.

        Reasoning models (gpt-5 family, o-series) think first: their reasoning tokens
        (`provider_rules.reasoning_tokens`) count against `max_completion_tokens`
        before the visible answer, are billed as output and included in
        `completion_tokens`.
        """
        model = self._check_model(body, "openai")
        messages = self._check_messages(body)
        if body.get("stream"):
            raise InvalidRequest(400, "stream is not supported by the emulator", param="stream")
        effort = self._reasoning_effort(model, body)
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
        prompt_tokens = count_prompt_tokens(messages, schema=schema)
        reasoning = reasoning_tokens(model, prompt_tokens, effort)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None and reasoning >= max_tokens:
            reasoning, text, truncated = max_tokens, "", True  # thinking used it all
        else:
            text, truncated = _truncate(text, None if max_tokens is None
                                        else max_tokens - reasoning)
        serialized = "".join(f"{m['role']}\n{content_text(m['content'])}\n" for m in messages)
        cached = self.cache.openai_cached_tokens(model, serialized, prompt_tokens)
        completion_tokens = count_text_tokens(text) + reasoning
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning, "audio_tokens": 0,
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
        billed = Usage(input_tokens=prompt_tokens - cached, cached_input_tokens=cached,
                       output_tokens=completion_tokens, reasoning_tokens=reasoning)
        return Answer(response, billed, model)

    # --- Anthropic ----------------------------------------------------------------

    def anthropic_message(self, body: dict[str, Any], lane: Lane) -> Answer:
        """Answer a Messages API request body.

        Input tokens include the tool-use system prompt Anthropic adds whenever tools
        are given (`provider_rules.TOOL_USE_SYSTEM_PROMPT_TOKENS`); cache writes are
        split by TTL (`usage.cache_creation`).
        """
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
        tools = body.get("tools") or []
        schemas = [t.get("input_schema") for t in tools] or None
        tool_prompt = tool_use_system_prompt_tokens(model, tools, body.get("tool_choice"))
        total_input = count_prompt_tokens(messages, system=system, schema=schemas) + tool_prompt
        cache = self.cache.anthropic_prefixes(
            self._cache_marks(model, body, messages, system, tool_prompt))
        written = cache.write_5m + cache.write_1h
        output_tokens = count_text_tokens(output_text)
        usage = {
            "input_tokens": total_input - cache.read - written,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": cache.read,
            "cache_creation": {"ephemeral_5m_input_tokens": cache.write_5m,
                               "ephemeral_1h_input_tokens": cache.write_1h},
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
        billed = Usage(input_tokens=usage["input_tokens"], cached_input_tokens=cache.read,
                       cache_write_tokens=cache.write_5m, output_tokens=output_tokens,
                       cache_write_1h_tokens=cache.write_1h)
        return Answer(response, billed, model)

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

    def _cache_marks(self, model: str, body: dict[str, Any], messages: list[dict[str, Any]],
                     system: Any, tool_prompt: int) -> list[tuple[bytes, int, str]]:
        """(key, prefix tokens, ttl) of each `cache_control` breakpoint long enough to
        cache, in prompt order: tools, then system blocks, then message blocks."""
        tools = body.get("tools") or []
        prefixes: list[tuple[list[Any], Any, list[dict[str, Any]], str]] = []
        for index, tool in enumerate(tools):
            if ttl := _cache_ttl(tool):
                prefixes.append((tools[: index + 1], None, [], ttl))
        if isinstance(system, list):
            for index, block in enumerate(system):
                if ttl := _cache_ttl(block):
                    prefixes.append((tools, system[: index + 1], [], ttl))
        for number, message in enumerate(messages):
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for index, block in enumerate(content):
                if ttl := _cache_ttl(block):
                    cut = {**message, "content": content[: index + 1]}
                    prefixes.append((tools, system, [*messages[:number], cut], ttl))
        if len(prefixes) > MAX_CACHE_BREAKPOINTS:
            raise InvalidRequest(400, f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with "
                                 f"cache_control may be provided. Found {len(prefixes)}.")
        if not prefixes:
            return []
        minimum = anthropic_cache_min_tokens(model)
        choice = (body.get("tool_choice") or {}).get("type") if tools else None
        marks = []
        for p_tools, p_system, p_messages, ttl in prefixes:
            schemas = [t.get("input_schema") for t in p_tools] or None
            tokens = count_prompt_tokens(p_messages, system=p_system, schema=schemas)
            tokens += tool_prompt if tools else 0
            if tokens < minimum:
                continue  # below the model's minimum nothing is cached or written
            identity = json.dumps(_without_cache_control([model, choice, p_tools, p_system,
                                                          p_messages]),
                                  sort_keys=True, separators=(",", ":"))
            marks.append((hashlib.blake2b(identity.encode(), digest_size=16).digest(),
                          tokens, ttl))
        return marks
