"""The README's main job: nightly tagging and summaries over the sample tickets.

Starts the emulator in-process before any flow (no API key), runs both tasks through
the Prefect flow (PREFECT_API_URL, or a temporary local server bound to this
process), then prints the cost table, what the emulator billed, and where the
results are.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from datetime import date
from decimal import Decimal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lanewise.batch.progress import add_listener
from lanewise.ops.prefect_server import early_temporary_server, prefect_api
from lanewise.reporting import print_runs, usd
from lanewise.settings import DATA_DIR, get_settings

DEMO_TASKS = ("ticket-tagging", "ticket-summary")
#: The emulator's timing in the demo (lanewise.emulator.Timing fields).
DEMO_TIMING = {"batch_seconds": 2.0, "validating_seconds": 0.2, "finalizing_seconds": 0.3}


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


def run_demo(console: Console, input_url: str | None = None) -> None:
    """Run the nightly batch flows for both demo tasks and print what they cost."""
    input_url = input_url or str(DATA_DIR / "tickets.parquet")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with ExitStack() as stack:
        # The temporary Prefect server (if one is needed) starts first, while the
        # emulator starts and this process imports the flows.
        early = stack.enter_context(early_temporary_server(get_settings().home))
        import httpx

        from lanewise.emulator import EmulatorConfig, Timing, running_emulator

        emu = stack.enter_context(running_emulator(
            EmulatorConfig(timing=Timing(**DEMO_TIMING))))
        _configure(emu.url)
        from flows.batch import nightly_batch
        from lanewise.batch.prefect_tasks import context_for
        from lanewise.batch.results import summarize

        console.print(f"emulator on {emu.url}; ledger {get_settings().resolved_database_url}")
        summaries = []
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
                    brief = nightly_batch(params=dict(
                        task=task, input_url=input_url, run_date=date.today(),
                        filter_by_date=False, run_key=f"{task}:demo-{stamp}"))
                    ctx = context_for(task)
                    run = ctx.ledger.run_by_key(brief["run_key"])
                    summaries.append(summarize(ctx.ledger, run["id"]))
            finally:
                remove()
        print_runs(console, summaries, "Nightly batch runs: what they cost")
        billed = httpx.get(f"{emu.url}/_emulator/billing").json()["total"]
        ledger_total = sum((s.cost_usd for s in summaries), Decimal(0))
        console.print(f"ledger total {usd(ledger_total)}; the emulator billed "
                      f"{usd(Decimal(billed['cost_usd']))} for {billed['requests']:,} requests")
