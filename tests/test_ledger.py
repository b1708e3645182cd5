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
