"""`lanewise runs` (history, `runs forget`) and `lanewise costs`: the ledger's history from
the command line.

Read commands open the configured ledger and never create one (`existing_ledger`);
like `lanewise --help`, `lanewise runs` imports no SDK, pandas or Prefect. User text
(run keys, task names, URLs) is printed as plain Text, never read as rich markup.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from lanewise.budgets import BudgetStatus
    from lanewise.ledger import Ledger

console = Console()


def _ledger() -> Ledger:
    """The configured ledger, never a new one (a LedgerError says where it looked)."""
    from lanewise.ledger import existing_ledger
    from lanewise.settings import get_settings

    return existing_ledger(get_settings())


def _where(ledger: Ledger) -> str:
    """Where the ledger is, password hidden."""
    url = ledger.engine.url
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


@click.group(invoke_without_command=True)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many recent runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.pass_context
def runs(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Recent runs, newest first, one per row: state, task, lane, window, rows, failed,
    cost, saving, and the link to the Prefect flow run. `runs forget RUN_KEY` removes a
    run that never sent anything."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from lanewise.reporting import prefect_ui_url, run_record, runs_view
    from lanewise.settings import get_settings

    ledger = _ledger()
    ui_url = prefect_ui_url(home=get_settings().home)
    records = [run_record(overview, ui_url) for overview in ledger.run_overviews(limit)]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        console.print(Text(f"No runs in the ledger at {_where(ledger)} yet."), soft_wrap=True)
        return
    title = f"Recent runs, newest first ({len(records)} shown; costs in USD)"
    console.print(Text(title, style="bold"), soft_wrap=True)
    console.print(Text(f"ledger {_where(ledger)}", style="dim"), soft_wrap=True)
    for line in runs_view(records):
        console.print(line, soft_wrap=True)


@runs.command()
@click.argument("run_key")
def forget(run_key: str) -> None:
    """Remove a run that never sent anything (its items, shards and planned shard files),
    so its run key starts afresh. Refused, saying why, once a batch was sent."""
    from lanewise.settings import get_settings
    from lanewise.storage import prune_empty_folders, remove_files

    forgotten = _ledger().forget_run(run_key)
    files = [*forgotten.shard_urls, *([forgotten.results_url] if forgotten.results_url
                                      else [])]
    removed = 0
    if files:
        options = get_settings().with_blocks().storage_options()
        removed = remove_files(files, **options)
        shard_folders = {url.rsplit("/", 1)[0] for url in forgotten.shard_urls}
        run_folders = {url.rsplit("/", 1)[0] for url in shard_folders}
        if forgotten.results_url:
            run_folders.add(forgotten.results_url.rsplit("/", 1)[0])
        prune_empty_folders(sorted(shard_folders | run_folders))
    console.print(Text(f"forgot run {run_key}: {forgotten.items:,} item(s), "
                       f"{forgotten.shards} planned shard(s), {removed} file(s) removed; "
                       "nothing had been sent"), soft_wrap=True)


def _budgets(ledger: Ledger) -> list[BudgetStatus]:
    """The catalog's budgeted tasks with their spend this UTC day and month; none (and a
    note on stderr) when the catalog cannot be read, so the costs still show."""
    from lanewise.budgets import budget_statuses
    from lanewise.catalog import load_catalog
    from lanewise.errors import LanewiseError
    from lanewise.settings import get_settings

    try:
        catalog = load_catalog(get_settings().catalog_path)
    except LanewiseError as exc:
        Console(stderr=True).print(Text(f"budgets not shown: {exc}"), soft_wrap=True)
        return []
    return list(budget_statuses(ledger, catalog).values())


@click.command()
@click.option("--by", type=click.Choice(["day", "task", "lane", "model"]), default="day",
              show_default=True, help="Group costs by UTC day, task, lane or model.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Only costs from this UTC day on [default: all].")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False, writable=True),
              default=None, help="Also write a PNG chart of daily cost against all-live.")
@click.option("--budgets", "budgets_only", is_flag=True,
              help="Show only the tasks' budgets and what each spent this UTC day and "
              "month (as a table, or with --csv / --json).")
def costs(by: str, since: datetime | None, as_csv: bool, as_json: bool,
          chart_path: str | None, budgets_only: bool) -> None:
    """What the ledger's billed requests cost (both lanes), against the same usage
    all-live.

    Batch costs are dated by the UTC day the provider's batch ended, as the provider
    bills them (and as `lanewise reconcile` compares them); live calls by the day they
    were made. Money in USD: exact in CSV and
    JSON, rounded in the table (six places below a dollar, cents above).

    Tasks with a budget in the catalog are listed under the table (and in the JSON, as
    `budgets`): their daily and monthly budgets and per-run ceiling, and what each spent
    this UTC day and month in both lanes, whatever --since says. --budgets shows only
    those, also as CSV.
    """
    from pathlib import Path

    from lanewise.costs import (
        budget_records,
        budget_table,
        budgets_csv,
        cost_chart_png,
        cost_rows,
        cost_table,
        to_csv,
        to_json,
    )

    if as_csv and as_json:
        raise click.UsageError("--csv and --json exclude each other")
    if budgets_only and chart_path:
        raise click.UsageError("--budgets shows the budgets alone; --chart goes without it")
    ledger = _ledger()
    day = since.date() if since else None
    budgets = _budgets(ledger) if budgets_only or not as_csv else []
    budget_title = "Budgets (USD): what each task spent this UTC day and month"
    if budgets_only:
        if as_csv:
            click.echo(budgets_csv(budgets), nl=False)
        elif as_json:
            import json

            click.echo(json.dumps({"budgets": budget_records(budgets)}, indent=2))
        elif budgets:
            console.print(budget_table(budgets, budget_title))
        else:
            console.print(Text("No task of the catalog has a budget."))
        return
    rows = cost_rows(ledger, by, day)
    if as_csv:
        click.echo(to_csv(rows, by), nl=False)
    elif as_json:
        click.echo(to_json(rows, by, day, budgets))
    else:
        period = f"since {day}" if day else "all time"
        console.print(cost_table(rows, by, f"Cost by {by}, {period} (USD)"))
        if budgets:
            console.print(budget_table(budgets, budget_title))
    if chart_path:
        Path(chart_path).write_bytes(cost_chart_png(ledger, day))
        # With --csv or --json, stdout carries the data alone.
        out = Console(stderr=True) if as_csv or as_json else console
        out.print(Text(f"chart written to {Path(chart_path).resolve()}"), soft_wrap=True)
