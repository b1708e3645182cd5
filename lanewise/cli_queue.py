"""`lanewise enqueue`, `result` and `queue`: the deferred-work queue from the command line.

Kept apart from cli.py, which registers them; like every command they import what they
need when they run. `result` and `queue` read the configured ledger and never create
one; `enqueue` writes, so it opens (and if need be creates) it. User text (keys,
outputs) is printed as plain Text, never read as rich markup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from lanewise.ledger import Ledger

console = Console()
STATES = ("queued", "claimed", "succeeded", "invalid_output", "failed")


def _existing_ledger() -> Ledger:
    from lanewise.ledger import existing_ledger
    from lanewise.settings import get_settings

    return existing_ledger(get_settings())


@click.command()
@click.argument("task")
@click.argument("key", required=False)
@click.option("--row", "row_json", default=None, metavar="JSON",
              help="The row as a JSON object (its columns as the task's prompt uses them).")
@click.option("--file", "rows_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="A JSONL file of rows, one object per line, each keyed by "
              "the task's key column.")
def enqueue(task: str, key: str | None, row_json: str | None, rows_file: Path | None) -> None:
    """Queue deferred work for TASK, answered by the next drain at batch prices.

    With --row, the row is queued under KEY (or its key column when KEY is left out);
    with --file, each line under its own key column. Queuing a key again changes
    nothing: the existing item is kept as it is.
    """
    from lanewise.errors import InputError
    from lanewise.ledger import Ledger
    from lanewise.queue import enqueue_many, put, read_jsonl_rows, task_for_queue
    from lanewise.settings import get_settings

    if (row_json is None) == (rows_file is None):
        raise click.UsageError("give one of --row JSON or --file rows.jsonl")
    if rows_file is not None and key is not None:
        raise click.UsageError("KEY goes with --row; with --file each row's key column "
                               "is its key")
    spec = task_for_queue(task)  # an unknown task is refused before the ledger is opened
    if row_json is not None:
        try:
            row = json.loads(row_json)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--row") from None
        if not isinstance(row, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--row")
        ledger = Ledger(get_settings().resolved_database_url)
        item, new = put(ledger, spec.name, key if key is not None else row.get(spec.input.key),
                        row)
        how = "queued" if new else "already queued (unchanged)"
        console.print(Text(f"{how}: item {item.id} ({item.task} {item.key}), {item.status}"))
        console.print(Text(f"read it with: lanewise result {item.id}", style="dim"))
        return
    try:
        with rows_file.open("rb") as handle:  # type: ignore[union-attr]
            rows = list(read_jsonl_rows(handle))
    except OSError as exc:
        raise InputError(f"cannot read {rows_file}: {exc}") from None
    report = enqueue_many(Ledger(get_settings().resolved_database_url), spec.name, rows)
    console.print(Text(f"{spec.name}: {report.added} queued, {report.existing} already "
                       f"queued (unchanged), from {rows_file}"))


@click.command()
@click.argument("item_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the item as JSON.")
def result(item_id: int, as_json: bool) -> None:
    """The status of queued item ID and, once done, its output (parsed JSON for a JSON
    task) or its error."""
    from lanewise.queue import result as read

    ledger = _existing_ledger()
    item = read(ledger, item_id)
    if item is None:
        raise click.ClickException(f"no queue item {item_id} in this ledger")
    if as_json:
        click.echo(json.dumps(item.record(), indent=2, ensure_ascii=False))
        return
    record = item.record()
    console.print(Text(f"item {item.id}: {item.task} {item.key}: {item.status}"))
    for label in ("run_key", "created_at", "finished_at"):
        if record[label]:
            console.print(Text(f"  {label.replace('_', ' ')}: {record[label]}", style="dim"))
    if item.done:
        console.print(Text(f"  cost: ${item.cost_usd:,.6f}", style="dim"))
    if item.error:
        console.print(Text(f"error: {item.error}"))
    if item.output is not None:
        shown = item.output if isinstance(item.output, str) else \
            json.dumps(item.output, indent=2, ensure_ascii=False)
        console.print(Text(shown))
    elif item.output_text is not None:  # invalid_output: what came back, as it came
        console.print(Text(item.output_text))
    if not item.done:
        console.print(Text("not done yet: the next drain answers it", style="dim"))


@click.command(name="queue")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def queue_counts(as_json: bool) -> None:
    """The deferred-work queue: items per task and status, and what the done ones cost."""
    from rich import box
    from rich.table import Table

    from lanewise.pricing import from_picodollars

    ledger = _existing_ledger()
    by_task: dict[str, dict[str, int]] = {}
    cost: dict[str, int] = {}
    for task, status, count, picodollars in ledger.queue_counts():
        by_task.setdefault(task, {})[status] = count
        cost[task] = cost.get(task, 0) + picodollars
    if as_json:
        click.echo(json.dumps([{"task": task, "counts": counts,
                                "cost_usd": str(from_picodollars(cost[task]))}
                               for task, counts in by_task.items()], indent=2))
        return
    if not by_task:
        console.print("the queue is empty")
        return
    # Only the states some task has, so the table fits a terminal.
    present = {s for c in by_task.values() for s in c}
    states = [*(s for s in STATES if s in present), *sorted(present - set(STATES))]
    table = Table(title="Deferred-work queue", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("task", no_wrap=True)
    for state in states:
        table.add_column(state.replace("_", " "), justify="right")
    table.add_column("total", justify="right")
    table.add_column("cost", justify="right", no_wrap=True)
    for task, counts in by_task.items():
        table.add_row(Text(task), *(f"{counts.get(s, 0):,}" for s in states),
                      f"{sum(counts.values()):,}", f"${from_picodollars(cost[task]):,.6f}")
    console.print(table)
