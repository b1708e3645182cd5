"""The weekly digest's input: which summary runs a week takes, and how rows are packed."""

from __future__ import annotations

import json
from datetime import date
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

from lanewise.batch.context import DateWindow
from lanewise.batch.digest import build_digest_input, pack_rows
from lanewise.catalog import load_catalog
from lanewise.inputs import InputRow
from lanewise.ledger import Ledger
from lanewise.requests import PreparedRequest, prepare
from lanewise.storage import Storage

WEEK = DateWindow(date(2026, 11, 23), date(2026, 11, 29))


def _context(tmp_path, **task_changes):
    spec = load_catalog().get("weekly-digest").model_copy(update=task_changes)
    return SimpleNamespace(task=spec, ledger=Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}"),
                           storage=Storage(str(tmp_path / "storage")))


def _summary_run(ctx, run_key, start, end, rows, status="finished"):
    """A ticket-summary run in the ledger with a results file of (key, status, text)."""
    run, _ = ctx.ledger.open_run(run_key, "ticket-summary", "anthropic", "claude-haiku-4-5",
                                 "tickets.parquet", start, end)
    url = ctx.storage.url(f"{run_key.replace(':', '_')}.parquet")
    table = pa.table({"input_key": [r[0] for r in rows], "status": [r[1] for r in rows],
                      "raw_text": [r[2] for r in rows]})
    with ctx.storage.open(url, "wb") as handle:
        pq.write_table(table, handle)
    ctx.ledger.set_run(run["id"], status=status, results_url=url)


def test_the_weeks_summary_runs_make_the_input_newest_summary_first(tmp_path):
    ctx = _context(tmp_path)
    _summary_run(ctx, "ticket-summary:2026-11-23", "2026-11-23", "2026-11-23",
                 [("T-1", "succeeded", "Old  summary\nof T-1."), ("T-2", "failed", None),
                  ("T-3", "succeeded", "Login fails.")])
    _summary_run(ctx, "ticket-summary:2026-11-23..2026-11-24", "2026-11-23", "2026-11-24",
                 [("T-1", "succeeded", "New summary of T-1."), ("T-4", "rejected", None)])
    # Outside the week, not finished, or taking every row: not the week's summaries.
    _summary_run(ctx, "ticket-summary:2026-11-30", "2026-11-30", "2026-11-30",
                 [("T-9", "succeeded", "Next week.")])
    _summary_run(ctx, "ticket-summary:2026-11-22..2026-11-23", "2026-11-22", "2026-11-23",
                 [("T-8", "succeeded", "Straddles the week.")])
    _summary_run(ctx, "ticket-summary:2026-11-25", "2026-11-25", "2026-11-25",
                 [("T-7", "succeeded", "Still running.")], status="running")
    _summary_run(ctx, "ticket-summary:all", None, None, [("T-6", "succeeded", "Every row.")])

    built = build_digest_input(ctx, WEEK, "weekly-digest:2026-11-23..2026-11-29")
    assert built.runs == ["ticket-summary:2026-11-23", "ticket-summary:2026-11-23..2026-11-24"]
    assert built.missing_days == [date(2026, 11, d) for d in range(25, 30)]
    assert (built.rows, built.tickets) == (1, 2)
    with ctx.storage.open(built.url, "rb") as handle:
        rows = [json.loads(line) for line in handle]
    assert rows == [{"digest_id": "2026-11-23-1", "week_start": "2026-11-23",
                     "week_end": "2026-11-29", "ticket_count": 2,
                     "summaries": "- T-1: New summary of T-1.\n- T-3: Login fails."}]


def test_a_run_past_planning_keeps_its_input(tmp_path):
    ctx = _context(tmp_path)
    _summary_run(ctx, "ticket-summary:2026-11-23", "2026-11-23", "2026-11-23",
                 [("T-1", "succeeded", "First.")])
    key = "weekly-digest:2026-11-23..2026-11-29"
    first = build_digest_input(ctx, WEEK, key)
    run, _ = ctx.ledger.open_run(key, "weekly-digest", "openai", "gpt-4.1-mini", first.url,
                                 "2026-11-23", "2026-11-29")
    ctx.ledger.set_run(run["id"], status="running")
    _summary_run(ctx, "ticket-summary:2026-11-24", "2026-11-24", "2026-11-24",
                 [("T-2", "succeeded", "Later.")])
    again = build_digest_input(ctx, WEEK, key)
    assert again.url == first.url and (again.rows, again.tickets) == (1, 1)
    with ctx.storage.open(again.url, "rb") as handle:
        assert "T-2" not in handle.read().decode()


def test_summaries_are_packed_into_rows_that_fit_the_context(tmp_path):
    ctx = _context(tmp_path, max_input_tokens=900)
    summaries = {f"T-{i:03d}": f"Customer {i} cannot export the monthly CSV report; "
                 "the download button spins forever." for i in range(60)}
    rows = pack_rows(ctx, WEEK, summaries)
    assert len(rows) > 3
    assert sum(row["ticket_count"] for row in rows) == 60
    lines = [line for row in rows for line in row["summaries"].split("\n")]
    assert lines == [f"- {key}: {text}" for key, text in sorted(summaries.items())]
    assert len({row["digest_id"] for row in rows}) == len(rows)
    for row in rows:  # each row is a request the task accepts as it is
        prepared = prepare(ctx.task, InputRow(1, row))
        assert isinstance(prepared, PreparedRequest) and not prepared.excerpted
        assert prepared.estimated_tokens <= ctx.task.max_input_tokens
    assert pack_rows(ctx, WEEK, {}) == []
