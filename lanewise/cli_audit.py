"""`lanewise audit`: the routing review from the command line (lanewise/audit).

Opens the configured ledger and never creates one; imports no SDK, pandas or Prefect.
"""

from __future__ import annotations

from datetime import datetime

import click
from rich.console import Console


@click.command()
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="First UTC day of the window; it ends today, or after --days days.")
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Days in the window [default: 30 complete days, ending yesterday].")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print CSV (one row per task; flags in the last two columns).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (tasks, flags, totals).")
def audit(since: datetime | None, days: int | None, as_csv: bool, as_json: bool) -> None:
    """Review every catalog task's routing from its measured traffic.

    One row per task: who waits and the tolerated delay, the lane now (the measured
    split) and the advised one, volume per day against the catalog's, waits (p50 and
    p95), cost per month now and what the advised lane saves or adds, the budget used;
    then the flags (rush prices, waited-on work in batch, duplicate paid requests, spend
    spikes, a stale catalog). The table fits the terminal's width: wide, it adds each
    task's description and owner and the other lane's cost; narrow, it drops the waits,
    the budget and the volume. --csv and --json carry every figure, the reasons and
    the spend against each budget.
    The window is the 30 complete UTC days ending yesterday unless --since / --days
    say otherwise.
    Money in USD.
    """
    from lanewise.audit import run_audit
    from lanewise.audit.render import audit_table, to_csv, to_json

    if as_csv and as_json:
        raise click.UsageError("--csv and --json exclude each other")
    found = run_audit(since=since.date() if since else None, days=days)
    if as_csv:
        click.echo(to_csv(found), nl=False)
    elif as_json:
        click.echo(to_json(found))
    else:
        Console().print(audit_table(found))
