"""`lanewise runs forget RUN_KEY`: a run that never sent anything is removed with its
files; one that sent a batch, or that a process drives now, is refused with why. On
SQLite always and on PostgreSQL when LANEWISE_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from lanewise.batch.planning import open_run
from lanewise.batch.runner import run_batch_lane
from lanewise.ledger.schema import items, run_leases, runs, shards
from lanewise.storage import Storage
from tests.history_helpers import invoke
from tests.lane_helpers import SimulatedCrash, crash_at, make_context, sample_input


def _rows(ledger, table, **where) -> int:
    with ledger.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(table)
        for column, value in where.items():
            query = query.where(table.c[column] == value)
        return conn.execute(query).scalar_one()


def _env(ledger_url, tmp_path) -> dict[str, str]:
    return {"LANEWISE_DATABASE_URL": ledger_url, "LANEWISE_HOME": str(tmp_path / "home")}


def test_forget_removes_a_planned_run_its_rows_and_files(emulator, tmp_path, ledger_url):
    ctx = make_context("ticket-summary", emulator, tmp_path, ledger_url)
    ctx.token_budget = 1500  # several planned shards
    input_url = sample_input(tmp_path, rows=30)
    run_id = open_run(ctx, "summary:forget", input_url)
    planned = ctx.ledger.shards(run_id)
    assert len(planned) > 1 and {s["status"] for s in planned} == {"planned"}
    assert all(s["jsonl_url"].startswith("file://") and ctx.storage.exists(s["jsonl_url"])
               for s in planned)
    queued = _rows(ctx.ledger, items, run_id=run_id)
    # A lapsed lease of a process that stopped is removed with the run.
    ctx.ledger.try_lease("summary:forget", "gone:1", "host", 1, -1.0, lambda lease: False)
    other = make_context("ticket-summary", emulator, tmp_path / "other", ledger_url)
    kept = open_run(other, "summary:kept", input_url)

    result = invoke(["runs", "forget", "summary:forget"], _env(ledger_url, tmp_path))
    assert result.exit_code == 0, result.output
    assert (f"forgot run summary:forget: {queued} item(s), {len(planned)} planned shard(s), "
            f"{len(planned)} file(s) removed; nothing had been sent") in \
        result.output.replace("\n", "")
    assert ctx.ledger.run_by_key("summary:forget") is None
    assert _rows(ctx.ledger, items, run_id=run_id) == 0
    assert _rows(ctx.ledger, shards, run_id=run_id) == 0
    assert _rows(ctx.ledger, run_leases, run_key="summary:forget") == 0
    assert not any(ctx.storage.exists(s["jsonl_url"]) for s in planned)
    run_folder = ctx.storage.url("runs", "summary_forget")
    assert not ctx.storage.fs.exists(ctx.storage._path(run_folder))  # no empty folder left
    assert ctx.storage.fs.exists(ctx.storage.root)  # the root stays
    # The other run is untouched, and the run key starts afresh.
    assert ctx.ledger.count_items(kept) and len(ctx.ledger.shards(kept)) >= 1
    if ctx.ledger.dialect == "postgresql":  # the trigger-kept counts of the run are gone
        with ctx.ledger.engine.connect() as conn:
            assert not conn.execute(sa.text("SELECT count(*) FROM run_item_counts "
                                             "WHERE run_id = :r"), {"r": run_id}).scalar()
    summary = run_batch_lane(make_context("ticket-summary", emulator, tmp_path, ledger_url),
                             "summary:forget", input_url)
    assert summary.rows == 30 and summary.cost_usd > 0


def test_forget_refuses_a_run_that_sent_batches_saying_what_was_paid(emulator, tmp_path,
                                                                     ledger_url):
    ctx = make_context("ticket-tagging", emulator, tmp_path, ledger_url)
    summary = run_batch_lane(ctx, "tagging:paid", sample_input(tmp_path, rows=12))
    run = ctx.ledger.run_by_key("tagging:paid")
    before = (_rows(ctx.ledger, items, run_id=run["id"]),
              _rows(ctx.ledger, shards, run_id=run["id"]))

    result = invoke(["runs", "forget", "tagging:paid"], _env(ledger_url, tmp_path))
    assert result.exit_code != 0
    message = str(result.exception)
    assert (f"run 'tagging:paid' cannot be forgotten: {len(summary.batch_ids)} batch(es) "
            f"were sent to the provider ({summary.batch_ids[0]}") in message
    assert f"${summary.cost_usd:,.6f} is recorded as paid so far" in message
    assert summary.cost_usd > 0
    assert ctx.ledger.run_by_key("tagging:paid") == run
    assert (_rows(ctx.ledger, items, run_id=run["id"]),
            _rows(ctx.ledger, shards, run_id=run["id"])) == before
    assert ctx.storage.exists(summary.results_url)


def test_forget_refuses_a_run_whose_batch_was_sent_but_not_yet_paid(emulator, tmp_path,
                                                                    ledger_url):
    crashing = make_context("ticket-summary", emulator, tmp_path, ledger_url,
                            crash_hook=crash_at("after_record"))
    with pytest.raises(SimulatedCrash):
        run_batch_lane(crashing, "summary:in-flight", sample_input(tmp_path, rows=12))
    result = invoke(["runs", "forget", "summary:in-flight"], _env(ledger_url, tmp_path))
    assert result.exit_code != 0
    assert "1 batch(es) were sent" in str(result.exception)
    assert "$0.000000 is recorded as paid so far" in str(result.exception)
    assert crashing.ledger.run_by_key("summary:in-flight") is not None


def test_forget_refuses_while_a_process_drives_the_run_and_unknown_keys(emulator, tmp_path,
                                                                        ledger_url):
    ctx = make_context("ticket-summary", emulator, tmp_path, ledger_url)
    open_run(ctx, "summary:busy", sample_input(tmp_path, rows=12))
    assert ctx.ledger.try_lease("summary:busy", "worker-7:4242:x", "worker-7", 4242, 300,
                                lambda lease: False) is None
    result = invoke(["runs", "forget", "summary:busy"], _env(ledger_url, tmp_path))
    assert result.exit_code != 0
    assert "run 'summary:busy' is being driven by worker-7:4242:x on worker-7" in \
        str(result.exception)
    assert ctx.ledger.run_by_key("summary:busy") is not None
    missing = invoke(["runs", "forget", "nope"], _env(ledger_url, tmp_path))
    assert missing.exit_code != 0 and "no run 'nope'" in str(missing.exception)


def test_forget_removes_a_finished_empty_runs_results_file(emulator, tmp_path, ledger_url):
    """A run whose window held no rows sent nothing: forgetting it takes its (empty)
    results file too."""
    from datetime import date

    from lanewise.batch.context import DateWindow

    ctx = make_context("ticket-summary", emulator, tmp_path, ledger_url)
    summary = run_batch_lane(ctx, "summary:empty", sample_input(tmp_path, rows=12),
                             DateWindow(date(1999, 1, 1), date(1999, 1, 1)))
    assert summary.rows == 0 and ctx.storage.exists(summary.results_url)
    result = invoke(["runs", "forget", "summary:empty"], _env(ledger_url, tmp_path))
    assert result.exit_code == 0, result.output
    assert not ctx.storage.exists(summary.results_url)
    assert _rows(ctx.ledger, runs, run_key="summary:empty") == 0


def test_storage_urls_are_file_urls_and_old_paths_are_shown_as_such(tmp_path):
    from lanewise.storage import display_url

    storage = Storage(str(tmp_path / "root"))
    url = storage.url("runs", "k", "results.parquet")
    assert url == f"file://{tmp_path}/root/runs/k/results.parquet"
    assert storage.root_url == f"file://{tmp_path}/root"
    with storage.open(url, "wb") as handle:
        handle.write(b"x")
    assert (tmp_path / "root" / "runs" / "k" / "results.parquet").read_bytes() == b"x"
    # A path recorded by an older lanewise opens, and is shown as the same URL.
    plain = str(tmp_path / "root" / "runs" / "k" / "results.parquet")
    assert storage.exists(plain) and display_url(plain) == url
    assert display_url("s3://b/p/x") == "s3://b/p/x" and display_url(None) is None
    assert Storage("memory://bucket/p").url("x") == "memory:///bucket/p/x"
