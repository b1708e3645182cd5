"""The sample month (lanewise/traffic): its shape, its replay through both lanes against
the emulator (dated in simulated time, idempotent, ledger = bill), and the audit of it
raising each flag for the reason the month was built with."""

from __future__ import annotations

import json
import statistics
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
import sqlalchemy as sa

from lanewise.traffic.month import NIGHTLY_TASKS, Volume, month_days

END = date(2026, 11, 23)  # a Monday: the 8-day month below ends on its digest's day
SMALL = Volume(per_weekday=8, per_weekend_day=4, spike_every_days=8, spike_factor=30)


def test_the_month_has_the_shape_it_promises():
    month = month_days(END, 30)
    prelude, days = month[0], month[1:]
    assert prelude.prelude and not prelude.live and not prelude.runs and prelude.tickets
    assert [d.day for d in days] == [END - timedelta(days=29 - n) for n in range(30)]
    assert month_days(END, 30) == month  # deterministic
    # A date's traffic is the date's alone: a month ending elsewhere agrees on shared days.
    shifted = {d.day: d for d in month_days(END + timedelta(days=3), 30)}
    assert all(shifted[d.day].tickets == d.tickets and shifted[d.day].live == d.live
               for d in days[3:])
    counts = [len(d.tickets) for d in days]
    spikes = [d for d in days if Volume().is_spike(d.day, 7)]
    assert len(spikes) == 1 and len(spikes[0].tickets) >= 4 * statistics.median(counts)
    events = [e for d in days for e in d.live]
    drafts = [e for e in events if e.task == "reply-draft"]
    # A person waits: agents draft in working hours on weekdays only.
    assert drafts and all(e.at.weekday() < 5 and 9 <= e.at.hour < 17 + 1 for e in drafts)
    # Every ticket's FAQ check, live, as it arrives; some tickets escalated.
    assert sum(e.task == "faq-candidates" for e in events) == sum(counts)
    assert 0 < sum(e.task == "escalation-summary" for e in events) < sum(counts) / 5
    # Each day's tickets go to the next night's runs (the prelude's to the first
    # night): every day of the month has its three; digests on Mondays, full weeks.
    runs = [r for d in month for r in d.runs]
    nightly = [r for r in runs if r.task in NIGHTLY_TASKS]
    assert len(nightly) == 3 * 30
    assert all(r.at.date() == r.first_day + timedelta(days=1) and r.at.hour == 2
               for r in nightly)
    digests = [r for r in runs if r.task == "weekly-digest"]
    assert digests and all(r.at.weekday() == 0 and r.first_day.weekday() == 0
                           and r.last_day - r.first_day == timedelta(days=6)
                           and r.first_day >= days[0].day for r in digests)
    assert len({r.run_key for r in runs}) == len(runs)


@pytest.fixture()
def month_env(emulator, tmp_path, monkeypatch):
    """This test's home and the test emulator (replays are refused elsewhere)."""
    from lanewise.live import close_lanes
    from lanewise.settings import get_settings

    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LANEWISE_EMULATOR_URL", emulator.url)
    monkeypatch.setenv("LANEWISE_POLL_INITIAL_SECONDS", "0.05")
    monkeypatch.setenv("LANEWISE_POLL_MAX_SECONDS", "0.2")
    monkeypatch.delenv("LANEWISE_REDIS_URL", raising=False)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield get_settings()
    close_lanes()
    get_settings.cache_clear()


def _billed(emulator) -> Decimal:
    return Decimal(httpx.get(f"{emulator.url}/_emulator/billing").json()["total"]["cost_usd"])


def test_the_replay_dates_every_record_in_the_month_and_pays_once(month_env, emulator):
    from lanewise.audit import build_audit, window_for
    from lanewise.catalog import load_catalog
    from lanewise.ledger.schema import live_calls, runs, shards
    from lanewise.pricing import load_price_table
    from lanewise.traffic.replay import MonthReplay

    settings = month_env
    month = month_days(END, 8, volume=SMALL)
    events = {e.event_id: e for d in month for e in d.live}
    planned = {r.run_key: r for d in month for r in d.runs}
    before = _billed(emulator)
    replay = MonthReplay(settings, settings.home / "sample-month")
    report = replay.run(month)
    assert (report.live_calls, report.runs) == (len(events), len(planned))
    paid = report.cost_usd["live"] + report.cost_usd["batch"]
    assert paid > 0 and _billed(emulator) - before == paid  # the ledger is the bill

    ledger = replay.ledger
    with ledger.engine.connect() as conn:
        calls = conn.execute(sa.select(live_calls.c.context, live_calls.c.created_at,
                                       live_calls.c.latency_ms)).all()
        run_rows = {r.run_key: r for r in conn.execute(sa.select(runs))}
        shard_rows = conn.execute(sa.select(shards)).mappings().all()
    assert len(calls) == len(events)
    for context, created_at, latency_ms in calls:
        event = events[json.loads(context)["sample_event"]]
        # Dated when the answer came back: its moment plus the real latency.
        assert created_at == pytest.approx(event.at.timestamp() + latency_ms / 1000, abs=1e-3)
    assert set(run_rows) == set(planned)
    for key, run in run_rows.items():
        assert run.status == "finished"
        assert run.created_at == planned[key].at.timestamp()
        assert run.created_at <= run.finished_at < run.created_at + 6 * 3600
    for shard in shard_rows:
        moments = [shard["intent_at"], shard["submitted_at"], shard["ended_at"]]
        assert moments == sorted(moments)  # stretched, never out of order
        run = next(r for r in run_rows.values() if r.id == shard["run_id"])
        assert run.created_at <= shard["intent_at"] and shard["ended_at"] <= run.finished_at

    # A second replay into the same ledger makes and pays nothing.
    again = MonthReplay(settings, settings.home / "sample-month").run(month)
    assert (again.live_calls, again.runs) == (0, 0)
    assert (again.live_skipped, again.runs_skipped) == (len(events), len(planned))
    assert _billed(emulator) - before == paid

    # The audit of the month finds what the month was built with, for its reasons.
    found = build_audit(ledger, load_catalog(settings.catalog_path),
                        load_price_table(settings.prices_path),
                        window_for(END, since=month[1].day, days=8),
                        datetime.now(UTC).date())
    flags = {(f.kind, tuple(sorted(f.tasks))) for f in found.flags}
    assert ("rush-price", ("faq-candidates",)) in flags
    assert ("waited-in-batch", ("urgent-triage",)) in flags
    assert ("duplicate", ("escalation-summary", "ticket-summary")) in flags
    assert any(kind == "spike" for kind, _ in flags)
    assert ("stale-catalog", ("reply-draft",)) in flags
    spike_day = next(d.day for d in month[1:] if SMALL.is_spike(d.day, 7))
    assert any(str(spike_day) in f.sentence for f in found.flags if f.kind == "spike")


def test_the_replay_refuses_a_real_provider(month_env, monkeypatch, tmp_path):
    from lanewise.errors import ConfigurationError
    from lanewise.settings import get_settings
    from lanewise.traffic.replay import MonthReplay

    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-looking")
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match="only against the emulator"):
        MonthReplay(get_settings(), tmp_path / "sample")
