"""The support-day example flow: a reply draft live now for each ticket, the same
tickets queued for the night's tagging and summary and drained in the batch lane; and
what the day answered live is not paid again at night."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from lanewise.settings import get_settings
from tests.lane_helpers import billed_for, make_context
from tests.live_helpers import billed_live, ticket

pytestmark = pytest.mark.prefect


def test_drafts_now_and_tags_and_summaries_tonight(live_flow_env, emulator, tmp_path):
    from flows.support_day import support_day
    from lanewise import queue
    from lanewise.batch.drain import drain_task
    from lanewise.ledger import Ledger

    rows = [ticket(i, f"Support day ticket {i}: the export to CSV hangs at {i}0%.")
            for i in range(1, 6)]
    since = time.time()
    state = support_day(params={"rows": rows, "concurrency": 3}, return_state=True)
    assert state.is_completed(), state.message
    requests, billed = billed_live(emulator, since)
    brief = state.result()
    assert brief["drafts"]["counts"] == {"succeeded": 5} and requests == 5
    assert Decimal(brief["drafts"]["cost_usd"]) == billed
    assert state.message.startswith("support day: reply-draft live: 5 rows, 5 succeeded")
    assert "queued for tonight: 5 for ticket-tagging, 5 for ticket-summary (10 new)" \
        in state.message
    # The same tickets again: drafts may come from the cache, nothing is queued twice.
    again = support_day(params={"rows": rows}, return_state=True).result()
    assert again["queued"] == brief["queued"] and again["new"] == 0

    ledger = Ledger(get_settings().resolved_database_url)
    for task in ("ticket-tagging", "ticket-summary"):
        ids = brief["queued"][task]
        assert [queue.result(ledger, i).status for i in ids] == ["queued"] * 5
        ctx = make_context(task, emulator, tmp_path, get_settings().resolved_database_url)
        report = drain_task(ctx)
        items = [queue.result(ledger, i) for i in ids]
        assert [i.status for i in items] == ["succeeded"] * 5, report
        assert all(i.output for i in items)
        run = ctx.ledger.run_by_key(items[0].run_key)
        batch_ids = [s["provider_batch_id"] for s in ctx.ledger.shards(run["id"])]
        assert sum((i.cost_usd for i in items), Decimal(0)) == billed_for(emulator, batch_ids)


def test_a_ticket_answered_live_by_day_is_not_paid_again_at_night(live_flow_env, emulator,
                                                                   tmp_path):
    """ticket-tagging has a live path too: what a live call answered by day, the night's
    batch run over the same rows takes from the result cache and never sends."""
    from lanewise.batch.runner import run_batch_lane
    from lanewise.live import call
    from lanewise.sampledata import write

    rows = [ticket(i, f"Day and night ticket {i}: login loops back to the start page.")
            for i in range(1, 4)]
    answered = [call("ticket-tagging", row) for row in rows]
    assert [r.status for r in answered] == ["succeeded"] * 3
    assert {r.answered_by for r in answered} == {"live"}

    import pandas as pd

    path = tmp_path / "night.parquet"
    more = tmp_path / "more.parquet"
    write(4, more, seed=3, clean=True)
    night = pd.concat([pd.DataFrame(rows), pd.read_parquet(more)], ignore_index=True)
    night["created_at"] = night["created_at"].astype(str)
    night.to_parquet(path)
    ctx = make_context("ticket-tagging", emulator, tmp_path, get_settings().resolved_database_url)
    summary = run_batch_lane(ctx, "ticket-tagging:day-and-night", str(path))
    items = list(ctx.ledger.iter_items(ctx.ledger.run_by_key(summary.run_key)["id"]))
    cached = [i for i in items if i["status"] == "cached"]
    assert len(cached) == 3 and all(i["cost_picodollars"] == 0 for i in cached)
    assert {i["cached_from"] for i in cached} == {f"live:{r.call_id}" for r in answered}
    assert {i["input_key"] for i in cached} == {r["ticket_id"] for r in rows}
    # Only the other four rows were sent (and billed) at night.
    sent = sum(s["request_count"] for s in ctx.ledger.shards(
        ctx.ledger.run_by_key(summary.run_key)["id"]))
    assert sent == 4
    assert summary.cost_usd == billed_for(emulator, summary.batch_ids)
