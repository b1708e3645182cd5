"""Helpers for the deferred-work queue tests: ledgers, rows, and what the emulator billed."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from lanewise.ledger import Ledger
from lanewise.pricing import from_picodollars
from lanewise.sampledata import ticket
from tests.chaos_harness import fresh_postgres_database
from tests.conftest import POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def queue_ledger_url(request, tmp_path):
    """A new ledger URL: a SQLite file always; a fresh PostgreSQL database (dropped after)
    when LANEWISE_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        return
    if not POSTGRES_URL:
        pytest.skip("LANEWISE_TEST_POSTGRES_URL is not set")
    with fresh_postgres_database(POSTGRES_URL) as url:
        yield url


def tickets(count: int, first: int = 1, seed: int = 3) -> list[dict[str, Any]]:
    """`count` plausible ticket rows keyed T-<n> from `first` on, each text its own (the
    sample generator repeats texts, which the result cache would answer unsent)."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 30, 8)
    rows = [ticket(rng, index, start) for index in range(first, first + count)]
    return [{**row, "body": f"{row['body']} (ref {row['ticket_id']})"} for row in rows]


def billing_records(emulator, batch_ids: list[str]) -> list[dict[str, Any]]:
    """The emulator's billing records of these batches (one per billed request)."""
    records = []
    for batch_id in batch_ids:
        response = httpx.get(f"{emulator.url}/_emulator/billing/records",
                             params={"batch_id": batch_id})
        response.raise_for_status()
        records += [json.loads(line) for line in response.text.splitlines() if line.strip()]
    return records


def billed_keys(records: list[dict[str, Any]]) -> Counter:
    """How many times each request key was billed (a custom_id is `<key>--<run token>-<n>`:
    the same key billed in two runs or two attempts counts twice)."""
    return Counter(record["custom_id"].rsplit("--", 1)[0] for record in records)


def billed_usd(records: list[dict[str, Any]]) -> Decimal:
    """What these records cost."""
    return sum((from_picodollars(int(r["cost_picodollars"])) for r in records), Decimal(0))


def drain_batch_ids(ledger: Ledger, run_keys: set[str]) -> list[str]:
    """The provider batch ids of these runs' shards."""
    ids = []
    for run_key in run_keys:
        run = ledger.run_by_key(run_key)
        if run is not None:
            ids += [s["provider_batch_id"] for s in ledger.shards(run["id"])
                    if s["provider_batch_id"]]
    return ids


def queue_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """Every queue item row, in id order."""
    import sqlalchemy as sa

    from lanewise.ledger.schema import queue_items

    with ledger.engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(queue_items).order_by(queue_items.c.id)).mappings()]
