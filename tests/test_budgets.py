"""Budgets that hold: a batch run's offline estimate and its refusal before anything is
sent, the live lane's stop once a budget is spent, estimate against billed on every run,
and budgets in `lanewise costs`. Catalogs with budgets are temporary copies of the
shipped one; provider traffic goes to the test emulator through the SDKs."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from lanewise.batch.context import LaneContext
from lanewise.batch.drain import drain_task
from lanewise.batch.runner import run_batch_lane
from lanewise.budgets import LiveBudgets, estimate_run
from lanewise.errors import BudgetExceededError
from lanewise.inputs import read_rows
from lanewise.ledger import Ledger
from lanewise.ledger.schema import live_calls, queue_items
from lanewise.pricing import Lane, Usage, from_picodollars, to_picodollars
from lanewise.requests import PreparedRequest, prepare
from lanewise.sampledata import write
from lanewise.settings import Settings
from tests.lane_helpers import SimulatedCrash, billed_for, crash_at, sample_input
from tests.live_helpers import live_settings, ticket, write_catalog
from tests.queue_helpers import tickets

PICO = 10 ** 12
#: How close the expected estimate must come to the billed cost once the task's output
#: was measured (the emulator's answers vary in length from row to row).
EXPECTED_TOLERANCE_PCT = Decimal(10)


def context(emulator: Any, tmp_path: Path, catalog: Path, ledger: Ledger | None = None,
            **overrides: Any) -> LaneContext:
    """A lane context on the test emulator over this catalog (one ledger per test)."""
    settings = Settings(home=tmp_path / "home", emulator_url=emulator.url,
                        catalog_path=catalog, poll_initial_seconds=0.05, poll_max_seconds=0.2)
    return LaneContext.build(overrides.pop("task", "ticket-tagging"), settings,
                             ledger=ledger or Ledger(settings.resolved_database_url),
                             **overrides)


def budgeted(tmp_path: Path, name: str = "c1", **tasks: dict[str, Any]) -> Path:
    """The shipped catalog with no budget but these tasks' (ticket_tagging={"daily_usd":
    ...}; underscores for dashes); other fields changed with `changes`."""
    return catalog_with(tmp_path, name, {t: {"budget": b} for t, b in tasks.items()})


def catalog_with(tmp_path: Path, name: str, changes: dict[str, dict[str, Any]]) -> Path:
    """The shipped catalog with every task's budget taken out, then `changes` (task ->
    fields) applied."""
    path = write_catalog(tmp_path / name)
    raw = yaml.safe_load(path.read_text())
    for spec in raw["tasks"].values():
        spec.pop("budget", None)
    for task, fields in changes.items():
        raw["tasks"][task.replace("_", "-")].update(json.loads(json.dumps(fields, default=str)))
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def emulator_seen(emulator: Any) -> dict[str, int]:
    """What the emulator has been sent: batches created, files uploaded, live calls."""
    stats = emulator.state.snapshot()
    return {"batches": stats["openai_batches_created"] + stats["anthropic_batches_created"],
            "files": len(emulator.state.files.all()),
            "live": stats["openai_live_calls"] + stats["anthropic_live_calls"]}


def spend(ledger: Ledger, task: str, usd: str, at: float | None = None) -> None:
    """A billed live call of `task` (as another process would record it)."""
    with ledger._write() as conn:
        conn.execute(live_calls.insert().values(
            task=task, provider="openai", model="gpt-4o-mini", answered_by="live",
            status="succeeded", content_hash=f"spent-{time.time_ns()}", latency_ms=1.0,
            output_tokens=10, cost_picodollars=to_picodollars(Decimal(usd)),
            created_at=time.time() if at is None else at))


# --- the batch lane: refused before anything is sent -----------------------------------


def test_a_run_over_its_ceiling_is_refused_before_any_batch_is_created(emulator, tmp_path):
    catalog = budgeted(tmp_path, ticket_summary={"run_ceiling_usd": "0.005"})
    ctx = context(emulator, tmp_path, catalog, task="ticket-summary")
    data = sample_input(tmp_path, rows=40)
    before = emulator_seen(emulator)

    with pytest.raises(BudgetExceededError) as refused:
        run_batch_lane(ctx, "ticket-summary:ceiling", data)

    assert emulator_seen(emulator) == before  # no upload, no batch, no call
    run = ctx.ledger.run_by_key("ticket-summary:ceiling")
    shards = ctx.ledger.shards(run["id"])
    assert shards and all(s["status"] == "planned" and s["provider_batch_id"] is None
                          for s in shards)
    # The estimate, worked out independently: each accepted row's input tokens by the
    # token rule (a shard's estimated_tokens is the sum of its requests'), output at
    # max_output_tokens for every request, at the model's batch prices.
    prepared = {}  # by key: a repeated key is rejected, its first row kept
    for row in read_rows(data, ["ticket_id"]):
        outcome = prepare(ctx.task, row)
        if isinstance(outcome, PreparedRequest):
            prepared.setdefault(outcome.key, outcome)
    queued = ctx.ledger.count_items(run["id"])["queued"]
    assert len(prepared) == queued == sum(s["request_count"] for s in shards)
    input_tokens = sum(p.estimated_tokens for p in prepared.values())
    assert input_tokens == sum(s["estimated_tokens"] for s in shards)
    upper = to_picodollars(ctx.prices.cost_usd("claude-haiku-4-5", Usage(
        input_tokens=input_tokens, output_tokens=120 * queued), Lane.BATCH))
    assert run["estimate_upper_picodollars"] == upper > to_picodollars(Decimal("0.005"))
    assert run["estimate_expected_picodollars"] == upper  # nothing measured yet
    error = refused.value
    assert error.upper_usd == from_picodollars(upper) and error.run_key == run["run_key"]
    message = str(error)
    assert message.startswith("run ticket-summary:ceiling of ticket-summary refused before "
                              "sending anything")
    assert f"for {queued:,} request(s)" in message
    assert "its per-run ceiling of $0.005000" in message
    fit = Decimal("0.005") * queued // from_picodollars(upper)
    assert 0 < fit < queued
    assert f"To go on: split it (about {fit:,} of its {queued:,} requests fit: run a " \
        f"shorter --start/--end window of about {fit:,} request(s)); or raise" in message
    assert f"raise budget.run_ceiling_usd of ticket-summary in the catalog ({catalog})" \
        in message
    assert "nothing was sent or paid" in message


def test_over_the_days_budget_refused_then_run_with_the_same_key_once_raised(emulator,
                                                                             tmp_path):
    data = sample_input(tmp_path, rows=40)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    spend(ledger, "ticket-tagging", "0.25")  # spent today already (UTC)
    spend(ledger, "ticket-tagging", "7", at=time.time() - 40 * 86400)  # not this month
    before = emulator_seen(emulator)
    key = "ticket-tagging:daily"

    tight = context(emulator, tmp_path, budgeted(
        tmp_path, "tight", ticket_tagging={"daily_usd": "0.250001"}), ledger)
    with pytest.raises(BudgetExceededError) as first:
        run_batch_lane(tight, key, data)
    message = str(first.value)
    assert "its daily budget of $0.250001 ($0.250000 spent today (UTC), $0.000001 left)" \
        in message
    assert re.search(r"Not one of its \d+ requests fits in what is left\. To go on: raise "
                     r"budget\.daily_usd of ticket-tagging in the catalog", message)
    assert f"or rerun run key {key} in the next UTC day" in message
    run = ledger.run_by_key(key)
    upper = from_picodollars(run["estimate_upper_picodollars"])

    # Half the estimate left: about half the requests fit, and it is still refused.
    half = context(emulator, tmp_path, budgeted(
        tmp_path, "half", ticket_tagging={"daily_usd": Decimal("0.25") + upper / 2,
                                          "monthly_usd": "100"}), ledger)
    with pytest.raises(BudgetExceededError) as second:
        run_batch_lane(half, key, data)
    requests = ledger.count_items(run["id"])["queued"]
    fits = int(re.search(r"about ([\d,]+) of its", str(second.value)).group(1))
    assert abs(fits - requests // 2) <= 1
    assert emulator_seen(emulator) == before

    # Raised: the same run key runs, from the plan it kept.
    raised = context(emulator, tmp_path, budgeted(
        tmp_path, "raised", ticket_tagging={"daily_usd": Decimal("0.25") + 2 * upper}), ledger)
    summary = run_batch_lane(raised, key, data)
    assert summary.run_key == key and summary.succeeded > 0
    assert ledger.run_by_key(key)["id"] == run["id"]
    assert emulator_seen(emulator)["batches"] > before["batches"]
    assert summary.estimate_upper_usd == upper >= summary.cost_usd > 0


def test_a_run_that_already_sent_a_batch_is_not_checked_again(emulator, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    data = sample_input(tmp_path, rows=40)
    free = context(emulator, tmp_path, budgeted(tmp_path, "free"), ledger,
                   crash_hook=crash_at("after_record"))
    with pytest.raises(SimulatedCrash):  # killed right after its first batch was created
        run_batch_lane(free, "ticket-tagging:approved", data)
    # The budget shrinks meanwhile; the run was approved when it started and finishes.
    tiny = context(emulator, tmp_path, budgeted(
        tmp_path, "tiny", ticket_tagging={"run_ceiling_usd": "0.000001"}), ledger)
    summary = run_batch_lane(tiny, "ticket-tagging:approved", data)
    assert summary.succeeded > 0 and summary.estimate_upper_usd is not None


def test_a_refused_drain_puts_its_items_back_for_a_later_drain(emulator, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    tight = context(emulator, tmp_path, budgeted(
        tmp_path, "tight", ticket_tagging={"run_ceiling_usd": "0.0001"}), ledger)
    from lanewise.queue import enqueue

    for row in tickets(6):
        enqueue(ledger, "ticket-tagging", row["ticket_id"], row, catalog=None)
    before = emulator_seen(emulator)

    report = drain_task(tight)

    assert emulator_seen(emulator) == before
    [refused] = report.runs
    assert re.search(r"about \d of its 6 requests fit: drain with a claim size of \d or "
                     r"less\); or raise budget.run_ceiling_usd of ticket-tagging in the "
                     r"catalog \(.*\) and drain again\. Its items go back to the queue; "
                     r"nothing was sent or paid\.$", refused.refused), refused.refused
    assert "refused:" in report.line()
    assert ledger.run_by_key(refused.run_key) is None  # forgotten: nothing was sent
    with ledger.engine.connect() as conn:
        states = conn.execute(sa.select(queue_items.c.status, queue_items.c.run_key)).all()
    assert states == [("queued", None)] * 6
    # Split as the message says: claims that fit the ceiling go through.
    assert drain_task(tight, claim_size=2).settled == 2
    roomy = context(emulator, tmp_path, budgeted(
        tmp_path, "roomy", ticket_tagging={"run_ceiling_usd": "10"}), ledger)
    assert drain_task(roomy).settled == 4


# --- estimate against billed ---------------------------------------------------------


def test_every_run_reports_its_estimate_against_the_billed_cost(emulator, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    ctx = context(emulator, tmp_path, budgeted(tmp_path), ledger)
    first = run_batch_lane(ctx, "ticket-tagging:first", sample_input(tmp_path, rows=60))
    # Nothing measured before the first run: expected is the upper bound, far too high.
    assert first.estimate_expected_usd == first.estimate_upper_usd > first.cost_usd
    other = tmp_path / "other.parquet"
    write(60, other, seed=11, clean=True)
    summary = run_batch_lane(ctx, "ticket-tagging:second", str(other))

    billed = billed_for(emulator, summary.batch_ids)
    assert summary.cost_usd == billed > 0
    assert summary.estimate_upper_usd >= billed
    error = summary.estimate_error_pct
    assert error == (summary.estimate_expected_usd - billed) / billed * 100
    assert abs(error) <= EXPECTED_TOLERANCE_PCT, error
    rows = {r["metric"]: r["value"] for r in summary.cost_rows()}
    assert rows["estimate USD (expected)"] == f"{summary.estimate_expected_usd:.6f}"
    assert rows["estimate USD (upper bound)"] == f"{summary.estimate_upper_usd:.6f}"
    assert rows["expected estimate vs billed"] == f"{error:+.1f}%"
    assert f"({error:+.1f}% against billed)" in summary.markdown()
    assert summary.brief()["estimate_error_pct"] == f"{error:.2f}"

    from rich.console import Console

    from lanewise.reporting import print_runs

    console = Console(width=80, record=True)
    print_runs(console, [summary], "What the run cost")
    shown = console.export_text()
    assert max(len(line) for line in shown.splitlines()
               if not line.startswith("results of")) <= 80
    line = next(x for x in shown.splitlines() if "expected vs billed" in x)
    assert f"{error:+.1f}%" in line


def test_the_expected_estimate_uses_the_measured_average_output(emulator, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    ctx = context(emulator, tmp_path, budgeted(tmp_path), ledger)
    run_batch_lane(ctx, "ticket-tagging:measure", sample_input(tmp_path, rows=40))
    # A billed live call of the task counts too (and one answered from the cache not).
    with ledger._write() as conn:
        for answered_by, tokens, cost in (("live", 1000, 5), ("cache", 9999, 0)):
            conn.execute(live_calls.insert().values(
                task="ticket-tagging", provider="openai", model="gpt-4o-mini",
                answered_by=answered_by, status="succeeded", content_hash=answered_by,
                latency_ms=1.0, output_tokens=tokens, cost_picodollars=cost,
                created_at=time.time()))
        billed = conn.execute(sa.text(
            "SELECT COUNT(*), SUM(output_tokens) FROM items WHERE status IN "
            "('succeeded', 'invalid_output')")).one()
    measured = (billed[1] + 1000) / (billed[0] + 1)
    other = tmp_path / "other.parquet"
    write(30, other, seed=5, clean=True)
    run_id = ctx.ledger.open_run("ticket-tagging:planned", "ticket-tagging", "openai",
                                 "gpt-4o-mini", str(other))[0]["id"]
    from lanewise.batch.planning import plan_first_round

    plan_first_round(ctx, run_id, "ticket-tagging:planned", str(other), None)
    estimate = estimate_run(ctx, run_id)
    assert estimate.measured_output_tokens == pytest.approx(measured)
    expected = Usage(input_tokens=estimate.input_tokens,
                     output_tokens=round(min(measured, 100) * estimate.requests))
    assert estimate.expected_picodollars == to_picodollars(
        ctx.prices.cost_usd("gpt-4o-mini", expected, Lane.BATCH))


# --- the live lane stops paying -------------------------------------------------------


def test_a_live_task_whose_budget_is_spent_defers_instead_of_paying(emulator, tmp_path):
    from lanewise.live.lane import LiveLane
    from lanewise.queue import result

    catalog = budgeted(tmp_path, reply_draft={"daily_usd": "0.000001"})
    # Read from the ledger once an hour: the lane's own spend must count at once.
    settings = live_settings(tmp_path, emulator, catalog_path=catalog,
                             budget_refresh_seconds=3600)
    lane = LiveLane(settings)
    before = emulator_seen(emulator)
    try:
        paid = lane.call("reply-draft", ticket(1))
        assert paid.answered_by == "live" and paid.cost_usd > Decimal("0.000001")
        assert emulator_seen(emulator)["live"] == before["live"] + 1

        stopped = lane.call("reply-draft", ticket(2))
    finally:
        lane.close()
    assert emulator_seen(emulator)["live"] == before["live"] + 1  # no call for it
    assert (stopped.status, stopped.answered_by, stopped.cost_usd) == (
        "processing", "deferred", 0)
    # No model paid; the free fallbacks in the catalog's order: the cache, then defer.
    assert stopped.fallback_reason == (
        f"budget: ${paid.cost_usd:.6f} of the $0.000001 daily budget spent; cache: no "
        "cached answer")
    queued = result(Ledger(settings.resolved_database_url), stopped.queue_item_id)
    assert (queued.task, queued.key, queued.status) == ("reply-draft", "T-2", "queued")
    with Ledger(settings.resolved_database_url).engine.connect() as conn:
        recorded = conn.execute(sa.select(live_calls.c.answered_by,
                                          live_calls.c.fallback_reason)
                                .order_by(live_calls.c.id)).all()
    assert recorded == [("live", None), ("deferred", stopped.fallback_reason)]

    # Another process (a new lane) reads the spend from the ledger and stops at once.
    again = LiveLane(settings)
    try:
        third = again.call("reply-draft", ticket(3))
    finally:
        again.close()
    assert third.answered_by == "deferred" and third.fallback_reason.startswith("budget: ")
    assert emulator_seen(emulator)["live"] == before["live"] + 1


def test_a_spent_budget_with_no_free_fallback_fails_with_the_reason(emulator, tmp_path):
    from lanewise.live.lane import LiveLane

    catalog = catalog_with(tmp_path, "c", {"ticket_tagging": {
        "budget": {"monthly_usd": "0.01"}, "cache": {"enabled": False},
        "live": {"latency_budget_ms": 5000, "fallbacks": [
            {"kind": "model", "provider": "anthropic", "model": "claude-haiku-4-5"}]}}})
    settings = live_settings(tmp_path, emulator, catalog_path=catalog)
    spend(Ledger(settings.resolved_database_url), "ticket-tagging", "0.02")
    before = emulator_seen(emulator)
    lane = LiveLane(settings)
    try:
        failed = lane.call("ticket-tagging", ticket(1))
        free = lane.call("ticket-summary", ticket(1))  # its budget not spent: pays
    finally:
        lane.close()
    assert (failed.status, failed.answered_by, failed.attempts) == ("failed", "none", 0)
    assert failed.error == "budget: $0.020000 of the $0.010000 monthly budget spent"
    assert free.answered_by == "live"
    assert emulator_seen(emulator)["live"] == before["live"] + 1  # the summary's only


class CountingLedger:
    """A ledger stand-in that counts the spend reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.spent = 0
        self.during: Any = None  # what happens while the ledger is read

    def spend_picodollars(self, task: str, since: float, until: float | None = None) -> int:
        self.reads += 1
        if self.during is not None:
            self.during()
        return self.spent


def test_live_spend_is_read_in_the_background_every_few_seconds(tmp_path):
    from lanewise.catalog import load_catalog

    catalog = load_catalog(budgeted(tmp_path, reply_draft={"daily_usd": "1"}))
    task, plain = catalog.get("reply-draft"), catalog.get("ticket-tagging")
    ledger, clock, spawned = CountingLedger(), [0.0], []
    now = [time.time()]
    budgets = LiveBudgets(ledger, 5.0, clock=lambda: clock[0], now=lambda: now[0],
                          spawn=spawned.append)
    assert budgets.stop_reason(plain) is None and ledger.reads == 0  # no budget, no read
    for _ in range(100):
        assert budgets.stop_reason(task) is None
    assert ledger.reads == 2 and spawned == []  # today and this month, once, at first
    budgets.add(task, PICO)  # this process just paid $1: counted at once
    assert budgets.stop_reason(task) == "budget: $1.00 of the $1.00 daily budget spent"
    assert ledger.reads == 2 and spawned == []

    clock[0] = 5.0  # due: one read starts in the background; calls go on meanwhile
    ledger.spent = PICO + PICO // 2  # our dollar and another process's half
    budgets.stop_reason(task)
    budgets.stop_reason(task)
    assert len(spawned) == 1 and ledger.reads == 2
    # Paid while the read is under way, after the ledger's figure was taken.
    ledger.during = lambda: (budgets.add(task, PICO // 4), setattr(ledger, "during", None))
    spawned.pop()()
    assert ledger.reads == 4
    assert budgets.stop_reason(task) == "budget: $1.75 of the $1.00 daily budget spent"

    now[0] += 86400  # a new UTC day: nothing spent in it yet, and a read starts
    ledger.spent = 0
    assert budgets.stop_reason(task) is None and len(spawned) == 1


# --- budgets in `lanewise costs` -------------------------------------------------------


def test_costs_show_budgets_and_spend_today_and_this_month(tmp_path):
    from tests.history_helpers import invoke, known_ledger

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = known_ledger(url)  # August 2026: billed, but neither today nor this month
    spend(ledger, "ticket-tagging", "0.004")
    spend(ledger, "ticket-tagging", "0.0005")
    catalog = budgeted(tmp_path, ticket_tagging={
        "daily_usd": "0.004", "monthly_usd": "1", "run_ceiling_usd": "0.5"},
        weekly_digest={"monthly_usd": "2.5"})
    env = {"LANEWISE_DATABASE_URL": url, "LANEWISE_HOME": str(tmp_path / "home"),
           "LANEWISE_CATALOG_PATH": str(catalog)}

    data = json.loads(invoke(["costs", "--budgets", "--json"], env).output)["budgets"]
    assert data == [
        {"task": "ticket-tagging", "daily_budget_usd": "0.004000000000",
         "spent_today_usd": "0.004500000000", "left_today_usd": "-0.000500000000",
         "monthly_budget_usd": "1.000000000000", "spent_month_usd": "0.004500000000",
         "left_month_usd": "0.995500000000", "run_ceiling_usd": "0.500000000000"},
        {"task": "weekly-digest", "daily_budget_usd": None,
         "spent_today_usd": "0.000000000000", "left_today_usd": None,
         "monthly_budget_usd": "2.500000000000", "spent_month_usd": "0.000000000000",
         "left_month_usd": "2.500000000000", "run_ceiling_usd": None}]
    # The costs' own JSON carries them too; the CSV the same numbers.
    costs = json.loads(invoke(["costs", "--by", "task", "--json"], env).output)
    assert costs["budgets"] == data
    assert {r["task"]: r["requests"] for r in costs["rows"]}["ticket-tagging"] == 8
    as_csv = list(csv.DictReader(io.StringIO(invoke(["costs", "--budgets", "--csv"],
                                                    env).output)))
    assert as_csv == [{k: "" if v is None else v for k, v in r.items()} for r in data]

    table = invoke(["costs", "--by", "task"], env).output
    lines = table.splitlines()
    title = "Budgets (USD): what each task spent this UTC day and month"
    assert any(line.startswith(title) for line in lines)
    header = next(line for line in lines if " today " in line)
    assert [w for w in re.split(r"[\s│|┃]+", header) if w] == [
        "task", "today", "daily", "month", "monthly", "per", "run"]
    tagging = [line for line in lines if " ticket-tagging " in line][-1]  # the budgets row
    assert re.findall(r"\$[\d,.]+", tagging) == ["$0.004500", "$0.004000", "$0.004500",
                                                 "$1.00", "$0.500000"]
    assert max(len(line) for line in lines) <= 80
    alone = invoke(["costs", "--budgets"], env).output
    assert "weekly-digest" in alone and "Cost by" not in alone
    # A catalog without budgets: nothing more than the costs.
    plain = {**env, "LANEWISE_CATALOG_PATH": str(budgeted(tmp_path, "plain"))}
    assert "budgets" not in json.loads(invoke(["costs", "--json"], plain).output)
    assert "No task of the catalog has a budget." in invoke(["costs", "--budgets"],
                                                            plain).output


# --- the Prefect flows ---------------------------------------------------------------


@pytest.mark.prefect
def test_the_backfill_flow_fails_a_refused_run_with_the_figures(emulator, tmp_path,
                                                                monkeypatch, prefect_harness):
    from flows.batch import backfill
    from lanewise.batch.prefect_tasks import context_for
    from lanewise.settings import get_settings

    catalog = budgeted(tmp_path, ticket_tagging={"run_ceiling_usd": "0.000001"})
    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LANEWISE_EMULATOR_URL", emulator.url)
    monkeypatch.setenv("LANEWISE_CATALOG_PATH", str(catalog))
    get_settings.cache_clear()
    context_for.cache_clear()
    try:
        before = emulator_seen(emulator)
        params = {"task": "ticket-tagging", "start": "2026-08-01", "end": "2026-08-31",
                  "input_url": sample_input(tmp_path, rows=40)}
        state = backfill(params=params, return_state=True)
        assert state.is_failed()
        assert state.message.startswith("run ticket-tagging:2026-08-01..2026-08-31 of "
                                        "ticket-tagging refused before sending anything")
        assert emulator_seen(emulator) == before
        # Called from Python (as `lanewise run` does), the flow raises the error.
        with pytest.raises(BudgetExceededError, match="per-run ceiling of \\$0.000001"):
            backfill(params=params)
        assert emulator_seen(emulator) == before
    finally:
        get_settings.cache_clear()
        context_for.cache_clear()


def test_the_measured_output_reads_only_the_newest_answers(tmp_path, monkeypatch):
    """Bounded: the estimate at every run's start reads at most MEASURE_ANSWERS batch
    answers (newest runs first) and as many live calls, not 90 days of items."""
    import lanewise.budgets as budgets
    from lanewise.ledger.schema import items, runs

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    now = time.time()
    with ledger._write() as conn:
        # Three runs, oldest first: 10 answers of 100 tokens, 10 of 20, 10 of 40.
        for age, tokens in ((300, 100), (200, 20), (100, 40)):
            run_id = conn.execute(runs.insert().values(
                run_key=f"r{age}", task="ticket-tagging", provider="openai",
                model="gpt-4o-mini", input_url="x", status="finished", token=f"t{age}",
                created_at=now - age)).inserted_primary_key[0]
            conn.execute(items.insert(), [
                {"run_id": run_id, "row_number": n, "status": "succeeded",
                 "output_tokens": tokens} for n in range(10)])
        for n, tokens in enumerate((7, 9, 1000)):  # the 1000-token call is the oldest
            conn.execute(live_calls.insert().values(
                task="ticket-tagging", provider="openai", model="gpt-4o-mini",
                answered_by="live", status="succeeded", content_hash=f"h{n}",
                latency_ms=1.0, output_tokens=tokens, cost_picodollars=1,
                created_at=now - n))
    measure = budgets.measured_output_tokens
    everything = (10 * (100 + 20 + 40) + 7 + 9 + 1000) / 33
    assert measure(ledger, "ticket-tagging", "gpt-4o-mini", now - 1000) == \
        pytest.approx(everything)
    monkeypatch.setattr(budgets, "MEASURE_ANSWERS", 15)
    # The newest run's 10 answers, 5 of the one before, and the two newest live calls.
    assert measure(ledger, "ticket-tagging", "gpt-4o-mini", now - 1000) == \
        pytest.approx((10 * 40 + 5 * 20 + 7 + 9 + 1000) / 18)
    monkeypatch.setattr(budgets, "MEASURE_ANSWERS", 2)
    assert measure(ledger, "ticket-tagging", "gpt-4o-mini", now - 1000) == \
        pytest.approx((2 * 40 + 7 + 9) / 4)
    assert measure(ledger, "ticket-tagging", "gpt-4o-mini", now + 1) is None
