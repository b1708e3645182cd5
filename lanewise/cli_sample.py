"""`lanewise sample-month`: replay a month of the sample support team's traffic.

Kept apart from cli.py so that `lanewise --help` imports none of what it needs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from rich.console import Console

console = Console()


def replay_with_progress(out: Console, days: int, end: Any = None, seed: int = 7,
                         volume: Any = None) -> Any:
    """Replay the sample month into the configured ledger, with a rich progress bar;
    returns the `ReplayReport`. `volume`: a `lanewise.traffic.month.Volume` (default:
    the sample team's)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lanewise.settings import get_settings
    from lanewise.traffic.month import month_days
    from lanewise.traffic.replay import MonthReplay

    settings = get_settings()
    month = month_days(end, days, seed, volume)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=out, transient=True) as progress:
        bar = progress.add_task(f"sample month {month[1].day}..{month[-1].day}",
                                total=days)

        def on_day(what: str, done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total, description=what)

        return MonthReplay(settings, settings.home / "sample-month", progress=on_day).run(month)


def describe(out: Console, report: Any, days: int) -> None:
    """One paragraph: what the replay did and what it paid."""
    made = ", ".join(f"{task} {count:,}" for task, count in sorted(report.by_task.items()))
    paid = report.cost_usd
    out.print(f"The sample month ({days} days, time compressed): {report.live_calls:,} live "
              f"calls and {report.runs} batch runs replayed in {report.seconds:.0f} s "
              f"({made or 'nothing new'}); paid live ${paid['live']:.4f}, batch "
              f"${paid['batch']:.4f}. Already in the ledger: {report.live_skipped:,} calls, "
              f"{report.runs_skipped} runs.")


@click.command("sample-month")
@click.option("--days", default=30, show_default=True, type=click.IntRange(7, 120),
              help="Length of the month, in days.")
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Its last day (UTC) [default: yesterday].")
@click.option("--seed", default=7, show_default=True, help="Same seed, same traffic.")
def sample_month(days: int, end: datetime | None, seed: int) -> None:
    """Replay a month of the sample support team's traffic through both lanes.

    Against the emulator only (refused when a provider has a real key); time compressed
    (each record is dated at the moment of the month it stands for); idempotent (a
    second replay adds nothing). Then `lanewise audit` has a month to review: see
    docs/routing.md for what the month holds and which flags it should raise.
    """
    report = replay_with_progress(console, days, end.date() if end else None, seed)
    describe(console, report, days)
