"""`lanewise whatif`: what moving one task to another lane (and model) would change,
estimated from its recorded traffic and, with `--sample N`, tried on N recent requests.

The command object is `whatif` (registered in lanewise/cli.py). It opens the
configured ledger read-only (never creates one) and imports the lanes only for a
sample. See lanewise/whatif/ for how each figure is made.
"""

from __future__ import annotations

import json

import click
from rich.console import Console

console = Console()
#: Most requests one sample may send (a sample is a check, not a run).
MAX_SAMPLE = 1000


@click.command()
@click.argument("task")
@click.option("--lane", type=click.Choice(["batch", "live"]), required=True,
              help="The lane to weigh moving the task to.")
@click.option("--model", default=None,
              help="The model to weigh, any in the price table (its provider is the table's) "
              "[default: the task's own].")
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="Estimate from the task's traffic of the DAYS complete UTC days ending "
              "yesterday: the window of `lanewise audit --days DAYS`.")
@click.option("--sample", "sample_size", type=click.IntRange(1, MAX_SAMPLE), default=None,
              metavar="N",
              help="Also run the N most recent requests of the task through its current "
              "route and the proposed one, and compare cost, wait and answers.")
@click.option("--emulator-url", default=None,
              help="The emulator the sample goes to [default: LANEWISE_EMULATOR_URL, else "
              "an emulator started for the sample alone].")
@click.option("--real-providers", is_flag=True,
              help="Send the sample to the real providers with the configured credentials "
              "(costs real money) instead of the emulator.")
@click.option("--json", "as_json", is_flag=True, help="Print the what-if as JSON.")
def whatif(task: str, lane: str, model: str | None, days: int, sample_size: int | None,
           emulator_url: str | None, real_providers: bool, as_json: bool) -> None:
    """What moving TASK to --lane (and --model) would change per month: cost and wait,
    from the task's recorded traffic (no calls made); with --sample N, tried for real on
    N recent requests in a scratch ledger, against the emulator by default.

    The window, the request count, the cost per month now and the waits are the
    audit's for the same --days: `lanewise audit` shows the same figures for TASK.
    Money in USD.
    """
    from lanewise.catalog import load_catalog
    from lanewise.ledger import existing_ledger
    from lanewise.pricing import load_price_table
    from lanewise.settings import get_settings
    from lanewise.whatif.estimate import estimate
    from lanewise.whatif.proposal import propose
    from lanewise.whatif.report import as_json as report_json
    from lanewise.whatif.report import render

    if emulator_url and real_providers:
        raise click.UsageError("--emulator-url and --real-providers exclude each other")
    settings = get_settings()
    spec = load_catalog(settings.catalog_path).get(task)
    prices = load_price_table(settings.prices_path)
    proposal = propose(spec, lane, model, prices)
    ledger = existing_ledger(settings)
    try:
        figures = estimate(ledger, proposal, prices, days=days)
        sample = None
        if sample_size is not None:
            from lanewise.whatif.sample import run_sample

            sample = run_sample(ledger, proposal, settings, sample_size,
                                emulator_url=emulator_url, real=real_providers)
    finally:
        ledger.engine.dispose()
    if as_json:
        click.echo(json.dumps(report_json(proposal, figures, sample), indent=2))
        return
    render(console, proposal, figures, sample)
