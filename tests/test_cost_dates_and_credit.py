"""Costs dated like the provider's bill, requests refused for credit inside a batch,
reasoning headroom in the request, and one tool-use table on both sides."""

from __future__ import annotations

import time

import pytest

from lanewise.batch.planning import open_run
from lanewise.batch.steps import await_shard, collect_shard, outcome_update, submit_shard
from lanewise.emulator.provider_rules import TOOL_USE_SYSTEM_PROMPT_TOKENS
from lanewise.errors import QuotaExhaustedError
from lanewise.providers.base import ItemOutcome
from lanewise.tokens import TOOL_USE_SYSTEM_TOKENS
from tests.lane_helpers import make_context, sample_input


def test_a_shard_is_dated_by_the_providers_end_not_by_the_poll(emulator, tmp_path):
    """A batch that ends at 23:59:59 is billed that day even if lanewise polls at 00:00:30."""
    ctx = make_context("ticket-summary", emulator, tmp_path)
    run_id = open_run(ctx, "summary:dated", sample_input(tmp_path, rows=10))
    shard = ctx.ledger.shards(run_id)[0]
    submit_shard(ctx, shard["id"])
    time.sleep(2.5)  # the batch ends (~0.4 s) well before this poll
    polled_at = time.time()
    await_shard(ctx, shard["id"])
    ended_at = ctx.ledger.shard(shard["id"])["ended_at"]
    assert ended_at < polled_at - 1.5


def test_the_tool_use_tables_of_lanewise_and_the_emulator_agree():
    assert TOOL_USE_SYSTEM_TOKENS == TOOL_USE_SYSTEM_PROMPT_TOKENS


def test_a_request_refused_for_credit_is_never_failed(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    refused = ItemOutcome("x", False, error_kind="insufficient_quota",
                          error_message="You exceeded your current quota", retryable=True,
                          out_of_credit=True)
    for attempt in range(ctx.task.retry_budget + 2):  # even past the retry budget
        update = outcome_update(ctx, refused, attempt)
        assert update["status"] == "retry" and "out of credit" in update["error_reason"]


class _RefusingResults:
    """An adapter whose batch results say every request was refused for credit."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def results(self, batch_id, raw_sink=None):
        for outcome in self.real.results(batch_id, raw_sink):
            yield ItemOutcome(outcome.custom_id, False, error_kind="insufficient_quota",
                              error_message="quota", retryable=True, out_of_credit=True)


def test_a_batch_refused_for_credit_stops_the_run_after_collecting(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    run_id = open_run(ctx, "tagging:credit", sample_input(tmp_path, rows=10))
    shard = ctx.ledger.shards(run_id)[0]
    submit_shard(ctx, shard["id"])
    await_shard(ctx, shard["id"])
    ctx.adapter = _RefusingResults(ctx.adapter)
    with pytest.raises(QuotaExhaustedError, match="rerun tagging:credit to resume"):
        collect_shard(ctx, shard["id"])
    assert ctx.ledger.shard(shard["id"])["status"] == "collected"
    counts = ctx.ledger.count_items(run_id)
    assert "failed" not in counts and counts["retry"] == shard["request_count"]


def test_a_reasoning_model_gets_room_for_its_reasoning(emulator, tmp_path):
    """Without it, reasoning spends the whole cap and the visible answer is empty."""
    from lanewise.batch.runner import run_batch_lane

    ctx = make_context("ticket-tagging", emulator, tmp_path)
    ctx.task = ctx.task.model_copy(update={"model": "gpt-5-mini"})
    summary = run_batch_lane(ctx, "tagging:reasoning", sample_input(tmp_path, rows=10))
    run_id = ctx.ledger.run_by_key("tagging:reasoning")["id"]
    items = list(ctx.ledger.iter_items(run_id))
    # Every ordinary ticket answers; only the deliberately huge one (excerpted to the
    # context limit) reasons past its budget, as the emulator's rule spends half the
    # prompt on reasoning.
    assert [i["excerpted"] for i in items if i["status"] == "invalid_output"] in ([], [True])
    assert summary.counts["succeeded"] == 5
    assert ctx.ledger.totals(run_id)["reasoning_tokens"] > 0
