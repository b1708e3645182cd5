"""`lanewise whatif`: the estimate's figures on a ledger with known traffic, and the
sample run through both lanes against the emulator, its costs checked against the
emulator's billing record."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from lanewise.audit.units import usd_round
from lanewise.catalog import load_catalog
from lanewise.cli_whatif import whatif
from lanewise.errors import ConfigurationError
from lanewise.ledger import Ledger
from lanewise.ledger.schema import items, live_calls, queue_items, runs, shards
from lanewise.pricing import load_price_table
from lanewise.settings import DATA_DIR, Settings, get_settings
from lanewise.whatif.estimate import estimate
from lanewise.whatif.proposal import propose
from tests.live_helpers import ticket

NOW = 1_790_000_000.0  # 2026-09-21 14:13 UTC
TODAY = datetime.fromtimestamp(NOW, UTC).date()
DAY = 86_400.0
PICO = Decimal(10) ** 12
USAGE = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens")


def usd(value: str | float) -> Decimal:
    """USD from a decimal string or a JSON number."""
    return Decimal(str(value))


# --- a ledger with known traffic -----------------------------------------------------------


def add_run(conn: sa.Connection, run_key: str, task: str, model: str, *, created: float,
            finished: float, ended: float | None = None, provider: str = "openai",
            billed: list[tuple[int, int, int, str]] = (), failed: int = 0) -> None:
    """A finished run; `billed` items are (input, output, cost pico, key); with `ended`
    they are in one shard that ended then."""
    run_id = conn.execute(runs.insert().values(
        run_key=run_key, token="tok", task=task, provider=provider, model=model,
        input_url="/gone/in.parquet", status="finished", created_at=created,
        finished_at=finished, lane="batch")).inserted_primary_key[0]
    shard_id = None
    if ended is not None:
        shard_id = conn.execute(shards.insert().values(
            run_id=run_id, shard_key=f"{run_key}/s0", attempt=0, status="collected",
            jsonl_url="x", request_count=len(billed), bytes=1, estimated_tokens=1,
            submitted_at=created + 600, ended_at=ended)).inserted_primary_key[0]
    rows = [{"run_id": run_id, "row_number": n, "input_key": key, "status": "succeeded",
             "attempt": 0, "excerpted": False, "shard_id": shard_id, "input_tokens": i,
             "output_tokens": o, "cost_picodollars": cost}
            for n, (i, o, cost, key) in enumerate(billed, start=1)]
    rows += [{"run_id": run_id, "row_number": len(billed) + n, "input_key": f"F{n}",
              "status": "failed", "attempt": 0, "excerpted": False, "shard_id": shard_id,
              "input_tokens": 0, "output_tokens": 0, "cost_picodollars": 0}
             for n in range(1, failed + 1)]
    conn.execute(items.insert(), rows)


def add_call(conn: sa.Connection, task: str, model: str, *, at: float, latency_ms: float,
             answered_by: str = "live", provider: str = "openai", input_tokens: int = 0,
             cached: int = 0, output_tokens: int = 0, cost: int = 0) -> None:
    conn.execute(live_calls.insert().values(
        task=task, provider=provider, model=model, answered_by=answered_by,
        status="processing" if answered_by == "deferred" else "succeeded",
        content_hash=f"h{at}", attempts=1, latency_ms=latency_ms,
        input_tokens=input_tokens, cached_input_tokens=cached, output_tokens=output_tokens,
        cost_picodollars=cost, created_at=at))


def known_traffic(url: str, now: float = NOW) -> Ledger:
    """ticket-tagging (gpt-4o-mini) in the 30 days to `now`, both lanes:

    * a nightly run (planned now-10d, its batch ended 1 h later, results 2 h later): 3
      answers of 1,000 in / 100 out at the batch price (105,000,000 pico each) and 1
      failure;
    * a drain run of one request enqueued now-3d, its batch ended 5.5 h later: 2,000 in /
      200 out (210,000,000 pico);
    * 2 live calls (800 and 1,200 ms): 400 in + 100 cached / 50 out (97,500,000 pico),
      one answered from the cache (5 ms, free) and one deferred;
    * outside the window: a run 40 days back (the ledger's first record) and a call;
    * other traffic: a reply-draft call answered by gpt-4o-mini as a fallback (3 s).
    """
    ledger = Ledger(url)
    with ledger.engine.begin() as conn:
        add_run(conn, "ticket-tagging:old", "ticket-tagging", "gpt-4o-mini",
                created=now - 40 * DAY, finished=now - 40 * DAY + 3600,
                billed=[(1000, 100, 105_000_000, "OLD")])
        start = now - 10 * DAY
        add_run(conn, "ticket-tagging:nightly", "ticket-tagging", "gpt-4o-mini",
                created=start, finished=start + 7200, ended=start + 3600,
                billed=[(1000, 100, 105_000_000, f"T-{n}") for n in range(3)], failed=1)
        queued = now - 3 * DAY
        conn.execute(queue_items.insert().values(
            task="ticket-tagging", key="Q-1", row="{}", status="succeeded",
            run_key="ticket-tagging:drain", created_at=queued, finished_at=queued + 6 * 3600))
        add_run(conn, "ticket-tagging:drain", "ticket-tagging", "gpt-4o-mini",
                created=queued + 5 * 3600, finished=queued + 6 * 3600,
                ended=queued + 5.5 * 3600, billed=[(2000, 200, 210_000_000, "Q-1")])
        for latency in (800, 1200):
            add_call(conn, "ticket-tagging", "gpt-4o-mini", at=now - 5 * DAY + latency,
                     latency_ms=latency, input_tokens=400, cached=100, output_tokens=50,
                     cost=97_500_000)
        add_call(conn, "ticket-tagging", "gpt-4o-mini", at=now - 4 * DAY, latency_ms=5,
                 answered_by="cache")
        add_call(conn, "ticket-tagging", "gpt-4o-mini", at=now - 4 * DAY + 1, latency_ms=2,
                 answered_by="deferred")
        add_call(conn, "ticket-tagging", "gpt-4o-mini", at=now - 31 * DAY, latency_ms=9000,
                 input_tokens=400, output_tokens=50, cost=90_000_000)
        add_call(conn, "reply-draft", "gpt-4o-mini", at=now - 2 * DAY, latency_ms=3000,
                 answered_by="fallback_model", input_tokens=10, output_tokens=10,
                 cost=7_500_000)
    return ledger


@pytest.fixture()
def known(tmp_path) -> Ledger:
    ledger = known_traffic(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    yield ledger
    ledger.engine.dispose()


def figures(ledger: Ledger, task: str, lane: str, model: str | None = None):
    prices = load_price_table(DATA_DIR / "prices.json")
    spec = load_catalog(DATA_DIR / "catalog.yaml").get(task)
    proposal = propose(spec, lane, model, prices)
    return proposal, estimate(ledger, proposal, prices, days=30, today=TODAY)


def test_estimate_prices_the_recorded_traffic_both_ways(known):
    proposal, found = figures(known, "ticket-tagging", "live")
    # The audit's window: the 30 complete UTC days ending yesterday.
    assert (found.window.first.isoformat(), found.window.last.isoformat()) == (
        "2026-08-22", "2026-09-20")
    # Requests as the audit counts them: 4 + 1 batch items (the failure too), the 2 paid
    # live calls and the cache's answer (not the deferred call); 6 of them billed.
    assert (found.requests, found.billed_requests, found.days) == (8, 6, 30)
    # As it ran: 3 x 105e6 + 210e6 (batch) + 2 x 97.5e6 (live).
    assert found.current_picodollars == 720_000_000
    # All live: batch items at 0.15/0.60 per M (210e6 each, 420e6), live calls as they ran.
    assert found.proposed_picodollars == 3 * 210_000_000 + 420_000_000 + 195_000_000
    assert found.per_month(found.proposed_picodollars) == usd("0.001245")
    lines = {(c.lane, c.model): (c.requests, c.current_picodollars, c.proposed_picodollars)
             for c in found.lines}
    assert lines == {("batch", "gpt-4o-mini"): (4, 525_000_000, 1_050_000_000),
                     ("live", "gpt-4o-mini"): (2, 195_000_000, 195_000_000)}
    # Waits now, the audit's, interpolated between ranks: live over 5 ms, 800 ms, 1.2 s
    # (the deferred call is not a wait); batch from planning (1 h for the 4 nightly
    # items, the failure too) or enqueue (5.5 h) to the batch's end, not the run's.
    live, batch = found.waits_now["live"], found.waits_now["batch"]
    assert (live.count, live.p50, live.p95) == (3, 0.8, 1.16)
    assert (batch.count, batch.p50, batch.p95) == (5, 3600.0, 3600 + 0.8 * 16200)
    # Proposed: gpt-4o-mini's live answers of any task (the fallback's 3 s included).
    assert (found.wait_proposed.count, found.wait_proposed.p50,
            found.wait_proposed.p95) == (3, 1.2, 2.82)
    assert proposal.conflicts == [] and any("rush" in n for n in proposal.notes)


def test_estimate_for_another_providers_model_in_batch(known):
    proposal, found = figures(known, "ticket-tagging", "batch", "claude-haiku-4-5")
    assert proposal.proposed.provider == "anthropic" and proposal.other_provider
    # Haiku batch: 0.50 in, 2.50 out per M; the live calls' cached tokens count as input.
    assert found.proposed_picodollars == (3 * 750_000_000 + 1_500_000_000
                                          + 2 * 375_000_000)
    assert found.cache_as_input == 2
    assert found.per_month(found.proposed_picodollars) - \
        found.per_month(found.current_picodollars) == usd("0.0045") - usd("0.00072")
    assert found.wait_proposed.count == 0
    assert found.wait_proposed.note == "within the 24 h batch window"
    assert any("tokenizers differ" in n for n in proposal.notes)


def test_per_month_scales_a_shorter_window(known):
    prices = load_price_table(DATA_DIR / "prices.json")
    proposal = propose(load_catalog(DATA_DIR / "catalog.yaml").get("ticket-tagging"),
                       "batch", None, prices)
    found = estimate(known, proposal, prices, days=8, today=TODAY)
    # Within the 8 days ending yesterday: the drain request, the two live calls and the
    # cache's answer (not billed); per month is x 30 / 8, to the micro-dollar.
    assert (found.requests, found.billed_requests, found.days) == (4, 3, 8)
    assert found.current_picodollars == 210_000_000 + 195_000_000
    assert found.per_month(found.current_picodollars) == usd("0.001519")  # 0.00151875
    # The live calls in batch: 400 in x 0.075 + 100 cached at the batch input rate (no
    # published batch cached-input rate) + 50 out x 0.30 per M = 52.5e-6 USD each.
    assert found.proposed_picodollars == 210_000_000 + 2 * 52_500_000


def test_a_proposal_against_the_catalog_and_an_unknown_model(tmp_path, monkeypatch):
    prices = load_price_table(DATA_DIR / "prices.json")
    reply = load_catalog(DATA_DIR / "catalog.yaml").get("reply-draft")
    proposal = propose(reply, "batch", None, prices)
    assert proposal.current.lane == "live"
    assert len(proposal.conflicts) == 1 and "a person waits" in proposal.conflicts[0]

    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(whatif, ["reply-draft", "--lane", "batch", "--model",
                                             "gpt-9-turbo"])
    finally:
        get_settings.cache_clear()
    assert isinstance(result.exception, ConfigurationError)
    message = str(result.exception)
    assert "'gpt-9-turbo' is not in the price table" in message
    assert "gpt-4o-mini" in message and "claude-haiku-4-5" in message


def _home(tmp_path, monkeypatch, now: float, url: str | None = None) -> None:
    """A home whose ledger (the home's own, else `url`) holds the known traffic up to
    `now`."""
    ledger = known_traffic(url or f"sqlite:///{tmp_path / 'ledger.sqlite3'}", now=now)
    ledger.engine.dispose()
    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path))
    if url:
        monkeypatch.setenv("LANEWISE_DATABASE_URL", url)
    else:
        monkeypatch.delenv("LANEWISE_DATABASE_URL", raising=False)
    monkeypatch.delenv("LANEWISE_CATALOG_PATH", raising=False)


def test_the_table_and_the_json_carry_the_same_figures(tmp_path, monkeypatch):
    _home(tmp_path, monkeypatch, time.time())
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        as_json = runner.invoke(whatif, ["ticket-tagging", "--lane", "live", "--json"])
        table = runner.invoke(whatif, ["ticket-tagging", "--lane", "live"],
                              terminal_width=200)
    finally:
        get_settings.cache_clear()
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    window = doc["estimate"]
    assert (window["requests"], window["billed_requests"], window["per_day_over_days"]) == (
        8, 6, 30)
    # Money as numbers of USD, as the audit's JSON carries it.
    assert window["current_usd"] == 0.00072
    assert window["per_month"] == {"current_usd": 0.00072, "proposed_usd": 0.001245,
                                   "difference_usd": 0.000525}
    assert [line["current_usd"] for line in window["by_route"]] == [0.000525, 0.000195]
    assert doc["current"] == {"lane": "batch", "provider": "openai", "model": "gpt-4o-mini"}
    assert table.exit_code == 0, table.output
    from lanewise.reporting import money

    month = window["per_month"]
    for amount in (month["current_usd"], month["proposed_usd"]):
        assert money(Decimal(str(amount))) in table.output
    assert "per month (per day x 30)" in table.output
    # The title states the window, as the audit's does.
    first, last = window["window"]["first"], window["window"]["last"]
    assert f"{first} to {last} (30 UTC days)" in " ".join(table.output.split())
    assert last < window["window"]["today"]


def test_whatif_and_the_audit_report_the_same_task_alike(ledger_url, tmp_path, monkeypatch):
    """On one ledger, `whatif --days D` and `audit --days D` read the same window: the
    task's requests, cost per month now and waits are the audit row's (on PostgreSQL
    the audit's percentiles are computed in SQL, the what-if's by the same query)."""
    from lanewise.audit import rows
    from lanewise.cli_audit import audit

    _home(tmp_path, monkeypatch, NOW, ledger_url)
    monkeypatch.setattr(rows, "today_utc", lambda: TODAY)  # both commands' today
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        found = runner.invoke(whatif, ["ticket-tagging", "--lane", "live", "--days", "12",
                                       "--json"])
        audited = runner.invoke(audit, ["--days", "12", "--json"])
    finally:
        get_settings.cache_clear()
    assert found.exit_code == 0, found.output
    assert audited.exit_code == 0, audited.output
    estimated, report = json.loads(found.output)["estimate"], json.loads(audited.output)
    assert {k: estimated["window"][k] for k in ("first", "last", "days")} == {
        k: report["window"][k] for k in ("first", "last", "days")} == {
        "first": "2026-09-09", "last": "2026-09-20", "days": 12}
    row = next(t for t in report["tasks"] if t["task"] == "ticket-tagging")
    assert estimated["requests"] == row["batch_requests"] + row["live_requests"] == 8
    assert estimated["requests_per_day"] == row["per_day"]
    # 720e6 pico over 12 days, x 30: $0.0018 a month in both.
    assert estimated["per_month"]["current_usd"] == row["cost_per_month_usd"] == 0.0018
    waits = estimated["wait_now"]
    assert (waits["batch"]["p50_seconds"], waits["batch"]["p95_seconds"]) == (
        row["batch_wait_p50_s"], row["batch_wait_p95_s"]) == (3600.0, 16560.0)
    assert (waits["live"]["p50_seconds"], waits["live"]["p95_seconds"]) == (
        row["live_wait_p50_s"], row["live_wait_p95_s"]) == (0.8, 1.16)


def test_a_ledger_younger_than_the_window_is_per_day_over_its_days(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        with ledger.engine.begin() as conn:  # history starts 3 days before yesterday
            add_call(conn, "ticket-tagging", "gpt-4o-mini", at=NOW - 4 * DAY, latency_ms=900,
                     input_tokens=400, output_tokens=50, cost=90_000_000)
        _, found = figures(ledger, "ticket-tagging", "batch")
    finally:
        ledger.engine.dispose()
    # 2026-09-17 to 2026-09-20: 4 whole UTC days, whatever the hour of the first call.
    assert (found.window.days, found.days, found.requests) == (30, 4, 1)
    assert found.per_month(found.current_picodollars) == usd("0.000675")
    assert any("history starts 2026-09-17" in note and "its 4 UTC day(s)" in note
               for note in found.notes)


# --- the sample, against the emulator ------------------------------------------------------


def billed(emulator, since: float, **filters: str) -> Decimal:
    """USD the emulator billed since `since` (lane, model filters)."""
    total = httpx.get(f"{emulator.url}/_emulator/billing",
                      params={"since": since, **filters}).json()["total"]
    return Decimal(total["cost_usd"])


def write_rows(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def production(emulator, tmp_path, monkeypatch):
    """A production home on the test emulator (LANEWISE_HOME, LANEWISE_EMULATOR_URL)."""
    home = tmp_path / "home"
    for name, value in (("HOME", str(home)), ("EMULATOR_URL", emulator.url),
                        ("POLL_INITIAL_SECONDS", "0.05"), ("POLL_MAX_SECONDS", "0.2")):
        monkeypatch.setenv(f"LANEWISE_{name}", value)
    monkeypatch.delenv("LANEWISE_REDIS_URL", raising=False)
    monkeypatch.delenv("LANEWISE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield Settings(home=home, emulator_url=emulator.url, poll_initial_seconds=0.05,
                   poll_max_seconds=0.2, redis_url=None, database_url=None)
    get_settings.cache_clear()


def run_batch(settings: Settings, task: str, run_key: str, url: str) -> None:
    from lanewise.batch.context import LaneContext
    from lanewise.batch.runner import run_batch_lane

    ctx = LaneContext.build(task, settings)
    try:
        run_batch_lane(ctx, run_key, url)
    finally:
        ctx.ledger.engine.dispose()


def counts(settings: Settings) -> tuple[int, int, int]:
    engine = sa.create_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        found = tuple(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                      for t in (runs, items, live_calls))
    engine.dispose()
    return found


def test_sample_runs_both_lanes_and_costs_what_the_emulator_billed(production, emulator,
                                                                  tmp_path):
    from lanewise.live.lane import LiveLane

    # Traffic: a nightly run over A (6 tickets), a later one over B (3, then deleted), then
    # two live calls: the 6 newest that can be sent again are the 2 calls and 4 of A.
    run_batch(production, "ticket-tagging", "ticket-tagging:a",
              write_rows(tmp_path / "a.jsonl", [ticket(n) for n in range(1, 7)]))
    b = tmp_path / "b.jsonl"
    run_batch(production, "ticket-tagging", "ticket-tagging:b",
              write_rows(b, [ticket(n) for n in range(11, 14)]))
    b.unlink()
    lane = LiveLane(production)
    try:
        for n in (21, 22):
            assert lane.call("ticket-tagging", ticket(n)).status == "succeeded"
    finally:
        lane.close()
    before = counts(production)
    since = time.time()

    result = CliRunner().invoke(whatif, ["ticket-tagging", "--lane", "live", "--sample", "6",
                                         "--json"])
    assert result.exit_code == 0, result.output
    sample = json.loads(result.output)["sample"]
    assert (sample["requests"], sample["from"], sample["input_gone"]) == (
        6, {"live": 2, "batch": 4}, 3)
    assert sample["sent_to"] == emulator.url
    current, proposed = sample["arms"]["current"], sample["arms"]["proposed"]
    assert current["route"] == {"lane": "batch", "provider": "openai", "model": "gpt-4o-mini"}
    assert proposed["route"]["lane"] == "live"
    assert current["outcomes"] == proposed["outcomes"] == {"succeeded": 6}
    assert current["billed_requests"] == proposed["billed_requests"] == 6
    assert len(current["batch_ids"]) == 1 and proposed["answered_by"] == {"live": 6}
    assert current["wait"]["requests"] == proposed["wait"]["requests"] == 6
    assert proposed["wait"]["p95_seconds"] < 5

    # The report's costs are the emulator's bill for the sample, arm by arm and in all.
    batch_bill = billed(emulator, since, lane="batch")
    live_bill = billed(emulator, since, lane="live")
    # (JSON money is rounded to the micro-dollar, as the audit's.)
    assert usd(current["cost_usd"]) == usd_round(batch_bill) > 0
    assert usd(proposed["cost_usd"]) == usd_round(live_bill) > usd_round(batch_bill)
    assert usd(sample["total_cost_usd"]) == usd_round(batch_bill + live_bill) == \
        usd_round(billed(emulator, since))

    # The emulator answers a request the same whatever the lane: full agreement.
    agreement = sample["agreement"]
    assert agreement["field_match_share"] == {"topic": 1.0, "sentiment": 1.0, "urgency": 1.0}
    assert agreement["all_fields_match_share"] == 1.0 and agreement["problems"] == []
    # The production ledger saw none of it.
    assert counts(production) == before


def test_sample_of_a_text_task_on_another_model_and_a_failed_answer(production, emulator,
                                                                   tmp_path):
    from lanewise.emulator import Faults

    run_batch(production, "ticket-summary", "ticket-summary:a",
              write_rows(tmp_path / "a.jsonl", [ticket(n) for n in range(1, 5)]))
    since = time.time()
    result = CliRunner().invoke(whatif, ["ticket-summary", "--lane", "batch", "--model",
                                         "gpt-4o-mini", "--sample", "4", "--json"])
    assert result.exit_code == 0, result.output
    sample = json.loads(result.output)["sample"]
    arms = sample["arms"]
    assert arms["proposed"]["route"] == {"lane": "batch", "provider": "openai",
                                         "model": "gpt-4o-mini"}
    assert usd(arms["current"]["cost_usd"]) == usd_round(billed(emulator, since,
                                                                 model="claude-haiku-4-5"))
    assert usd(arms["proposed"]["cost_usd"]) == usd_round(billed(emulator, since,
                                                                  model="gpt-4o-mini"))
    agreement = sample["agreement"]
    assert agreement["kind"] == "text"
    assert agreement["similarity_mean"] == agreement["similarity_min"] == 1.0

    # Live on the emulator with every call failing: each request is a listed disagreement.
    emulator.state.set_faults(Faults(server_error_rate=1.0))
    result = CliRunner().invoke(whatif, ["ticket-summary", "--lane", "live", "--sample", "2",
                                         "--json"])
    assert result.exit_code == 0, result.output
    agreement = json.loads(result.output)["sample"]["agreement"]
    assert agreement["similarity_mean"] == 0.0 and len(agreement["problems"]) == 2
    assert {p["arm"] for p in agreement["problems"]} == {"proposed"}


def test_agreement_counts_failed_and_invalid_answers_as_disagreement():
    from lanewise.whatif.agreement import Answer, compare

    catalog = load_catalog(DATA_DIR / "catalog.yaml")
    tags = {"topic": "export", "sentiment": "neutral", "urgency": "high"}

    def ok(key: str, **changes: str) -> Answer:
        return Answer(key, "succeeded", json.dumps({**tags, **changes}))

    current = {"a": ok("a"), "b": ok("b"), "c": ok("c"),
               "d": Answer("d", "failed", None, "HTTP 500")}
    proposed = {"a": ok("a"), "b": ok("b", topic="bug"),
                "c": Answer("c", "invalid_output", "{}", "missing field 'topic'"), "d": ok("d")}
    found = compare(catalog.get("ticket-tagging"), ["a", "b", "c", "d"], current, proposed)
    assert found.field_shares == {"topic": 0.25, "sentiment": 0.5, "urgency": 0.5}
    assert found.all_fields == 0.25
    assert [(p["key"], p["arm"], p["status"]) for p in found.problems] == [
        ("c", "proposed", "invalid_output"), ("d", "current", "failed")]
    assert found.differences == [{"key": "b", "fields": {
        "topic": {"current": "export", "proposed": "bug"}}}]

    text = compare(catalog.get("ticket-summary"), ["a", "b"],
                   {"a": Answer("a", "succeeded", "abcd"), "b": Answer("b", "succeeded", "x")},
                   {"a": Answer("a", "succeeded", "abce")})
    assert (text.similarity_mean, text.similarity_min) == (0.375, 0.0)
    assert text.problems == [{"key": "b", "arm": "proposed", "status": "missing",
                              "error": "not answered"}]
