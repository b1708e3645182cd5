"""The batch lane end to end against the emulator, through the official SDKs (no Prefect)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lanewise.batch.runner import run_batch_lane
from lanewise.batch.steps import submit_shard
from lanewise.ledger import Ledger
from tests.lane_helpers import (
    TERMINAL,
    SimulatedCrash,
    batches_created,
    billed_for,
    crash_at,
    make_context,
    sample_input,
)

TASKS = ["ticket-tagging", "ticket-summary"]  # OpenAI and Anthropic
ROWS = 60


def check_run(ctx, emulator, summary, rows: int = ROWS) -> pd.DataFrame:
    """Every row terminal exactly once, results complete, cost equal to the bill."""
    items = list(ctx.ledger.iter_items(ctx.ledger.run_by_key(summary.run_key)["id"]))
    assert sorted(i["row_number"] for i in items) == list(range(1, rows + 1))
    assert {i["status"] for i in items} <= TERMINAL
    results = pd.read_parquet(ctx.storage.open(summary.results_url, "rb"))
    assert sorted(results["row_number"]) == list(range(1, rows + 1))
    assert summary.cost_usd == billed_for(emulator, summary.batch_ids)
    assert summary.cost_usd > 0
    # Batch is half of live on every rate but the batch cached input of OpenAI's 4o and
    # 4.1 families, charged at the batch input rate (unconfirmed; docs/costs.md).
    price = ctx.prices.price(ctx.task.model)
    extra = summary.cached_input_tokens * (price.batch.cached_input - price.live.cached_input / 2)
    assert summary.live_cost_usd == 2 * (summary.cost_usd - extra)
    return results


@pytest.mark.parametrize("task", TASKS)
def test_full_nightly_run(task, emulator, tmp_path, ledger_url):
    ctx = make_context(task, emulator, tmp_path, ledger_url)
    summary = run_batch_lane(ctx, f"{task}:2026-08-01", sample_input(tmp_path))
    results = check_run(ctx, emulator, summary)
    assert summary.counts["rejected"] in (4, 5) and summary.counts["succeeded"] >= 55
    reasons = {r for _, r, _ in summary.reasons}
    assert "row 56, field 'body': empty text" in reasons
    assert "row 57, field 'body': missing text" in reasons
    assert "row 58, field 'ticket_id': duplicate key (first at row 1)" in reasons
    assert "row 60, field 'ticket_id': missing key" in reasons
    ok = results[results.status == "succeeded"]
    if task == "ticket-tagging":
        assert set(ok["output_topic"]) <= {"billing", "login", "export", "bug",
                                           "feature_request", "account", "other"}
        assert len(set(ok["output_topic"])) > 2
        assert results.loc[results.row_number == 59, "excerpted"].item()
    else:
        assert ok["raw_text"].str.len().min() > 0
        assert "over the model's context" in results.loc[
            results.row_number == 59, "error_reason"].item()
    assert (ok["cost_usd"] > 0).all()


@pytest.mark.parametrize("task", TASKS)
def test_rerun_of_a_finished_run_creates_nothing(task, emulator, tmp_path):
    ctx = make_context(task, emulator, tmp_path)
    first = run_batch_lane(ctx, f"{task}:again", sample_input(tmp_path))
    before = batches_created(emulator)
    second = run_batch_lane(make_context(task, emulator, tmp_path), f"{task}:again",
                            sample_input(tmp_path))
    assert batches_created(emulator) == before
    assert second.cost_usd == first.cost_usd and second.counts == first.counts


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("point", ["mid_plan", "after_create", "after_record", "mid_poll",
                                   "mid_collect"])
def test_crash_then_rerun_pays_once_and_loses_nothing(task, point, emulator, tmp_path,
                                                      ledger_url):
    ledger = Ledger(ledger_url)
    input_url = sample_input(tmp_path)
    crashing = make_context(task, emulator, tmp_path, ledger=ledger,
                            crash_hook=crash_at(point), collect_chunk=2)
    crashing.token_budget = 2000  # several shards, so crashes land between them
    before = batches_created(emulator)
    run_key = f"{task}:crash:{ledger.dialect}"
    with pytest.raises(SimulatedCrash):
        run_batch_lane(crashing, run_key, input_url)
    resumed = make_context(task, emulator, tmp_path, ledger=ledger, collect_chunk=2)
    resumed.token_budget = 2000
    summary = run_batch_lane(resumed, run_key, input_url)
    shards = resumed.ledger.shards(resumed.ledger.run_by_key(summary.run_key)["id"])
    assert len(shards) > 1
    assert batches_created(emulator) - before == len(shards)  # no duplicate batch
    assert len({s["provider_batch_id"] for s in shards}) == len(shards)
    check_run(resumed, emulator, summary)


@pytest.mark.parametrize("task", TASKS)
def test_item_errors_are_retried_or_recorded(task, emulator, control, tmp_path):
    control.patch("/faults", json={"seed": 3, "item_4xx_rate": 0.1, "item_5xx_rate": 0.3})
    ctx = make_context(task, emulator, tmp_path)
    summary = run_batch_lane(ctx, f"{task}:item-faults", sample_input(tmp_path))
    check_run(ctx, emulator, summary)
    assert summary.counts.get("failed", 0) >= 1  # the 4xx ones are not retried
    assert any("400" in r or "invalid_request_error" in r for s, r, _ in summary.reasons
               if s == "failed")
    shards = ctx.ledger.shards(ctx.ledger.run_by_key(summary.run_key)["id"])
    assert max(s["attempt"] for s in shards) >= 1  # 5xx ones went to a follow-up shard
    assert summary.counts["succeeded"] > 40


@pytest.mark.parametrize("task", TASKS)
def test_expired_batches_keep_finished_results_and_retry_the_rest(task, emulator, control,
                                                                  tmp_path):
    emulator.state.config.timing.expiry_seconds = 0.5
    control.patch("/faults", json={"batch_expire_rate": 1.0, "expire_finished_fraction": 0.5})
    ctx = make_context(task, emulator, tmp_path)
    summary = run_batch_lane(ctx, f"{task}:expiry", sample_input(tmp_path))
    results = check_run(ctx, emulator, summary)
    ok = results[results.status == "succeeded"]
    assert set(ok["attempt"]) == {0, 1, 2}  # finished ones kept, the rest retried
    failed = results[results.status == "failed"]
    assert len(failed) > 0 and failed["error_reason"].str.contains("expired").all()
    assert failed["error_reason"].str.contains("budget exhausted").all()
    assert summary.counts["succeeded"] > 30


@pytest.mark.parametrize("task", TASKS)
def test_failed_batches_end_with_every_row_terminal(task, emulator, control, tmp_path):
    control.patch("/faults", json={"batch_fail_rate": 1.0})
    ctx = make_context(task, emulator, tmp_path)
    summary = run_batch_lane(ctx, f"{task}:all-fail", sample_input(tmp_path, rows=20))
    items = [i for i in ctx.ledger.iter_items(ctx.ledger.run_by_key(summary.run_key)["id"])
             if i["status"] != "rejected"]
    assert len(items) >= 15 and {i["status"] for i in items} == {"failed"}
    assert all("retry budget exhausted" in i["error_reason"] for i in items)
    assert summary.cost_usd == 0 == billed_for(emulator, summary.batch_ids)


def test_output_not_matching_the_schema_is_kept_as_invalid_output(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    ctx.task = ctx.task.model_copy(update={"max_output_tokens": 5})  # truncated JSON
    summary = run_batch_lane(ctx, "tagging:truncated", sample_input(tmp_path, rows=10),)
    results = pd.read_parquet(ctx.storage.open(summary.results_url, "rb"))
    invalid = results[results.status == "invalid_output"]
    assert len(invalid) == summary.counts["invalid_output"] > 0
    assert invalid["raw_text"].str.len().min() > 0  # kept, not dropped
    assert invalid["error_reason"].str.startswith("invalid_output: not JSON").all()
    assert summary.cost_usd == billed_for(emulator, summary.batch_ids)


def test_bad_rows_in_csv_and_jsonl_name_row_and_field(emulator, tmp_path):
    csv = tmp_path / "tickets.csv"
    csv.write_bytes(b"ticket_id,subject,body\nA1,Hi,I was charged twice\n"
                    b"A2,Hi,caf\xe9 au lait\nA3,Hi,\n,Hi,no id\nA1,Hi,dup\n")
    jsonl = tmp_path / "tickets.jsonl"
    jsonl.write_bytes(b'{"ticket_id":"B1","subject":"x","body":"login fails"}\n'
                      b'{"ticket_id":"B2","body":"caf\xe9"}\nnot json\n')
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    csv_summary = run_batch_lane(ctx, "tagging:csv", str(csv))
    assert csv_summary.counts == {"succeeded": 1, "rejected": 4}
    reasons = {r for _, r, _ in csv_summary.reasons}
    assert "row 2, field 'body': undecodable bytes (not UTF-8) at byte 3" in reasons
    assert "row 3, field 'body': missing text" in reasons  # CSV: empty cell is null
    assert "row 4, field 'ticket_id': missing key" in reasons
    assert "row 5, field 'ticket_id': duplicate key (first at row 1)" in reasons
    jsonl_summary = run_batch_lane(ctx, "tagging:jsonl", str(jsonl))
    assert jsonl_summary.counts == {"succeeded": 1, "rejected": 2}
    reasons = " | ".join(r for _, r, _ in jsonl_summary.reasons)
    assert "row 2, field 'line': undecodable bytes" in reasons
    assert "row 3, field 'line': not valid JSON" in reasons


def test_storage_and_input_through_a_non_local_fsspec_url(emulator, tmp_path):
    import fsspec

    from lanewise.storage import Storage

    with open(sample_input(tmp_path, rows=12), "rb") as source, \
            fsspec.open("memory://inputs/tickets.parquet", "wb") as target:
        target.write(source.read())
    ctx = make_context("ticket-summary", emulator, tmp_path,
                       storage=Storage("memory://lanewise-test"))
    summary = run_batch_lane(ctx, "summary:memory", "memory://inputs/tickets.parquet")
    assert summary.results_url.startswith("memory://")
    assert "lanewise-test/runs/summary_memory/" in summary.results_url
    assert ctx.storage.exists(summary.results_url)
    shard = ctx.ledger.shards(ctx.ledger.run_by_key(summary.run_key)["id"])[0]
    with ctx.storage.open(shard["jsonl_url"], "rb") as handle:
        first = json.loads(handle.readline())
    token = ctx.ledger.run_by_key(summary.run_key)["token"]
    assert first["custom_id"].endswith(f"--{token}-0") and "params" in first


def test_intent_without_batch_id_reattaches_instead_of_creating_again(emulator, tmp_path):
    """OpenAI: a batch created just before a crash is found again by its shard metadata."""
    ctx = make_context("ticket-tagging", emulator, tmp_path, crash_hook=crash_at("after_create"))
    with pytest.raises(SimulatedCrash):
        run_batch_lane(ctx, "tagging:reattach", sample_input(tmp_path, rows=12))
    run_id = ctx.ledger.run_by_key("tagging:reattach")["id"]
    shard = ctx.ledger.shards(run_id)[0]
    assert shard["status"] == "submitting" and shard["provider_batch_id"] is None
    before = batches_created(emulator)
    ctx.crash_hook = lambda point: None
    batch_id = submit_shard(ctx, shard["id"])
    assert batches_created(emulator) == before
    assert ctx.ledger.shard(shard["id"])["provider_batch_id"] == batch_id


def _batches(emulator, model: str) -> list:
    return sorted((j for j in emulator.state.jobs.values() if j.model == model),
                  key=lambda j: j.created_at)


def test_shards_are_pipelined_within_the_enqueued_token_limit(emulator, tmp_path):
    """With a 3,000-token enqueued limit, several shards are in flight at once, a new one
    is sent as one ends, none is refused, and the tally never passes the limit."""
    emulator.state.config.limits.openai_enqueued_tokens = 3000
    emulator.state.config.timing.batch_seconds = 0.3
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    # A model no other test uses: the limit counts every active batch of the model.
    ctx.task = ctx.task.model_copy(update={"model": "gpt-4.1-nano"})
    ctx.token_budget = 3000
    summary = run_batch_lane(ctx, "tagging:pipelined", sample_input(tmp_path))
    shards = ctx.ledger.shards(ctx.ledger.run_by_key(summary.run_key)["id"])
    assert len(shards) > 4 and all(s["failure"] is None for s in shards)
    assert max(s["attempt"] for s in shards) == 0
    # A shard holds a quarter of the budget (a lone long request may fill one alone).
    assert all(s["estimated_tokens"] <= 3000 * ctx.settings.shard_token_share
               for s in shards if s["request_count"] > 1)
    jobs = _batches(emulator, "gpt-4.1-nano")
    assert len(jobs) == len(shards)  # nothing refused, nothing sent twice
    overlapping = sum(1 for a, b in zip(jobs, jobs[1:], strict=False)
                      if b.created_at < a.created_at + 0.3)
    assert overlapping >= 1  # sent while the previous one still ran
    check_run(ctx, emulator, summary)


def test_after_quick_batches_the_next_run_sends_whole_budget_shards(emulator, tmp_path):
    """A run learns how long its slowest batch took; when the model's batches end within
    quick_batch_seconds, the next run's shards take the whole budget (fewer batches),
    and slow batches keep the quarter share."""
    from lanewise.batch.context import BATCH_SECONDS

    emulator.state.config.timing.batch_seconds = 0
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    # No result cache: the second run over the same rows must send them again.
    ctx.task = ctx.task.model_copy(update={
        "model": "gpt-4.1-nano", "cache": ctx.task.cache.model_copy(update={"enabled": False})})
    ctx.token_budget = 3000
    first = run_batch_lane(ctx, "tagging:quick-1", sample_input(tmp_path))
    learned = ctx.ledger.learned_limit("openai", "gpt-4.1-nano", BATCH_SECONDS)
    assert learned is not None and learned <= ctx.settings.quick_batch_seconds
    second = run_batch_lane(ctx, "tagging:quick-2", sample_input(tmp_path))
    # (A lone long request may fill a shard alone: shards of one request are left out.)
    sizes = [[s["estimated_tokens"] for s in ctx.ledger.shards(
        ctx.ledger.run_by_key(summary.run_key)["id"]) if s["request_count"] > 1]
        for summary in (first, second)]
    assert max(sizes[0]) <= 3000 * ctx.settings.shard_token_share
    assert max(sizes[1]) > 3000 * ctx.settings.shard_token_share
    assert len(sizes[1]) < len(sizes[0])
    check_run(ctx, emulator, second)
    # A slow batch (here: as learned) brings the quarter share back.
    ctx.ledger.learn_limit("openai", "gpt-4.1-nano", BATCH_SECONDS, 3600)
    assert ctx.shard_token_cap == int(3000 * ctx.settings.shard_token_share)


def test_a_limit_stated_in_a_refusal_is_learned_and_costs_no_retry(emulator, tmp_path):
    """Configured above the real limit, lanewise sends too much at once; the provider
    refuses with token_limit_exceeded and states its limit. The refused shards are sent
    again once room frees, their items' retry budget untouched, and the limit is kept
    for later runs."""
    from lanewise.batch.context import ENQUEUED_TOKENS, enqueued_token_budget

    emulator.state.config.limits.openai_enqueued_tokens_by_model["gpt-4.1-mini"] = 3000
    emulator.state.config.timing.batch_seconds = 0.3
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    ctx.task = ctx.task.model_copy(update={"model": "gpt-4.1-mini"})
    ctx.token_budget = 12_000  # four times the real limit: shards of <= 3,000 tokens
    summary = run_batch_lane(ctx, "tagging:learned", sample_input(tmp_path))
    run_id = ctx.ledger.run_by_key(summary.run_key)["id"]
    shards = ctx.ledger.shards(run_id)
    jobs = _batches(emulator, "gpt-4.1-mini")
    refused = [j for j in jobs if (j.failure or {}).get("code") == "token_limit_exceeded"]
    assert refused and len(jobs) == len(shards) + len(refused)
    assert {s["provider_batch_id"] for s in shards}.isdisjoint(j.id for j in refused)
    assert all(s["attempt"] == 0 for s in shards)  # no retry round was needed
    assert {i["attempt"] for i in ctx.ledger.iter_items(run_id)} == {0}
    assert ctx.token_budget == 3000
    assert ctx.ledger.learned_limit("openai", "gpt-4.1-mini", ENQUEUED_TOKENS) == 3000
    # A later run of the model plans within it; another model keeps its own budget.
    assert enqueued_token_budget(ctx.settings, ctx.ledger, "openai", "gpt-4.1-mini") == 3000
    assert enqueued_token_budget(ctx.settings, ctx.ledger, "openai", "gpt-4o") == \
        ctx.settings.openai_enqueued_token_budget
    check_run(ctx, emulator, summary)


def test_poll_waits_grow_with_the_batch_age_within_bounds(tmp_path):
    from lanewise.batch.steps import poll_delay
    from lanewise.settings import Settings

    class Ctx:
        settings = Settings(home=tmp_path, poll_initial_seconds=0.25, poll_max_seconds=60,
                            poll_lateness=0.2)

    assert poll_delay(Ctx, 0) == 0.25
    assert poll_delay(Ctx, 10) == 2.0
    assert poll_delay(Ctx, 3600) == 60


def test_the_limit_in_a_refusal_message_is_read():
    from lanewise.providers.base import stated_token_limit

    assert stated_token_limit(
        "Enqueued token limit reached for gpt-4o-mini in organization org-x. Limit: "
        "2,000,000 enqueued tokens. Please try again once some in_progress batches have "
        "been completed.") == 2_000_000
    assert stated_token_limit("Limit: 90000 enqueued tokens.") == 90_000
    assert stated_token_limit("something else") is None


def test_results_lines_are_split_from_chunks_of_any_size():
    from lanewise.providers.base import jsonl_lines

    text = b'{"a": 1}\r\n\n{"b": "x\\ny"}\n  \n{"c": [1, 2]}'
    expected = [b'{"a": 1}', b'{"b": "x\\ny"}', b'{"c": [1, 2]}']
    for size in (1, 2, 3, 7, len(text), 1 << 20):
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        assert list(jsonl_lines(chunks)) == expected, size
    assert list(jsonl_lines([text + b"\n"])) == expected
    assert list(jsonl_lines([])) == [] and list(jsonl_lines([b"", b"\n"])) == []


def test_a_run_key_keeps_its_input(emulator, tmp_path):
    from lanewise.errors import ConfigurationError

    ctx = make_context("ticket-summary", emulator, tmp_path)
    run_batch_lane(ctx, "summary:same-input", sample_input(tmp_path, rows=10))
    with pytest.raises(ConfigurationError,
                       match=r"already sent 1 batch\(es\) over .*tickets-10.parquet', so its "
                             r"input is fixed.*--run-key summary:same-input-2"):
        run_batch_lane(ctx, "summary:same-input", sample_input(tmp_path, rows=12))


@pytest.mark.parametrize("task", TASKS)
def test_retry_shards_estimate_tokens_like_the_first_round(task, emulator, tmp_path):
    """A retried request is the same request: same token estimate (schema included)."""
    from lanewise.batch.planning import open_run, plan_retries

    ctx = make_context(task, emulator, tmp_path)
    run_id = open_run(ctx, f"{task}:estimates", sample_input(tmp_path, rows=20))
    queued = [{"b_id": i["id"], "status": "retry"} for i in ctx.ledger.iter_items(run_id)
              if i["status"] == "queued"]
    ctx.ledger.update_items(queued, where_status="queued")
    plan_retries(ctx, run_id, f"{task}:estimates")
    by_round: dict[int, tuple[int, int]] = {}
    for shard in ctx.ledger.shards(run_id):
        count, tokens = by_round.get(shard["attempt"], (0, 0))
        by_round[shard["attempt"]] = (count + shard["request_count"],
                                      tokens + shard["estimated_tokens"])
    assert by_round[0] == by_round[1] and by_round[0][0] == len(queued)


@pytest.mark.parametrize("task", TASKS)
def test_polling_many_batches_through_the_list_reads_what_polling_each_reads(
        task, emulator, tmp_path):
    ctx = make_context(task, emulator, tmp_path)
    ctx.settings = ctx.settings.model_copy(update={"shard_max_requests": 15})
    summary = run_batch_lane(ctx, f"{task}:poll-many", sample_input(tmp_path))
    assert len(summary.batch_ids) >= 3
    listed = ctx.adapter.poll_many(summary.batch_ids)
    assert listed == {batch_id: ctx.adapter.poll(batch_id) for batch_id in summary.batch_ids}
