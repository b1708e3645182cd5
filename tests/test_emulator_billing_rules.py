"""The emulator bills like a provider: each published billing rule, through the official SDKs.

Figures are the providers' own (see `lanewise/emulator/provider_rules.py` for the pages):
the tool-use system prompt per Claude model, reasoning tokens on reasoning models, the
prompt-cache minimums and TTLs, the no-credit answers, the cancel states, the absolute
`results_url`, the enqueued-token limit, and when each billing row was billed.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from lanewise.emulator import EmulatorConfig, Limits, running_emulator
from lanewise.emulator.provider_rules import reasoning_tokens, tool_use_system_prompt_tokens
from lanewise.pricing import Lane, Usage, from_picodollars, load_price_table, to_picodollars
from lanewise.settings import get_settings
from lanewise.tokens import count_prompt_tokens, count_text_tokens
from tests.conftest import FAST, OPENAI_TERMINAL, chat_line, upload_lines, wait_for

pytestmark = pytest.mark.filterwarnings(
    "ignore:The model 'claude-sonnet-4-5' is deprecated:DeprecationWarning")

CLAUDE_MODELS = ("claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-5")
# The published tool-use system prompt (auto or none, any or tool), from the table at
# https://platform.claude.com/docs/en/agents-and-tools/tool-use/overview#pricing
PUBLISHED_TOOL_PROMPT = {"claude-haiku-4-5": (496, 588), "claude-sonnet-4-5": (496, 588),
                         "claude-opus-4-5": (496, 588)}
# The published minimum cacheable prompt, from
# https://platform.claude.com/docs/en/build-with-claude/prompt-caching#cache-limitations
PUBLISHED_CACHE_MIN = {"claude-sonnet-4-5": 1024, "claude-haiku-4-5": 4096,
                       "claude-opus-4-5": 4096}
TAG_TOOL = {"name": "tag", "input_schema": {"type": "object", "properties": {
    "topic": {"type": "string", "enum": ["billing", "login", "export", "other"]}},
    "required": ["topic"]}}


def nonce() -> str:
    """Text no earlier request sent (the emulator's prompt cache spans the session)."""
    return uuid.uuid4().hex


def records(control: httpx.Client, **filters) -> list[dict]:
    return [json.loads(x) for x in control.get("/billing/records", params=filters)
            .text.splitlines()]


def record_of(control: httpx.Client, response_id: str) -> dict:
    """The billing row of one live answer (its request id ends the answer's id)."""
    wanted = f"req_{response_id[-16:]}"
    return next(r for r in records(control, lane="live") if r["request_id"] == wanted)


def read_jsonl(oai: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(x) for x in oai.files.content(file_id).text.splitlines()]


def create_openai_batch(oai: openai.OpenAI, lines: list):
    return oai.batches.create(input_file_id=upload_lines(oai, lines),
                              endpoint="/v1/chat/completions", completion_window="24h")


def run_openai_batch(oai: openai.OpenAI, lines: list):
    batch = create_openai_batch(oai, lines)
    return wait_for(lambda: oai.batches.retrieve(batch.id), lambda b: b.status in OPENAI_TERMINAL)


def claude_request(custom_id: str, model: str = "claude-haiku-4-5") -> dict:
    return {"custom_id": custom_id, "params": {
        "model": model, "max_tokens": 100,
        "messages": [{"role": "user", "content": f"Summarize:\n\nLogin fails {nonce()}."}]}}


def run_claude_batch(claude: anthropic.Anthropic, requests: list[dict]):
    batch = claude.messages.batches.create(requests=requests)
    return wait_for(lambda: claude.messages.batches.retrieve(batch.id),
                    lambda b: b.processing_status == "ended")


def text_of_tokens(tokens: int, tag: str) -> str:
    """A text of exactly `tokens` tokens under the four-characters rule."""
    body = f"{tag} " + "policy clause " * tokens
    return body[: tokens * 4]


# --- Cancel states ---------------------------------------------------------------------


def test_openai_cancel_of_a_never_started_batch_never_reports_a_start(oai, emulator, control):
    emulator.state.config.timing.validating_seconds = 30
    emulator.state.config.timing.cancel_seconds = 0.2
    batch = create_openai_batch(oai, [chat_line(f"r{i}") for i in range(5)])
    assert batch.status == "validating"
    cancelling = oai.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"  # never `validating` once cancelled
    assert cancelling.cancelling_at and cancelling.in_progress_at is None
    final = wait_for(lambda: oai.batches.retrieve(batch.id), lambda b: b.status == "cancelled")
    assert final.in_progress_at is None and final.finalizing_at is None
    assert final.cancelled_at and final.cancelling_at
    assert final.output_file_id is None and final.request_counts.completed == 0
    never = read_jsonl(oai, final.error_file_id)
    assert len(never) == 5 and {x["error"]["code"] for x in never} == {"batch_cancelled"}
    assert control.get("/billing", params={"batch_id": batch.id}).json()["total"][
        "requests"] == 0


def test_openai_cancel_reads_cancelling_even_with_no_cancel_time(oai, emulator):
    emulator.state.config.timing.batch_seconds = 5
    emulator.state.config.timing.cancel_seconds = 0
    batch = create_openai_batch(oai, [chat_line(f"r{i}") for i in range(5)])
    wait_for(lambda: oai.batches.retrieve(batch.id), lambda b: b.status == "in_progress")
    cancelling = oai.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.in_progress_at
    final = wait_for(lambda: oai.batches.retrieve(batch.id), lambda b: b.status == "cancelled")
    assert final.in_progress_at == cancelling.in_progress_at


def test_openai_cancelling_a_completed_batch_is_refused_and_leaves_it(oai):
    batch = run_openai_batch(oai, [chat_line("a")])
    assert batch.status == "completed" and batch.in_progress_at and batch.finalizing_at
    with pytest.raises(openai.ConflictError) as info:  # the real API's 409 Conflict
        oai.batches.cancel(batch.id)
    assert info.value.status_code == 409 and info.value.type == "invalid_request_error"
    assert info.value.body["message"] == "Cannot cancel a batch with status 'completed'."
    assert oai.batches.retrieve(batch.id).model_dump() == batch.model_dump()


def test_anthropic_cancel_of_a_never_started_batch(claude, emulator, control):
    emulator.state.config.timing.validating_seconds = 30
    emulator.state.config.timing.cancel_seconds = 0.2
    batch = claude.messages.batches.create(requests=[claude_request(f"r{i}")
                                                     for i in range(3)])
    canceling = claude.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None and canceling.ended_at is None
    assert canceling.results_url is None and canceling.request_counts.processing == 3
    final = wait_for(lambda: claude.messages.batches.retrieve(batch.id),
                     lambda b: b.processing_status == "ended")
    assert final.request_counts.canceled == 3 and final.request_counts.succeeded == 0
    assert final.cancel_initiated_at == canceling.cancel_initiated_at and final.ended_at
    assert {r.result.type for r in claude.messages.batches.results(batch.id)} == {"canceled"}
    assert control.get("/billing", params={"batch_id": batch.id}).json()["total"][
        "requests"] == 0


def test_anthropic_cancel_reads_canceling_even_with_no_cancel_time(claude, emulator):
    emulator.state.config.timing.batch_seconds = 5
    emulator.state.config.timing.cancel_seconds = 0
    batch = claude.messages.batches.create(requests=[claude_request(f"r{i}")
                                                     for i in range(3)])
    canceling = claude.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at
    wait_for(lambda: claude.messages.batches.retrieve(batch.id),
             lambda b: b.processing_status == "ended")


def test_anthropic_cancelling_an_ended_batch_returns_it_unchanged(claude):
    ended = run_claude_batch(claude, [claude_request("a")])
    again = claude.messages.batches.cancel(ended.id)
    assert again.model_dump() == ended.model_dump()
    assert again.processing_status == "ended" and again.cancel_initiated_at is None
    assert again.request_counts.succeeded == 1


# --- Out of credit ---------------------------------------------------------------------


def test_openai_out_of_credit_refuses_live_calls_uploads_and_batch_creates(oai, claude,
                                                                          control):
    staged = upload_lines(oai, [chat_line("a")])
    billed = control.get("/billing").json()["total"]["requests"]
    refused = control.get("/health").json()["quota_refusals"]
    control.patch("/faults", json={"openai_insufficient_quota": True})
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-4o-mini",
                                    messages=[{"role": "user", "content": "Hello"}])
    error = info.value
    assert error.status_code == 429
    assert error.type == "insufficient_quota" and error.code == "insufficient_quota"
    assert error.body["message"].startswith(
        "You exceeded your current quota, please check your plan and billing details.")
    with pytest.raises(openai.RateLimitError) as upload:
        upload_lines(oai, [chat_line("b")])
    with pytest.raises(openai.RateLimitError) as create:
        oai.batches.create(input_file_id=staged, endpoint="/v1/chat/completions",
                           completion_window="24h")
    assert upload.value.code == create.value.code == "insufficient_quota"
    # The other provider's account is untouched.
    claude.messages.create(model="claude-haiku-4-5", max_tokens=20,
                           messages=[{"role": "user", "content": "Hello"}])
    assert control.get("/health").json()["quota_refusals"] == refused + 3
    assert control.get("/billing").json()["total"]["requests"] == billed + 1
    control.patch("/faults", json={"openai_insufficient_quota": False})
    oai.chat.completions.create(model="gpt-4o-mini",
                                messages=[{"role": "user", "content": "Hello"}])


def test_anthropic_out_of_credit_refuses_live_calls_and_batch_creates(claude, oai, control):
    control.patch("/faults", json={"anthropic_insufficient_quota": True})
    credit = ("Your credit balance is too low to access the Anthropic API. Please go to "
              "Plans & Billing to upgrade or purchase credits.")
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="claude-haiku-4-5", max_tokens=20,
                               messages=[{"role": "user", "content": "Hello"}])
    assert info.value.status_code == 400
    assert info.value.body["error"] == {"type": "invalid_request_error", "message": credit}
    with pytest.raises(anthropic.BadRequestError, match="credit balance is too low"):
        claude.messages.batches.create(requests=[claude_request("a")])
    oai.chat.completions.create(model="gpt-4o-mini",
                                messages=[{"role": "user", "content": "Hello"}])


def test_scripted_insufficient_quota_refuses_only_the_next_calls(oai, claude, control):
    hello = [{"role": "user", "content": "Hello"}]
    scripted = control.post("/faults/next", json={"kind": "insufficient_quota",
                                                  "provider": "openai"})
    assert scripted.status_code == 200
    with pytest.raises(openai.RateLimitError, match="exceeded your current quota"):
        oai.chat.completions.create(model="gpt-4o-mini", messages=hello)
    oai.chat.completions.create(model="gpt-4o-mini", messages=hello)
    control.post("/faults/next", json={"kind": "insufficient_quota"})  # either provider
    with pytest.raises(anthropic.BadRequestError, match="credit balance is too low"):
        claude.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=hello)
    assert control.post("/faults/next", json={"count": 1}).status_code == 422


# --- Tool-use system prompt ------------------------------------------------------------


@pytest.mark.parametrize("model", CLAUDE_MODELS)
def test_tool_use_system_prompt_is_billed_as_input_per_model(claude, control, model):
    auto_or_none, forced = PUBLISHED_TOOL_PROMPT[model]
    messages = [{"role": "user", "content": f"Ticket {nonce()}:\n\nI was charged twice."}]
    base = count_prompt_tokens(messages)
    with_tool = count_prompt_tokens(messages, schema=[TAG_TOOL["input_schema"]])

    def input_tokens(**params) -> int:
        answer = claude.messages.create(model=model, max_tokens=100, messages=messages,
                                        **params)
        assert record_of(control, answer.id)["input_tokens"] == answer.usage.input_tokens
        return answer.usage.input_tokens

    assert input_tokens() == base  # no tools, no tool-use system prompt
    assert input_tokens(tools=[TAG_TOOL],
                        tool_choice={"type": "tool", "name": "tag"}) == with_tool + forced
    assert input_tokens(tools=[TAG_TOOL], tool_choice={"type": "any"}) == with_tool + forced
    assert input_tokens(tools=[TAG_TOOL], tool_choice={"type": "auto"}) == (
        with_tool + auto_or_none)
    assert input_tokens(tools=[TAG_TOOL]) == with_tool + auto_or_none  # auto by default
    assert input_tokens(tools=[TAG_TOOL], tool_choice={"type": "none"}) == (
        with_tool + auto_or_none)


def test_tool_use_table_finds_snapshots_and_older_families():
    assert tool_use_system_prompt_tokens("claude-sonnet-4-5-20250929", [TAG_TOOL],
                                         {"type": "tool", "name": "tag"}) == 588
    assert tool_use_system_prompt_tokens("claude-opus-4-1-20250805", [TAG_TOOL], None) == 313
    assert tool_use_system_prompt_tokens("claude-3-5-haiku-20241022", [TAG_TOOL],
                                         {"type": "any"}) == 355
    assert tool_use_system_prompt_tokens("claude-haiku-4-5", [], {"type": "none"}) == 0


# --- Reasoning tokens ------------------------------------------------------------------


def test_gpt5_reports_and_bills_reasoning_tokens_as_output(oai, control):
    prices = load_price_table(get_settings().prices_path)
    messages = [{"role": "user", "content": f"Summarize ({nonce()}).\n\n"
                 "The export to CSV fails every night. It is urgent."}]
    answer = oai.chat.completions.create(model="gpt-5", messages=messages)
    usage = answer.usage
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning > 0 and reasoning % 64 == 0
    assert reasoning == reasoning_tokens("gpt-5", usage.prompt_tokens, None)
    visible = count_text_tokens(answer.choices[0].message.content)
    assert usage.completion_tokens == visible + reasoning  # reasoning counts as output
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    row = record_of(control, answer.id)
    assert row["output_tokens"] == usage.completion_tokens
    assert row["reasoning_tokens"] == reasoning
    billed = Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                   reasoning_tokens=reasoning)
    assert row["cost_picodollars"] == to_picodollars(
        prices.cost_usd("gpt-5", billed, Lane.LIVE))
    # Effort scales the thinking; models that do not reason report none.
    long = [{"role": "user", "content": f"Summarize.\n\n{text_of_tokens(600, nonce())}"}]
    by_effort = [oai.chat.completions.create(
        model="gpt-5-mini", messages=long, reasoning_effort=effort
    ).usage.completion_tokens_details.reasoning_tokens for effort in ("low", "medium", "high")]
    assert 0 < by_effort[0] < by_effort[1] < by_effort[2]
    plain = oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0


def test_reasoning_models_refuse_max_tokens_and_others_refuse_reasoning_effort(oai):
    hello = [{"role": "user", "content": "Hello"}]
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        oai.chat.completions.create(model="gpt-5", messages=hello, max_tokens=50)
    with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
        oai.chat.completions.create(model="gpt-4o-mini", messages=hello,
                                    reasoning_effort="low")


def test_reasoning_can_use_up_max_completion_tokens(oai):
    messages = [{"role": "user", "content": f"Summarize.\n\n{text_of_tokens(400, nonce())}"}]
    answer = oai.chat.completions.create(model="gpt-5-nano", messages=messages,
                                         max_completion_tokens=64)
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.content == ""
    assert answer.usage.completion_tokens == 64
    assert answer.usage.completion_tokens_details.reasoning_tokens == 64


def test_batch_usage_rolls_up_reasoning_tokens(oai, control):
    lines = [chat_line(f"r{i}", text=f"Summarize.\n\nTicket {i} {nonce()}: export fails.",
                       model="gpt-5-mini", max_completion_tokens=2000) for i in range(4)]
    batch = run_openai_batch(oai, lines)
    assert batch.status == "completed"
    bodies = [x["response"]["body"] for x in read_jsonl(oai, batch.output_file_id)]
    per_line = [b["usage"]["completion_tokens_details"]["reasoning_tokens"] for b in bodies]
    assert all(n > 0 for n in per_line)
    assert batch.usage.output_tokens_details.reasoning_tokens == sum(per_line)
    assert batch.usage.output_tokens == sum(b["usage"]["completion_tokens"] for b in bodies)
    billed = control.get("/billing", params={"batch_id": batch.id}).json()["total"]
    assert billed["reasoning_tokens"] == sum(per_line)
    assert billed["output_tokens"] == batch.usage.output_tokens


# --- Prompt-cache minimums and TTLs ----------------------------------------------------


@pytest.mark.parametrize("model", CLAUDE_MODELS)
def test_anthropic_caches_only_from_the_models_minimum(claude, model):
    minimum = PUBLISHED_CACHE_MIN[model]
    hello = [{"role": "user", "content": "Hello there."}]
    # A system block of n text tokens makes a prefix of n + 6 (request and system overhead).
    for prefix_tokens, cached in ((minimum - 10, False), (minimum + 10, True)):
        system = [{"type": "text", "text": text_of_tokens(prefix_tokens - 6, nonce()),
                   "cache_control": {"type": "ephemeral"}}]
        first = claude.messages.create(model=model, max_tokens=20, system=system,
                                       messages=hello).usage
        second = claude.messages.create(model=model, max_tokens=20, system=system,
                                        messages=hello).usage
        if not cached:  # below the minimum nothing is written or read
            assert first.cache_creation_input_tokens == 0 and first.cache_read_input_tokens == 0
            assert second.cache_read_input_tokens == 0
            assert first.cache_creation.ephemeral_5m_input_tokens == 0
            continue
        assert first.cache_creation_input_tokens == prefix_tokens
        assert first.cache_creation.ephemeral_5m_input_tokens == prefix_tokens
        assert first.cache_creation.ephemeral_1h_input_tokens == 0
        assert second.cache_read_input_tokens == prefix_tokens
        assert second.cache_creation_input_tokens == 0
        assert second.input_tokens == first.input_tokens


def test_one_hour_and_five_minute_writes_are_reported_and_billed_apart(claude, control):
    model = "claude-sonnet-4-5"
    prices = load_price_table(get_settings().prices_path)
    tag = nonce()
    system = [
        {"type": "text", "text": text_of_tokens(1500, tag),
         "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": text_of_tokens(1500, tag + "b"),
         "cache_control": {"type": "ephemeral", "ttl": "5m"}},
    ]
    hello = [{"role": "user", "content": "Hello there."}]
    one_hour = count_prompt_tokens([], system=system[:1])
    both = count_prompt_tokens([], system=system)
    first = claude.messages.create(model=model, max_tokens=20, system=system, messages=hello)
    written = first.usage.cache_creation
    assert written.ephemeral_1h_input_tokens == one_hour
    assert written.ephemeral_5m_input_tokens == both - one_hour
    assert first.usage.cache_creation_input_tokens == both
    row = record_of(control, first.id)
    assert row["cache_write_1h_tokens"] == one_hour
    assert row["cache_write_tokens"] == both - one_hour
    usage = Usage(input_tokens=first.usage.input_tokens, cache_write_tokens=both - one_hour,
                  output_tokens=first.usage.output_tokens, cache_write_1h_tokens=one_hour)
    assert from_picodollars(row["cost_picodollars"]) == prices.cost_usd(model, usage,
                                                                        Lane.LIVE)
    second = claude.messages.create(model=model, max_tokens=20, system=system, messages=hello)
    assert second.usage.cache_read_input_tokens == both
    assert second.usage.cache_creation_input_tokens == 0
    # A request sharing only the 1-hour prefix reads it and writes the rest anew.
    other = [system[0], {**system[1], "text": text_of_tokens(1500, tag + "c")}]
    third = claude.messages.create(model=model, max_tokens=20, system=other, messages=hello)
    assert third.usage.cache_read_input_tokens == one_hour
    assert third.usage.cache_creation.ephemeral_5m_input_tokens == both - one_hour


def test_anthropic_refuses_more_than_four_breakpoints_and_unknown_ttls(claude):
    mark = {"type": "ephemeral"}
    blocks = [{"type": "text", "text": f"part {i}", "cache_control": mark} for i in range(5)]
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks"):
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=20, system=blocks,
                               messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(anthropic.BadRequestError, match="ttl"):
        claude.messages.create(
            model="claude-sonnet-4-5", max_tokens=20, messages=[{"role": "user", "content": [
                {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral",
                                                                  "ttl": "2h"}}]}])


def test_openai_caches_from_1024_prompt_tokens_only(oai):
    for content_tokens, cached in ((1000, False), (1400, True)):
        messages = [{"role": "user", "content": text_of_tokens(content_tokens, nonce())}]
        first = oai.chat.completions.create(model="gpt-4o-mini", messages=messages).usage
        second = oai.chat.completions.create(model="gpt-4o-mini", messages=messages).usage
        assert first.prompt_tokens_details.cached_tokens == 0
        hit = second.prompt_tokens_details.cached_tokens
        if cached:
            assert hit >= 1024 and hit % 128 == 0 and hit < second.prompt_tokens
        else:
            assert second.prompt_tokens < 1024 and hit == 0


# --- results_url -----------------------------------------------------------------------


def test_results_url_is_absolute_and_a_plain_client_can_fetch_it(claude, emulator):
    batch = run_claude_batch(claude, [claude_request("a"), claude_request("b")])
    assert batch.results_url == f"{emulator.url}/v1/messages/batches/{batch.id}/results"
    listed = next(b for b in claude.messages.batches.list() if b.id == batch.id)
    assert listed.results_url == batch.results_url
    response = httpx.get(batch.results_url, headers={"x-api-key": "k",
                                                     "anthropic-version": "2023-06-01"})
    assert response.status_code == 200
    lines = [json.loads(x) for x in response.text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == ["a", "b"]
    assert sorted(r.custom_id for r in claude.messages.batches.results(batch.id)) == ["a", "b"]


# --- The enqueued-token limit ----------------------------------------------------------


def test_the_default_enqueued_token_limit_is_lanewise_default_budget():
    assert Limits().openai_enqueued_tokens == 2_000_000
    assert Limits().enqueued_limit("gpt-4o") == get_settings().openai_enqueued_token_budget


def test_token_limit_failure_names_the_model_the_organization_and_the_limit(oai, emulator):
    emulator.state.config.limits.openai_enqueued_tokens_by_model = {"gpt-4o-mini": 1500}
    text = f"Summarize.\n\n{text_of_tokens(1000, nonce())}"
    batch = run_openai_batch(oai, [chat_line("a", text), chat_line("b", text)])
    assert batch.status == "failed"
    error = batch.errors.data[0]
    assert error.code == "token_limit_exceeded"
    assert error.message == (
        "Enqueued token limit reached for gpt-4o-mini in organization org-lanewise-emulator. "
        "Limit: 1,500 enqueued tokens. Please try submitting your batch again later.")
    # Other models keep the default limit.
    other = run_openai_batch(oai, [chat_line("a", text, model="gpt-4.1-nano"),
                                   chat_line("b", text, model="gpt-4.1-nano")])
    assert other.status == "completed"


# --- When rows were billed ---------------------------------------------------------------


def test_billing_rows_record_when_they_were_billed(oai, control):
    started = time.time()
    answer = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Hi {nonce()}"}])
    row = record_of(control, answer.id)
    assert started <= row["billed_at"] <= time.time()
    assert {"cache_write_1h_tokens", "reasoning_tokens", "billed_at"} <= set(row)
    batch = run_openai_batch(oai, [chat_line("a"), chat_line("b")])
    rows = records(control, batch_id=batch.id)
    assert len(rows) == 2 and len({r["billed_at"] for r in rows}) == 1
    assert abs(rows[0]["billed_at"] - batch.completed_at) < 1  # billed when the batch ended
    total = control.get("/billing", params={"since": started}).json()["total"]
    assert total["requests"] == 3
    assert {"cache_write_1h_tokens", "reasoning_tokens"} <= set(total)
    today = datetime.fromtimestamp(started, tz=UTC).date().isoformat()
    days = control.get("/billing/by-day", params={"since_day": today,
                                                  "provider": "openai"}).json()["data"]
    lanes = {(d["model"], d["lane"]) for d in days if d["day"] == today}
    assert {("gpt-4o-mini", "live"), ("gpt-4o-mini", "batch")} <= lanes


def test_an_older_billing_database_gains_the_new_columns(tmp_path):
    with sqlite3.connect(tmp_path / "billing.sqlite3") as db:
        db.execute(
            "CREATE TABLE billing (id INTEGER PRIMARY KEY, provider TEXT, lane TEXT, "
            "batch_id TEXT, custom_id TEXT, request_id TEXT, model TEXT, input_tokens INTEGER, "
            "cached_input_tokens INTEGER, cache_write_tokens INTEGER, output_tokens INTEGER, "
            "cost_picodollars INTEGER)")
        db.execute("INSERT INTO billing (provider, lane, model, input_tokens, "
                   "cached_input_tokens, cache_write_tokens, output_tokens, cost_picodollars) "
                   "VALUES ('openai', 'live', 'gpt-4o-mini', 10, 0, 0, 5, 4500000)")
    with running_emulator(EmulatorConfig(timing=FAST.model_copy()), state_dir=tmp_path) as emu:
        oai = openai.OpenAI(base_url=emu.openai_base_url, api_key="k", max_retries=0)
        oai.chat.completions.create(model="gpt-4o-mini",
                                    messages=[{"role": "user", "content": "Hello"}])
        rows = [json.loads(x) for x in
                httpx.get(f"{emu.url}/_emulator/billing/records").text.splitlines()]
        assert rows[0]["input_tokens"] == 10 and rows[0]["billed_at"] is None
        assert rows[1]["billed_at"] is not None and rows[1]["reasoning_tokens"] == 0
        assert httpx.get(f"{emu.url}/_emulator/billing").json()["total"]["requests"] == 2
    with sqlite3.connect(tmp_path / "billing.sqlite3") as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(billing)")}
        assert {"cache_write_1h_tokens", "reasoning_tokens", "billed_at"} <= columns
        plan = " ".join(str(r) for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT date(billed_at, 'unixepoch') AS day, model, lane, "
            "SUM(cost_picodollars) FROM billing WHERE date(billed_at, 'unixepoch') >= "
            "'2026-01-01' GROUP BY day, provider, model, lane"))
        assert "billing_by_day" in plan


# --- The emulator's own price table --------------------------------------------------------


def test_the_emulator_bills_by_its_own_price_table(tmp_path, monkeypatch):
    default_path = get_settings().prices_path
    raw = json.loads(Path(default_path).read_text())
    entry = raw.get("models", raw)["gpt-4o-mini"]
    key = "output_cost_per_token" if "output_cost_per_token" in entry else "output"
    entry[key] = entry[key] * 2 if isinstance(entry[key], float) else str(
        float(entry[key]) * 2)
    custom = tmp_path / "emulator-prices.json"
    custom.write_text(json.dumps(raw))
    with running_emulator(EmulatorConfig(prices_path=custom)) as emu:
        assert httpx.get(f"{emu.url}/_emulator/health").json()["prices_path"] == str(
            custom.resolve())
        oai = openai.OpenAI(base_url=emu.openai_base_url, api_key="k", max_retries=0)
        usage = oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]).usage
        billed = httpx.get(f"{emu.url}/_emulator/billing").json()["total"]["cost_usd"]
    tokens = Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)
    ours = load_price_table(custom.resolve()).cost_usd("gpt-4o-mini", tokens, Lane.LIVE)
    lanewise = load_price_table(default_path)
    output_cost = lanewise.cost_usd("gpt-4o-mini", Usage(output_tokens=usage.completion_tokens),
                                    Lane.LIVE)
    # Exactly the one rate differs: the emulator billed the output twice over.
    assert ours == lanewise.cost_usd("gpt-4o-mini", tokens, Lane.LIVE) + output_cost
    assert billed == str(from_picodollars(to_picodollars(ours)))
    monkeypatch.setenv("LANEWISE_EMULATOR_PRICES", str(custom))
    assert EmulatorConfig().resolved_prices_path() == custom
    assert EmulatorConfig(prices_path=default_path).resolved_prices_path() == default_path
