"""The demo (`./dev demo`): both lanes in one day, its cost table, the ledger = the bill."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from rich.console import Console

from lanewise.settings import get_settings
from lanewise.traffic.month import Volume
from tests.lane_helpers import sample_input


@pytest.fixture()
def demo_env(tmp_path, monkeypatch, prefect_harness):
    """This test's home; the demo's own environment changes undone after it."""
    from lanewise import demo
    from lanewise.batch.prefect_tasks import context_for

    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    # The demo sets these itself (os.environ): set here so monkeypatch restores them.
    monkeypatch.setenv("LANEWISE_EMULATOR_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LANEWISE_POLL_INITIAL_SECONDS", "0.05")
    monkeypatch.setenv("LANEWISE_POLL_MAX_SECONDS", "0.2")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    monkeypatch.delenv("LANEWISE_REDIS_URL", raising=False)
    monkeypatch.setattr(demo, "DEMO_TIMING", {"batch_seconds": 0.3, "validating_seconds": 0.05,
                                              "finalizing_seconds": 0.05})
    # A short, quiet month behind the day (the full one is `./dev demo`'s).
    monkeypatch.setattr(demo, "MONTH_DAYS", 8)
    monkeypatch.setattr(demo, "MONTH_VOLUME", Volume(per_weekday=6, per_weekend_day=3,
                                                     spike_every_days=8, spike_factor=4))
    get_settings.cache_clear()
    context_for.cache_clear()
    yield
    get_settings.cache_clear()
    context_for.cache_clear()


def _run(input_url: str):
    from lanewise.demo import run_demo

    out = io.StringIO()
    report = run_demo(Console(file=out, width=120), input_url)
    return report, out.getvalue()


def test_the_demo_day_runs_both_lanes_and_its_ledger_equals_the_bill(demo_env, tmp_path):
    tickets = sample_input(tmp_path, rows=40)
    report, text = _run(tickets)

    # Day, live lane: 8 fresh tickets drafted by the task's own model, recorded, priced.
    assert len(report.live) == 8
    assert {(r.status, r.answered_by) for r in report.live} == {("succeeded", "live")}
    assert all(r.call_id is not None and r.cost_usd > 0 for r in report.live)
    assert "live latency p50" in text and "p95" in text
    # Day, deferred -> night: the same 8 conversations drained once per task.
    assert [s.task for s in report.deferred] == ["ticket-tagging", "ticket-summary"]
    assert all(s.run_key.startswith("drain:") and s.rows == 8 and s.succeeded == 8
               for s in report.deferred)
    # Night: the nightly batch over the input file, every row accounted for.
    assert [s.rows for s in report.nightly] == [40, 40]
    assert all(s.succeeded + s.counts.get("rejected", 0) == 40 for s in report.nightly)

    live, deferred, nightly = report.costs.values()
    assert live[0] == live[1] == sum((r.cost_usd for r in report.live), Decimal(0))
    assert deferred[1] == 2 * deferred[0] > 0  # both models: batch is half the live price
    assert nightly[1] > nightly[0] > 0
    assert "The day: lanewise against the same work all-live" in text
    # Across both lanes, the ledger is what the emulator billed, lane by lane.
    assert report.ledger_equals_bill
    assert report.bills["live"][0] == live[0] + report.month["live"]
    assert report.bills["live"][1] > 0
    assert report.bills["batch"][0] == deferred[0] + nightly[0] + report.month["batch"]
    assert "): equal" in text
    # The month behind the day, replayed (its cost is in the ledger-equals-bill check
    # above), and the review of it that the demo ends with.
    assert report.month["live"] > 0 and report.month["batch"] > 0
    assert "The sample month (8 days, time compressed)" in text
    assert "Routing audit" in text and "faq-candidates" in text
    for flag in ("rush-price", "waited-in-batch", "stale-catalog"):
        assert flag in text

    # A second day over the same input: the night's rows come from the result cache,
    # paid nothing, and all-live still counts them; the bill still matches. The month
    # is in the ledger already: nothing of it is replayed or paid again.
    again, text = _run(tickets)
    assert again.month == {"live": Decimal(0), "batch": Decimal(0)}
    assert [s.cached for s in again.nightly] == [s.succeeded for s in report.nightly]
    assert list(again.costs.values())[2] == (Decimal(0), nightly[1])
    assert {r.answered_by for r in again.live} == {"live"}  # new tickets: no cache hit
    assert again.ledger_equals_bill and again.bills["batch"][0] == list(
        again.costs.values())[1][0]


def test_a_ledger_that_differs_from_the_bill_by_a_micro_dollar_is_reported():
    from lanewise.demo import DemoReport

    same = DemoReport(live=[], bills={"live": (Decimal("0.0012340"), Decimal("0.001234"))})
    off = DemoReport(live=[], bills={"live": (Decimal("0.001234"), Decimal("0.001234")),
                                     "batch": (Decimal("0.002"), Decimal("0.002001"))})
    assert same.ledger_equals_bill
    assert not off.ledger_equals_bill
