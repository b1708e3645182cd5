"""The audit's renderings: a rich table with the flags below it, CSV (the one-page
spreadsheet: one row per task, its flags in two columns), JSON (tasks, flags and totals,
numbers as numbers) and markdown (the nightly Prefect artifact).

All four print the rows' figures as `rows.py` rounded them: money to the micro-dollar
in CSV and JSON, and as `units.usd_text` shows it ("$1,234", "$41.20", "$0.0874") in the
table and markdown. The table fits the width it is printed at (`LAYOUTS`): one line a
task with its description and owner when wide, fewer columns when narrow; a task's name
and a figure are never cut.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from lanewise.audit.rows import Audit, TaskRow
from lanewise.audit.units import count, duration, usd_number, usd_text

DATED_BY = ("batch items by their batch's end, live calls by when they were made; "
            "per month = per day x 30")
#: The CSV's two flag columns: the kinds, and their sentences (both joined by "; ").
FLAG_COLUMNS = ("flags", "flag_notes")


def header(audit: Audit) -> str:
    """The audit's title line, stating the window."""
    return f"Routing audit, {audit.window.describe(audit.today)}"


def headline(audit: Audit) -> str:
    """Tasks, monthly spend now and in the recommended lanes, and the flag count."""
    totals = audit.totals()
    change = totals["change_per_month_usd"]
    moved = (f"saves {usd_text(-change)}/month" if change < 0 else
             f"adds {usd_text(change)}/month" if change > 0 else "changes nothing")
    return (f"{len(audit.rows)} tasks; spend {usd_text(totals['cost_per_month_usd'])}/month "
            f"now, {usd_text(totals['recommended_per_month_usd'])}/month in the recommended "
            f"lanes ({moved}); {len(audit.flags)} flag(s)")


def delay(hours: float | None) -> str:
    """A tolerated delay for reading."""
    return "-" if hours is None else f"{hours:g} h"


def yes_no(value: bool | None) -> str:
    """yes / no / - (not in the catalog)."""
    return "-" if value is None else "yes" if value else "no"


def volume(row: TaskRow) -> str:
    """Measured / declared requests per day."""
    declared = "-" if row.expected_per_day is None else count(row.expected_per_day)
    return f"{count(row.per_day)} / {declared}"


def waits(row: TaskRow) -> list[str]:
    """The measured waits, one line per lane that has some (named when both have)."""
    found = [(lane, f"{duration(p50)} / {duration(p95)}") for lane, p50, p95 in (
        ("live", row.live_wait_p50_s, row.live_wait_p95_s),
        ("batch", row.batch_wait_p50_s, row.batch_wait_p95_s))
        if p50 is not None and p95 is not None]
    if len(found) == 1:
        return [found[0][1]]
    return [f"{lane} {shown}" for lane, shown in found] or ["-"]


def majority(row: TaskRow) -> str | None:
    """The lane most of the task's traffic ran in (None: no traffic)."""
    if row.batch_share is None:
        return None
    return "batch" if row.batch_share >= 0.5 else "live"


def catalog_note(row: TaskRow) -> list[str]:
    """The catalog's lane, when most of the measured traffic ran elsewhere (or none)."""
    if row.catalog_lane and majority(row) != row.catalog_lane:
        return [f"catalog: {row.catalog_lane}"]
    return []


def status(row: TaskRow) -> Text:
    """The share used of the task's most used budget ("month 28%"; "-": no budget), red
    from 100%."""
    used = [(spent / limit, name) for name, spent, limit in (
        ("day", row.spent_today_usd, row.budget_daily_usd),
        ("month", row.spent_this_month_usd, row.budget_monthly_usd)) if limit]
    if not used:
        return Text("-")
    share, name = max(used)
    shown = "<1%" if 0 < share < Decimal("0.005") else f"{share:.0%}"
    return Text(f"{name} {shown}", style="bold red" if share >= 1 else "")


def change(row: TaskRow) -> Text:
    """What moving to the recommended lane changes per month: "-$0.0865" (saves, green),
    "+$0.0320" (adds, yellow), "$0" (already there), "n/a" (cannot be priced)."""
    delta = row.change_per_month_usd
    if delta is None:
        return Text("n/a" if row.recommended_lane else "-")
    if usd_text(abs(delta)) in ("$0", "<$0.0001"):
        return Text("$0")
    if delta < 0:
        return Text(usd_text(delta), style="green")
    return Text(f"+{usd_text(delta)}", style="yellow")


def other_lane(row: TaskRow) -> str:
    """All the traffic in the lane opposite the one most of it ran in, that lane named
    ("all batch $0.0865"; for one-lane traffic, what JSON calls the other lane)."""
    lane = {"batch": "live", "live": "batch"}.get(majority(row) or "")
    if lane is None:
        return "-"
    amount = row.all_live_per_month_usd if lane == "live" else row.all_batch_per_month_usd
    return "n/a" if amount is None else f"all {lane} {usd_text(amount)}"


def lanes(row: TaskRow, stacked: bool) -> Text:
    """Where the traffic runs now, then "-> " the recommended lane when that is a move
    (bold) or "keep"; the catalog's lane on a line of its own when it differs (the
    advice follows it when there is no traffic: it is about the catalog's lane).
    `stacked`: a lane a line."""
    now = row.lane_now.split(" / ") if stacked else [row.lane_now]
    notes = catalog_note(row)
    idle = majority(row) is None
    shown = Text("\n".join([*now, *notes] if idle else now))
    current = row.catalog_lane if idle else row.lane_now
    if row.recommended_lane and row.recommended_lane == current:
        shown.append("\nkeep" if stacked else ", keep", style="dim")
    elif row.recommended_lane:
        shown.append("\n-> " if stacked else " -> ")
        shown.append(row.recommended_lane, style="bold")
    if notes and not idle:
        shown.append("\n" + "\n".join(notes), style="dim")
    return shown


def spent(row: TaskRow) -> str:
    """Spent today and this month, each of its budget when one is set (markdown)."""
    return "\n".join(
        f"{name} {usd_text(amount)}" + (f" of {usd_text(limit)}" if limit else "")
        for name, amount, limit in (("today", row.spent_today_usd, row.budget_daily_usd),
                                    ("month", row.spent_this_month_usd,
                                     row.budget_monthly_usd)))


@dataclass(frozen=True)
class Column:
    """One column of a layout: its header, how it shows a row, and how it sits."""

    header: str
    cell: Callable[[TaskRow], str | Text]
    right: bool = False
    #: Wraps between words (the flags); every other column is as wide as its widest
    #: line, so no figure is ever cut.
    wraps: bool = False
    #: Takes the room left over and cuts its lines with an ellipsis (the description).
    stretch: bool = False


def _person(row: TaskRow, sep: str) -> str:
    if row.person_waits is None:
        return "-"
    return f"{yes_no(row.person_waits)}{sep}{delay(row.max_delay_hours)}"


TASK = Column("task", lambda row: Text(row.task, style="bold"))
DESCRIPTION = Column("description", lambda row: Text(" ".join(row.description.split()),
                                                      style="dim"), stretch=True)
OWNER = Column("owner", lambda row: row.owner or "-")
WHO = Column("person\nwaits,\nmax delay", lambda row: _person(row, ", "))
WHO_STACKED = Column(WHO.header, lambda row: _person(row, "\n"))
LANE = Column("lane now\n-> advised", lambda row: lanes(row, stacked=False))
LANE_STACKED = Column(LANE.header, lambda row: lanes(row, stacked=True))
VOLUME = Column("per day\nmeasured\n/ catalog", volume, right=True)
WAIT = Column("wait\np50 / p95", lambda row: "\n".join(waits(row)))
NOW = Column("now\n/month", lambda row: usd_text(row.cost_per_month_usd), right=True)
OTHER = Column("other lane\n/month", other_lane, right=True)
CHANGE = Column("move to\nadvised\n/month", change, right=True)
BUDGET = Column("budget\nused", status)
FLAGS = Column("flags", lambda row: Text(", ".join(row.flags), style="yellow"), wraps=True)
FLAGS_STACKED = Column("flags", lambda row: Text("\n".join(row.flags), style="yellow"))
#: The layouts, richest first: the table takes the first that fits the width it is
#: printed at. The wide ones (one line a task, with its description and owner) drop the
#: other lane's cost first; below them cells stack on two lines, then the waits, the
#: budget, the volume and who waits go, rather than a figure being cut.
LAYOUTS: tuple[tuple[Column, ...], ...] = (
    (TASK, DESCRIPTION, OWNER, WHO, LANE, VOLUME, WAIT, NOW, OTHER, CHANGE, BUDGET, FLAGS),
    (TASK, DESCRIPTION, OWNER, WHO, LANE, VOLUME, WAIT, NOW, CHANGE, BUDGET, FLAGS),
    (TASK, WHO, LANE, VOLUME, WAIT, NOW, CHANGE, BUDGET, FLAGS),
    (TASK, WHO_STACKED, LANE_STACKED, VOLUME, WAIT, NOW, CHANGE, BUDGET, FLAGS_STACKED),
    (TASK, WHO_STACKED, LANE_STACKED, VOLUME, NOW, CHANGE, BUDGET, FLAGS_STACKED),
    (TASK, WHO_STACKED, LANE_STACKED, VOLUME, NOW, CHANGE, FLAGS_STACKED),
    (TASK, WHO_STACKED, LANE_STACKED, NOW, CHANGE, FLAGS_STACKED),
    (TASK, LANE_STACKED, NOW, CHANGE, FLAGS_STACKED),
)
#: The least room the description gets: less says too little to be worth a layout.
DESCRIPTION_WIDTH = 24


def _plain_table(title: Text, **options: Any) -> Table:
    """A table without borders: a rule under the header, two spaces between columns."""
    return Table(title=title, title_justify="left", caption_justify="left",
                 box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0), **options)


def _lines_width(cell: str | Text) -> int:
    return max((cell_len(line) for line in str(cell).splitlines()), default=0)


def _task_table(audit: Audit, columns: tuple[Column, ...]) -> Table:
    cells = [[column.cell(row) for row in audit.rows] for column in columns]
    table = _plain_table(Text(header(audit)),
                         caption=Text(f"{headline(audit)}. Dated: {DATED_BY}."),
                         # A blank line between rows when any takes two lines.
                         show_lines=any("\n" in str(cell) for shown in cells for cell in shown))
    for column, shown in zip(columns, cells, strict=True):
        widest = max(_lines_width(column.header), *map(_lines_width, shown), 0)
        # Figures never wrap nor shrink: the column is as wide as its widest line (were
        # it ever squeezed, it would fold, not hide digits behind an ellipsis). The
        # description's starts at DESCRIPTION_WIDTH; `TaskTable` widens it to the room left.
        least = min(DESCRIPTION_WIDTH, widest) if column.stretch else widest
        table.add_column(column.header, justify="right" if column.right else "left",
                         no_wrap=not column.wraps,
                         overflow="ellipsis" if column.stretch else "fold",
                         min_width=None if column.wraps else least,
                         width=least if column.stretch else None,
                         max_width=widest if column.stretch else None)
    for row in zip(*cells, strict=True):
        table.add_row(*row)
    return table


#: A width no table reaches, to measure one without the console's width cutting it.
UNBOUNDED = 10_000


class TaskTable:
    """The audit's task table, laid out for the width it is printed at."""

    def __init__(self, audit: Audit) -> None:
        self.audit = audit

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """The richest layout whose narrowest rendering fits the width (the last one
        when none does), its description widened by what the other columns leave."""
        unbounded = options.update_width(UNBOUNDED)  # else the measure is cut to the width
        for columns in LAYOUTS:
            table = _task_table(self.audit, columns)
            measured = Measurement.get(console, unbounded, table)
            if measured.minimum <= options.max_width:
                break
        room = max(0, options.max_width - measured.maximum)
        for column in table.columns:
            if column.width is not None and column.max_width is not None:
                column.width = min(column.max_width, column.width + room)
        yield table


def reasons_table(audit: Audit) -> Table:
    """Each task's recommended lane and its one plain reason (the sentence wraps)."""
    reasons = _plain_table(Text("Why"))
    reasons.add_column("task", no_wrap=True)
    reasons.add_column("lane", no_wrap=True)
    reasons.add_column("reason")  # the one column that wraps
    for row in audit.rows:
        reasons.add_row(row.task, row.recommended_lane or "-", Text(row.reason))
    return reasons


def audit_table(audit: Audit) -> Group:
    """The audit as a rich table (one row per task, as many columns as the width holds:
    `LAYOUTS`), each task's recommendation and reason, and the flags listed below."""
    parts: list[Any] = [TaskTable(audit), Text(), reasons_table(audit)]
    if not audit.flags:
        return Group(*parts, Text("\nNo flags.", style="green"))
    flags = _plain_table(Text("Flags"))
    flags.add_column("kind", style="yellow", no_wrap=True)
    flags.add_column("task(s)", no_wrap=True)
    flags.add_column("finding")  # the one column that wraps
    for flag in audit.flags:
        flags.add_row(flag.kind, Text("\n".join(flag.tasks)), Text(flag.sentence))
    return Group(*parts, Text(), flags)


def _cell(value: Any) -> Any:
    """A record value as CSV writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, tuple | list):
        return "; ".join(value)
    return value


def to_csv(audit: Audit) -> str:
    """One row per task with every figure, the flags' kinds and sentences last."""
    out = io.StringIO()
    fields = [*TaskRow.record_fields(), FLAG_COLUMNS[1]]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in audit.rows:
        notes = [f.sentence for f in audit.flags if row.task in f.tasks]
        writer.writerow({**{k: _cell(v) for k, v in row.record().items()},
                         FLAG_COLUMNS[1]: "; ".join(notes)})
    return out.getvalue()


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return usd_number(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def to_json(audit: Audit) -> str:
    """The window, totals, tasks and flags as JSON (money as numbers of USD)."""
    return json.dumps({
        "window": {"first": audit.window.first.isoformat(),
                   "last": audit.window.last.isoformat(), "days": audit.window.days,
                   "today": audit.today.isoformat(), "dated_by": DATED_BY},
        "totals": {k: usd_number(v) for k, v in audit.totals().items()},
        "tasks": [{k: _number(v) for k, v in row.record().items()} for row in audit.rows],
        "flags": [flag.record() for flag in audit.flags]}, indent=2)


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "/").replace("\n", " ")


def to_markdown(audit: Audit) -> str:
    """The audit as markdown: header, totals, the task table, then the flags."""
    lines = [f"# {header(audit)}", "", f"{headline(audit)}.", "", f"Dated: {DATED_BY}.", "",
             "| task | owner | person waits | max delay | lane now | per day (measured / "
             "declared) | wait p50 / p95 | cost/day | cost/month | other lane/month | "
             "move to advised/month | spent (of budget) | recommended | why |",
             "|---|---|---|---:|---|---:|---|---:|---:|---:|---:|---|---|---|"]
    for row in audit.rows:
        task = f"**{_md(row.task)}**" + (f"<br>{_md(row.description)}" if row.description
                                         else "")
        lane = ", ".join([row.lane_now, *catalog_note(row)])
        lines.append(" | ".join([
            f"| {task}", _md(row.owner or "-"), yes_no(row.person_waits),
            delay(row.max_delay_hours), _md(lane), volume(row), "<br>".join(waits(row)),
            usd_text(row.cost_per_day_usd), usd_text(row.cost_per_month_usd),
            other_lane(row), change(row).plain, spent(row).replace("\n", "<br>"),
            f"**{row.recommended_lane or '-'}**", f"{_md(row.reason)} |"]))
    lines += ["", "## Flags", ""]
    lines += [f"- **{flag.kind}** ({_md(', '.join(flag.tasks))}): {_md(flag.sentence)}"
              for flag in audit.flags] or ["No flags."]
    return "\n".join(lines) + "\n"
