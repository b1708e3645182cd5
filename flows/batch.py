"""Batch-lane flows: nightly runs and ad-hoc backfills. Thin: they only wire core steps."""

from __future__ import annotations

from datetime import date, timedelta

from prefect import flow

from lanewise.batch.context import DateWindow, run_key_for
from lanewise.batch.prefect_tasks import run_in_prefect

SAMPLE_INPUT = "data/tickets.parquet"


@flow(name="nightly-batch", log_prints=True)
def nightly_batch(task: str = "ticket-tagging", input_url: str = SAMPLE_INPUT,
                  run_date: date | None = None, filter_by_date: bool = True,
                  run_key: str | None = None) -> dict:
    """Run one task over one night's rows (yesterday by default) in the batch lane."""
    day = run_date or date.today() - timedelta(days=1)
    window = DateWindow(day, day) if filter_by_date else None
    summary = run_in_prefect(task, run_key or run_key_for(task, None, day), input_url, window)
    return summary.brief()


@flow(name="backfill", log_prints=True)
def backfill(task: str, start: date, end: date, input_url: str = SAMPLE_INPUT,
             run_key: str | None = None) -> dict:
    """Run one task over every row dated from `start` to `end` (inclusive) in the batch lane."""
    window = DateWindow(start, end)
    summary = run_in_prefect(task, run_key or run_key_for(task, window), input_url, window)
    return summary.brief()
