"""The README's main job: a month of a support team's AI traffic, one day of it on both
lanes in full, and the routing review of the month.

Starts the emulator in-process before any flow (no API key), then:

0. **The month behind**: the sample team's last 30 days (lanewise/traffic: live reply
   drafts in working hours, nightly tagging, summaries and triage, a weekly digest, one
   task misrouted each way, one duplicated across two lanes, one volume spike) replayed
   through both lanes with time compressed (idempotent: a second demo adds nothing);
1. **Day, live lane**: reply drafts for a handful of fresh tickets, each one plain
   `lanewise.live.call` (retries, latency budget, fallbacks; recorded in `live_calls`),
   with latency p50/p95 and their cost;
2. **Day, deferred**: the same conversations enqueued (`lanewise.queue.enqueue`) for
   the night's tagging and summary;
3. **Night**: the `drain-queue` flow sends what was queued through the batch lane, and
   the nightly batch flow runs both tasks over the sample tickets (PREFECT_API_URL, or
   a temporary local server bound to this process, started while the live calls run);

then one table, what the day cost with lanewise against the same work all-live, and the
check that the ledger's total equals what the emulator billed, lane by lane (the month's
replay included); and ends with `lanewise audit`'s table of the month.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lanewise.batch.progress import add_listener
from lanewise.ops.prefect_server import early_temporary_server, prefect_api
from lanewise.reporting import print_runs, usd
from lanewise.settings import DATA_DIR, get_settings

if TYPE_CHECKING:
    from lanewise.batch.results import RunSummary
    from lanewise.ledger import Ledger
    from lanewise.live import LiveResult

DEMO_TASKS = ("ticket-tagging", "ticket-summary")
#: The month behind the day: its length and how busy the team is (None: the sample
#: team's usual volume, lanewise.traffic.month.Volume).
MONTH_DAYS = 30
MONTH_VOLUME = None
LIVE_TASK = "reply-draft"
#: The emulator's timing in the demo (lanewise.emulator.Timing fields).
DEMO_TIMING = {"batch_seconds": 2.0, "validating_seconds": 0.2, "finalizing_seconds": 0.3}
#: Today's fresh tickets: an agent waits for each reply draft.
FRESH_TICKETS = (
    ("Refund not received", "I returned the blender two weeks ago and still have no refund."),
    ("Cannot log in", "The app says my password is wrong right after I reset it."),
    ("Double charge", "My card was charged twice for the May invoice. Please fix it."),
    ("Export fails", "Exporting my reports to CSV spins forever and never downloads."),
    ("Change plan", "How do I move from the monthly plan to the yearly one?"),
    ("Late delivery", "Order 5521 was due on Monday and tracking has not moved since."),
    ("Delete account", "Please delete my account and every piece of data you hold."),
    ("Invoice address", "The company address on my invoices is wrong; how do I change it?"),
)


@dataclass
class DemoReport:
    """What the demo's day did and what it cost, from the ledger and the emulator."""

    live: list[LiveResult]
    #: what the month's replay paid now, by lane (nothing when it was already there)
    month: dict[str, Decimal] = field(default_factory=dict)
    deferred: list[RunSummary] = field(default_factory=list)
    nightly: list[RunSummary] = field(default_factory=list)
    #: lane -> (lanewise cost, the same work all-live), from the ledger
    costs: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    #: lane (live, batch) -> (ledger, emulator billed)
    bills: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)

    @property
    def ledger_equals_bill(self) -> bool:
        """Whether the ledger's cost equals the emulator's bill on every lane (to the
        micro-dollar the emulator reports)."""
        return all(round(ours, 6) == round(billed, 6) for ours, billed in self.bills.values())


def _configure(emulator_url: str) -> None:
    """Point this process's settings at the demo emulator, with quick polling."""
    os.environ["LANEWISE_EMULATOR_URL"] = emulator_url
    os.environ.setdefault("LANEWISE_POLL_INITIAL_SECONDS", "0.5")
    os.environ.setdefault("LANEWISE_POLL_MAX_SECONDS", "2")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    get_settings.cache_clear()
    from lanewise.batch.prefect_tasks import context_for

    context_for.cache_clear()


@contextmanager
def own_emulator(timing: dict[str, float]) -> Iterator[str]:
    """An emulator process of the demo's own (a fresh billing record), stopped at the end.

    A process rather than a thread of this one: the month's replay keeps both busy, and
    two processes use two cores where one would share its interpreter lock.
    """
    import signal
    import tempfile

    import httpx

    from lanewise.emulator.background import shared_emulator_url
    from lanewise.emulator.folder import read_server_info

    with tempfile.TemporaryDirectory(prefix="lanewise-demo-emulator-") as folder:
        url = shared_emulator_url(Path(folder))
        pid = (read_server_info(Path(folder)) or {}).get("pid")
        try:
            httpx.patch(f"{url}/_emulator/timing", json=timing, timeout=10).raise_for_status()
            yield url
        finally:
            if isinstance(pid, int):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                _wait_gone(pid)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until process `pid` has exited (it removes nothing we still need)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def fresh_tickets(stamp: str) -> list[dict[str, Any]]:
    """Today's tickets, new to every demo run (their text names the run, so nothing of
    them is in the result cache yet)."""
    now = datetime.now(timezone.utc).isoformat()
    return [{"ticket_id": f"D-{stamp}-{n}", "created_at": now, "customer_id": f"C-9{n:05d}",
             "channel": "chat", "subject": subject, "body": f"{body} (ref {stamp}-{n})"}
            for n, (subject, body) in enumerate(FRESH_TICKETS, start=1)]


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of `values` (share in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))]


def live_day(console: Console, tickets: list[dict[str, Any]]) -> list[LiveResult]:
    """Draft a reply to each ticket now, one live call each, and print how it went."""
    from lanewise.live import call, get_lane

    get_lane().warm([LIVE_TASK])  # SDK clients built once, before the first agent waits
    results = [call(LIVE_TASK, ticket, context={"agent": "demo"}) for ticket in tickets]
    table = Table(title=f"Day, live lane: {LIVE_TASK} for {len(tickets)} fresh tickets",
                  title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False)
    for column in ("ticket", "answered by", "model", "ms", "cost"):
        table.add_column(column, justify="right" if column in ("ms", "cost") else "left",
                         overflow="ellipsis", no_wrap=True)
    for ticket, result in zip(tickets, results, strict=True):
        how = result.answered_by + ("" if result.status == "succeeded" else f" ({result.status})")
        table.add_row(ticket["subject"], how, result.model,
                      f"{result.latency_ms:,.0f}", usd(result.cost_usd))
    console.print(table)
    first = (results[0].text or results[0].error or "").replace("\n", " ")
    console.print(f"the first draft: {first[:160]}")
    latencies = [r.latency_ms for r in results]
    console.print(f"live latency p50 {percentile(latencies, 0.5):,.0f} ms, p95 "
                  f"{percentile(latencies, 0.95):,.0f} ms; cost "
                  f"{usd(sum((r.cost_usd for r in results), Decimal(0)))}")
    return results


def defer_day(console: Console, tickets: list[dict[str, Any]]) -> None:
    """Enqueue the same conversations for tonight's tagging and summary."""
    from lanewise.ledger import Ledger
    from lanewise.queue import enqueue

    ledger = Ledger(get_settings().resolved_database_url)
    try:
        items = [enqueue(ledger, task, ticket["ticket_id"], ticket)
                 for task in DEMO_TASKS for ticket in tickets]
    finally:
        ledger.engine.dispose()
    console.print(f"Day, deferred: {len(items)} requests enqueued for tonight "
                  f"({', '.join(DEMO_TASKS)}), ids {items[0].id}..{items[-1].id}, "
                  f"status {items[0].status}")


def _live_costs(ledger: Ledger, call_ids: list[int]) -> tuple[Decimal, Decimal]:
    """The live calls' cost in the ledger, and the same answers all-live (a call the
    cache answered is counted at what its original answer cost live)."""
    import sqlalchemy as sa

    from lanewise.ledger.schema import live_calls, result_cache
    from lanewise.pricing import from_picodollars

    query = (sa.select(live_calls.c.cost_picodollars, live_calls.c.answered_by,
                       result_cache.c.live_cost_picodollars)
             .select_from(live_calls.outerjoin(
                 result_cache, live_calls.c.content_hash == result_cache.c.content_hash))
             .where(live_calls.c.id.in_(call_ids)))
    with ledger.engine.connect() as conn:
        rows = conn.execute(query).all()
    if len(rows) != len(call_ids):
        raise AssertionError(f"{len(call_ids)} live calls made, {len(rows)} in the ledger")
    cost = sum(row[0] for row in rows)
    all_live = sum((row[2] or 0) if row[1] == "cache" else row[0] for row in rows)
    return from_picodollars(cost), from_picodollars(all_live)


def _runs_costs(ledger: Ledger, summaries: list[RunSummary]) -> tuple[Decimal, Decimal]:
    """Batch runs' cost, and the same work all-live: what was sent at live prices plus,
    for each row the result cache answered, what its original answer cost live."""
    import sqlalchemy as sa

    from lanewise.ledger.schema import items, result_cache, runs
    from lanewise.pricing import from_picodollars

    cost = sum((s.cost_usd for s in summaries), Decimal(0))
    all_live = sum((s.live_cost_usd for s in summaries), Decimal(0))
    keys = [s.run_key for s in summaries if s.cached]
    if keys:
        query = (sa.select(sa.func.coalesce(sa.func.sum(result_cache.c.live_cost_picodollars), 0))
                 .select_from(items.join(runs, items.c.run_id == runs.c.id).join(
                     result_cache, items.c.content_hash == result_cache.c.content_hash))
                 .where(runs.c.run_key.in_(keys), items.c.status == "cached"))
        with ledger.engine.connect() as conn:
            all_live += from_picodollars(int(conn.execute(query).scalar_one()))
    return cost, all_live


def day_table(report: DemoReport) -> Table:
    """The day's cost per lane with lanewise against the same work all-live."""
    table = Table(title="The day: lanewise against the same work all-live", title_justify="left")
    for column in ("lane", "lanewise", "all-live", "saved"):
        table.add_column(column, justify="left" if column == "lane" else "right")
    total = (Decimal(0), Decimal(0))
    for lane, (ours, live) in report.costs.items():
        table.add_row(lane, usd(ours), usd(live), usd(live - ours))
        total = (total[0] + ours, total[1] + live)
    share = f" ({(total[1] - total[0]) / total[1]:.0%})" if total[1] else ""
    table.add_row("total", usd(total[0]), usd(total[1]), usd(total[1] - total[0]) + share,
                  style="bold")
    return table


def print_audit(console: Console) -> None:
    """The routing review of the month behind (what `lanewise audit` prints)."""
    from lanewise.audit import run_audit
    from lanewise.audit.render import audit_table

    console.print()
    console.print(audit_table(run_audit()))
    console.print("The month's routing review (`lanewise audit`; --csv for the one-page "
                  "spreadsheet). docs/routing.md explains each figure and flag. Try a move "
                  "before making it: `lanewise whatif faq-candidates --lane batch --sample "
                  "20`.")


def run_demo(console: Console, input_url: str | None = None) -> DemoReport:
    """Run the demo day (live drafts, deferred work drained at night, the nightly batch
    runs) and print what it cost against all-live, and the ledger against the bill."""
    input_url = input_url or str(DATA_DIR / "tickets.parquet")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with ExitStack() as stack:
        # The temporary Prefect server (if one is needed) starts first, while the
        # emulator starts and the day's live calls run.
        early = stack.enter_context(early_temporary_server(get_settings().home))
        import httpx

        from lanewise.live import close_lanes

        emulator_url = stack.enter_context(own_emulator(DEMO_TIMING))
        _configure(emulator_url)
        stack.callback(close_lanes)
        console.print(f"emulator on {emulator_url}; ledger "
                      f"{get_settings().resolved_database_url}")
        from lanewise.cli_sample import describe, replay_with_progress

        replayed = replay_with_progress(console, MONTH_DAYS, volume=MONTH_VOLUME)
        describe(console, replayed, MONTH_DAYS)
        tickets = fresh_tickets(stamp)
        report = DemoReport(live=live_day(console, tickets), month=replayed.cost_usd)
        defer_day(console, tickets)
        from flows.batch import nightly_batch
        from flows.drain import drain_queue
        from lanewise.batch.prefect_tasks import context_for
        from lanewise.batch.results import summarize

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            bars: dict[str, int] = {}

            def on_progress(run_key: str, done: int, total: int, message: str) -> None:
                if run_key not in bars:
                    bars[run_key] = progress.add_task(run_key, total=total)
                progress.update(bars[run_key], completed=done, total=total)

            remove = add_listener(on_progress)
            try:
                stack.enter_context(prefect_api(
                    get_settings().home, launched=early,
                    notice=lambda message: console.print(f"[dim]{message}[/]")))
                for task in DEMO_TASKS:
                    ctx = context_for(task)
                    briefs = drain_queue(params={"task": task})
                    for brief in briefs:
                        for drained in brief["runs"]:
                            run = ctx.ledger.run_by_key(drained["run_key"])
                            report.deferred.append(summarize(ctx.ledger, run["id"]))
                for task in DEMO_TASKS:
                    brief = nightly_batch(params=dict(
                        task=task, input_url=input_url, run_date=date.today(),
                        filter_by_date=False, run_key=f"{task}:demo-{stamp}"))
                    ctx = context_for(task)
                    run = ctx.ledger.run_by_key(brief["run_key"])
                    report.nightly.append(summarize(ctx.ledger, run["id"]))
            finally:
                remove()
        print_runs(console, report.deferred, "Night: the deferred work, drained in batch")
        print_runs(console, report.nightly, "Night: the nightly batch runs")
        ledger = context_for(DEMO_TASKS[0]).ledger
        report.costs = {
            f"live ({len(report.live)} reply drafts)":
                _live_costs(ledger, [r.call_id for r in report.live if r.call_id is not None]),
            "deferred, drained at night": _runs_costs(ledger, report.deferred),
            "nightly batch": _runs_costs(ledger, report.nightly)}
        console.print(day_table(report))
        console.print("all-live: every request of the day sent to the live API, rows the "
                      "result cache answered included (at what their first answer cost live)")
        ours = list(report.costs.values())
        for lane, ledger_cost in (("live", ours[0][0]), ("batch", ours[1][0] + ours[2][0])):
            ledger_cost += report.month.get(lane, Decimal(0))
            billed = httpx.get(f"{emulator_url}/_emulator/billing", params={"lane": lane}).json()
            report.bills[lane] = (ledger_cost, Decimal(billed["total"]["cost_usd"]))
        total_ledger = sum((pair[0] for pair in report.bills.values()), Decimal(0))
        total_billed = sum((pair[1] for pair in report.bills.values()), Decimal(0))
        per_lane = "; ".join(f"{lane} {usd(a)} against {usd(b)}"
                             for lane, (a, b) in report.bills.items())
        verdict = "[green]equal[/]" if report.ledger_equals_bill else "[bold red]DIFFERENT[/]"
        console.print(f"ledger total {usd(total_ledger)}; the emulator billed "
                      f"{usd(total_billed)} ({per_lane}): {verdict}")
        print_audit(console)
    if not report.ledger_equals_bill:
        from lanewise.errors import ReconciliationError

        raise ReconciliationError(f"the demo's ledger and the emulator's bill differ: {per_lane}")
    return report
