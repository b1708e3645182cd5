"""The routing audit (`lanewise audit`, the `routing-audit` flow) over ledgers with known
traffic: each figure, each flag, the three renderings agreeing, and the artifact.

The known traffic (`known_traffic`), in a window of the 10 UTC days 2026-03-01 to
2026-03-10 ("today"), over a catalog of five tasks (`CATALOG`):

* tagging (batch, nobody waits, 24 h, declared 40/day, gpt-4o-mini): one nightly run a
  day, 10 answered items at $0.001 (live $0.002) and 1 rejected row, except day 7 with
  90 items (a spike); the run on day d is planned at 00:00 and its batch ends d hours
  later. 5 of day 3's requests were also paid live (duplicates), one more was answered
  live from the cache (paid nothing); 2 items of two runs share a hash (same task and
  lane: not a duplicate). A run on 2026-02-28 lies outside the window.
* summary (catalog batch, nobody waits, 24 h, declared 10/day, claude-haiku-4-5): runs
  live, 10 calls a day, 1000 in / 200 out ($0.002 live, $0.001 batch), latency 20 ms x
  (1..100): misrouted, paying rush prices.
* reply (a person waits, live, declared 5/day, claude-haiku-4-5): 4 live calls a day
  (2000 in / 400 out: $0.004 live, $0.002 batch), latency 1000 + 100 ms x (0..39); 10
  more were deferred (latency 5 ms, not counted as live) and answered in batch by a
  drain run on day 5 (enqueued 10:00, planned 12:00, ended 14:00) at $0.002 (live
  $0.004). Budget $1 a day, $10 a month.
* triage (nobody waits, due within 2 h, live, declared 3/day, gpt-4o-mini): 3 live calls
  a day (1000 in / 100 out: $0.00021 live, $0.000105 batch), 300 ms each.
* digest (weekly, declared 1 a week): no traffic.
* legacy: 3 live calls, not in the catalog.
"""

from __future__ import annotations

import csv
import io
import json
import re
import textwrap
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from rich.cells import cell_len
from rich.console import Console

from lanewise.audit import Audit, build_audit, window_for
from lanewise.audit.recommend import Recommendation, recommend
from lanewise.audit.render import audit_table, change, to_csv, to_json, to_markdown
from lanewise.audit.units import duration, usd_text
from lanewise.audit.waits import percentile
from lanewise.catalog import Catalog, TaskSpec
from lanewise.cli_audit import audit as audit_command
from lanewise.errors import ConfigurationError
from lanewise.ledger import Ledger
from lanewise.ledger.schema import items, live_calls, queue_items, runs, shards
from lanewise.pricing import Lane, PriceTable, Usage, load_price_table, to_picodollars
from lanewise.settings import DATA_DIR

TODAY = date(2026, 3, 10)
#: The known traffic's days: March 1 to 10, today (TODAY) included.
MARCH_1_TO_10 = window_for(TODAY, since=date(2026, 3, 1), days=10)
PICO = 10 ** 12
MILLI = PICO // 1000  # $0.001

CATALOG = """
tasks:
  tagging:
    description: Tag each ticket with topic and urgency.
    owner: support-tools
    provider: openai
    model: gpt-4o-mini
    lane: batch
    person_waits: false
    max_delay_hours: 24
    expected_volume: 40
    input: {key: id}
    prompt: {user: "Tag {body}"}
  summary:
    description: Summarize each ticket.
    owner: insights
    provider: anthropic
    model: claude-haiku-4-5
    lane: batch
    person_waits: false
    max_delay_hours: 24
    expected_volume: 10
    input: {key: id}
    prompt: {user: "Summarize {body}"}
  reply:
    description: A draft reply the agent is waiting for.
    owner: support-tools
    provider: anthropic
    model: claude-haiku-4-5
    lane: live
    person_waits: true
    max_delay_hours: 0
    expected_volume: 5
    budget: {daily_usd: 1, monthly_usd: 10}
    input: {key: id}
    prompt: {user: "Reply to {body}"}
  triage:
    description: Route the ticket to a queue within the hour.
    owner: support-ops
    provider: openai
    model: gpt-4o-mini
    lane: live
    person_waits: false
    max_delay_hours: 2
    expected_volume: 3
    input: {key: id}
    prompt: {user: "Triage {body}"}
  digest:
    description: The weekly digest.
    owner: insights
    provider: openai
    model: gpt-4o-mini
    lane: batch
    max_delay_hours: 24
    expected_volume: 1
    expected_volume_period: week
    input: {key: id}
    prompt: {user: "Digest {body}"}
"""


def at(day: int, hours: float = 0) -> float:
    """Epoch seconds `hours` into day `day` of March 2026 (day 0: February 28)."""
    start = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=day - 1, hours=hours)
    return start.timestamp()


def prices() -> PriceTable:
    return load_price_table(DATA_DIR / "prices.json")


def live_cost(model: str, tokens_in: int, tokens_out: int, lane: Lane = Lane.LIVE) -> int:
    usage = Usage(input_tokens=tokens_in, output_tokens=tokens_out)
    return to_picodollars(prices().cost_usd(model, usage, lane))


class Traffic:
    """Writes known traffic straight into the ledger's tables."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.runs = 0

    def batch_run(self, task: str, model: str, created: float, ended: float,
                  answered: list[tuple[str, int, int]], *, rejected: int = 0,
                  run_key: str | None = None, keys: list[str] | None = None) -> str:
        """A finished run with one ended shard; `answered`: (content hash, cost, live)."""
        self.runs += 1
        run_key = run_key or f"{task}:{self.runs}"
        provider = "openai" if model.startswith("gpt") else "anthropic"
        keys = keys or [f"{task}-{self.runs}-{n}" for n in range(len(answered))]
        with self.ledger.engine.begin() as conn:
            run_id = conn.execute(runs.insert().values(
                run_key=run_key, token="tok", task=task, provider=provider, model=model,
                input_url="in.parquet", status="finished", created_at=created,
                finished_at=ended)).inserted_primary_key[0]
            shard_id = conn.execute(shards.insert().values(
                run_id=run_id, shard_key=f"{run_key}/s0", attempt=0, status="collected",
                jsonl_url="file:///tmp/s0.jsonl", request_count=len(answered), bytes=1,
                estimated_tokens=1, submitted_at=created,
                ended_at=ended)).inserted_primary_key[0]
            rows = [{"run_id": run_id, "row_number": n, "input_key": key, "dedup_key": key,
                     "custom_id": f"{key}--tok-0", "shard_id": shard_id, "attempt": 0,
                     "status": "succeeded", "excerpted": False, "cost_picodollars": cost,
                     "live_cost_picodollars": live, "content_hash": content_hash}
                    for n, (key, (content_hash, cost, live))
                    in enumerate(zip(keys, answered, strict=True))]
            rows += [{"run_id": run_id, "row_number": len(answered) + n,
                      "input_key": f"bad-{n}", "dedup_key": None, "custom_id": None,
                      "shard_id": None, "attempt": 0, "status": "rejected", "excerpted": False,
                      "cost_picodollars": 0, "live_cost_picodollars": 0, "content_hash": None}
                     for n in range(rejected)]
            conn.execute(items.insert(), rows)
        return run_key

    def live(self, task: str, model: str, created: float, latency_ms: float,
             tokens: tuple[int, int], content_hash: str, *, answered_by: str = "live",
             paid: bool = True) -> None:
        """One live call; paid at the live rates of its usage unless not `paid`."""
        cost = live_cost(model, *tokens) if paid else 0
        usage = tokens if paid else (0, 0)
        with self.ledger.engine.begin() as conn:
            conn.execute(live_calls.insert().values(
                task=task, provider="openai" if model.startswith("gpt") else "anthropic",
                model=model, answered_by=answered_by,
                status="processing" if answered_by == "deferred" else "succeeded",
                content_hash=content_hash, latency_ms=latency_ms, input_tokens=usage[0],
                output_tokens=usage[1], cost_picodollars=cost, created_at=created))

    def queued(self, task: str, keys: list[str], created: float, run_key: str) -> None:
        """Queue items a drain run `run_key` carried."""
        with self.ledger.engine.begin() as conn:
            conn.execute(queue_items.insert(), [
                {"task": task, "key": key, "row": "{}", "status": "succeeded",
                 "run_key": run_key, "created_at": created} for key in keys])


def known_traffic(url: str) -> Ledger:
    """The ledger the module docstring describes."""
    ledger = Ledger(url)
    t = Traffic(ledger)
    for day in range(1, 11):
        count = 90 if day == 7 else 10
        answered = [(f"tag-{day}-{n}", MILLI, 2 * MILLI) for n in range(count)]
        if day in (2, 4):
            answered[0] = ("tag-same", MILLI, 2 * MILLI)
        t.batch_run("tagging", "gpt-4o-mini", at(day), at(day, day), answered, rejected=1)
        for n in range(10):
            t.live("summary", "claude-haiku-4-5", at(day, 9 + n / 10),
                   20 * ((day - 1) * 10 + n + 1), (1000, 200), f"sum-{day}-{n}")
        for n in range(4):
            t.live("reply", "claude-haiku-4-5", at(day, 10 + n),
                   1000 + 100 * ((day - 1) * 4 + n), (2000, 400), f"reply-{day}-{n}")
        for n in range(3):
            t.live("triage", "gpt-4o-mini", at(day, 8 + n), 300, (1000, 100),
                   f"triage-{day}-{n}")
    t.batch_run("tagging", "gpt-4o-mini", at(0), at(0, 2), [("old", MILLI, 2 * MILLI)] * 1)
    for n in range(5):  # paid twice: at night in batch, and live
        t.live("tagging", "gpt-4o-mini", at(3, 15), 100 * (n + 1), (1000, 100), f"tag-3-{n}")
    t.live("tagging", "gpt-4o-mini", at(3, 16), 600, (1000, 100), "tag-3-5", answered_by="cache",
           paid=False)
    keys = [f"deferred-{n}" for n in range(10)]
    for n in range(len(keys)):
        t.live("reply", "claude-haiku-4-5", at(5, 10), 5, (0, 0), f"deferred-{n}",
               answered_by="deferred", paid=False)
    drain = t.batch_run("reply", "claude-haiku-4-5", at(5, 12), at(5, 14),
                        [(f"deferred-{n}", 2 * MILLI, 4 * MILLI) for n in range(10)],
                        run_key="drain:reply:1", keys=keys)
    t.queued("reply", keys, at(5, 10), drain)
    for n in range(3):
        t.live("legacy", "gpt-4o-mini", at(6, n), 400, (1000, 100), f"legacy-{n}")
    return ledger


@pytest.fixture()
def catalog(tmp_path) -> Catalog:
    path = tmp_path / "catalog.yaml"
    path.write_text(textwrap.dedent(CATALOG))
    return Catalog.from_file(path)


@pytest.fixture()
def known(ledger_url, catalog):
    """The audit of the known traffic over the 10 days ending TODAY."""
    ledger = known_traffic(ledger_url)
    try:
        yield build_audit(ledger, catalog, prices(), MARCH_1_TO_10, TODAY)
    finally:
        ledger.engine.dispose()


def usd(text: str) -> Decimal:
    return Decimal(text)


def test_the_known_prices_the_figures_rest_on():
    assert live_cost("claude-haiku-4-5", 1000, 200) == 2 * MILLI
    assert live_cost("claude-haiku-4-5", 1000, 200, Lane.BATCH) == MILLI
    assert live_cost("claude-haiku-4-5", 2000, 400) == 4 * MILLI
    assert live_cost("gpt-4o-mini", 1000, 100) == 210 * MILLI // 1000
    assert live_cost("gpt-4o-mini", 1000, 100, Lane.BATCH) == 105 * MILLI // 1000


def test_the_window_is_stated_complete_days_ending_yesterday():
    assert window_for(TODAY) == window_for(TODAY, days=30)
    assert window_for(TODAY).first == date(2026, 2, 8) and window_for(TODAY).days == 30
    assert window_for(TODAY, days=10).describe(TODAY) == \
        "2026-02-28 to 2026-03-09 (10 UTC days)"
    assert window_for(TODAY, since=date(2026, 3, 1), days=10).describe(TODAY) == \
        "2026-03-01 to 2026-03-10 (10 UTC days, today included)"
    assert window_for(TODAY, since=date(2026, 3, 4)).days == 7
    assert window_for(TODAY, since=date(2026, 2, 1), days=7).describe(TODAY) == \
        "2026-02-01 to 2026-02-07 (7 UTC days)"
    assert window_for(TODAY, days=1).describe(TODAY) == "2026-03-09 to 2026-03-09 (1 UTC day)"
    assert window_for(TODAY, since=TODAY).describe(TODAY) == \
        "2026-03-10 to 2026-03-10 (1 UTC day, today included)"
    with pytest.raises(ConfigurationError, match="after today"):
        window_for(TODAY, since=date(2026, 3, 11))


def test_waits_read_in_one_unit_each_without_false_precision():
    shown = [duration(s) for s in (0.35, 0.9996, 2.94, 9.96, 85.04, 119.6, 360, 7140, 14400)]
    assert shown == ["350 ms", "1.0 s", "2.9 s", "10 s", "85 s", "2 min", "6 min", "119 min",
                     "4.0 h"]


def test_percentiles_interpolate_between_ranks():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.5
    assert percentile(values, 0.95) == pytest.approx(95.05)
    assert percentile([7.0], 0.95) == 7.0


def _spec(**fields) -> TaskSpec:
    return TaskSpec.model_validate({"name": "t", "provider": "openai", "model": "gpt-4o-mini",
                                    "input": {"key": "id"}, "prompt": {"user": "x"}, **fields})


def test_the_recommendation_rules():
    waits = _spec(person_waits=True, max_delay_hours=48, lane="batch")
    assert recommend(waits, runs_in="live", per_day=5, batch_saves_per_month=Decimal(9)) \
        == Recommendation("live", "a person waits: keep live")
    assert recommend(waits, runs_in="batch", per_day=5, batch_saves_per_month=None).reason \
        == "a person waits: move to live"
    nobody = _spec(person_waits=False, max_delay_hours=24)
    found = recommend(nobody, runs_in="live", per_day=2000,
                      batch_saves_per_month=Decimal("41"))
    assert found == Recommendation("batch", "nobody waits and 2,000 a day: batch saves "
                                   "$41.00/month")
    assert recommend(nobody, runs_in=None, per_day=0, batch_saves_per_month=None).reason \
        == "nobody waits and up to 24 h is fine: keep batch, at the batch price"
    soon = _spec(person_waits=False, max_delay_hours=2, lane="live")
    assert recommend(soon, runs_in="live", per_day=3, batch_saves_per_month=Decimal(1)) \
        == Recommendation("live", "due within 2 h, the batch window is 24 h: keep live")
    assert recommend(_spec(max_delay_hours=0), runs_in="batch", per_day=3,
                     batch_saves_per_month=None).reason \
        == "due at once, the batch window is 24 h: move to live"


def _row(audit, task):
    return next(r for r in audit.rows if r.task == task)


def test_each_figure_of_the_known_traffic(known):
    assert [r.task for r in known.rows] == ["tagging", "summary", "reply", "triage",
                                            "digest", "legacy"]
    tagging = _row(known, "tagging")
    # 9 nights x 10 + 90 on day 7, and 6 live calls (5 paid, 1 from the cache); the
    # rejected rows and the run of February 28 are not counted.
    assert (tagging.batch_requests, tagging.live_requests) == (180, 6)
    assert tagging.per_day == 18.6 and tagging.expected_per_day == 40
    assert tagging.lane_now == "batch 97% / live 3%" and tagging.catalog_lane == "batch"
    assert tagging.batch_share == pytest.approx(180 / 186, abs=1e-4)
    # Batch waits: 10 waits of each of 1..10 h, but 90 of 7 h.
    assert tagging.batch_wait_p50_s == 7 * 3600
    assert tagging.batch_wait_p95_s == 10 * 3600
    assert (tagging.live_wait_p50_s, tagging.live_wait_p95_s) == (0.35, 0.575)
    assert tagging.paid_in_window_usd == usd("0.181050")
    assert tagging.cost_per_day_usd == usd("0.018105")
    assert tagging.cost_per_month_usd == usd("0.543150")
    # Batch items at their live cost, live calls at batch rates.
    assert tagging.other_lane_per_month_usd == usd("1.081575")
    assert tagging.all_batch_per_month_usd == usd("0.541575")
    assert tagging.all_live_per_month_usd == usd("1.083150")
    assert (tagging.recommended_lane, tagging.reason) == (
        "batch", "nobody waits and 19 a day: batch saves $0.5416/month")

    summary = _row(known, "summary")
    assert (summary.batch_requests, summary.live_requests, summary.per_day) == (0, 100, 10)
    assert summary.lane_now == "live" and summary.catalog_lane == "batch"
    assert (summary.live_wait_p50_s, summary.live_wait_p95_s) == (1.01, 1.901)
    assert summary.batch_wait_p50_s is None
    assert summary.cost_per_day_usd == usd("0.02")
    assert summary.cost_per_month_usd == usd("0.6")
    assert summary.other_lane_per_month_usd == usd("0.3")
    assert (summary.recommended_lane, summary.reason) == (
        "batch", "nobody waits and 10 a day: batch saves $0.3000/month")

    reply = _row(known, "reply")
    # The 10 deferred calls count once, as the batch items that answered them.
    assert (reply.batch_requests, reply.live_requests, reply.per_day) == (10, 40, 5)
    assert reply.lane_now == "batch 20% / live 80%"
    assert (reply.live_wait_p50_s, reply.live_wait_p95_s) == (2.95, 4.705)
    # From enqueue (10:00), not planning (12:00), to the batch's end (14:00).
    assert (reply.batch_wait_p50_s, reply.batch_wait_p95_s) == (4 * 3600, 4 * 3600)
    assert reply.cost_per_day_usd == usd("0.018")
    assert reply.cost_per_month_usd == usd("0.54")
    assert reply.other_lane_per_month_usd == usd("0.36")
    assert reply.all_live_per_month_usd == usd("0.6")
    assert (reply.budget_daily_usd, reply.budget_monthly_usd) == (1, 10)
    assert reply.spent_today_usd == usd("0.016")  # 4 calls on March 10
    assert reply.spent_this_month_usd == usd("0.18")
    assert (reply.recommended_lane, reply.reason) == ("live", "a person waits: keep live")

    triage = _row(known, "triage")
    assert (triage.per_day, triage.live_wait_p50_s, triage.live_wait_p95_s) == (3, 0.3, 0.3)
    assert triage.cost_per_month_usd == usd("0.0189")
    assert triage.other_lane_per_month_usd == usd("0.00945")
    assert (triage.recommended_lane, triage.reason) == (
        "live", "due within 2 h, the batch window is 24 h: keep live")

    digest = _row(known, "digest")
    assert (digest.per_day, digest.lane_now, digest.cost_per_month_usd) == (0, "no traffic", 0)
    assert digest.expected_per_day == round(1 / 7, 2)
    assert digest.live_wait_p50_s is None and digest.batch_wait_p50_s is None
    assert digest.reason == "nobody waits and up to 24 h is fine: keep batch, at the batch price"

    legacy = _row(known, "legacy")
    assert not legacy.in_catalog and legacy.recommended_lane is None
    assert (legacy.live_requests, legacy.cost_per_month_usd) == (3, usd("0.00189"))

    totals = known.totals()
    assert totals["cost_per_month_usd"] == sum(r.cost_per_month_usd for r in known.rows)
    # tagging and summary to batch, the rest live (reply's batch part moved live too).
    assert totals["recommended_per_month_usd"] == (
        usd("0.541575") + usd("0.3") + usd("0.6") + usd("0.0189") + 0 + usd("0.00189"))


def _flags(audit, kind):
    return [f for f in audit.flags if f.kind == kind]


def test_each_flag_of_the_known_traffic(known):
    assert [f.kind for f in known.flags] == ["rush-price", "waited-in-batch", "duplicate",
                                             "spike", "stale-catalog", "stale-catalog",
                                             "not-in-catalog"]
    (rush,) = _flags(known, "rush-price")
    assert rush.tasks == ("summary",) and rush.usd == usd("0.3")
    assert rush.sentence == ("nobody waits for summary (up to 24 h is fine) but 100% of its "
                             "traffic (10 a day) runs live: it overpays $0.3000/month "
                             "against batch")
    (waited,) = _flags(known, "waited-in-batch")
    assert waited.tasks == ("reply",) and waited.usd == usd("0.06")
    # The measured wait starts at the run (or the enqueue): the sentence says so.
    assert waited.sentence == (
        "a person waits for reply, but 20% of its traffic (1 a day) ran in batch (p50 "
        "4.0 h from its run's start or enqueue, after any wait for the run itself: a "
        "nightly run answers a morning request the next night): move it live "
        "(+$0.0600/month)")
    (duplicate,) = _flags(known, "duplicate")
    # 5 requests, each paid $0.001 in batch and $0.00021 live: the extra answers are
    # everything paid minus each request's cheapest answer. The cache hit paid nothing
    # and "tag-same" was paid twice by one task in one lane: neither counts.
    assert duplicate.tasks == ("tagging",) and duplicate.usd == usd("0.005")
    assert duplicate.sentence == ("5 requests were paid 10 times, by tagging (batch) and "
                                  "tagging (live): the extra answers cost $0.0050 in the "
                                  "window ($0.0150/month)")
    (spike,) = _flags(known, "spike")
    assert spike.tasks == ("tagging",) and spike.usd == usd("0.09")
    assert spike.sentence == ("tagging spent $0.0900 on Sat 2026-03-07, 9x its usual "
                              "$0.0100 a day")
    stale = {f.tasks[0]: f.sentence for f in _flags(known, "stale-catalog")}
    assert stale == {
        "tagging": "tagging: declared 40/day, measured 19/day: the catalog is out of date",
        "digest": "digest: declared 1/week, measured 0/week: the catalog is out of date"}
    (legacy,) = _flags(known, "not-in-catalog")
    assert legacy.tasks == ("legacy",) and legacy.usd == usd("0.00189")
    assert _row(known, "tagging").flags == ("duplicate", "spike", "stale-catalog")
    assert _row(known, "triage").flags == ()


def test_a_quiet_ledger_flags_nothing_but_the_catalog(tmp_path, catalog):
    ledger = Ledger(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    found = build_audit(ledger, catalog, prices(), MARCH_1_TO_10, TODAY)
    assert {f.kind for f in found.flags} == {"stale-catalog"}
    assert all(r.cost_per_month_usd == 0 and r.lane_now == "no traffic" for r in found.rows)
    assert "No flags" not in to_markdown(found)


def _cli(monkeypatch, url: str, catalog_path, *args: str) -> str:
    from lanewise.audit import rows
    from lanewise.settings import get_settings

    monkeypatch.setenv("LANEWISE_DATABASE_URL", url)
    monkeypatch.setenv("LANEWISE_CATALOG_PATH", str(catalog_path))
    monkeypatch.setattr(rows, "today_utc", lambda: TODAY)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(audit_command, ["--since", "2026-03-01", "--days", "10", *args],
                                    env={"COLUMNS": "250"}, catch_exceptions=False)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return result.output


def test_table_csv_and_json_carry_the_same_numbers(ledger_url, tmp_path, monkeypatch):
    known_traffic(ledger_url).engine.dispose()
    path = tmp_path / "catalog.yaml"
    path.write_text(textwrap.dedent(CATALOG))
    as_json = json.loads(_cli(monkeypatch, ledger_url, path, "--json"))
    as_csv = list(csv.DictReader(io.StringIO(_cli(monkeypatch, ledger_url, path, "--csv"))))
    table = _cli(monkeypatch, ledger_url, path)
    assert as_json["window"] == {"first": "2026-03-01", "last": "2026-03-10", "days": 10,
                                 "today": "2026-03-10", "dated_by": as_json["window"]
                                 ["dated_by"]}
    assert "Routing audit, 2026-03-01 to 2026-03-10 (10 UTC days, today included)" in table
    assert [t["task"] for t in as_json["tasks"]] == [r["task"] for r in as_csv]
    money_fields = [k for k in as_json["tasks"][0] if k.endswith("_usd")]
    for task, row in zip(as_json["tasks"], as_csv, strict=True):
        for key, value in task.items():
            cell = row[key]
            if value is None:
                assert cell == "", key
            elif isinstance(value, bool):
                assert cell == ("yes" if value else "no"), key
            elif isinstance(value, list):
                assert cell == "; ".join(value), key
            elif isinstance(value, (int, float)):
                assert Decimal(cell) == Decimal(str(value)), (task["task"], key)
            else:
                assert cell == value, key
        # The table (250 columns: the widest layout) shows the same money, as `usd_text`
        # writes it: the cost now, and all of it in the other lane, that lane named.
        assert usd_text(Decimal(str(task["cost_per_month_usd"]))) in table, task["task"]
        if task["task"] in ("tagging", "summary", "triage"):
            other = "live" if task["task"] == "tagging" else "batch"
            figure = Decimal(str(task[f"all_{other}_per_month_usd"]))
            assert f"all {other} {usd_text(figure)}" in table, task["task"]
    assert "cost_per_month_usd" in money_fields
    # What moving to the advised lane changes per month: in every rendering, per task
    # (null when there is nothing advised or it cannot be priced), adding up to the total.
    changes = {t["task"]: t["change_per_month_usd"] for t in as_json["tasks"]}
    assert changes == {"tagging": -0.001575, "summary": -0.3, "reply": 0.06, "triage": 0.0,
                       "digest": 0.0, "legacy": None}
    assert [r["change_per_month_usd"] for r in as_csv] == [
        "-0.001575", "-0.300000", "0.060000", "0.000000", "0.000000", ""]
    for task, figure in changes.items():
        if figure is not None and figure != 0:
            amount = Decimal(str(figure))
            shown = ("+" if amount > 0 else "") + usd_text(amount)
            assert re.search(rf"^{task} .* {re.escape(shown)} ", table, re.M), task
    assert as_json["totals"]["change_per_month_usd"] == pytest.approx(
        sum(v for v in changes.values() if v is not None))
    tagging = as_json["tasks"][0]
    assert tagging["cost_per_month_usd"] == 0.54315 and tagging["per_day"] == 18.6
    assert tagging["batch_wait_p95_s"] == 36000.0
    assert "18.6" not in table and "19 / 40" in table  # counts are rounded for reading
    # Flags: JSON lists them with their money; the CSV's last column carries sentences.
    assert [f["kind"] for f in as_json["flags"]].count("stale-catalog") == 2
    duplicate = next(f for f in as_json["flags"] if f["kind"] == "duplicate")
    assert duplicate["usd"] == 0.005 and duplicate["tasks"] == ["tagging"]
    assert duplicate["sentence"] in as_csv[0]["flag_notes"]
    assert as_csv[0]["flags"] == "duplicate; spike; stale-catalog"
    for flag in as_json["flags"]:
        assert flag["kind"] in table
    assert as_json["totals"]["cost_per_month_usd"] == pytest.approx(
        sum(t["cost_per_month_usd"] for t in as_json["tasks"]))


def test_the_renderings_agree_on_one_audit(known):
    table_text = io.StringIO()
    from rich.console import Console

    Console(file=table_text, width=250).print(audit_table(known))
    shown = table_text.getvalue()
    markdown = to_markdown(known)
    data = json.loads(to_json(known))
    rows = list(csv.DictReader(io.StringIO(to_csv(known))))
    for task, row in zip(data["tasks"], rows, strict=True):
        month = usd_text(Decimal(row["cost_per_month_usd"]))
        assert Decimal(row["cost_per_month_usd"]) == Decimal(str(task["cost_per_month_usd"]))
        assert month in shown and month in markdown
        for key in ("cost_per_day_usd", "spent_today_usd", "spent_this_month_usd"):
            assert usd_text(Decimal(row[key])) in markdown, key
    for row in known.rows:  # the move's change, as the table shows it, in the markdown
        assert f"| {change(row).plain} |" in markdown, row.task
    for flag in known.flags:
        assert flag.sentence in markdown


def _printed(audit: Audit, width: int) -> str:
    """The table and the flags as a terminal `width` columns wide shows them."""
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(audit_table(audit))
    return console.export_text()


def _sized(known: Audit) -> Audit:
    """The known audit with a longer task name and description, and figures of every
    size: thousands, tens, cents and fractions of a cent."""
    big = replace(known.rows[0], task="knowledge-base-refresh", description="Refresh " * 30,
                  cost_per_month_usd=Decimal("12345.678"),
                  all_batch_per_month_usd=Decimal("41.2"),
                  all_live_per_month_usd=Decimal("24691.356"))
    return replace(known, rows=[big, *known.rows[1:]])


@pytest.mark.parametrize("width", [80, 100, 120, 180])
def test_the_table_reads_at_every_width(known, width):
    audit = _sized(known)
    printed = _printed(audit, width)
    table, flags = re.split(r"\nFlags *\n", printed)
    assert max(cell_len(line) for line in printed.splitlines()) <= width
    for row in audit.rows:  # every name in full, at the start of its row
        assert re.search(rf"^{re.escape(row.task)}( |$)", table, re.M), row.task
        assert usd_text(row.cost_per_month_usd) in table, row.task
        for kind in row.flags:
            assert kind in table, (row.task, kind)
    # What the move to the advised lane saves or adds: thousands, cents, fractions.
    assert "$12,346" in table and "-$12,304" in table  # 12,345.678 now, 41.20 in batch
    assert "-$0.3000" in table and "+$0.0600" in table  # summary, reply
    assert not re.search(r"\$[\d,.]*…|…[\d,.]*\$", printed)  # no figure cut
    if width < 180:
        assert "…" not in printed
    # The flags below: each kind, its task(s) and its whole sentence.
    words = " ".join(flags.split())
    for flag in audit.flags:
        assert f"{flag.kind} {' '.join(flag.tasks)} {flag.sentence}" in words, flag.kind


def test_the_table_drops_columns_not_figures_as_the_width_shrinks(known):
    audit = _sized(known)
    wide, narrow = _printed(audit, 250), _printed(audit, 80)
    head = "\n".join(wide.splitlines()[1:5])
    assert all(word in head for word in ("description", "owner", "other lane", "wait",
                                         "budget"))
    # One line a task, its description cut with an ellipsis.
    (line, *_why) = [line for line in wide.splitlines() if line.startswith("knowledge-base")]
    assert "Refresh Refresh" in line and "…" in line and "all live $24,691" in line
    assert "no, 24 h" in line and "-> batch" in line
    head = "\n".join(narrow.splitlines()[1:5])
    assert not any(word in head for word in ("description", "owner", "wait", "budget"))
    assert "lane now" in head and "advised" in head and "flags" in head
    assert "$12,346" in narrow


def test_money_reads_at_a_glance_in_the_table_and_markdown():
    shown = [usd_text(Decimal(x)) for x in (
        "1234.4", "41.2", "0.08744", "0.0007", "0", "0.00004", "0.99996", "999.996", "-41.2")]
    assert shown == ["$1,234", "$41.20", "$0.0874", "$0.0007", "$0", "<$0.0001", "$1.00",
                     "$1,000", "-$41.20"]


def test_csv_and_json_exclude_each_other():
    result = CliRunner().invoke(audit_command, ["--csv", "--json"])
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_the_audit_reads_a_month_in_a_bounded_number_of_queries(tmp_path, catalog):
    ledger = known_traffic(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    statements = []
    sa.event.listen(ledger.engine, "before_cursor_execute",
                    lambda *args: statements.append(args[2].lstrip()[:6].upper()))
    build_audit(ledger, catalog, prices(), MARCH_1_TO_10, TODAY)
    # 6 measurement queries and 2 for today's and this month's spend, for every task.
    selects = [s for s in statements if s in ("SELECT", "WITH P")]
    assert len(selects) == 6 + 2


def test_spend_today_and_this_month_is_what_budgets_count(ledger_url):
    from lanewise.audit.measure import epoch, spend

    ledger = known_traffic(ledger_url)
    try:
        found = spend(ledger, TODAY)
        assert set(found) == {"tagging", "summary", "reply", "triage", "legacy"}
        for task, (today, month) in found.items():
            assert today == ledger.spend_picodollars(task, epoch(TODAY),
                                                     epoch(TODAY + timedelta(days=1))), task
            assert month == ledger.spend_picodollars(task, epoch(date(2026, 3, 1)),
                                                     epoch(date(2026, 4, 1))), task
        # Another day and month: February's one run, not March's traffic.
        assert spend(ledger, date(2026, 2, 28)) == {"tagging": (MILLI, MILLI)}
        assert spend(ledger, date(2026, 3, 7))["tagging"] == (90 * MILLI, found["tagging"][1])
    finally:
        ledger.engine.dispose()


@pytest.mark.prefect
def test_the_flow_publishes_the_audit_as_the_routing_audit_artifact(
        tmp_path, monkeypatch, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.routing_audit import routing_audit
    from lanewise.audit import rows
    from lanewise.settings import get_settings

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    known_traffic(url).engine.dispose()
    path = tmp_path / "catalog.yaml"
    path.write_text(textwrap.dedent(CATALOG))
    monkeypatch.setenv("LANEWISE_DATABASE_URL", url)
    monkeypatch.setenv("LANEWISE_CATALOG_PATH", str(path))
    # The nightly run the morning after the known traffic's last day.
    monkeypatch.setattr(rows, "today_utc", lambda: TODAY + timedelta(days=1))
    get_settings.cache_clear()
    try:
        brief = routing_audit(days=10)
    finally:
        get_settings.cache_clear()
    assert brief["tasks"] == 6 and "spike" in brief["flags"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["routing-audit"])))
    assert artifacts and all(a.type == "markdown" for a in artifacts)
    markdown = next(a.data for a in artifacts if "2026-03-01 to 2026-03-10" in a.data)
    assert "# Routing audit, 2026-03-01 to 2026-03-10 (10 UTC days)" in markdown
    assert "nobody waits for summary (up to 24 h is fine)" in markdown
    assert "| **tagging**" in markdown


def test_prefect_yaml_deploys_the_nightly_routing_audit():
    import yaml

    from flows.routing_audit import routing_audit
    from lanewise.settings import REPO_ROOT

    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    (deployment,) = [d for d in config["deployments"] if d["name"] == "routing-audit"]
    assert deployment["entrypoint"] == "flows/routing_audit.py:routing_audit"
    assert set(deployment.get("parameters", {})) <= set(routing_audit.parameters.properties)
    assert deployment["work_pool"]["name"] == "lanewise" and deployment["description"]
    (schedule,) = deployment["schedules"]
    minute, hour, *rest = schedule["cron"].split()
    assert rest == ["*", "*", "*"] and schedule["timezone"] == "UTC"  # nightly


def test_usage_the_price_table_cannot_price_at_batch_rates_is_shown_as_such(tmp_path,
                                                                            catalog):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    t = Traffic(ledger)
    for day in range(1, 11):
        t.live("summary", "claude-haiku-4-5", at(day, 9), 100, (1000, 200), f"s-{day}")
    with ledger.engine.begin() as conn:  # a fallback model the table does not know
        conn.execute(live_calls.insert().values(
            task="summary", provider="anthropic", model="claude-unknown", answered_by="live",
            status="succeeded", content_hash="s-x", latency_ms=100, input_tokens=10,
            output_tokens=10, cost_picodollars=MILLI, created_at=at(5, 10)))
    found = build_audit(ledger, catalog, prices(), MARCH_1_TO_10, TODAY)
    summary = _row(found, "summary")
    assert summary.cost_per_month_usd == usd("0.063")  # what it paid is known
    assert summary.other_lane_per_month_usd is None
    assert summary.all_batch_per_month_usd is None
    assert summary.reason == "nobody waits and 1.1 a day: move to batch"
    (rush,) = _flags(found, "rush-price")
    assert rush.usd is None and rush.sentence.endswith("runs live, paying rush prices")
    row = next(r for r in csv.DictReader(io.StringIO(to_csv(found))) if r["task"] == "summary")
    assert row["other_lane_per_month_usd"] == ""
    assert json.loads(to_json(found))["tasks"][1]["other_lane_per_month_usd"] is None
    assert "n/a" in to_markdown(found)


def test_since_sets_the_windows_first_day(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    known_traffic(url).engine.dispose()
    path = tmp_path / "catalog.yaml"
    path.write_text(textwrap.dedent(CATALOG))
    from lanewise.audit import rows
    from lanewise.settings import get_settings

    monkeypatch.setenv("LANEWISE_DATABASE_URL", url)
    monkeypatch.setenv("LANEWISE_CATALOG_PATH", str(path))
    monkeypatch.setattr(rows, "today_utc", lambda: TODAY)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(audit_command, ["--since", "2026-03-06", "--json"])
    finally:
        get_settings.cache_clear()
    data = json.loads(result.output)
    assert (data["window"]["first"], data["window"]["days"]) == ("2026-03-06", 5)
    summary = next(t for t in data["tasks"] if t["task"] == "summary")
    assert summary["live_requests"] == 50 and summary["per_day"] == 10
