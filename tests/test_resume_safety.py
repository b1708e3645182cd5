"""Resume rules in the ledger: one transaction per state change, the run lease,
repairs of old ledgers, inputs that can be corrected, and concurrent migrations."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from lanewise.batch.planning import open_run
from lanewise.batch.runner import run_batch_lane
from lanewise.batch.steps import submit_shard
from lanewise.errors import InputError, RunBusyError
from lanewise.ledger import Ledger
from lanewise.ledger.lease import RunLease, _namespace, _process_start, holder_is_dead
from lanewise.ledger.schema import items, shards
from tests.lane_helpers import batches_created, billed_for, make_context, sample_input
from tests.test_batch_lane import check_run


def test_submit_record_moves_shard_and_items_in_one_transaction(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    run_id = open_run(ctx, "tagging:atomic", sample_input(tmp_path, rows=20))
    shard = ctx.ledger.shards(run_id)[0]
    with RunLease(ctx.ledger, "tagging:atomic", ttl=30) as lease:
        assert ctx.ledger.claim_shard(shard["id"], "planned", "tagging:atomic", lease.holder)
    calls = []

    def failing_second_statement(conn, cursor, statement, *args):
        calls.append(statement)
        if statement.lstrip().upper().startswith("UPDATE ITEMS"):
            raise RuntimeError("connection dropped between the two statements")

    import sqlalchemy as sa

    sa.event.listen(ctx.ledger.engine, "before_cursor_execute", failing_second_statement)
    try:
        with pytest.raises(RuntimeError):
            ctx.ledger.record_submitted(shard["id"], "batch_x")
    finally:
        sa.event.remove(ctx.ledger.engine, "before_cursor_execute", failing_second_statement)
    after = ctx.ledger.shard(shard["id"])
    assert after["status"] == "submitting" and after["provider_batch_id"] is None  # rolled back
    assert any("UPDATE shards" in c for c in calls)


def test_a_stranded_shard_from_an_old_ledger_is_repaired_from_the_results(emulator, tmp_path):
    """The old two-commit submit could leave a submitted shard with `queued` items, and
    collection then marked it collected at $0. Resume settles it from the provider."""
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    input_url = sample_input(tmp_path, rows=30)
    run_id = open_run(ctx, "tagging:stranded", input_url)
    shard = ctx.ledger.shards(run_id)[0]
    batch_id = submit_shard(ctx, shard["id"])
    with ctx.ledger.engine.begin() as conn:  # the old crash window, and its $0 collect
        conn.execute(items.update().where(items.c.shard_id == shard["id"],
                                          items.c.status == "submitted")
                     .values(status="queued"))
        conn.execute(shards.update().where(shards.c.id == shard["id"])
                     .values(status="collected", ended_at=time.time()))
    before = batches_created(emulator)
    summary = run_batch_lane(ctx, "tagging:stranded", input_url)
    assert batches_created(emulator) == before  # repaired, not paid again
    assert summary.batch_ids == [batch_id]
    check_run(ctx, emulator, summary, rows=30)


def test_a_second_driver_is_refused_with_the_holder_named(emulator, tmp_path):
    ctx = make_context("ticket-summary", emulator, tmp_path)
    with RunLease(ctx.ledger, "summary:busy", ttl=30):
        with pytest.raises(RunBusyError, match=rf"run summary:busy is being driven by process "
                                               rf"{os.getpid()} on .*created nothing"):
            run_batch_lane(make_context("ticket-summary", emulator, tmp_path), "summary:busy",
                           sample_input(tmp_path, rows=10))
    assert ctx.ledger.run_by_key("summary:busy") is None  # nothing was even planned


def test_a_lapsed_or_dead_holders_lease_is_taken_over(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite3'}")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    ledger.try_lease("k", f"{host}:{gone.pid}:1:{_namespace()}:aa", host, gone.pid, 30,
                     lambda lease: False)
    assert holder_is_dead(ledger.lease("k"))
    # The same pid seen from another PID namespace (another container with the same
    # hostname) says nothing about that process: its lease must lapse.
    assert not holder_is_dead({**ledger.lease("k"),
                               "holder": f"{host}:{gone.pid}:1:other-ns:aa"})
    me = {"host": host, "pid": os.getpid(),
          "holder": f"{host}:{os.getpid()}:{_process_start(os.getpid())}:{_namespace()}:x"}
    assert not holder_is_dead(me)  # alive
    assert holder_is_dead({**me, "holder": f"{host}:{os.getpid()}:1:{_namespace()}:x"})
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited, not yet reaped: a zombie
    assert holder_is_dead({"host": host, "pid": zombie.pid,
                           "holder": f"{host}:{zombie.pid}:1:{_namespace()}:z"})
    zombie.wait()
    with RunLease(ledger, "k", ttl=30) as lease:  # dead holder on this host: at once
        assert ledger.lease("k")["holder"] == lease.holder
    ledger.try_lease("k2", "elsewhere:1:1:bb", "another-host", 1, 0.2, lambda lease: False)
    with pytest.raises(RunBusyError, match="process 1 on another-host"):
        RunLease(ledger, "k2", ttl=30).acquire()
    time.sleep(0.3)  # the other host's lease lapses
    with RunLease(ledger, "k2", ttl=30) as lease:
        assert ledger.lease("k2")["holder"] == lease.holder
    assert ledger.lease("k2") is None  # released


def test_a_waiting_driver_gets_the_lease_when_it_is_released(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite3'}")
    first = RunLease(ledger, "k", ttl=30).acquire()
    import threading

    threading.Timer(0.5, first.release).start()
    started = time.monotonic()
    with RunLease(ledger, "k", ttl=30, wait_seconds=10, poll_seconds=0.1):
        assert 0.4 < time.monotonic() - started < 5


def test_the_intent_needs_the_lease(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    run_id = open_run(ctx, "tagging:fenced", sample_input(tmp_path, rows=10))
    shard = ctx.ledger.shards(run_id)[0]
    assert not ctx.ledger.claim_shard(shard["id"], "planned", "tagging:fenced", "nobody")
    with RunLease(ctx.ledger, "tagging:fenced", ttl=30) as lease:
        assert ctx.ledger.claim_shard(shard["id"], "planned", "tagging:fenced", lease.holder)
        assert not ctx.ledger.claim_shard(shard["id"], "planned", "tagging:fenced",
                                          lease.holder)  # a compare-and-set: once
    assert ctx.ledger.shard(shard["id"])["status"] == "submitting"


def test_a_lost_or_stale_lease_stops_the_driver(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite3'}")
    lease = RunLease(ledger, "k", ttl=30).acquire()
    lease.ensure()
    ledger.release_lease("k", lease.holder)  # taken from under it
    ledger.try_lease("k", "elsewhere:1:1:ns:bb", "another-host", 1, 30, lambda lease: False)
    assert not ledger.renew_lease("k", lease.holder, 30)
    lease.lost.set()  # what the heartbeat does when its renewal fails
    with pytest.raises(RunBusyError, match="lost the lease of run k"):
        lease.ensure()
    lease.release()
    quiet = RunLease(ledger, "k3", ttl=30).acquire()
    quiet.renewed_at -= 28  # no successful renewal for nearly a lease length
    with pytest.raises(RunBusyError, match="was not renewed"):
        quiet.ensure()
    quiet.release()


def test_a_batch_recorded_by_another_process_is_not_overwritten(emulator, tmp_path):
    """A driver whose lease lapsed between its intent and its create: its batch is
    cancelled, the recorded one stays, and only one is paid."""
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    run_id = open_run(ctx, "tagging:late", sample_input(tmp_path, rows=10))
    shard = ctx.ledger.shards(run_id)[0]
    with RunLease(ctx.ledger, "tagging:late", ttl=30) as lease:
        assert ctx.ledger.claim_shard(shard["id"], "planned", "tagging:late", lease.holder)
        assert ctx.ledger.record_submitted(shard["id"], "batch_first")
        assert not ctx.ledger.record_submitted(shard["id"], "batch_second")
    assert ctx.ledger.shard(shard["id"])["provider_batch_id"] == "batch_first"


def test_a_nul_in_an_answer_is_stored_on_every_ledger(emulator, tmp_path, ledger_url):
    """PostgreSQL refuses NUL in text: it would fail the shard's collect on every rerun."""
    csv_path = tmp_path / "nul.csv"
    csv_path.write_bytes(b"ticket_id,subject,body\nN1,Hi,Hello\x00world my export fails.\n"
                         b"N2,Hi,Login fails\n")
    ctx = make_context("ticket-summary", emulator, tmp_path, ledger_url)
    summary = run_batch_lane(ctx, f"summary:nul:{ctx.ledger.dialect}", str(csv_path))
    assert summary.counts == {"succeeded": 2}
    assert summary.cost_usd == billed_for(emulator, summary.batch_ids)


def test_a_mistyped_input_does_not_lock_the_run_key(emulator, tmp_path):
    ctx = make_context("ticket-summary", emulator, tmp_path)
    with pytest.raises(InputError, match="input file not found: .*typo.parquet"):
        run_batch_lane(ctx, "summary:typo", str(tmp_path / "typo.parquet"))
    summary = run_batch_lane(ctx, "summary:typo", sample_input(tmp_path, rows=10))
    check_run(ctx, emulator, summary, rows=10)
    assert summary.cost_usd == billed_for(emulator, summary.batch_ids)


OPEN_LEDGER = """
import sys, time
from lanewise.ledger import Ledger
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
ledger = Ledger(sys.argv[1])
ledger.open_run(f"t:{sys.argv[3]}", "t", "openai", "m", "in.parquet")
"""


@pytest.mark.parametrize("processes", [3, 6])
def test_first_opens_of_a_new_ledger_at_once_all_succeed(ledger_url, processes, tmp_path):
    if ledger_url.startswith("sqlite"):
        ledger_url = f"sqlite:///{tmp_path / f'fresh-{processes}.sqlite3'}"
    else:  # the fixture migrated it: start from an empty database again
        from tests.conftest import _reset_postgres

        _reset_postgres(ledger_url)
    start = time.time() + 3  # every process imports first, then all open together
    children = [subprocess.Popen([sys.executable, "-c", OPEN_LEDGER, ledger_url, str(start),
                                  str(n)], stderr=subprocess.PIPE) for n in range(processes)]
    errors = [(c.wait(timeout=120), c.stderr.read().decode()[-400:]) for c in children]
    assert all(code == 0 for code, _ in errors), errors
    ledger = Ledger(ledger_url)
    assert len(ledger.recent_run_ids(100)) == processes


def test_a_kill_while_rewriting_results_keeps_the_previous_file(emulator, tmp_path):
    """Rerunning a finished run rewrites its results; dying half way must not truncate
    the file its results_url names."""
    import pandas as pd

    from lanewise.batch.results import write_results

    ctx = make_context("ticket-summary", emulator, tmp_path)
    summary = run_batch_lane(ctx, "summary:rewrite", sample_input(tmp_path, rows=12))
    run_id = ctx.ledger.run_by_key("summary:rewrite")["id"]
    real_pages = ctx.ledger.iter_item_pages

    def dying(*args, **kwargs):
        for page in real_pages(*args, **kwargs):
            yield page[:5]  # written to the new file, then the process dies
            raise KeyboardInterrupt("killed mid-write")

    ctx.ledger.iter_item_pages = dying
    with pytest.raises(KeyboardInterrupt):
        write_results(ctx, run_id)
    ctx.ledger.iter_item_pages = real_pages
    results = pd.read_parquet(ctx.storage.open(summary.results_url, "rb"))
    assert sorted(results["row_number"]) == list(range(1, 13))
