"""Tables people can read at a glance: run costs and run history, rendered with rich."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from rich.console import Console

    from lanewise.batch.results import RunSummary


def usd(amount: Decimal) -> str:
    """Dollars with enough places to see sub-cent batch costs."""
    return f"${amount:,.6f}"


def cost_table(summaries: list[RunSummary], title: str = "What the runs cost") -> Table:
    """One column per run (and a total): rows by outcome, tokens, batch cost, live, saving."""
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for s in summaries:
        table.add_column(s.run_key, justify="right", overflow="fold")
    show_total = len(summaries) > 1
    if show_total:
        table.add_column("total", justify="right", style="bold")

    def add(label: str, values: list, total: str = "", **style: str) -> None:
        table.add_row(label, *[str(v) for v in values], *([total] if show_total else []), **style)

    add("provider / model", [f"{s.provider} / {s.model}" for s in summaries])
    add("rows", [f"{s.rows:,}" for s in summaries], f"{sum(s.rows for s in summaries):,}")
    for status, label in (("succeeded", "succeeded"), ("invalid_output", "invalid output"),
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
    return table


def reasons_table(summary: RunSummary, limit: int = 15) -> Table | None:
    """Rows that did not succeed, grouped by reason (row and field named in each)."""
    if not summary.reasons:
        return None
    table = Table(title=f"{summary.run_key}: rows not succeeded", title_justify="left")
    table.add_column("status")
    table.add_column("reason")
    table.add_column("rows", justify="right")
    for status, reason, count in summary.reasons[:limit]:
        table.add_row(status, reason, str(count))
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
        console.print(f"results of {summary.run_key}: {summary.results_url}")
