"""`lanewise runs` and `lanewise costs` over a ledger with known usage and costs, on
SQLite always and on PostgreSQL when LANEWISE_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import csv
import io
import json
import re
from decimal import Decimal

import pytest

from lanewise.reporting import money
from tests.history_helpers import FLOW_RUN_ID, PICO, invoke, known_ledger

# The known ledger's figures (picodollars), by grouping: requests, cost, all-live.
BY_DAY = {"2026-08-02": (3, 3_000_000, 6_000_000),
          "2026-08-03": (7, 11_000_000 + PICO, 22_000_000 + 2 * PICO),
          "2026-08-04": (2, 6_000_000_000, 6_000_000_000)}
BY_TASK = {"ticket-summary": (4, PICO, 2 * PICO),
           "reply-draft": (2, 6_000_000_000, 6_000_000_000),
           "ticket-tagging": (6, 14_000_000, 28_000_000)}
BY_LANE = {"batch": (10, PICO + 14_000_000, 2 * PICO + 28_000_000),
           "live": (2, 6_000_000_000, 6_000_000_000)}
BY_MODEL = {"claude-haiku-4-5": BY_TASK["ticket-summary"], "gpt-4o": BY_TASK["reply-draft"],
            "gpt-4o-mini": BY_TASK["ticket-tagging"]}
EXPECTED = {"day": BY_DAY, "task": BY_TASK, "lane": BY_LANE, "model": BY_MODEL}


def usd(picodollars: int) -> Decimal:
    return Decimal(picodollars) / PICO


@pytest.fixture()
def env(ledger_url, tmp_path, monkeypatch):
    """The known ledger, and the environment that points the CLI at it."""
    known_ledger(ledger_url).engine.dispose()
    for name in ("PREFECT_UI_URL", "PREFECT_API_URL", "PREFECT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return {"LANEWISE_DATABASE_URL": ledger_url, "LANEWISE_HOME": str(tmp_path / "home"),
            "PREFECT_API_URL": "http://127.0.0.1:4200/api",
            "PREFECT_HOME": str(tmp_path / "prefect")}


# --- lanewise costs ---------------------------------------------------------------------


@pytest.mark.parametrize("by", ["day", "task", "lane", "model"])
def test_costs_by_each_grouping_match_the_known_ledger(env, by):
    expected = EXPECTED[by]
    data = json.loads(invoke(["costs", "--by", by, "--json"], env).output)
    assert data["by"] == by
    got = {r[by]: (r["requests"], Decimal(r["cost_usd"]), Decimal(r["live_cost_usd"]),
                   Decimal(r["saving_usd"])) for r in data["rows"]}
    assert got == {key: (n, usd(cost), usd(live), usd(live - cost))
                   for key, (n, cost, live) in expected.items()}
    if by == "day":
        assert [r["day"] for r in data["rows"]] == sorted(expected)  # in date order
    else:  # largest cost first
        costs = [Decimal(r["cost_usd"]) for r in data["rows"]]
        assert costs == sorted(costs, reverse=True)
    total = data["total"]
    assert total["requests"] == sum(n for n, _, _ in expected.values()) == 12
    assert Decimal(total["cost_usd"]) == usd(sum(c for _, c, _ in expected.values()))

    table = invoke(["costs", "--by", by], env, width=100)
    assert table.exit_code == 0, table.output
    for key, (n, cost, live) in expected.items():
        row = next(line for line in table.output.splitlines() if f" {key} " in line)
        assert re.findall(r"[\d,]+|\$[\d,.]+", row.split(key, 1)[1]) == [
            f"{n:,}", money(usd(cost)), money(usd(live)), money(usd(live - cost))]


def test_costs_since_leaves_earlier_days_out(env):
    data = json.loads(invoke(["costs", "--since", "2026-08-03", "--json"], env).output)
    assert [r["day"] for r in data["rows"]] == ["2026-08-03", "2026-08-04"]
    assert data["since"] == "2026-08-03"
    by_task = json.loads(invoke(["costs", "--by", "task", "--since", "2026-08-03",
                                 "--json"], env).output)
    tagging = next(r for r in by_task["rows"] if r["task"] == "ticket-tagging")
    assert tagging["requests"] == 3 and Decimal(tagging["cost_usd"]) == usd(11_000_000)


@pytest.mark.parametrize("by", ["day", "task"])
def test_costs_csv_and_json_carry_the_same_numbers(env, by):
    as_csv = invoke(["costs", "--by", by, "--csv"], env)
    as_json = invoke(["costs", "--by", by, "--json"], env)
    assert as_csv.exit_code == 0 and as_json.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert list(rows[0]) == [by, "requests", "cost_usd", "live_cost_usd", "saving_usd"]
    records = json.loads(as_json.output)["rows"]
    assert rows == [{k: str(v) for k, v in r.items()} for r in records]
    assert len(rows) == len(EXPECTED[by])


def test_costs_chart_is_a_png_of_the_daily_series(env, tmp_path):
    from PIL import Image

    path = tmp_path / "out" / "costs.png"
    path.parent.mkdir()
    result = invoke(["costs", "--chart", str(path)], env)
    assert result.exit_code == 0, result.output
    assert f"chart written to {path}" in result.output.replace("\n", "")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.verify()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size == (800, 400)
    # Drawn, not blank: the billed and the all-live bars are both in it.
    from lanewise.costs import BILLED_COLOUR, LIVE_COLOUR

    colours = {image.getpixel((x, y)) for x in range(800) for y in range(400)}
    for colour in (BILLED_COLOUR, LIVE_COLOUR):
        assert tuple(bytes.fromhex(colour[1:])) in colours
    # With --json the chart's note goes to stderr and stdout stays valid JSON.
    quiet = invoke(["costs", "--json", "--chart", str(path)], env)
    json.loads(quiet.stdout)


def test_cost_series_and_markdown_for_the_nightly_artifact(ledger_url):
    from datetime import date

    from lanewise.costs import cost_chart_png, cost_history_markdown, daily_series

    ledger = known_ledger(ledger_url)
    series = daily_series(ledger, date(2026, 8, 1), date(2026, 8, 5))
    assert [r.key for r in series] == [f"2026-08-0{d}" for d in range(1, 6)]
    assert [r.requests for r in series] == [0, 3, 7, 2, 0]  # days without traffic at 0
    assert cost_chart_png(ledger, date(2030, 1, 1), date(2030, 1, 2)).startswith(b"\x89PNG")
    text = cost_history_markdown(ledger)
    assert "![daily cost](data:image/png;base64,iVBORw0KGgo" in text
    assert f"| 2026-08-03 | 7 | {money(usd(11_000_000 + PICO))} |" in text
    assert f"| ticket-summary | 4 | {money(usd(PICO))} | {money(usd(2 * PICO))} |" in text
    assert "data:image" not in cost_history_markdown(ledger, chart=False)
    # One task's (or lane's) history, for an artifact per task and lane.
    tagging = cost_history_markdown(ledger, chart=False, task="ticket-tagging", lane="batch")
    assert tagging.startswith("# LLM cost of task ticket-tagging, lane batch, all time")
    assert f"| 2026-08-03 | 3 | {money(usd(11_000_000))} |" in tagging
    assert "ticket-summary" not in tagging and "2026-08-04" not in tagging
    assert [(r.key, r.requests) for r in daily_series(ledger, lane="live")] == [
        ("2026-08-04", 2)]


def test_costs_without_a_ledger_say_where_they_looked(tmp_path):
    home = tmp_path / "nowhere"
    result = invoke(["costs"], {"LANEWISE_HOME": str(home), "LANEWISE_DATABASE_URL": ""})
    assert result.exit_code != 0
    assert f"no ledger at {home / 'ledger.sqlite3'}" in str(result.exception)
    assert not home.exists()


# --- lanewise runs ----------------------------------------------------------------------

ROW = re.compile(r"^(finished|running|planning|idle)\s+(\S+)\s+(batch|live)\s+(.+?)\s+"
                 r"([\d,]+)\s+([\d,]+)\s+(\$[\d,.]+)\s+(-?\$[\d,.]+)$")


def test_runs_one_row_per_run_at_80_columns_with_the_flow_run_link(env):
    result = invoke(["runs"], env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = [ROW.match(line) for line in lines]
    rows = [m for m in rows if m]
    assert [m.group(2) for m in rows] == ["ticket-tagging", "reply-draft", "ticket-summary",
                                          "ticket-tagging"]  # newest first, one row each
    for line in lines:  # only an unbreakable path or URL may make a line wider than 80
        assert len(line) <= 80 or line.split()[-1].startswith(("/", "file://", "http")), line
    header = next(line for line in lines if line.startswith("state"))
    assert header.split() == ["state", "task", "lane", "window", "rows", "failed", "cost",
                              "saving"]
    tagging = rows[3]
    assert tagging.groups()[:6] == ("finished", "ticket-tagging", "batch", "2026-08-01",
                                    "8", "3")  # failed: 1 failed, 1 invalid, 1 rejected
    assert tagging.group(7) == money(usd(14_000_000))
    assert tagging.group(8) == money(usd(14_000_000))
    # The run key and creation time under its row, then the Prefect flow run's page.
    at = lines.index(tagging.string)
    assert lines[at + 1].split() == ["run", "ticket-tagging:2026-08-01", "created",
                                     "2026-08-02", "00:00", "UTC"]
    assert lines[at + 2].strip() == f"http://127.0.0.1:4200/runs/flow-run/{FLOW_RUN_ID}"
    assert lines[at + 3].strip() == ("results file:///tmp/lanewise/ticket-tagging:2026-08-01/"
                                     "results.parquet")
    # A range takes two lines of the window column; a run without a window reads so.
    summary = rows[2]
    assert summary.group(4) == "2026-08-01.."
    assert lines[lines.index(summary.string) + 1].strip() == "2026-08-07"
    assert rows[1].group(4) == "all rows"
    # Not finished and nobody driving it: idle, with what that means.
    assert rows[0].group(1) == "idle"
    assert any(line.startswith("idle: unfinished and no process drives it") for line in lines)


def test_runs_json_carries_the_tables_numbers(env):
    table = invoke(["runs"], env).output.splitlines()
    records = json.loads(invoke(["runs", "--json"], env).output)
    rows = [m for m in map(ROW.match, table) if m]
    assert len(records) == len(rows) == 4
    for record, row in zip(records, rows, strict=True):
        assert row.groups()[:3] == (record["state"], record["task"], record["lane"])
        assert record["window"].startswith(row.group(4).removesuffix(".."))
        assert row.group(5) == f"{record['rows']:,}" and row.group(6) == f"{record['failed']:,}"
        assert row.group(7) == money(Decimal(record["cost_usd"]))
        assert row.group(8) == money(Decimal(record["saving_usd"]))
    tagging = records[3]
    assert tagging["run_key"] == "ticket-tagging:2026-08-01"
    assert tagging["counts"] == {"failed": 1, "invalid_output": 1, "rejected": 1,
                                 "succeeded": 5}
    assert Decimal(tagging["cost_usd"]) == usd(14_000_000)
    assert Decimal(tagging["live_cost_usd"]) == usd(28_000_000)
    assert tagging["window_start"] == tagging["window_end"] == "2026-08-01"
    assert tagging["created_at"] == "2026-08-02T00:00:00+00:00"
    assert tagging["prefect_flow_run_url"] == \
        f"http://127.0.0.1:4200/runs/flow-run/{FLOW_RUN_ID}"
    assert tagging["batches_sent"] == 2 and tagging["shards"] == 2
    assert records[1]["window"] == "all rows" and records[1]["lane"] == "live"
    assert records[1]["prefect_flow_run_url"] is None
    assert [r["run_key"] for r in json.loads(
        invoke(["runs", "--json", "--limit", "2"], env).output)] == [
        "ticket-tagging:planned", "reply-draft:live"]


def test_runs_print_user_text_verbatim_never_as_markup_or_emoji(ledger_url, tmp_path):
    from tests.history_helpers import add_run

    ledger = known_ledger(ledger_url)
    add_run(ledger, "[bold]x[/bold]:smile:", "[red]t[/red]", "gpt-4o-mini",
            created="2026-08-09 00:00")
    result = invoke(["runs"], {"LANEWISE_DATABASE_URL": ledger_url,
                               "LANEWISE_HOME": str(tmp_path / "home"),
                               "PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": None,
                               "PREFECT_UI_URL": None}, width=100)
    assert "run [bold]x[/bold]:smile:" in result.output
    assert "[red]t[/red]" in result.output
    # With no Prefect UI known, the flow run's id still says where to look.
    assert f"  prefect flow run {FLOW_RUN_ID} (no UI address known)" in result.output


def test_prefect_ui_url_from_the_environment_or_the_active_profile(tmp_path):
    from lanewise.reporting import flow_run_url, prefect_ui_url

    assert prefect_ui_url({"PREFECT_UI_URL": "https://prefect.example/",
                           "PREFECT_API_URL": "http://x/api"}) == "https://prefect.example"
    assert prefect_ui_url({"PREFECT_API_URL": "http://127.0.0.1:4200/api/"}) == \
        "http://127.0.0.1:4200"
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://prefect:4200/api"\n'
        '[profiles.other]\nPREFECT_API_URL = "http://other:4200/api"\n')
    assert prefect_ui_url({"PREFECT_HOME": str(tmp_path)}) == "http://prefect:4200"
    assert prefect_ui_url({"PREFECT_HOME": str(tmp_path), "PREFECT_PROFILE": "other"}) == \
        "http://other:4200"
    assert prefect_ui_url({"PREFECT_HOME": str(tmp_path / "none")}) is None
    # Else the UI of the stack `lanewise up` recorded for the home.
    from lanewise.ops.stack_state import StackPaths, StackState, save_state

    home = tmp_path / "home"
    assert prefect_ui_url({"PREFECT_HOME": str(tmp_path / "none")}, home) is None
    save_state(StackPaths(home), StackState(home=str(home),
                                            api_url="http://127.0.0.1:4321/api"))
    assert prefect_ui_url({"PREFECT_HOME": str(tmp_path / "none")}, home) == \
        "http://127.0.0.1:4321"
    assert prefect_ui_url({"PREFECT_API_URL": "http://x:1/api"}, home) == "http://x:1"
    assert flow_run_url("abc", "http://h:1") == "http://h:1/runs/flow-run/abc"
    assert flow_run_url(None, "http://h:1") is None


def test_runs_rows_stay_within_80_columns_with_large_figures():
    """Up to 999,999 rows and $9,999.99 a run, with the longest task name of the catalog
    and a date range, a run's row fits 80 columns."""
    from lanewise.reporting import runs_view

    record = {"state": "finished", "task": "ticket-tagging", "lane": "batch",
              "window": "2026-08-01..2026-08-31", "window_start": "2026-08-01",
              "window_end": "2026-08-31", "rows": 999_999, "failed": 99_999,
              "cost_usd": "9999.994999999999", "saving_usd": "9999.994999999999",
              "run_key": "ticket-tagging:2026-08-01..2026-08-31",
              "created_at": "2026-09-01T03:00:00+00:00", "prefect_flow_run_id": FLOW_RUN_ID,
              "prefect_flow_run_url": f"http://127.0.0.1:4200/runs/flow-run/{FLOW_RUN_ID}",
              "results_url": None}
    lines = [line.plain for line in runs_view([record])]
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert lines[2].split() == ["finished", "ticket-tagging", "batch", "2026-08-01..",
                                "999,999", "99,999", "$9,999.99", "$9,999.99"]
