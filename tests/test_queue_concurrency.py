"""Drains in real processes: two at once over one queue claim disjoint items and nothing
is processed twice (PostgreSQL with SKIP LOCKED, and SQLite under its write lock); a
drain killed with SIGKILL while its batch is in flight is resumed by the next one."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal

from lanewise.batch.drain import drain_task
from lanewise.ledger import Ledger
from lanewise.queue import enqueue_many
from tests import queue_helpers
from tests.lane_helpers import batches_created, make_context
from tests.queue_helpers import (
    billed_keys,
    billed_usd,
    billing_records,
    drain_batch_ids,
    queue_rows,
    tickets,
)

queue_ledger_url = queue_helpers.queue_ledger_url  # the fixture, for this module

# One drain process: waits for the common start time, then drains as a schedule would
# (one drain after another) until a drain claims nothing, and prints what it claimed.
# With "hang", it stops for good once its first batch is recorded (to be SIGKILLed).
DRAIN = r"""
import json, sys, time
from lanewise.batch.context import LaneContext
from lanewise.batch.drain import drain_task
from lanewise.settings import Settings

url, emulator_url, home, start, claim_size, name, mode = sys.argv[1:8]


def hook(point):
    if mode == "hang" and point == "after_record":
        print("HANGING", flush=True)
        time.sleep(600)


settings = Settings(home=home, emulator_url=emulator_url, database_url=url,
                    poll_initial_seconds=0.05, poll_max_seconds=0.2)
ctx = LaneContext.build("ticket-tagging", settings, crash_hook=hook)
time.sleep(max(0.0, float(start) - time.time()))
claimed, resumed = [], []
while True:
    report = drain_task(ctx, claim_size=int(claim_size), claimed_by=name)
    new = [r for r in report.runs if not r.resumed]
    claimed += [{"run_key": r.run_key, "items": r.items, "busy": r.busy is not None}
                for r in new]
    resumed += [{"run_key": r.run_key, "busy": r.busy is not None}
                for r in report.runs if r.resumed]
    if not new:
        break
print(json.dumps({"claimed": claimed, "resumed": resumed}), flush=True)
"""


def _start(ledger_url: str, emulator, tmp_path, start: float, claim_size: int, name: str,
           mode: str = "run") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRAIN, ledger_url, emulator.url, str(tmp_path / "home"),
         str(start), str(claim_size), name, mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})


def test_two_drains_at_once_claim_disjoint_items_and_process_nothing_twice(
        emulator, tmp_path, queue_ledger_url):
    ledger = Ledger(queue_ledger_url)
    rows = tickets(200)
    assert enqueue_many(ledger, "ticket-tagging", rows).added == 200
    batches_before = batches_created(emulator)
    start = time.time() + 4  # both import and build their context first, then start together

    drains = {name: _start(queue_ledger_url, emulator, tmp_path, start, 15, name)
              for name in ("A", "B")}
    outputs = {}
    for name, process in drains.items():
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err[-3000:]
        outputs[name] = json.loads(out.strip().splitlines()[-1])

    final = queue_rows(ledger)
    assert len(final) == 200 and {r["status"] for r in final} == {"succeeded"}
    # Each claim is one drain's: a run key's items were all claimed by one process, the
    # two processes' run keys are disjoint, and together they cover every item once.
    by_run: dict[str, set[str]] = {}
    for row in final:
        by_run.setdefault(row["run_key"], set()).add(row["claimed_by"])
    assert all(len(claimers) == 1 for claimers in by_run.values()), by_run
    keys_of = {name: {c["run_key"] for c in outputs[name]["claimed"]} for name in drains}
    assert keys_of["A"] and keys_of["B"], outputs  # both drains took a share
    assert not keys_of["A"] & keys_of["B"]
    assert keys_of["A"] | keys_of["B"] == set(by_run)
    for name in drains:
        assert {k for k, c in by_run.items() if c == {name}} == keys_of[name]
    claimed_items = sum(c["items"] for name in drains for c in outputs[name]["claimed"])
    assert claimed_items == 200
    sizes = Counter(r["run_key"] for r in final)
    assert max(sizes.values()) <= 15, sizes

    # Nothing processed twice: each ticket is in one run's items, billed exactly once,
    # and no batch was created twice; what the queue paid is what was billed.
    run_ids = [ledger.run_by_key(k)["id"] for k in by_run]
    items = [i["input_key"] for run_id in run_ids for i in ledger.iter_items(run_id)]
    assert Counter(items) == {r["ticket_id"]: 1 for r in rows}
    records = billing_records(emulator, drain_batch_ids(ledger, set(by_run)))
    assert billed_keys(records) == {r["ticket_id"]: 1 for r in rows}
    shards = sum(len(ledger.shards(run_id)) for run_id in run_ids)
    assert batches_created(emulator) - batches_before == shards
    paid = sum(Decimal(r["cost_picodollars"]) for r in final) / 10**12
    assert paid == billed_usd(records) > 0


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    """The process's next stdout line, within `timeout` seconds ('' if it ended first)."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
        return process.stdout.readline()
    finally:
        selector.close()


def test_a_drain_killed_with_its_batch_in_flight_is_resumed_and_paid_once(emulator, tmp_path):
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = Ledger(ledger_url)
    rows = tickets(30)
    enqueue_many(ledger, "ticket-tagging", rows)
    batches_before = batches_created(emulator)
    process = _start(ledger_url, emulator, tmp_path, time.time(), 100, "killed", mode="hang")
    try:
        line = _read_line(process, timeout=120)
        assert line.strip() == "HANGING", process.stderr.read()[-3000:]
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    claimed = queue_rows(ledger)
    run_key = claimed[0]["run_key"]
    assert {(r["status"], r["run_key"]) for r in claimed} == {("claimed", run_key)}
    assert batches_created(emulator) - batches_before == 1  # its batch is in flight

    ctx = make_context("ticket-tagging", emulator, tmp_path, ledger=ledger)
    report = drain_task(ctx)

    # The dead drain's lease is taken over at once (its process is gone), its batch is
    # collected, not sent again, and nothing new was claimed.
    assert [(r.run_key, r.resumed, r.busy) for r in report.runs] == [(run_key, True, None)]
    final = queue_rows(ledger)
    assert {r["status"] for r in final} == {"succeeded"}
    assert batches_created(emulator) - batches_before == 1
    records = billing_records(emulator, drain_batch_ids(ledger, {run_key}))
    assert billed_keys(records) == {r["ticket_id"]: 1 for r in rows}
    assert sum(Decimal(r["cost_picodollars"]) for r in final) / 10**12 == billed_usd(records)
