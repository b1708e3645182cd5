"""What lanewise spent, from the ledger: by day, task, lane or model, against what the same
usage would have cost all-live, as a table, CSV, JSON, a chart and a markdown report.

Costs are what both lanes billed (`Ledger.billed_costs`): batch items' cost
(`cost_picodollars`, priced from the usage the provider returned, `lanewise.pricing`),
whose all-live figure is the same usage at the live rates (`live_cost_picodollars`,
priced at the same time), and live calls the provider billed (lane `live`: their
all-live figure is what they paid). A batch cost is dated by the UTC day its batch
ended (`shards.ended_at`, else when it was submitted), as reconciliation dates them
(`lanewise.reconcile.ledger_costs`), so a day's figure here is the day the provider
bills it; a live call by when it was made. Requests are answered (billed) requests;
live calls answered from the cache or deferred cost nothing and are not counted.

`cost_chart_png` and `cost_history_markdown` are what the nightly flow publishes as
Prefect artifacts; the CLI (`lanewise costs`) prints `cost_table`, `to_csv`, `to_json`
and writes the chart.

Budgets (`lanewise costs --budgets`, and under the table and in the JSON whenever the
catalog sets any): each budgeted task's daily and monthly budget, per-run ceiling, and
what it spent this UTC day and month in both lanes (`lanewise.budgets.budget_status`),
whatever period the cost rows cover: a budget is about today and this month.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from lanewise.pricing import from_picodollars
from lanewise.reporting import exact_usd, money

if TYPE_CHECKING:
    from lanewise.budgets import BudgetStatus
    from lanewise.ledger import Ledger
    from lanewise.ledger.history import BilledCost

GROUPINGS = ("day", "task", "lane", "model")


@dataclass(frozen=True)
class CostRow:
    """Requests and cost of one day, task, lane or model (`key`)."""

    key: str
    requests: int
    cost_picodollars: int
    live_cost_picodollars: int

    @property
    def cost_usd(self) -> Decimal:
        """What was billed."""
        return from_picodollars(self.cost_picodollars)

    @property
    def live_cost_usd(self) -> Decimal:
        """What the same usage would have cost on the live API."""
        return from_picodollars(self.live_cost_picodollars)

    @property
    def saving_usd(self) -> Decimal:
        """All-live cost minus what was billed."""
        return self.live_cost_usd - self.cost_usd

    def record(self, by: str) -> dict[str, Any]:
        """The row as JSON and CSV carry it (money as exact decimal strings)."""
        return {by: self.key, "requests": self.requests, "cost_usd": exact_usd(self.cost_usd),
                "live_cost_usd": exact_usd(self.live_cost_usd),
                "saving_usd": exact_usd(self.saving_usd)}


def day_of(epoch: float) -> date:
    """The UTC day of a timestamp (the day a batch's cost is billed)."""
    return datetime.fromtimestamp(epoch, UTC).date()


def _epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _key(cost: BilledCost, by: str) -> str:
    if by == "day":
        return day_of(cost.at).isoformat()
    return {"task": cost.task, "lane": cost.lane, "model": cost.model}[by]


def cost_rows(ledger: Ledger, by: str, since: date | None = None,
              until: date | None = None, *, task: str | None = None,
              lane: str | None = None) -> list[CostRow]:
    """Billed requests and cost grouped `by` day, task, lane or model, for the UTC days
    `since`..`until` (inclusive; open ends when None), of one task and lane when given.
    Days in date order; the other groupings by cost, largest first."""
    if by not in GROUPINGS:
        raise ValueError(f"group by one of {', '.join(GROUPINGS)}, not {by!r}")
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for cost in ledger.billed_costs(_epoch(since) if since else None,
                                    _epoch(until + timedelta(days=1)) if until else None):
        if (task and cost.task != task) or (lane and cost.lane != lane):
            continue
        total = totals[_key(cost, by)]
        total[0] += cost.requests
        total[1] += cost.cost_picodollars
        total[2] += cost.live_cost_picodollars
    rows = [CostRow(key, *values) for key, values in totals.items()]
    if by == "day":
        return sorted(rows, key=lambda r: r.key)
    return sorted(rows, key=lambda r: (-r.cost_picodollars, r.key))


def total_of(rows: list[CostRow]) -> CostRow:
    """All rows added up."""
    return CostRow("total", sum(r.requests for r in rows),
                   sum(r.cost_picodollars for r in rows),
                   sum(r.live_cost_picodollars for r in rows))


def daily_series(ledger: Ledger, since: date | None = None,
                 until: date | None = None, **only: str | None) -> list[CostRow]:
    """One row per UTC day from `since` (default: the first billed day) to `until`
    (default: the last billed day, or today when `since` is given), days without
    traffic at zero, so a chart's time axis has no gaps. `only`: task= and lane= as
    for `cost_rows`."""
    rows = {r.key: r for r in cost_rows(ledger, "day", since, until, **only)}
    if not rows and since is None:
        return []
    first = since or date.fromisoformat(min(rows))
    last = until or max([date.fromisoformat(k) for k in rows]
                        + ([datetime.now(UTC).date()] if since else []))
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return [rows.get(d.isoformat(), CostRow(d.isoformat(), 0, 0, 0)) for d in days]


# --- renderings -----------------------------------------------------------------------


def cost_table(rows: list[CostRow], by: str, title: str) -> Table:
    """The rows as a rich table with a total row (keys as plain text, never markup)."""
    table = Table(title=Text(title), title_justify="left", caption_justify="left",
                  caption=Text("all-live: the same usage at the live API's prices; days are "
                               "UTC days the provider's batches ended (live calls: the "
                               "day they were made)"))
    table.add_column(by)
    for header in ("requests", "cost", "all-live", "saving"):
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(Text(row.key), f"{row.requests:,}", money(row.cost_usd),
                      money(row.live_cost_usd), money(row.saving_usd))
    total = total_of(rows)
    table.add_section()
    table.add_row("total", f"{total.requests:,}", money(total.cost_usd),
                  money(total.live_cost_usd), money(total.saving_usd), style="bold")
    return table


def to_csv(rows: list[CostRow], by: str) -> str:
    """The rows as CSV (a header, then one line per row; money exact, in USD)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[by, "requests", "cost_usd", "live_cost_usd",
                                             "saving_usd"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.record(by) for row in rows)
    return out.getvalue()


def to_json(rows: list[CostRow], by: str, since: date | None,
            budgets: list[BudgetStatus] | None = None) -> str:
    """The rows and their total as JSON (money as exact decimal strings, in USD); with
    `budgets`, those too (`budget_records`)."""
    found: dict[str, Any] = {"by": by, "since": since.isoformat() if since else None,
                             "dated_by": "UTC day the provider's batch ended; a live "
                             "call's, the UTC day it was made",
                             "rows": [row.record(by) for row in rows],
                             "total": {k: v for k, v in total_of(rows).record(by).items()
                                       if k != by}}
    if budgets:
        found["budgets"] = budget_records(budgets)
    return json.dumps(found, indent=2)


# --- budgets --------------------------------------------------------------------------

#: A budget record's fields, in CSV order.
BUDGET_FIELDS = ("task", "daily_budget_usd", "spent_today_usd", "left_today_usd",
                 "monthly_budget_usd", "spent_month_usd", "left_month_usd",
                 "run_ceiling_usd")


def _exact(amount: Decimal | None) -> str | None:
    return None if amount is None else exact_usd(amount)


def budget_records(budgets: list[BudgetStatus]) -> list[dict[str, Any]]:
    """Each task's budgets and spend this UTC day and month, JSON-ready (money exact;
    None where the task has no such budget; left is negative when overspent)."""
    return [{"task": b.task, "daily_budget_usd": _exact(b.daily_usd),
             "spent_today_usd": exact_usd(b.spent_today_usd),
             "left_today_usd": _exact(b.daily_left_usd),
             "monthly_budget_usd": _exact(b.monthly_usd),
             "spent_month_usd": exact_usd(b.spent_month_usd),
             "left_month_usd": _exact(b.monthly_left_usd),
             "run_ceiling_usd": _exact(b.run_ceiling_usd)} for b in budgets]


def budgets_csv(budgets: list[BudgetStatus]) -> str:
    """The budget records as CSV (empty cells where a task has no such budget)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=BUDGET_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(budget_records(budgets))
    return out.getvalue()


def budget_table(budgets: list[BudgetStatus], title: str) -> Table:
    """Each budgeted task: spent today against its daily budget, this month against its
    monthly one, and its per-run ceiling; a budget spent shows in red, marked "spent"."""
    table = Table(title=Text(title), title_justify="left", caption_justify="left",
                  caption=Text("both lanes together; a spent budget stops the task's live "
                               "calls from paying, and a batch run is refused when its "
                               "estimate passes what is left or the per-run ceiling"))
    table.add_column("task")
    for header in ("today", "daily", "month", "monthly", "per run"):
        table.add_column(header, justify="right")
    for status in budgets:
        cells = []
        for spent, limit in ((status.spent_today_usd, status.daily_usd),
                             (status.spent_month_usd, status.monthly_usd)):
            spent_out = limit is not None and spent >= limit
            # "spent" in words too: a pipe or a plain terminal shows no colour.
            cells += [Text(money(spent) + (" spent" if spent_out else ""),
                           style="bold red" if spent_out else ""),
                      Text("-" if limit is None else money(limit))]
        ceiling = "-" if status.run_ceiling_usd is None else money(status.run_ceiling_usd)
        table.add_row(Text(status.task), *cells, Text(ceiling))
    return table


#: The chart's colours: the all-live bar behind, the billed bar in front of it.
LIVE_COLOUR = "#e8a598"
BILLED_COLOUR = "#2471a3"


def cost_chart_png(ledger: Ledger, since: date | None = None,
                   until: date | None = None, **only: str | None) -> bytes:
    """A PNG chart of daily billed cost against the all-live cost of the same traffic,
    one pair of bars per UTC day (`daily_series`: days without traffic at zero), of
    one task and lane when `only` says (task=, lane=); the nightly flow publishes it
    as an artifact.

    Drawn with matplotlib's Agg backend on its own figure (no display, no pyplot
    state), so it is safe to call from any thread or worker.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, DateFormatter
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    series = daily_series(ledger, since, until, **only)
    days = [date.fromisoformat(r.key) for r in series]
    figure = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if series:
        axes.bar(days, [float(r.live_cost_usd) for r in series], width=0.8,
                 color=LIVE_COLOUR)
        axes.bar(days, [float(r.cost_usd) for r in series], width=0.5, color=BILLED_COLOUR)
        axes.legend(handles=[Patch(color=LIVE_COLOUR, label="same traffic all-live"),
                             Patch(color=BILLED_COLOUR, label="billed (lanewise)")],
                    loc="upper left")
        total = total_of(series)
        # "$" starts mathtext in matplotlib: escaped.
        axes.set_title(f"LLM cost per UTC day, {days[0]} to {days[-1]}: "
                       f"{money(total.cost_usd)} billed, {money(total.saving_usd)} saved"
                       .replace("$", r"\$"))
        axes.xaxis.set_major_locator(AutoDateLocator(minticks=2, maxticks=10))
        axes.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
        axes.set_xlim(days[0] - timedelta(days=1), days[-1] + timedelta(days=1))
    else:
        axes.set_title("LLM cost per UTC day: nothing billed in this period")
        axes.text(0.5, 0.5, "no billed requests", ha="center", va="center",
                  transform=axes.transAxes)
    axes.set_ylabel("USD")
    axes.set_ylim(bottom=0)
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"\\${value:,.4g}"))
    axes.grid(axis="y", alpha=0.3)
    figure.autofmt_xdate()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def cost_history_markdown(ledger: Ledger, since: date | None = None,
                          until: date | None = None, *, chart: bool = True,
                          **only: str | None) -> str:
    """A markdown cost history for a Prefect artifact: per UTC day and per task, billed
    against all-live, with the chart embedded as a PNG data URI when `chart` (the
    Prefect UI renders those). `only` (task=, lane=) narrows it to one task and lane.
    Publish it under a stable key (one per task and lane, or one for all) so the UI
    stacks it into a history across nights."""
    import base64

    days = cost_rows(ledger, "day", since, until, **only)
    tasks = cost_rows(ledger, "task", since, until, **only)
    total = total_of(days)
    period = f"since {since}" if since else "all time"
    scope = ", ".join(f"{name} {value}" for name, value in only.items() if value)
    lines = [f"# LLM cost{f' of {_cell(scope)}' if scope else ''}, {period}", "",
             f"Billed **{money(total.cost_usd)}** for {total.requests:,} requests; the "
             f"same traffic all-live: {money(total.live_cost_usd)}; saved "
             f"**{money(total.saving_usd)}**. Days are UTC days the provider's batches "
             "ended.", ""]
    if chart:
        encoded = base64.b64encode(cost_chart_png(ledger, since, until, **only)).decode()
        lines += [f"![daily cost](data:image/png;base64,{encoded})", ""]
    for title, by, rows in (("By day", "day", days), ("By task", "task", tasks)):
        lines += [f"## {title}", "", f"| {by} | requests | cost | all-live | saving |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {_cell(r.key)} | {r.requests:,} | {money(r.cost_usd)} | "
                  f"{money(r.live_cost_usd)} | {money(r.saving_usd)} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "/").replace("\n", " ")
