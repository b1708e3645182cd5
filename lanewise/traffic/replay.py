"""Replaying the sample month through both lanes, against the emulator only.

Day by day (`month.month_days`): the day's live calls go through the live lane
(`LiveLane.call`, a few at once, as agents and webhooks would make them), and the
nightly runs that start that day go through the batch lane (`run_batch_lane`, the
runner `lanewise run` drives, without Prefect: a month is ninety runs). Every record is
then dated at the simulated moment it stands for (`retime.py`).

Idempotent: a live call carries its event id in its context and is not made again;
a run key that finished is not run again (and one cut short resumes). So a second
replay into the same ledger adds nothing and pays nothing.

Refuses to run unless both providers resolve to the emulator: the sample is
thousands of calls, never to be paid for.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from lanewise.errors import ConfigurationError
from lanewise.ledger import Ledger
from lanewise.ledger.schema import live_calls
from lanewise.pricing import from_picodollars, to_picodollars
from lanewise.settings import Settings
from lanewise.traffic.month import LiveEvent, NightlyRun, SampleDay, all_tickets
from lanewise.traffic.retime import BatchTimeline, date_live_calls, date_run

if TYPE_CHECKING:
    from lanewise.live import LiveResult

#: A batch the emulator ends in about a second stands for one of about half an hour.
BATCH_SCALE = 1800.0
#: The emulator's batch timing while the month replays (seconds of wall time).
REPLAY_TIMING = {"batch_seconds": 0.1, "validating_seconds": 0.05,
                 "finalizing_seconds": 0.05}
LIVE_CONCURRENCY = 8
RUN_CONCURRENCY = 2

Progress = Callable[[str, int, int], None]


@dataclass
class ReplayReport:
    """What a replay did: calls and runs made now, and what was already there."""

    live_calls: int = 0
    live_skipped: int = 0
    runs: int = 0
    runs_skipped: int = 0
    live_cost_picodollars: int = 0
    batch_cost_picodollars: int = 0
    seconds: float = 0.0
    by_task: dict[str, int] = field(default_factory=dict)

    @property
    def cost_usd(self) -> dict[str, Decimal]:
        """What this replay paid the emulator, by lane (live, batch)."""
        return {"live": from_picodollars(self.live_cost_picodollars),
                "batch": from_picodollars(self.batch_cost_picodollars)}


def _emulator_base(settings: Settings) -> str:
    """The emulator's root URL, or an error when a provider resolves to a real API."""
    from lanewise.providers import resolve_credentials

    bases = {}
    for provider in ("openai", "anthropic"):
        creds = resolve_credentials(provider, settings)
        if creds.source != "emulator":
            raise ConfigurationError(
                f"the sample month replays thousands of calls and runs only against the "
                f"emulator, but {provider} resolves to a real API ({creds.source}); unset "
                "its key (or use LANEWISE_EMULATOR_URL) to replay it")
        bases[provider] = (creds.base_url or "").removesuffix("/v1")
    return bases["anthropic"]


def write_tickets(month: list[SampleDay], folder: Path) -> Path:
    """The month's tickets as one JSONL file (the nightly runs' input), written once."""
    first, last = month[0].day, month[-1].day
    path = folder / f"tickets-{first}-{last}.jsonl"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("w", encoding="utf-8") as handle:
            for ticket in all_tickets(month):
                handle.write(json.dumps(ticket, ensure_ascii=False) + "\n")
        partial.replace(path)  # a crash never leaves half a month behind a good name
    return path


def _recorded_events(ledger: Ledger, day: str) -> set[str]:
    """Event ids of the day's sample live calls already in the ledger."""
    marker = f'%"sample_day": "{day}"%'
    with ledger.engine.connect() as conn:
        found = conn.execute(sa.select(live_calls.c.context)
                             .where(live_calls.c.context.like(marker))).scalars().all()
    return {json.loads(context)["sample_event"] for context in found}


def _settle(futures: list[Future[None]]) -> None:
    """Wait for every run; the first failure is raised (after all have ended)."""
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


class MonthReplay:
    """Replays sample days into the ledger of `settings` (see the module docstring)."""

    def __init__(self, settings: Settings, folder: Path, *, progress: Progress | None = None,
                 live_concurrency: int = LIVE_CONCURRENCY) -> None:
        from lanewise.live import get_lane

        self.settings = settings
        self.folder = folder
        self.base_url = _emulator_base(settings)
        self.progress = progress or (lambda _what, _done, _total: None)
        self.live_concurrency = live_concurrency
        self.lane = get_lane(settings)
        self.ledger = self.lane.ledger
        self.report = ReplayReport()
        self._lock = threading.Lock()

    def run(self, month: list[SampleDay]) -> ReplayReport:
        """Replay every day of `month` in order; returns what was done."""
        import httpx

        started = time.monotonic()
        tickets_url = str(write_tickets(month, self.folder))
        before = httpx.get(f"{self.base_url}/_emulator/timing", timeout=10).json()
        httpx.patch(f"{self.base_url}/_emulator/timing", json=REPLAY_TIMING, timeout=10)
        # A night's runs (different run keys, so no lease is shared) go on while the
        # next day's live calls are made; a digest waits for every run before it,
        # since it reads the week's summaries.
        pending: list[Future[None]] = []
        try:
            with ThreadPoolExecutor(RUN_CONCURRENCY) as runs_pool:
                days = [sample for sample in month if not sample.prelude]
                for sample in month:
                    self._live_day(sample)
                    for run in sample.runs:
                        if run.task == "weekly-digest":
                            _settle(pending)
                            pending = []
                            self._batch_run(run, tickets_url)
                        else:
                            pending.append(runs_pool.submit(self._batch_run, run, tickets_url))
                    if not sample.prelude:
                        self.progress(f"sample month: {sample.day}",
                                      days.index(sample) + 1, len(days))
                _settle(pending)
        finally:
            httpx.patch(f"{self.base_url}/_emulator/timing", json=before, timeout=10)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _live_day(self, sample: SampleDay) -> None:
        done = _recorded_events(self.ledger, sample.day.isoformat())
        todo = [event for event in sample.live if event.event_id not in done]
        self.report.live_skipped += len(sample.live) - len(todo)
        moments: dict[int, datetime] = {}
        with ThreadPoolExecutor(self.live_concurrency) as pool:
            calls = pool.map(lambda event: self._live_call(event, sample.day.isoformat()), todo)
            for event, result in zip(todo, calls, strict=True):
                self.report.live_calls += 1
                self.report.live_cost_picodollars += to_picodollars(result.cost_usd)
                self.report.by_task[event.task] = self.report.by_task.get(event.task, 0) + 1
                if result.call_id is not None:
                    # Dated when the answer came back: the event's moment plus the call's
                    # real latency. (A call the ledger refused is in the live journal and
                    # keeps its real time when replayed from there.)
                    moments[result.call_id] = event.at + timedelta(
                        milliseconds=result.latency_ms)
        date_live_calls(self.ledger, moments)

    def _live_call(self, event: LiveEvent, day: str) -> LiveResult:
        # The sample day it belongs to (an escalation may come after midnight): what a
        # second replay looks it up by.
        return self.lane.call(event.task, event.ticket, context={
            "sample_day": day, "sample_event": event.event_id})

    def _batch_run(self, run: NightlyRun, tickets_url: str) -> None:
        from lanewise.batch.context import DateWindow, LaneContext
        from lanewise.batch.digest import build_digest_input
        from lanewise.batch.runner import run_batch_lane

        existing = self.ledger.run_by_key(run.run_key)
        if existing is not None and existing["status"] == "finished":
            with self._lock:
                self.report.runs_skipped += 1
            return
        ctx = LaneContext.build(run.task, self.settings, ledger=self.ledger)
        window = DateWindow(run.first_day, run.last_day)
        input_url = tickets_url
        if run.task == "weekly-digest":
            input_url = build_digest_input(ctx, window, run.run_key).url
        summary = run_batch_lane(ctx, run.run_key, input_url, window)
        run_id = self.ledger.run_by_key(run.run_key)["id"]
        date_run(self.ledger, run_id, BatchTimeline(run.at, BATCH_SCALE))
        with self._lock:  # runs end in several threads at once
            self.report.runs += 1
            self.report.batch_cost_picodollars += to_picodollars(summary.cost_usd)
            self.report.by_task[run.task] = self.report.by_task.get(run.task, 0) + 1
