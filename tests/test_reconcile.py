"""Reconciliation against the providers' own books: the emulator serves both cost
reports from its billing record, and `lanewise reconcile` agrees with them to the cent,
or finds exactly the one rate the emulator bills differently."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from lanewise.batch.runner import run_batch_lane
from lanewise.emulator import EmulatorConfig, running_emulator
from lanewise.errors import ConfigurationError, ReconciliationError
from lanewise.pricing import from_picodollars
from lanewise.reconcile import (
    ProviderCost,
    admin_credentials,
    compare,
    parse_openai_line_item,
    period,
    reconcile,
)
from lanewise.settings import DATA_DIR, Settings, get_settings
from tests.conftest import FAST
from tests.lane_helpers import billed_for, make_context, sample_input

RAISED = Decimal("4e-07")  # gpt-4o-mini batch output, per token, in the emulator's table


def today() -> date:
    return datetime.now(UTC).date()


@contextlib.contextmanager
def own_emulator(state_dir: Path, prices_path: Path | None = None, api_key: str | None = None):
    """An emulator of its own (the session's bills every test's runs)."""
    config = EmulatorConfig(timing=FAST.model_copy(), prices_path=prices_path, api_key=api_key)
    with running_emulator(config, state_dir=state_dir) as emu:
        yield emu


def run_both(emu, home: Path, rows: int = 20) -> dict:
    """One batch run per provider; their contexts share one ledger under `home`."""
    runs = {}
    for task in ("ticket-tagging", "ticket-summary"):
        ctx = make_context(task, emu, home)
        summary = run_batch_lane(ctx, f"{task}:books", sample_input(home, rows=rows))
        runs[task] = (ctx, summary)
    return runs


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """An emulator billing at lanewise's own prices, after a run of each provider."""
    root = tmp_path_factory.mktemp("books")
    with own_emulator(root / "emulator") as emu:
        yield emu, root, run_both(emu, root)


@pytest.fixture(scope="module")
def raised_books(tmp_path_factory):
    """An emulator whose table bills gpt-4o-mini's batch output higher, and the runs."""
    root = tmp_path_factory.mktemp("raised")
    table = json.loads((DATA_DIR / "prices.json").read_text())
    entry = table.get("models", table)["gpt-4o-mini"]
    key = "output_cost_per_token_batches" if "output_cost_per_token_batches" in entry \
        else "batch_output"
    old = Decimal(str(entry[key]))
    if key == "batch_output":  # the older per-million format
        entry[key] = str(RAISED * 1_000_000)
        delta = RAISED - old / 1_000_000
    else:
        entry[key] = float(RAISED)
        delta = RAISED - old
    assert delta > 0
    path = root / "emulator-prices.json"
    path.write_text(json.dumps(table))
    with own_emulator(root / "emulator", prices_path=path) as emu:
        yield emu, root, run_both(emu, root), delta


def cli_env(monkeypatch, emu, home: Path) -> None:
    monkeypatch.setenv("LANEWISE_HOME", str(home / "home"))
    monkeypatch.setenv("LANEWISE_EMULATOR_URL", emu.url)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_ADMIN_KEY",
                 "ANTHROPIC_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()


# --- the provider side ------------------------------------------------------------------


def test_openai_line_items_name_model_lane_and_token_type():
    assert parse_openai_line_item("gpt-4o-mini-2024-07-18, input") == (
        "gpt-4o-mini", None, "input")
    assert parse_openai_line_item("gpt-4o-mini-2024-07-18, cached input") == (
        "gpt-4o-mini", None, "cached input")
    assert parse_openai_line_item("gpt-5-mini, batch output") == ("gpt-5-mini", "batch",
                                                                  "output")
    assert parse_openai_line_item("gpt-audio-mini-2025-12-15 text, output") == (
        "gpt-audio-mini", None, "output")
    for not_a_model in ("evals | gpt-4o-mini-2024-07-18, input", "web search tool calls",
                        "assistants api | file search", None, ""):
        assert parse_openai_line_item(not_a_model)[0] is None


def cost(day, model, lane, usd, provider="openai", label="x"):
    return ProviderCost(provider, day, model, lane, "output", Decimal(usd), label)


def test_lanes_are_compared_apart_only_where_the_report_tells_them_apart():
    d1, d2 = date(2026, 8, 1), date(2026, 8, 2)
    ledger = {("openai", d1, "gpt-4o-mini", "batch"): 2_000_000_000,  # $0.002
              ("openai", d2, "gpt-4o-mini", "batch"): 5_000_000_000}
    costs = [cost(d1, "gpt-4o-mini", None, "0.002"),          # no batch label that day
             cost(d2, "gpt-4o-mini", "batch", "0.005"),       # labelled: lanes apart
             cost(d2, "gpt-4o-mini", None, "0.001"),          # so this one is live
             cost(d2, None, None, "0.25", label="web search tool calls")]
    rows, untracked = compare("openai", costs, ledger, {"gpt-4o-mini"})
    assert [(r.day, r.lane, r.ledger_usd, r.provider_usd) for r in rows] == [
        (d1, "all", Decimal("0.002"), Decimal("0.002")),
        (d2, "batch", Decimal("0.005"), Decimal("0.005")),
        (d2, "live", Decimal(0), Decimal("0.001"))]
    assert [c.label for c in untracked] == ["web search tool calls"]


def test_the_period_is_one_day_a_range_up_to_today_or_yesterday():
    now = date(2026, 8, 10)
    assert period(today=now) == (date(2026, 8, 9), date(2026, 8, 9))
    assert period(date(2026, 8, 3), today=now) == (date(2026, 8, 3), date(2026, 8, 3))
    assert period(since=date(2026, 8, 3), today=now) == (date(2026, 8, 3), now)
    with pytest.raises(ConfigurationError):
        period(date(2026, 8, 3), date(2026, 8, 1), today=now)


def test_admin_keys_come_from_the_environment_and_never_fall_back_past_a_real_key(
        monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "ANTHROPIC_API_KEY",
                 "ANTHROPIC_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    real_lane = Settings(openai_api_key=SecretStr("sk-proj-x"))
    with pytest.raises(ConfigurationError) as missing:
        admin_credentials("openai", real_lane)
    assert "LANEWISE_OPENAI_ADMIN_KEY" in str(missing.value)
    assert "sk-proj-x" not in str(missing.value)
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", "sk-ant-admin01-secret")
    creds = admin_credentials("anthropic", Settings(use_emulator=False))
    assert (creds.source, creds.base_url) == ("environment", "https://api.anthropic.com")
    assert "secret" not in repr(creds)  # SecretStr until the header is built
    creds = admin_credentials("openai", Settings(openai_admin_key=SecretStr("sk-admin-1")))
    assert (creds.source, creds.base_url) == ("environment", "https://api.openai.com/v1")
    creds = admin_credentials("openai", Settings(emulator_url="http://127.0.0.1:9"))
    assert (creds.source, creds.base_url) == ("emulator", "http://127.0.0.1:9/v1")


# --- the emulator's reports -----------------------------------------------------------


def test_the_emulator_serves_both_cost_reports_in_the_real_shapes(books):
    from openai.types.admin.organization.usage_costs_response import UsageCostsResponse

    emu, _, runs = books
    start = int(datetime(*today().timetuple()[:3], tzinfo=UTC).timestamp()) - 86_400
    answer = httpx.get(f"{emu.url}/v1/organization/costs", headers={
        "Authorization": "Bearer sk-admin-x"}, params={
        "start_time": start, "bucket_width": "1d", "group_by[]": ["line_item", "project_id"]})
    assert answer.status_code == 200, answer.text
    page = UsageCostsResponse.model_validate(answer.json())  # the openai SDK's own type
    assert page.object == "page" and len(page.data) == 2 and not page.has_more
    assert page.data[0].results == [] and page.data[1].start_time == start + 86_400
    results = answer.json()["data"][1]["results"]
    assert {r["line_item"] for r in results} >= {"gpt-4o-mini, batch input",
                                                 "gpt-4o-mini, batch output"}
    tagging = runs["ticket-tagging"][1]
    assert sum(Decimal(r["amount"]["value"]) for r in results) == tagging.cost_usd == \
        billed_for(emu, tagging.batch_ids)

    report = httpx.get(f"{emu.url}/v1/organizations/cost_report", headers={
        "x-api-key": "sk-ant-admin01-x", "anthropic-version": "2023-06-01"}, params={
        "starting_at": f"{today().isoformat()}T00:00:00Z", "group_by[]": "description"})
    assert report.status_code == 200, report.text
    body = report.json()
    assert set(body) == {"data", "has_more", "next_page"}
    (bucket,) = body["data"]
    assert bucket["starting_at"] == f"{today().isoformat()}T00:00:00Z"
    lines = bucket["results"]
    assert {(r["model"], r["service_tier"], r["cost_type"], r["currency"]) for r in lines} == {
        ("claude-haiku-4-5", "batch", "tokens", "USD")}
    assert {r["token_type"] for r in lines} >= {"uncached_input_tokens", "output_tokens"}
    summary = runs["ticket-summary"][1]
    cents = sum(Decimal(r["amount"]) for r in lines)  # amounts are cents
    assert cents / 100 == summary.cost_usd == billed_for(emu, summary.batch_ids)
    ungrouped = httpx.get(f"{emu.url}/v1/organizations/cost_report", headers={
        "x-api-key": "k"}, params={"starting_at": f"{today().isoformat()}T00:00:00Z"}).json()
    (total,) = ungrouped["data"][0]["results"]
    assert Decimal(total["amount"]) == cents and total["model"] is None


def test_cost_reports_page_by_day_and_need_a_key(tmp_path):
    with own_emulator(tmp_path / "emu", api_key="sk-admin-right") as emu:
        params = {"start_time": int(datetime(2026, 8, 1, tzinfo=UTC).timestamp()),
                  "end_time": int(datetime(2026, 8, 4, tzinfo=UTC).timestamp()), "limit": 2}
        assert httpx.get(f"{emu.url}/v1/organization/costs", params=params).status_code == 401
        headers = {"Authorization": "Bearer sk-admin-right"}
        first = httpx.get(f"{emu.url}/v1/organization/costs", params=params,
                          headers=headers).json()
        assert len(first["data"]) == 2 and first["has_more"]
        second = httpx.get(f"{emu.url}/v1/organization/costs", headers=headers,
                           params={**params, "page": first["next_page"]}).json()
        assert [b["start_time"] for b in first["data"] + second["data"]] == [
            params["start_time"] + i * 86_400 for i in range(3)]
        assert not second["has_more"] and second["next_page"] is None
        bad = httpx.get(f"{emu.url}/v1/organizations/cost_report", headers={
            "x-api-key": "sk-admin-right"}, params={"starting_at": "yesterday"})
        assert bad.status_code == 400 and bad.json()["type"] == "error"


# --- reconciling ----------------------------------------------------------------------


def test_reconcile_agrees_to_the_cent_with_the_emulators_books(books, monkeypatch):
    from lanewise import cli as cli_module
    from lanewise.cli import cli

    emu, root, runs = books
    settings = runs["ticket-tagging"][0].settings
    report = reconcile(today(), today(), settings=settings)
    assert {(r.provider, r.model, r.lane) for r in report.rows} == {
        ("openai", "gpt-4o-mini", "batch"), ("anthropic", "claude-haiku-4-5", "batch")}
    assert all(r.difference_usd == 0 and r.ledger_usd > 0 for r in report.rows)
    assert report.sources == {"openai": "emulator", "anthropic": "emulator"}
    ledger_total = sum(from_picodollars(ctx.ledger.totals(
        ctx.ledger.run_by_key(s.run_key)["id"])["cost_picodollars"]) for ctx, s in runs.values())
    assert sum(r.provider_usd for r in report.rows) == ledger_total

    cli_env(monkeypatch, emu, root)
    monkeypatch.setattr(cli_module.console, "width", 200)
    try:
        result = CliRunner().invoke(cli, ["reconcile", "--date", today().isoformat()],
                                    terminal_width=200)
        both = CliRunner().invoke(cli, ["reconcile", "--date", "2026-08-01",
                                        "--since", "2026-08-01"])
        earlier = CliRunner().invoke(cli, ["reconcile", "--date",
                                           (today() - timedelta(days=3)).isoformat()])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "gpt-4o-mini" in result.output and "claude-haiku-4-5" in result.output
    assert "MISMATCH" not in result.output and "agrees" in result.output
    assert both.exit_code == 2 and "exclude each other" in both.output
    assert earlier.exit_code == 0, earlier.output  # nothing spent, nothing billed


def test_reconcile_finds_the_one_rate_the_provider_bills_differently(raised_books,
                                                                      monkeypatch):
    emu, root, runs, delta = raised_books
    ctx, tagging = runs["ticket-tagging"]
    output_tokens = ctx.ledger.totals(ctx.ledger.run_by_key(tagging.run_key)["id"])[
        "output_tokens"]
    report = reconcile(today(), today(), settings=ctx.settings, tolerance_usd=Decimal(0))
    (mismatch,) = report.mismatches
    assert (mismatch.provider, mismatch.day, mismatch.model, mismatch.lane) == (
        "openai", today(), "gpt-4o-mini", "batch")
    assert mismatch.difference_usd == output_tokens * delta > 0
    assert mismatch.ledger_usd == tagging.cost_usd
    assert mismatch.provider_usd == billed_for(emu, tagging.batch_ids)
    others = [r for r in report.rows if r is not mismatch]
    assert others and all(r.difference_usd == 0 for r in others)  # Anthropic agrees
    # A tolerance above the difference accepts it.
    assert not reconcile(today(), today(), settings=ctx.settings,
                         tolerance_usd=mismatch.difference_usd).mismatches

    env = {k: v for k, v in os.environ.items() if k not in (
        "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_ADMIN_KEY", "ANTHROPIC_ADMIN_KEY")}
    env.update(LANEWISE_HOME=str(root / "home"), LANEWISE_EMULATOR_URL=emu.url,
               COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", "lanewise", "reconcile", "--date",
                           today().isoformat(), "--tolerance", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "MISMATCH" in done.stdout
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "1 of 2 day/model/lane rows differ" in error
    assert f"openai gpt-4o-mini batch on {today().isoformat()}" in error
    assert f"(difference ${format(mismatch.difference_usd, 'f')})" in error


@pytest.mark.prefect
def test_the_reconcile_flow_publishes_the_comparison_and_fails_on_a_mismatch(
        raised_books, monkeypatch, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.reconcile import reconcile_costs

    emu, root, _, _ = raised_books
    cli_env(monkeypatch, emu, root)
    try:
        state = reconcile_costs(day=today(), tolerance_usd=0.0, return_state=True)
        passed = reconcile_costs(day=today(), provider="anthropic", return_state=True)
    finally:
        get_settings.cache_clear()
    assert state.is_failed()
    with pytest.raises(ReconciliationError, match="gpt-4o-mini batch"):
        state.result()
    assert passed.is_completed() and passed.result()["mismatches"] == 0
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["lanewise-reconcile", "lanewise-reconcile-summary"])))
    assert {a.key for a in artifacts} == {"lanewise-reconcile", "lanewise-reconcile-summary"}
    markdown = next(a.data for a in artifacts if a.key == "lanewise-reconcile-summary"
                    and "MISMATCH" in a.data)
    assert "gpt-4o-mini" in markdown
