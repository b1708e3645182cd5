"""The ledger on SQLite always, and on PostgreSQL when LANEWISE_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from lanewise.ledger import MIGRATIONS, Ledger


def test_migrations_upgrade_an_existing_ledger_keeping_its_rows(ledger_url):
    engine = sa.create_engine(ledger_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.exec_driver_sql(
            "INSERT INTO runs (run_key, task, provider, model, input_url, status, created_at) "
            "VALUES ('old', 'ticket-tagging', 'openai', 'gpt-4o-mini', 'x', 'finished', 1)")
        conn.exec_driver_sql(
            "INSERT INTO shards (run_id, shard_key, attempt, status, jsonl_url, request_count, "
            "bytes, estimated_tokens) SELECT id, 'old/s0', 0, 'collected', 'u', 1, 1, 1 "
            "FROM runs")
    engine.dispose()
    ledger = Ledger(ledger_url)
    run = ledger.run_by_key("old")
    assert run["status"] == "finished" and len(run["token"]) == 6
    assert ledger.shards(run["id"])[0]["shard_key"] == "old/s0"


def test_duplicate_keys_are_refused_and_rejected_rows_never_collide(ledger_url):
    ledger = Ledger(ledger_url)
    run, created = ledger.open_run("k", "t", "openai", "m", "in")
    assert created and not ledger.open_run("k", "t", "openai", "m", "in")[1]
    base = {"status": "pending", "custom_id": None}
    first = ledger.add_items(run["id"], [{"row_number": 1, "input_key": "A", "dedup_key": "A",
                                          **base}], [])
    again = ledger.add_items(run["id"], [{"row_number": 2, "input_key": "A", "dedup_key": "A",
                                          **base}],
                             [{"row_number": 3, "status": "rejected", "error_reason": "x"},
                              {"row_number": 4, "status": "rejected", "error_reason": "y"}])
    assert list(first) == [1] and again == {}
    assert ledger.count_items(run["id"]) == {"pending": 1, "rejected": 2}


def _planned_run(ledger: Ledger, rows: int = 4) -> tuple[int, int, dict[int, int]]:
    """A run with `rows` items queued in one shard; returns (run id, shard id, ids)."""
    run, _ = ledger.open_run("r", "t", "openai", "m", "in")
    ids = ledger.add_items(run["id"], [
        {"row_number": n, "input_key": f"k{n}", "dedup_key": f"k{n}",
         "custom_id": f"k{n}--tok-0", "status": "pending", "excerpted": False}
        for n in range(1, rows + 1)], [])
    shard_id = ledger.add_shard(run["id"], {
        "shard_key": "r/r0/s0", "attempt": 0, "jsonl_url": "u", "request_count": rows,
        "bytes": 1, "estimated_tokens": 1}, [{"b_id": i} for i in ids.values()])
    return run["id"], shard_id, ids


def _submitted(ledger: Ledger, shard_id: int, batch_id: str) -> None:
    ledger.set_shard(shard_id, status="submitting", intent_at=1.0)
    assert ledger.record_submitted(shard_id, batch_id)


def test_requeue_shard_puts_a_refused_batch_back_to_planned(ledger_url):
    ledger = Ledger(ledger_url)
    run_id, shard_id, ids = _planned_run(ledger)
    _submitted(ledger, shard_id, "batch_a")
    # One item already settled (collected before the batch was seen as refused).
    first = ids[1]
    assert ledger.update_items([{"b_id": first, "status": "succeeded"}],
                               where_status="submitted") == 1
    ledger.set_shard(shard_id, status="failed", provider_status="failed", ended_at=2.0,
                     failure="token_limit_exceeded: Enqueued token limit reached")

    assert not ledger.requeue_shard(shard_id, "batch_other")  # CAS on the batch id
    assert ledger.shard(shard_id)["status"] == "failed"
    assert ledger.requeue_shard(shard_id, "batch_a")

    shard = ledger.shard(shard_id)
    assert shard["status"] == "planned"
    assert all(shard[c] is None for c in ("provider_batch_id", "provider_status", "failure",
                                          "intent_at", "submitted_at", "ended_at"))
    items = {i["id"]: i for i in ledger.iter_items(run_id)}
    assert items[first]["status"] == "succeeded"
    for row, item_id in ids.items():
        if item_id != first:  # custom_id and attempt kept: the budget was not spent
            assert items[item_id]["status"] == "queued"
            assert items[item_id]["custom_id"] == f"k{row}--tok-0"
            assert items[item_id]["attempt"] == 0
    assert "batch_a" not in ledger.claimed_batch_ids()
    # Done once: the same requeue again changes nothing.
    assert not ledger.requeue_shard(shard_id, "batch_a")
    # The shard goes through its submit again like any planned shard.
    _submitted(ledger, shard_id, "batch_b")
    assert ledger.count_items(run_id) == {"submitted": 3, "succeeded": 1}


def test_requeue_shard_refuses_shards_not_submitted_or_failed(ledger_url):
    ledger = Ledger(ledger_url)
    run_id, shard_id, _ = _planned_run(ledger)
    assert not ledger.requeue_shard(shard_id, "batch_a")  # planned, no batch
    _submitted(ledger, shard_id, "batch_a")
    assert ledger.requeue_shard(shard_id, "batch_a")  # `submitted` is accepted too
    _submitted(ledger, shard_id, "batch_b")
    ledger.set_shard(shard_id, status="ended")
    assert not ledger.requeue_shard(shard_id, "batch_b")  # it ran: collect it instead
    ledger.set_shard(shard_id, status="collected")
    assert not ledger.requeue_shard(shard_id, "batch_b")
    assert ledger.shard(shard_id)["provider_batch_id"] == "batch_b"
    assert ledger.count_items(run_id) == {"submitted": 4}


def test_learned_limits_are_upserted_per_provider_model_and_name(ledger_url):
    ledger = Ledger(ledger_url)
    assert ledger.learned_limit("openai", "gpt-4o-mini", "enqueued_tokens") is None
    ledger.learn_limit("openai", "gpt-4o-mini", "enqueued_tokens", 2_000_000)
    ledger.learn_limit("openai", "gpt-4o", "enqueued_tokens", 90_000)
    assert ledger.learned_limit("openai", "gpt-4o-mini", "enqueued_tokens") == 2_000_000
    # A later figure replaces the earlier one, lower or higher (high tiers pass 2**31).
    ledger.learn_limit("openai", "gpt-4o-mini", "enqueued_tokens", 15_000_000_000)
    assert ledger.learned_limit("openai", "gpt-4o-mini", "enqueued_tokens") == 15_000_000_000
    assert ledger.learned_limit("openai", "gpt-4o", "enqueued_tokens") == 90_000
    assert ledger.learned_limit("anthropic", "gpt-4o", "enqueued_tokens") is None
    assert ledger.learned_limit("openai", "gpt-4o", "requests") is None
    # Too old to trust: as if never learned.
    assert ledger.learned_limit("openai", "gpt-4o", "enqueued_tokens",
                                max_age_seconds=3600) == 90_000
    with ledger.engine.begin() as conn:
        conn.execute(sa.text("UPDATE provider_limits SET learned_at = learned_at - 7200"))
    assert ledger.learned_limit("openai", "gpt-4o", "enqueued_tokens",
                                max_age_seconds=3600) is None
    assert ledger.learned_limit("openai", "gpt-4o", "enqueued_tokens") == 90_000


def test_bulk_writes_keep_their_semantics(ledger_url):
    """Inserts skip duplicate keys and report only new rows; updates change only items
    in the expected state, count what they changed, take the last of two updates of
    one item, and store text with NUL characters (as U+FFFD) on both databases."""
    ledger = Ledger(ledger_url)
    run, _ = ledger.open_run("b", "t", "openai", "m", "in")
    run_id = run["id"]
    rows = 12_000  # more than one chunk
    accepted = [{"row_number": n, "input_key": f"k{n}", "dedup_key": f"k{n}",
                 "custom_id": None, "status": "pending", "excerpted": n == 7}
                for n in range(1, rows + 1)]
    ids = ledger.add_items(run_id, accepted, [
        {"row_number": rows + 1, "input_key": "bad\x00key", "status": "rejected",
         "error_field": "body", "error_reason": "empty"}])
    assert sorted(ids) == list(range(1, rows + 1))
    again = ledger.add_items(run_id, [
        {"row_number": rows + 2, "input_key": "k5", "dedup_key": "k5", "custom_id": None,
         "status": "pending", "excerpted": False},
        {"row_number": rows + 3, "input_key": "new", "dedup_key": "new", "custom_id": None,
         "status": "pending", "excerpted": False}], [])
    assert list(again) == [rows + 3]
    assert ledger.rows_of_keys(run_id, ["k5", "nope"]) == {"k5": 5}

    shard_id = ledger.add_shard(run_id, {
        "shard_key": "b/r0/s0", "attempt": 0, "jsonl_url": "u", "request_count": rows,
        "bytes": 1, "estimated_tokens": 1},
        [{"b_id": i, "custom_id": f"c{n}", "attempt": 0} for n, i in ids.items()])
    _submitted(ledger, shard_id, "batch_bulk")
    done = [{"b_id": ids[n], "status": "succeeded", "output_text": f"answer {n}\x00",
             "input_tokens": n, "cost_picodollars": 3_000_000_000_000 + n}
            for n in range(1, rows + 1)]
    # The same item twice in one chunk: as one statement per row, the first settles it
    # and the second finds it no longer `submitted`.
    done.insert(1, {**done[0], "output_text": "too late", "input_tokens": 0})
    assert ledger.update_items(done, where_status="submitted") == rows
    assert ledger.update_items(done[:10], where_status="submitted") == 0  # already settled
    # A retried update of another shape on the same item: only while still submitted.
    assert ledger.update_items([{"b_id": ids[1], "status": "failed"}],
                               where_status="submitted") == 0
    assert ledger.count_items(run_id) == {"succeeded": rows, "rejected": 1, "pending": 1}
    # Without a state to expect, both apply in order: the last one stays.
    assert ledger.update_items([{"b_id": ids[3], "output_text": "first", "input_tokens": 1},
                                {"b_id": ids[3], "output_text": "last", "input_tokens": 2}]) == 2
    items = {i["row_number"]: i for i in ledger.iter_items(run_id)}
    assert items[1]["output_text"] == "answer 1\ufffd" and items[1]["input_tokens"] == 1
    assert items[3]["output_text"] == "last" and items[3]["input_tokens"] == 2
    assert items[2]["output_text"] == "answer 2\ufffd"
    assert items[7]["excerpted"] is True and items[8]["excerpted"] is False
    assert items[2]["custom_id"] == "c2" and items[2]["shard_id"] == shard_id
    assert items[rows + 1]["input_key"] == "bad\ufffdkey"
    assert items[rows + 1]["attempt"] == 0 and items[rows + 1]["cost_picodollars"] == 0
    totals = ledger.totals(run_id)
    assert totals["cost_picodollars"] == sum(3_000_000_000_000 + n for n in range(1, rows + 1))
    picked = list(ledger.iter_items(run_id, status="pending", columns=("id", "input_key")))
    assert picked == [{"id": again[rows + 3], "input_key": "new"}]


def test_iter_items_pages_through_gaps_in_row_order(ledger_url):
    """Pages are ranges of row numbers: sparse rows (a date window keeps few), filters
    and a column list without row_number still stream every item once, in order."""
    ledger = Ledger(ledger_url)
    run, _ = ledger.open_run("g", "t", "openai", "m", "in")
    numbers = [1, 2, 4999, 5000, 5001, 12_000, 250_000, 250_001, 1_000_000]
    ids = ledger.add_items(run["id"], [
        {"row_number": n, "input_key": f"k{n}", "dedup_key": f"k{n}", "status": "pending"}
        for n in numbers], [])
    retry = {ids[5000], ids[250_001]}
    ledger.update_items([{"b_id": i, "status": "retry"} for i in retry])
    assert [i["row_number"] for i in ledger.iter_items(run["id"])] == numbers
    assert [i["input_key"] for i in ledger.iter_items(run["id"], status="retry",
                                                      columns=("input_key",))] == \
        ["k5000", "k250001"]
    assert list(ledger.iter_items(run["id"], status="queued")) == []
    other, _ = ledger.open_run("g2", "t", "openai", "m", "in")
    assert list(ledger.iter_items(other["id"])) == []


def _counted(ledger: Ledger, run_id: int) -> dict[str, int]:
    """Items per status, counted from the items themselves."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, count(*) FROM items WHERE run_id = :r "
                                    "GROUP BY status"), {"r": run_id}).all()
    return {status: count for status, count in rows}


def test_item_counts_stay_exact_through_every_kind_of_write(ledger_url):
    """count_items (kept by triggers on PostgreSQL) equals a count of the items after
    inserts, skipped duplicates, bulk and shard-wide updates, no-op updates, a requeue,
    raw SQL and a reset, per run."""
    ledger = Ledger(ledger_url)
    run_id, shard_id, ids = _planned_run(ledger, rows=30)
    other, _ = ledger.open_run("other", "t", "openai", "m", "in")
    ledger.add_items(other["id"], [{"row_number": 1, "dedup_key": "x", "status": "pending"}],
                     [{"row_number": 2, "status": "rejected", "error_reason": "bad"}])
    ledger.add_items(run_id, [{"row_number": 99, "dedup_key": "k1", "status": "pending"}],
                     [{"row_number": 100, "status": "rejected", "error_reason": "dup"}])
    assert ledger.count_items(run_id) == _counted(ledger, run_id) == \
        {"queued": 30, "rejected": 1}
    _submitted(ledger, shard_id, "batch_c")
    settled = [{"b_id": i, "status": "succeeded" if n % 3 else "retry", "input_tokens": n}
               for n, i in ids.items() if n <= 20]
    assert ledger.update_items(settled, where_status="submitted") == 20
    assert ledger.update_items(settled, where_status="submitted") == 0
    ledger.update_items([{"b_id": ids[1], "input_tokens": 7}])  # status untouched
    ledger.set_shard(shard_id, status="failed")
    assert ledger.requeue_shard(shard_id, "batch_c")
    assert ledger.count_items(run_id) == _counted(ledger, run_id) == \
        {"succeeded": 14, "retry": 6, "queued": 10, "rejected": 1}
    with ledger.engine.begin() as conn:
        conn.execute(sa.text("UPDATE items SET status = 'failed' WHERE run_id = :r AND "
                             "status = 'retry'"), {"r": run_id})
    assert ledger.count_items(run_id) == _counted(ledger, run_id)
    assert ledger.count_items(other["id"]) == {"pending": 1, "rejected": 1}
    ledger.reset_planning(other["id"])
    assert ledger.count_items(other["id"]) == {}
    assert ledger.count_items(run_id) == _counted(ledger, run_id)
