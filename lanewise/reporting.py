"""Tables people can read at a glance: run costs and run history, rendered with rich.

Cheap to import (no Prefect, no pandas): `lanewise runs` renders through it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from lanewise.ledger.schema import TERMINAL_ITEM_STATES
from lanewise.pricing import from_picodollars
from lanewise.storage import display_url

if TYPE_CHECKING:
    from rich.console import Console

    from lanewise.batch.results import RunSummary
    from lanewise.ledger.history import RunOverview


def usd(amount: Decimal) -> str:
    """Dollars with enough places to see sub-cent batch costs."""
    return f"${amount:,.6f}"


def cost_table(summaries: list[RunSummary], title: str = "What the runs cost") -> Table:
    """One column per run (and a total): rows by outcome, tokens, batch cost, live, saving."""
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for s in summaries:
        table.add_column(Text(s.run_key), justify="right", overflow="fold")
    show_total = len(summaries) > 1
    if show_total:
        table.add_column("total", justify="right", style="bold")

    def add(label: str, values: list, total: str = "", **style: str) -> None:
        table.add_row(label, *[Text(str(v)) for v in values], *([total] if show_total else []),
                      **style)

    add("provider / model", [f"{s.provider} / {s.model}" for s in summaries])
    add("rows", [f"{s.rows:,}" for s in summaries], f"{sum(s.rows for s in summaries):,}")
    for status, label in (("succeeded", "succeeded"), ("cached", "from the result cache"),
                          ("invalid_output", "invalid output"),
                          ("failed", "failed"), ("rejected", "rejected (bad input)")):
        counts = [s.counts.get(status, 0) for s in summaries]
        add(label, [f"{n:,}" for n in counts], f"{sum(counts):,}")
    tokens_in = [s.input_tokens + s.cached_input_tokens + s.cache_write_tokens
                 for s in summaries]
    add("input tokens", [f"{n:,}" for n in tokens_in], f"{sum(tokens_in):,}")
    add("output tokens", [f"{s.output_tokens:,}" for s in summaries],
        f"{sum(s.output_tokens for s in summaries):,}")
    cost = sum((s.cost_usd for s in summaries), Decimal(0))
    live = sum((s.live_cost_usd for s in summaries), Decimal(0))
    add("batch cost", [usd(s.cost_usd) for s in summaries], usd(cost), style="bold")
    add("same work live", [usd(s.live_cost_usd) for s in summaries], usd(live))
    add("saved", [usd(s.saving_usd) for s in summaries], usd(live - cost), style="green")
    if any(s.estimate_expected_usd is not None for s in summaries):
        _estimate_rows(add, summaries)
    return table


def _estimate_rows(add: Callable[..., None], summaries: list[RunSummary]) -> None:
    """The offline estimate made before each run sent anything, against its bill."""
    def each(amount: Decimal | None) -> str:
        return "n/a" if amount is None else usd(amount)

    def error(s: RunSummary) -> str:
        pct = s.estimate_error_pct
        return "n/a" if pct is None else f"{pct:+.1f}%"

    complete = all(s.estimate_expected_usd is not None and s.estimate_upper_usd is not None
                   for s in summaries)
    expected = sum((s.estimate_expected_usd or Decimal(0) for s in summaries), Decimal(0))
    upper = sum((s.estimate_upper_usd or Decimal(0) for s in summaries), Decimal(0))
    billed = sum((s.cost_usd for s in summaries), Decimal(0))
    add("estimate, expected", [each(s.estimate_expected_usd) for s in summaries],
        usd(expected) if complete else "")
    add("estimate, at most", [each(s.estimate_upper_usd) for s in summaries],
        usd(upper) if complete else "")
    add("expected vs billed", [error(s) for s in summaries],
        f"{(expected - billed) / billed * 100:+.1f}%" if complete and billed else "")


def reasons_table(summary: RunSummary, limit: int = 15) -> Table | None:
    """Rows that did not succeed, grouped by reason (row and field named in each)."""
    if not summary.reasons:
        return None
    table = Table(title=Text(f"{summary.run_key}: rows not succeeded"), title_justify="left")
    table.add_column("status")
    table.add_column("reason")
    table.add_column("rows", justify="right")
    for status, reason, count in summary.reasons[:limit]:
        table.add_row(Text(status), Text(reason), str(count))
    if len(summary.reasons) > limit:
        table.add_row("...", f"{len(summary.reasons) - limit} more reasons", "")
    return table


def print_runs(console: Console, summaries: list[RunSummary], title: str) -> None:
    """The cost table, each run's not-succeeded reasons, and where its results are."""
    console.print(cost_table(summaries, title))
    for summary in summaries:
        table = reasons_table(summary)
        if table is not None:
            console.print(table)
    for summary in summaries:
        # Not wrapped: the URL stays one piece to copy.
        console.print(Text(f"results of {summary.run_key}: "
                           f"{display_url(summary.results_url)}"), soft_wrap=True)


# --- run history (`lanewise runs`) ------------------------------------------------------

#: Columns of a run's row: (header, right-aligned).
RUN_COLUMNS = (("state", False), ("task", False), ("lane", False), ("window", False),
               ("rows", True), ("failed", True), ("cost", True), ("saving", True))
#: Spaces before each column: right-aligned figures need less to stay apart.
RUN_GAPS = (0, 2, 2, 2, 1, 1, 1, 1)
#: The state shown for an unfinished run that no process drives now (a rerun resumes it).
IDLE = "idle"


def money(amount: Decimal) -> str:
    """USD for narrow tables: six places below a dollar (sub-cent batch costs stay
    visible), cents from a dollar up."""
    if abs(amount) < 1:
        return f"${amount:.6f}" if amount >= 0 else f"-${-amount:.6f}"
    return f"${amount:,.2f}" if amount >= 0 else f"-${-amount:,.2f}"


def exact_usd(amount: Decimal) -> str:
    """USD to the picodollar, as JSON and CSV carry it (exact, never a float)."""
    return f"{amount:.12f}"


def prefect_ui_url(environ: Mapping[str, str] | None = None,
                   home: Path | None = None) -> str | None:
    """The Prefect UI's base URL, read without importing Prefect: PREFECT_UI_URL, else
    PREFECT_API_URL without its `/api`, from the environment and then from the active
    Prefect profile (`$PREFECT_HOME/profiles.toml`); else the UI of the stack `lanewise
    up` recorded for `home` (running now or not: its runs' pages are there when it is
    up). None when none of these says."""
    environ = os.environ if environ is None else environ
    for source in (environ, _active_profile(environ)):
        ui = source.get("PREFECT_UI_URL")
        if ui:
            return str(ui).rstrip("/")
        api = source.get("PREFECT_API_URL")
        if api:
            api = str(api).rstrip("/")
            return api.removesuffix("/api") if api.endswith("/api") else api
    if home is not None:
        from lanewise.errors import LanewiseError
        from lanewise.ops.stack_state import StackPaths, load_state

        try:
            state = load_state(StackPaths(Path(home).resolve()))
        except LanewiseError:  # an unreadable state file: no link rather than no list
            return None
        return state.ui_url if state is not None else None
    return None


def _active_profile(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings of the active Prefect profile ({} when there is none)."""
    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    name = environ.get("PREFECT_PROFILE") or profiles.get("active")
    section = profiles.get("profiles", {}).get(name or "", {})
    return section if isinstance(section, dict) else {}


def flow_run_url(flow_run_id: str | None, ui_url: str | None) -> str | None:
    """The Prefect UI page of a flow run (None without an id or a UI address)."""
    if not flow_run_id or not ui_url:
        return None
    return f"{ui_url}/runs/flow-run/{flow_run_id}"


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def window_text(start: str | None, end: str | None) -> str:
    """A run's date window: one day, `start..end`, or `all rows` (no date filter)."""
    if not start:
        return "all rows"
    return start if not end or end == start else f"{start}..{end}"


def run_record(overview: RunOverview, ui_url: str | None) -> dict[str, Any]:
    """One run as `lanewise runs` shows it, JSON-ready (money as exact strings)."""
    run = overview.run
    counts = dict(sorted(overview.counts.items()))
    rows = sum(counts.values())
    settled = sum(n for s, n in counts.items() if s in TERMINAL_ITEM_STATES)
    failed = settled - counts.get("succeeded", 0) - counts.get("cached", 0)
    state = run["status"]
    if state != "finished" and overview.lease is None:
        state = IDLE
    cost = from_picodollars(overview.cost_picodollars)
    live = from_picodollars(overview.live_cost_picodollars)
    return {
        "run_key": run["run_key"], "task": run["task"], "lane": run["lane"],
        "state": state, "status": run["status"],
        "provider": run["provider"], "model": run["model"],
        "window": window_text(run["window_start"], run["window_end"]),
        "window_start": run["window_start"], "window_end": run["window_end"],
        "rows": rows, "succeeded": counts.get("succeeded", 0), "failed": failed,
        "unfinished": rows - settled, "counts": counts,
        "cost_usd": exact_usd(cost), "live_cost_usd": exact_usd(live),
        "saving_usd": exact_usd(live - cost),
        "shards": overview.shards, "batches_sent": overview.sent_shards,
        "created_at": _iso(run["created_at"]), "finished_at": _iso(run["finished_at"]),
        "results_url": display_url(run["results_url"]),
        "prefect_flow_run_id": run["prefect_flow_run_id"],
        "prefect_flow_run_url": flow_run_url(run["prefect_flow_run_id"], ui_url),
        "driven_by": overview.lease["holder"] if overview.lease else None,
    }


def _run_cells(record: dict[str, Any]) -> list[list[str]]:
    """The row cells of one run; a date range's window takes two lines."""
    window = record["window"]
    window_lines = [f"{record['window_start']}..", record["window_end"]] \
        if ".." in window else [window]
    return [[record["state"]], [record["task"]], [record["lane"]], window_lines,
            [f"{record['rows']:,}"], [f"{record['failed']:,}"],
            [money(Decimal(record["cost_usd"]))], [money(Decimal(record["saving_usd"]))]]


def runs_view(records: list[dict[str, Any]]) -> list[Text]:
    """`lanewise runs` as lines: one table row per run (its window on two lines when it
    is a range) with, under it, the run key and creation time, the Prefect flow run's
    link and the results file. A row fits 80 columns up to 999,999 rows and $9,999.99
    a run (only a long URL may go past); user text goes in as plain Text (never read as
    markup or emoji)."""
    table = [_run_cells(r) for r in records]
    widths = [max([len(header), *(len(line) for cells in table for line in cells[i])])
              for i, (header, _) in enumerate(RUN_COLUMNS)]

    def line(cells: list[str], style: str = "") -> Text:
        text = ""
        for cell, width, (_, right), gap in zip(cells, widths, RUN_COLUMNS, RUN_GAPS,
                                                strict=True):
            text += " " * gap + (cell.rjust(width) if right else cell.ljust(width))
        return Text(text.rstrip(), style=style)

    lines = [line([h for h, _ in RUN_COLUMNS], "bold"),
             Text("-" * (sum(widths) + sum(RUN_GAPS)), style="dim")]
    for record, cells in zip(records, table, strict=True):
        for i in range(max(len(c) for c in cells)):
            lines.append(line([c[i] if i < len(c) else "" for c in cells],
                              "bold" if i == 0 else ""))
        created = (record["created_at"] or "")[:16].replace("T", " ")
        lines.append(Text(f"  run {record['run_key']}  created {created} UTC", style="dim"))
        if record["prefect_flow_run_url"]:
            lines.append(Text(f"  {record['prefect_flow_run_url']}", style="cyan"))
        elif record["prefect_flow_run_id"]:
            lines.append(Text(f"  prefect flow run {record['prefect_flow_run_id']} (no UI "
                              "address known)", style="dim"))
        if record["results_url"]:
            lines.append(Text(f"  results {record['results_url']}", style="dim"))
    if any(r["state"] == IDLE for r in records):
        lines.append(Text(f"{IDLE}: unfinished and no process drives it; running it again "
                          "resumes it", style="dim"))
    return lines
