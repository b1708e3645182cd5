"""The result cache shared by both lanes, from the batch lane's side: content hashes,
store and lookup, the planner answering rows from the cache, collect filling it, and
the run summary's saving. Through the official SDKs and the emulator (no Prefect)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from lanewise import cache
from lanewise.batch.context import no_crash
from lanewise.batch.planning import plan_run_now
from lanewise.batch.results import RunSummary
from lanewise.batch.runner import run_batch_lane
from lanewise.catalog import CacheSpec
from lanewise.inputs import read_rows
from lanewise.ledger import Ledger
from lanewise.ledger.schema import live_calls, result_cache
from lanewise.pricing import Lane, Usage, from_picodollars, load_price_table, to_picodollars
from lanewise.requests import PreparedRequest, prepare
from lanewise.settings import Settings
from tests.lane_helpers import (
    TERMINAL,
    SimulatedCrash,
    batches_created,
    billed_for,
    crash_at,
    make_context,
)

TASKS = ["ticket-tagging", "ticket-summary"]  # OpenAI and Anthropic
TAGS = '{"topic":"billing","sentiment":"negative","urgency":"high"}'
# Ten rows: T9 asks exactly what T2 asks (same subject and body, another ticket), T10
# has no body (rejected), T4 is full of characters JSON escapes.
ROWS = [
    ("T1", "Charged twice", "I was charged twice for my subscription in May."),
    ("T2", "Cannot log in", "The 2FA code never arrives, so I am locked out."),
    ("T3", "CSV export empty", "The CSV export of my 12 projects produces an empty file."),
    ("T4", 'Caf\u00e9 "quoted"', "Back\\slash, tab\t, newline\nand \U0001f600 \u2028 end."),
    ("T5", "App crashes", "The mobile app crashes when I open the inbox."),
    ("T6", "Dark mode", "Please add a dark mode to the dashboard."),
    ("T7", "Seats", "My invoice shows 14 seats but we only have 9."),
    ("T8", "Blank page", "The dashboard shows a blank page after the update."),
    ("T9", "Cannot log in", "The 2FA code never arrives, so I am locked out."),
    ("T10", "Empty", ""),
]
ANSWERED = len(ROWS) - 1


def tickets(tmp_path: Path, rows: list[tuple[str, str, str]] = ROWS) -> str:
    """The rows as a CSV input file."""
    path = tmp_path / "tickets.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["ticket_id", "subject", "body"])
        writer.writerows(rows)
    return str(path)


def billed_requests(emulator) -> int:
    """Requests the emulator has billed so far (both lanes, both providers)."""
    return httpx.get(f"{emulator.url}/_emulator/billing").json()["total"]["requests"]


def run_items(ctx, summary) -> dict[str, dict]:
    """A run's items by key (rejected rows by row number)."""
    run_id = ctx.ledger.run_by_key(summary.run_key)["id"]
    return {i["input_key"] or f"row {i['row_number']}": i for i in ctx.ledger.iter_items(run_id)}


def cache_rows(ledger: Ledger) -> dict[str, dict]:
    """Every result-cache entry by hash."""
    with ledger.engine.connect() as conn:
        return {r["content_hash"]: dict(r) for r in conn.execute(
            sa.select(result_cache)).mappings()}


# --- content hashes -------------------------------------------------------------------


def test_content_hash_is_sha256_of_one_canonical_text():
    body = {"b": 1, "a": [{"y": 2, "x": "caf\u00e9 \U0001f600"}]}
    shuffled = {"a": [{"x": "caf\u00e9 \U0001f600", "y": 2}], "b": 1}
    text = ('{"body":{"a":[{"x":"caf\u00e9 \U0001f600","y":2}],"b":1},'
            '"model":"m","provider":"openai"}')
    expected = hashlib.sha256(text.encode()).hexdigest()
    assert cache.content_hash("openai", "m", body) == cache.content_hash("openai", "m", shuffled) \
        == expected
    assert cache.content_hash("anthropic", "m", body) != expected
    assert cache.content_hash("openai", "m2", body) != expected
    # The same in a fresh process (another hash seed): a live service and a batch worker
    # compute it apart.
    script = ("from lanewise.cache import content_hash; "
              f"print(content_hash('openai', 'm', {body!r}))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == expected


@pytest.mark.parametrize("task", TASKS)
def test_the_line_sent_and_the_live_body_have_one_hash(task, emulator, tmp_path):
    long_body = "The export fails again. " * 600  # over tagging's context: excerpted
    rows = [*ROWS, ("T11", "Long", long_body)]
    ctx = make_context(task, emulator, tmp_path)
    path = tickets(tmp_path, rows)
    run_id = plan_run_now(ctx, f"{task}:hashes", path)
    items = list(ctx.ledger.iter_items(run_id))
    by_row = {i["row_number"]: i for i in items}
    by_custom_id = {i["custom_id"]: i for i in items if i["custom_id"]}
    # What the batch lane sends: each JSONL line's body hashes to its item's hash.
    lines = 0
    for shard in ctx.ledger.shards(run_id):
        with ctx.storage.open(shard["jsonl_url"], "rb") as handle:
            for raw in handle:
                line = json.loads(raw)
                body = line["body"] if "body" in line else line["params"]
                assert cache.content_hash(ctx.task.provider, ctx.task.model, body) == \
                    by_custom_id[line["custom_id"]]["content_hash"]
                lines += 1
    assert lines == sum(1 for i in items if i["status"] == "queued") >= ANSWERED - 1
    # What the live lane sends for the same row: adapter.request_body of the prepared row.
    live = 0
    for row in read_rows(path):
        request = prepare(ctx.task, row)
        if not isinstance(request, PreparedRequest):
            assert by_row[row.number]["content_hash"] is None  # rejected: no request
            continue
        body = ctx.adapter.request_body(ctx.task, request)
        assert cache.content_hash(ctx.task.provider, ctx.task.model, body) == \
            cache.request_hash(ctx.adapter, ctx.task, request) == \
            by_row[row.number]["content_hash"]
        live += 1
    assert live == lines
    assert by_row[2]["content_hash"] == by_row[9]["content_hash"]  # same request
    assert len({i["content_hash"] for i in items if i["content_hash"]}) == lines - 1
    if task == "ticket-tagging":
        assert by_row[11]["excerpted"]


# --- store and lookup -----------------------------------------------------------------


def test_the_first_answer_wins_until_it_expires(ledger_url):
    ledger = Ledger(ledger_url)
    now = 1_000_000.0
    first, second = "a" * 64, "b" * 64
    args = ("ticket-summary", "anthropic", "claude-haiku-4-5")
    assert cache.store(ledger, first, *args, "first", "live:1", 10, 20, 1.0, now=now)
    # A second answer to the same request while the first is valid changes nothing.
    assert not cache.store(ledger, first, *args, "second", "item:7", 5, 20, 1.0, now=now + 60)
    got = cache.lookup(ledger, first, now=now + 60)
    assert (got.output_text, got.source, got.created_at, got.expires_at) == \
        ("first", "live:1", now, now + 3600)
    assert (got.cost_usd, got.live_cost_usd) == (from_picodollars(10), from_picodollars(20))
    # Expired: it answers no more, and the next answer takes its place.
    assert cache.lookup(ledger, first, now=now + 3600) is None
    assert cache.store(ledger, first, *args, "third", "item:8", 5, 10, 1.0, now=now + 3600)
    assert cache.lookup(ledger, first, now=now + 3601).source == "item:8"
    # No TTL: it never expires, but a task asking with a TTL takes only younger answers.
    assert cache.store(ledger, second, *args, "forever", "item:9", 1, 2, None, now=now)
    assert cache.lookup(ledger, second, now=now + 10**9).output_text == "forever"
    assert cache.lookup(ledger, second, now=now + 7200, max_age_hours=1) is None
    assert set(cache.lookup_many(ledger, [first, second, "c" * 64], now=now + 3601)) == \
        {first, second}
    assert cache.lookup_many(ledger, [first, second], now=now + 3601, max_age_hours=1) == {
        first: cache.lookup(ledger, first, now=now + 3601)}


def test_many_answers_store_in_one_call_first_of_a_hash_winning(ledger_url):
    ledger = Ledger(ledger_url)
    now = time.time()
    args = ("ticket-tagging", "openai", "gpt-4o-mini")
    twice, other = "d" * 64, "e" * 64
    answers = [cache.entry(twice, *args, "one", "item:1", 1, 2, None, now=now),
               cache.entry(twice, *args, "two", "item:2", 1, 2, None, now=now),
               cache.entry(other, *args, "nul \x00 inside", "item:3", 1, 2, None, now=now)]
    assert ledger.store_answers(answers, now=now) == 2
    assert ledger.store_answers(answers, now=now) == 0  # all there already
    found = cache.lookup_many(ledger, [twice, other])
    assert found[twice].source == "item:1"
    assert found[other].output_text == "nul \ufffd inside"  # as items store it


# --- the batch lane -------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_a_night_over_unchanged_rows_sends_nothing(task, emulator, tmp_path, ledger_url):
    ctx = make_context(task, emulator, tmp_path, ledger_url)
    path = tickets(tmp_path)
    first = run_batch_lane(ctx, f"{task}:night-1", path)
    assert first.counts == {"succeeded": ANSWERED, "rejected": 1}
    assert first.cost_usd == billed_for(emulator, first.batch_ids) > 0
    batches, requests = batches_created(emulator), billed_requests(emulator)

    second = run_batch_lane(ctx, f"{task}:night-2", path)
    assert batches_created(emulator) == batches and billed_requests(emulator) == requests
    assert second.counts == {"cached": ANSWERED, "rejected": 1}
    assert (second.shards, second.batch_ids, second.cost_usd, second.live_cost_usd) == \
        (0, [], 0, 0)
    before, after = run_items(ctx, first), run_items(ctx, second)
    saved = 0
    for key, item in after.items():
        if item["status"] == "rejected":
            assert before[key]["status"] == "rejected" and item["cached_from"] is None
            continue
        source = int(item["cached_from"].removeprefix("item:"))
        original = next(i for i in before.values() if i["id"] == source)
        assert original["content_hash"] == item["content_hash"] == before[key]["content_hash"]
        assert item["output_text"] == original["output_text"]
        assert (item["cost_picodollars"], item["custom_id"], item["shard_id"]) == (0, None, None)
        assert item["cache_saving_picodollars"] == original["cost_picodollars"] > 0
        saved += original["cost_picodollars"]
    # T2 and T9 ask the same: one answer serves both.
    assert after["T2"]["cached_from"] == after["T9"]["cached_from"]
    # Rows in = rows out, cached ones with their answer.
    results = pd.read_parquet(ctx.storage.open(second.results_url, "rb"))
    assert sorted(results["row_number"]) == list(range(1, len(ROWS) + 1))
    assert set(results["status"]) <= TERMINAL | {"cached"}
    cached = results[results.status == "cached"]
    assert len(cached) == ANSWERED and cached["raw_text"].str.len().min() > 0
    assert cached["cached_from"].str.startswith("item:").all()
    if task == "ticket-tagging":
        first_results = pd.read_parquet(ctx.storage.open(first.results_url, "rb"))
        assert list(cached.sort_values("row_number")["output_topic"]) == list(
            first_results[first_results.status == "succeeded"]
            .sort_values("row_number")["output_topic"])
    # The summary shows the rows and what the cache saved: the originals at batch price.
    assert second.cache_saving_usd == from_picodollars(saved) > 0
    line = second.outcome_line()
    assert f"0 succeeded, {ANSWERED} from the cache, 1 failed" in line
    assert f"the cache saved ${second.cache_saving_usd:,.6f}" in line
    assert f"{ANSWERED} row(s) were answered from the result cache" in second.markdown()
    metrics = {r["metric"]: r["value"] for r in second.cost_rows()}
    assert metrics["cached"] == ANSWERED
    assert metrics["cache saving USD (cached rows at batch price)"] == \
        f"{second.cache_saving_usd:.6f}"
    # The live lane finds the batch answer under the hash it computes for the row.
    request = prepare(ctx.task, next(r for r in read_rows(path) if r.number == 1))
    answer = cache.lookup(ctx.ledger, cache.request_hash(ctx.adapter, ctx.task, request))
    assert answer.source == f"item:{before['T1']['id']}"
    assert answer.output_text == before["T1"]["output_text"]


def test_an_answer_stored_live_is_not_paid_for_again_at_night(emulator, tmp_path, ledger_url):
    ctx = make_context("ticket-tagging", emulator, tmp_path, ledger_url)
    task, path = ctx.task, tickets(tmp_path)
    request = prepare(task, next(r for r in read_rows(path) if r.number == 1))
    content_hash = cache.content_hash(task.provider, task.model,
                                      ctx.adapter.request_body(task, request))
    # The live lane answered T1 during the day: its call's record, then its answer.
    usage = Usage(input_tokens=130, output_tokens=18)
    live_cost = to_picodollars(ctx.prices.cost_usd(task.model, usage, Lane.LIVE))
    with ctx.ledger.engine.begin() as conn:
        conn.execute(live_calls.insert().values(
            id=1, task=task.name, provider=task.provider, model=task.model,
            answered_by="live", status="succeeded", content_hash=content_hash,
            output_text=TAGS, attempts=1, latency_ms=850.0, input_tokens=130,
            output_tokens=18, cost_picodollars=live_cost, created_at=time.time()))
    assert cache.store(ctx.ledger, content_hash, task.name, task.provider, task.model, TAGS,
                       "live:1", live_cost, live_cost, task.cache.ttl_hours)
    requests = billed_requests(emulator)

    summary = run_batch_lane(ctx, "ticket-tagging:night", path)
    assert summary.counts == {"succeeded": ANSWERED - 1, "cached": 1, "rejected": 1}
    assert billed_requests(emulator) - requests == ANSWERED - 1  # T1 was not sent
    assert summary.cost_usd == billed_for(emulator, summary.batch_ids)
    t1 = run_items(ctx, summary)["T1"]
    assert (t1["status"], t1["cached_from"], t1["output_text"], t1["cost_picodollars"]) == \
        ("cached", "live:1", TAGS, 0)
    # Saved: the live call's usage at batch price (half its live price here).
    batch_cost = ctx.prices.cost_usd(task.model, usage, Lane.BATCH)
    assert summary.cache_saving_usd == batch_cost == from_picodollars(live_cost) / 2
    results = pd.read_parquet(ctx.storage.open(summary.results_url, "rb"))
    row = results[results.input_key == "T1"].iloc[0]
    assert (row["status"], row["output_topic"], row["cached_from"]) == \
        ("cached", "billing", "live:1")
    # The live answer stays the entry (first wins); the night's answers joined it.
    entries = cache_rows(ctx.ledger)
    assert entries[content_hash]["source"] == "live:1"
    assert len(entries) == ANSWERED - 1  # T2 and T9 share one


def test_a_live_answer_whose_record_is_gone_saves_its_cost_at_the_batch_ratio(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    prices = load_price_table(Settings().prices_path)
    rates = prices.price("gpt-4o-mini")
    cache.store(ledger, "f" * 64, "ticket-tagging", "openai", "gpt-4o-mini", TAGS, "live:77",
                2_000_000, 2_000_000, None)
    cache.store(ledger, "0" * 64, "ticket-tagging", "openai", "gpt-4o-mini", TAGS, "item:78",
                1_000_000, 2_000_000, None)
    found = cache.lookup_many(ledger, ["f" * 64, "0" * 64])
    savings = cache.batch_savings(ledger, prices, found.values())
    ratio = (rates.batch.input + rates.batch.output) / (rates.live.input + rates.live.output)
    assert savings == {"live:77": to_picodollars(from_picodollars(2_000_000) * ratio),
                       "item:78": 1_000_000}
    assert savings["live:77"] == 1_000_000  # gpt-4o-mini's batch rates are half


def test_an_expired_answer_is_sent_again_and_replaced(emulator, tmp_path):
    ctx = make_context("ticket-summary", emulator, tmp_path)
    path = tickets(tmp_path)
    first = run_batch_lane(ctx, "ticket-summary:day-1", path)
    # Those answers were given 31 days ago: past the task's 720-hour TTL.
    month = 31 * 86400
    with ctx.ledger.engine.begin() as conn:
        conn.execute(result_cache.update().values(
            created_at=result_cache.c.created_at - month,
            expires_at=result_cache.c.expires_at - month))
    requests = billed_requests(emulator)
    second = run_batch_lane(ctx, "ticket-summary:day-32", path)
    assert second.counts == first.counts == {"succeeded": ANSWERED, "rejected": 1}
    assert billed_requests(emulator) - requests == ANSWERED
    assert second.cache_saving_usd == 0 and "cache" not in second.outcome_line()
    # The fresh answers replaced the expired entries.
    fresh = {f"item:{i['id']}" for i in run_items(ctx, second).values()
             if i["status"] == "succeeded"}
    entries = cache_rows(ctx.ledger).values()
    assert {e["source"] for e in entries} <= fresh and len(entries) == ANSWERED - 1
    assert all(e["expires_at"] > time.time() + 700 * 3600 for e in entries)
    # Stored without a TTL (another task's, or before this one had one): it never
    # expires, yet this task takes no answer older than its own TTL, and replaces it.
    with ctx.ledger.engine.begin() as conn:
        conn.execute(result_cache.update().values(
            created_at=result_cache.c.created_at - month, expires_at=None))
    requests = billed_requests(emulator)
    third = run_batch_lane(ctx, "ticket-summary:day-33", path)
    assert third.counts == {"succeeded": ANSWERED, "rejected": 1}
    assert billed_requests(emulator) - requests == ANSWERED
    entries = cache_rows(ctx.ledger).values()
    assert {e["source"] for e in entries} <= {f"item:{i['id']}" for i in run_items(
        ctx, third).values()} and all(e["expires_at"] is not None for e in entries)
    # Fresh entries answer the next night.
    fourth = run_batch_lane(ctx, "ticket-summary:day-34", path)
    assert fourth.counts == {"cached": ANSWERED, "rejected": 1}


def test_a_task_with_its_cache_disabled_ignores_it(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    path = tickets(tmp_path)
    first = run_batch_lane(ctx, "ticket-tagging:cached", path)
    entries = cache_rows(ctx.ledger)
    assert len(entries) == ANSWERED - 1
    ctx.task = ctx.task.model_copy(update={"cache": CacheSpec(enabled=False)})
    requests = billed_requests(emulator)
    second = run_batch_lane(ctx, "ticket-tagging:uncached", path)
    assert second.counts == {"succeeded": ANSWERED, "rejected": 1}
    assert billed_requests(emulator) - requests == ANSWERED
    assert cache_rows(ctx.ledger) == entries  # neither read nor written
    before, after = run_items(ctx, first), run_items(ctx, second)
    assert all(after[k]["content_hash"] == before[k]["content_hash"] for k in before)
    assert after["T1"]["content_hash"] is not None


def test_collect_caches_answers_in_the_transaction_that_records_them(emulator, tmp_path,
                                                                      ledger_url):
    ctx = make_context("ticket-summary", emulator, tmp_path, ledger_url,
                       crash_hook=crash_at("mid_collect"), collect_chunk=3)
    path = tickets(tmp_path)
    with pytest.raises(SimulatedCrash):
        run_batch_lane(ctx, "ticket-summary:crash", path)

    def settled() -> tuple[dict[str, str], dict[str, dict]]:
        run_id = ctx.ledger.run_by_key("ticket-summary:crash")["id"]
        done = {f"item:{i['id']}": i for i in ctx.ledger.iter_items(run_id)
                if i["status"] == "succeeded"}
        return done, cache_rows(ctx.ledger)

    done, entries = settled()
    assert len(done) == 3  # the first chunk, committed before the crash
    assert {i["content_hash"] for i in done.values()} == set(entries)
    assert all(done[e["source"]]["output_text"] == e["output_text"] for e in entries.values())
    ctx.crash_hook = no_crash
    summary = run_batch_lane(ctx, "ticket-summary:crash", path)
    assert summary.counts == {"succeeded": ANSWERED, "rejected": 1}
    done, entries = settled()
    assert {i["content_hash"] for i in done.values()} == set(entries)
    assert all(done[e["source"]]["content_hash"] == h for h, e in entries.items())


def test_the_summary_counts_cached_rows_as_answered():
    summary = RunSummary(
        run_key="ticket-tagging:2026-12-01", task="ticket-tagging", provider="openai",
        model="gpt-4o-mini", rows=6, counts={"succeeded": 2, "cached": 3, "failed": 1},
        reasons=[], input_tokens=100, cached_input_tokens=0, cache_write_tokens=0,
        output_tokens=40, cost_usd=Decimal("0.002"), live_cost_usd=Decimal("0.004"),
        shards=1, cache_saving_usd=Decimal("0.003"))
    line = summary.outcome_line()
    assert "6 rows, 2 succeeded, 3 from the cache, 1 failed, cost $0.002000" in line
    assert line.endswith("vs live, the cache saved $0.003000")
    assert summary.brief()["cached"] == 3 and summary.brief()["cache_saving_usd"] == "0.003"
    assert "Sent again at batch price they would have cost $0.003000." in summary.markdown()
