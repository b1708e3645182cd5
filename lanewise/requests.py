"""Turning input rows into requests for a task, or into row rejections with a reason."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from lanewise.catalog import TaskSpec
from lanewise.inputs import InputRow
from lanewise.pricing import Usage
from lanewise.tokens import (
    CHARS_PER_TOKEN,
    count_prompt_tokens,
    reasoning_budget_tokens,
    tool_use_system_tokens,
)

SAFE_KEY = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9_-]{0,47}$")
MAX_KEY_BYTES = 1000  # keys go into a unique index (PostgreSQL refuses entries over ~2.7 kB)
EXCERPT_MARK = " [...]"


@dataclass(frozen=True)
class PreparedRequest:
    """One row's request, provider-neutral: system text plus chat messages."""

    row: int
    key: str
    system: str | None
    messages: list[dict[str, Any]]
    estimated_tokens: int
    excerpted: bool


@dataclass(frozen=True)
class RowRejection:
    """A row that cannot become a request: which row, which field, why."""

    row: int
    key: str | None
    field: str
    reason: str


def custom_id_for(key: str, attempt: int, run_token: str) -> str:
    """A custom_id valid for both providers (at most 64 of `[A-Za-z0-9_-]`), unique per
    (key, run, attempt); the ledger maps it back to the key.

    Keys that already fit are kept readable (up to 48 characters); others become `_h`
    plus a hash. The run token tells this run's requests from another run's over the
    same keys (how a lost Anthropic batch is recognised); the attempt keeps retries
    distinct.
    """
    stem = key if SAFE_KEY.match(key) else "_h" + hashlib.sha1(key.encode()).hexdigest()[:30]
    return f"{stem}--{run_token}-{attempt}"


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _key_problem(key: str | None) -> str | None:
    """Why a key cannot be recorded as it is, or None."""
    if key is None:
        return None
    nul = key.find("\x00")
    if nul >= 0:
        return f"key contains a NUL character at character {nul}"
    if len(key) > MAX_KEY_BYTES // 4 and len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"key too long ({len(key.encode('utf-8'))} bytes; at most {MAX_KEY_BYTES})"
    return None


def prepare(task: TaskSpec, row: InputRow) -> PreparedRequest | RowRejection:
    """Build the request for one row, or say exactly why the row is rejected."""
    key_value = row.values.get(task.input.key)
    key = _cell_text(key_value).strip() or None
    key_problem = _key_problem(key)
    if key_problem is not None:
        key = None  # the ledger could not hold it
    if row.problem is not None:
        field, reason = row.problem
        return RowRejection(row.number, key, field, reason)
    if key_problem is not None:
        return RowRejection(row.number, None, task.input.key, key_problem)
    if key is None:
        reason = "missing key" if task.input.key not in row.values or key_value is None \
            else "empty key"
        return RowRejection(row.number, None, task.input.key, reason)
    for column in task.input.required:
        value = row.values.get(column)
        if value is None:
            return RowRejection(row.number, key, column, "missing text")
        if not _cell_text(value).strip():
            return RowRejection(row.number, key, column, "empty text")
    cells = {name: _cell_text(row.values.get(name)) for name in task.prompt.columns()}
    system, messages, tokens = _render(task, cells)
    excerpted = False
    if tokens > task.max_input_tokens:
        longest = max(cells, key=lambda name: len(cells[name]))
        if task.oversize == "reject":
            return RowRejection(row.number, key, longest,
                                f"text over the model's context: ~{tokens} tokens > "
                                f"{task.max_input_tokens}")
        over_chars = (tokens - task.max_input_tokens) * CHARS_PER_TOKEN + len(EXCERPT_MARK)
        keep = max(len(cells[longest]) - over_chars, 0)
        cells[longest] = cells[longest][:keep] + EXCERPT_MARK
        system, messages, tokens = _render(task, cells)
        excerpted = True
    return PreparedRequest(row.number, key, system, messages, tokens, excerpted)


def estimate_tokens(task: TaskSpec, system: str | None, messages: list[dict[str, Any]]) -> int:
    """Estimated input tokens of one of the task's requests, as the provider bills them:
    its output schema included, and for an Anthropic JSON task (a forced tool call) the
    tool-use system prompt Anthropic adds."""
    schema = task.output.json_schema if task.output.type == "json" else None
    tokens = count_prompt_tokens(messages, system=system, schema=schema)
    if task.provider == "anthropic" and task.output.type == "json":
        tokens += tool_use_system_tokens(task.model, "tool")
    return tokens


def estimate_output_tokens(task: TaskSpec) -> tuple[int, int]:
    """(output tokens, of which reasoning) to budget for one request of the task.

    The visible answer is budgeted at its cap (`max_output_tokens`); a reasoning model
    (gpt-5 family) also spends reasoning tokens, billed as output, budgeted at the
    same cap again.
    """
    reasoning = reasoning_budget_tokens(task.model, task.max_output_tokens)
    return task.max_output_tokens + reasoning, reasoning


def estimated_usage(task: TaskSpec, input_tokens: int, requests: int = 1) -> Usage:
    """The usage `requests` requests of the task are budgeted to bill, from their
    estimated input tokens (cache hits ignored, so a cost estimate is never low)."""
    output, reasoning = estimate_output_tokens(task)
    return Usage(input_tokens=input_tokens, output_tokens=output * requests,
                 reasoning_tokens=reasoning * requests)


def _render(task: TaskSpec, cells: dict[str, str]) -> tuple[str | None, list[dict], int]:
    system = task.prompt.system.format_map(cells) if task.prompt.system else None
    messages = [{"role": "user", "content": task.prompt.user.format_map(cells)}]
    return system, messages, estimate_tokens(task, system, messages)
