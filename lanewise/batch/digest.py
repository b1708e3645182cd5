"""The weekly digest's input: the week's ticket summaries, a few rows of many summaries.

The `weekly-digest` catalog task groups a week's tickets into recurring themes. Its
input is built here from the results of the `ticket-summary` runs whose date window
falls inside the week (Monday to Sunday): each succeeded summary becomes one line
(`- <ticket id>: <summary>`), and the lines are packed into as few input rows as the
task's context budget allows. A ticket summarized by two runs (a nightly run and a
backfill over the same day) counts once, with the newer run's summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa

from lanewise.batch.context import DateWindow, LaneContext, storage_prefix
from lanewise.inputs import InputRow
from lanewise.ledger.schema import runs
from lanewise.requests import PreparedRequest, prepare
from lanewise.tokens import count_text_tokens

DIGEST_TASK = "weekly-digest"
SOURCE_TASK = "ticket-summary"
# Room left in each row for what the token estimate may miss (the budget is the task's
# max_input_tokens less the prompt around the summaries).
ROW_MARGIN_TOKENS = 256
SUMMARY_COLUMNS = ["input_key", "status", "raw_text"]


@dataclass
class DigestInput:
    """The input file built for one week's digest, and what went into it."""

    url: str
    week: DateWindow
    tickets: int = 0
    rows: int = 0
    runs: list[str] = field(default_factory=list)
    #: Days of the week that no finished ticket-summary run covered.
    missing_days: list[date] = field(default_factory=list)


def summary_runs(ctx: LaneContext, week: DateWindow) -> list[dict[str, Any]]:
    """Finished runs of the summary task whose window lies inside the week, oldest first."""
    query = (sa.select(runs).where(
        runs.c.task == SOURCE_TASK, runs.c.status == "finished",
        runs.c.window_start >= week.start.isoformat(),
        runs.c.window_end <= week.end.isoformat(),
        runs.c.results_url.is_not(None)).order_by(runs.c.id))
    with ctx.ledger.engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def _summaries(ctx: LaneContext, results_url: str) -> Iterator[tuple[str, str]]:
    """(ticket id, summary) of every succeeded row of one results file, streamed."""
    import pyarrow.parquet as pq

    with ctx.storage.open(results_url, "rb") as handle:
        for batch in pq.ParquetFile(handle).iter_batches(columns=SUMMARY_COLUMNS):
            for key, status, text in zip(*(batch.column(c).to_pylist()
                                           for c in SUMMARY_COLUMNS), strict=True):
                if status in ("succeeded", "cached") and key and text and text.strip():
                    yield key, " ".join(text.split())


def week_summaries(ctx: LaneContext, week: DateWindow,
                   found: list[dict[str, Any]]) -> dict[str, str]:
    """Each ticket's summary from the week's summary runs (a newer run's wins)."""
    by_ticket: dict[str, str] = {}
    for run in found:  # oldest first: a newer run's summary replaces an older one
        by_ticket.update(_summaries(ctx, run["results_url"]))
    return by_ticket


def _missing_days(week: DateWindow, found: list[dict[str, Any]]) -> list[date]:
    covered: set[date] = set()
    for run in found:
        day, last = date.fromisoformat(run["window_start"]), date.fromisoformat(run["window_end"])
        while day <= last:
            covered.add(day)
            day += timedelta(days=1)
    return [week.start + timedelta(days=i) for i in range(7)
            if week.start + timedelta(days=i) not in covered]


def _row(week: DateWindow, number: int, lines: list[str]) -> dict[str, Any]:
    return {"digest_id": f"{week.start.isoformat()}-{number}",
            "week_start": week.start.isoformat(), "week_end": week.end.isoformat(),
            "ticket_count": len(lines), "summaries": "\n".join(lines)}


def _summary_budget(ctx: LaneContext, week: DateWindow) -> int:
    """Tokens of summary lines one input row may carry within the task's context."""
    probe = prepare(ctx.task, InputRow(0, _row(week, 0, ["-"])))
    overhead = probe.estimated_tokens if isinstance(probe, PreparedRequest) else 0
    return max(ctx.task.max_input_tokens - overhead - ROW_MARGIN_TOKENS, 1)


def pack_rows(ctx: LaneContext, week: DateWindow,
              summaries: dict[str, str]) -> list[dict[str, Any]]:
    """The digest's input rows: summary lines packed up to the row budget, in ticket order."""
    budget = _summary_budget(ctx, week)
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    used = 0
    for key in sorted(summaries):
        line = f"- {key}: {summaries[key]}"
        cost = count_text_tokens(line + "\n")
        if lines and used + cost > budget:
            rows.append(_row(week, len(rows) + 1, lines))
            lines, used = [], 0
        lines.append(line)
        used += cost
    if lines:
        rows.append(_row(week, len(rows) + 1, lines))
    return rows


def build_digest_input(ctx: LaneContext, week: DateWindow, run_key: str) -> DigestInput:
    """Write the week's digest input (JSONL under the storage root) and say what it holds.

    A run that already got past planning keeps the input it was planned from (a rerun
    resumes it); the file is rebuilt only while nothing was planned from it.
    """
    url = ctx.storage.url(f"{storage_prefix(run_key)}/digest-input.jsonl")
    found = summary_runs(ctx, week)
    built = DigestInput(url=url, week=week, runs=[r["run_key"] for r in found],
                        missing_days=_missing_days(week, found))
    existing = ctx.ledger.run_by_key(run_key)
    if existing is not None and existing["status"] != "planning" \
            and ctx.storage.exists(existing["input_url"]):
        built.url = existing["input_url"]
        with ctx.storage.open(built.url, "rb") as handle:
            counts = [json.loads(line)["ticket_count"] for line in handle if line.strip()]
        built.rows, built.tickets = len(counts), sum(counts)
        return built
    rows = pack_rows(ctx, week, week_summaries(ctx, week, found))
    with ctx.storage.open(url, "wb") as handle:
        for row in rows:
            handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    built.rows = len(rows)
    built.tickets = sum(row["ticket_count"] for row in rows)
    return built


def themes_markdown(ctx: LaneContext, results_url: str, title: str) -> str:
    """The digest's themes as a markdown table (the digest artifact)."""
    import pyarrow.parquet as pq

    lines = [f"# {title}", "", "| theme | topic | tickets | summary | examples |",
             "|---|---|---:|---|---|"]
    count = 0
    with ctx.storage.open(results_url, "rb") as handle:
        table = pq.read_table(handle, columns=["status", "output_themes"])
    for status, themes in zip(table.column("status").to_pylist(),
                              table.column("output_themes").to_pylist(), strict=True):
        if status != "succeeded" or not themes:
            continue
        for theme in json.loads(themes):
            count += 1
            examples = ", ".join(str(e) for e in theme.get("example_ticket_ids") or [])
            cells = [theme.get("theme"), theme.get("topic"), theme.get("tickets"),
                     theme.get("summary"), examples]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if not count:
        lines += ["", "No themes: the digest had no summaries to group, or no answer "
                  "succeeded."]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return " ".join(str("" if value is None else value).split()).replace("|", "/")
