"""The `lanewise` command line; turns lanewise errors into one-line messages."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click
from rich.console import Console

from lanewise import cli_history
from lanewise.errors import LanewiseError

if TYPE_CHECKING:
    from pydantic import BaseModel

console = Console()
error_console = Console(stderr=True)


def _model_options(model: type[BaseModel], group: str) -> list[click.Parameter]:
    """Click options for every number or switch field of a settings model, described by
    the field (list fields are set through the control surface instead)."""
    kinds: dict[Any, Any] = {int: int, float: float, bool: click.BOOL}
    return [
        click.Option([f"--{name.replace('_', '-')}", f"{group}__{name}"],
                     type=kinds[field.annotation], default=None,
                     help=f"{field.description} [default: {field.default}]")
        for name, field in model.model_fields.items() if field.annotation in kinds
    ]


class _LazyOptionsCommand(click.Command):
    """A command whose trailing options are built on first use (its own help or
    parsing), so that `lanewise --help` and the other commands do not import what
    builds them."""

    def __init__(self, *args: Any, lazy_options: Callable[[], list[click.Parameter]],
                 **kwargs: Any) -> None:
        self._lazy_options: Callable[[], list[click.Parameter]] | None = lazy_options
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:  # type: ignore[override]
        if self._lazy_options is not None:
            build, self._lazy_options = self._lazy_options, None
            self._params.extend(build())
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value


@click.group()
@click.version_option(package_name="lanewise")
def cli() -> None:
    """lanewise: give every AI task a lane (live or batch), run as Prefect flows."""


def _emulator_options() -> list[click.Parameter]:
    from lanewise.emulator.config import Faults, RateLimits, Timing

    return (_model_options(Timing, "timing") + _model_options(Faults, "faults")
            + _model_options(RateLimits, "rate_limits"))


@cli.command(cls=_LazyOptionsCommand, lazy_options=_emulator_options)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0 = any free).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Where files and the billing record live [default: LANEWISE_HOME/emulator].")
@click.option("--api-key", default=None, help="Accept only this key (default: any key).")
@click.option("--prices", "prices_path", type=click.Path(path_type=Path), default=None,
              help="The price table the emulator bills by [default: LANEWISE_EMULATOR_PRICES, "
              "else lanewise's own table].")
def emulator(host: str, port: int, state_dir: Path | None, api_key: str | None,
             prices_path: Path | None, **overrides: Any) -> None:
    """Run the provider emulator (OpenAI and Anthropic APIs) in the foreground."""
    from lanewise.emulator.config import EmulatorConfig
    from lanewise.emulator.server import serve_forever
    from lanewise.settings import get_settings

    sections: dict[str, dict[str, Any]] = {"timing": {}, "faults": {}, "rate_limits": {}}
    for key, value in overrides.items():
        if value is not None:
            section, name = key.split("__", 1)
            sections[section][name] = value
    config = EmulatorConfig.model_validate({**sections, "api_key": api_key,
                                            "prices_path": prices_path})
    state_dir = state_dir or get_settings().home / "emulator"
    console.print(f"[bold]lanewise emulator[/] on http://{host}:{port} "
                  f"(OpenAI base_url http://{host}:{port}/v1, Anthropic base_url "
                  f"http://{host}:{port}); control at /_emulator; state in {state_dir}")
    serve_forever(config, host, port, state_dir)


@cli.command()
@click.option("--input", "input_url", default=None,
              help="Tickets to run over (default: data/tickets.parquet).")
def demo(input_url: str | None) -> None:
    """Run the main job end to end on the embedded defaults (emulator, no API key)."""
    from lanewise.demo import run_demo

    run_demo(console, input_url)


@cli.command()
@click.argument("task")
@click.option("--input", "input_url", required=True, help="Parquet, CSV or JSONL; path or s3://.")
@click.option("--date", "run_date", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Nightly run for this date's rows (rows by the task's date column).")
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Backfill from.")
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Backfill to.")
@click.option("--all-rows", is_flag=True, help="Every row of the input, no date filter.")
@click.option("--run-key", default=None, help="Override the run key (task plus date).")
@click.option("--wait", "wait_seconds", type=float, default=None,
              help="If another process drives this run key, wait up to this many seconds "
              "for it instead of stopping at once.")
def run(task: str, input_url: str, run_date, start, end, all_rows: bool,
        run_key: str | None, wait_seconds: float | None) -> None:
    """Run (or resume) one batch-lane run through its Prefect flow.

    Flows run against PREFECT_API_URL when it is set; otherwise against a temporary
    local Prefect server that stops with this command (even when it is killed).
    """
    import contextlib
    import os
    from datetime import datetime, timedelta, timezone

    from lanewise.catalog import load_catalog
    from lanewise.ops.prefect_server import early_temporary_server
    from lanewise.settings import get_settings

    if (start is None) != (end is None):
        raise click.UsageError("--start and --end go together")
    if start is not None and end < start:
        # Refused before anything is planned: no empty run is left in the ledger.
        raise click.UsageError(f"--end {end:%Y-%m-%d} is before --start {start:%Y-%m-%d}; "
                               "pick an end on or after the start")
    if wait_seconds is not None:
        os.environ["LANEWISE_LEASE_WAIT_SECONDS"] = str(wait_seconds)
        get_settings.cache_clear()
    if "://" not in input_url:
        # The run key keeps its input: the same file named from another folder is the
        # same input.
        input_url = os.path.abspath(input_url)
    settings = get_settings()
    load_catalog(settings.catalog_path).get(task)  # an unknown task starts nothing
    # Credentials kept in Prefect blocks are read from the API the flow will use, and
    # live in the database Prefect itself uses.
    from_blocks = settings.names_blocks  # credentials, provider settings or storage blocks
    with contextlib.ExitStack() as stack:
        # First thing: the temporary Prefect server (if one is needed), so that its
        # start overlaps all that this process does before the flow can run.
        early = stack.enter_context(early_temporary_server(settings.home,
                                                           own_database=not from_blocks))
        from lanewise.batch.context import DateWindow, context_for, run_key_for

        # The run key and window, resolved once here so the head start below and the
        # flow plan the same run.
        if start is not None:
            window = DateWindow(start.date(), end.date())
            run_key = run_key or run_key_for(task, window)
        else:
            # Yesterday in UTC, as a scheduled nightly run takes it (flow_params).
            day = run_date.date() if run_date else \
                datetime.now(timezone.utc).date() - timedelta(days=1)
            run_date = datetime.combine(day, datetime.min.time())
            window = None if all_rows else DateWindow(day, day)
            run_key = run_key or run_key_for(task, None, day)
        if not from_blocks:
            # The run's context (provider SDK and client, ledger, storage, prices), built
            # now rather than at the flow's start; with no API key this also starts (or
            # finds) the shared emulator, outside Prefect's logging.
            ctx = context_for(task)
            if early is not None or _flow_server_answers(settings.home):
                # The head start: plan the run and send its first wave before Prefect
                # is even imported (under the run's lease, which the flow's runner
                # keeps), while a temporary server starts; the flow finds it planned and
                # its batches sent. Prefect is imported and the flow started once it is
                # over (PlanAhead.wait), so they overlap the provider's work on the
                # first wave.
                from lanewise.batch.plan_ahead import PlanAhead

                stack.enter_context(PlanAhead(ctx, run_key, input_url, window)).wait()
        from flows.batch import backfill, nightly_batch
        from lanewise.batch.results import summarize
        from lanewise.ops.prefect_server import prefect_api
        from lanewise.reporting import print_runs

        with prefect_api(settings.home, launched=early, own_database=not from_blocks,
                         notice=_note):
            if from_blocks:
                context_for(task)
            if start is not None:
                brief = backfill(params=dict(task=task, start=start.date(), end=end.date(),
                                             input_url=input_url, run_key=run_key))
            else:
                brief = nightly_batch(params=dict(
                    task=task, input_url=input_url,
                    run_date=run_date.date() if run_date else None,
                    filter_by_date=not all_rows, run_key=run_key))
    ctx = context_for(task)
    summary = summarize(ctx.ledger, ctx.ledger.run_by_key(brief["run_key"])["id"])
    print_runs(console, [summary], "What the run cost")


def _flow_server_answers(home: Path) -> bool:
    """Whether the Prefect server the flow will use surely answers now: the one
    PREFECT_API_URL names in the environment, else the stack's of `home`. The head start
    sends batches before the flow exists, so it runs only then (a server that is down
    stops the run before anything is sent; a URL set only in Prefect's profile is not
    read here, so such a run has no head start)."""
    from lanewise.ops.stack_state import server_healthy, stack_api_url

    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        return server_healthy(configured)
    return stack_api_url(home) is not None


def _note(message: str) -> None:
    """One plain line on stderr (not wrapped, not styled)."""
    print(f"lanewise: {message}", file=sys.stderr, flush=True)


# `lanewise runs` (with `runs forget`) and `lanewise costs`: lanewise/cli_history.py.
cli.add_command(cli_history.runs)
cli.add_command(cli_history.costs)


@cli.command()
@click.argument("run_key")
def shards(run_key: str) -> None:
    """A run's shards: status, provider batch id, sizes."""
    from rich.table import Table

    from lanewise.ledger import existing_ledger
    from lanewise.pricing import from_picodollars
    from lanewise.reporting import usd
    from lanewise.settings import get_settings

    ledger = existing_ledger(get_settings())
    run = ledger.run_by_key(run_key)
    if run is None:
        raise click.ClickException(f"no run {run_key!r} in the ledger")
    table = Table(title=f"shards of {run_key} ({run['status']})", title_justify="left")
    numeric = ("requests", "MB", "cost")
    for column in ("shard", "status", "batch", "provider status", *numeric):
        table.add_column(column, justify="right" if column in numeric else "left")
    for shard in ledger.shards(run["id"]):
        cost = from_picodollars(ledger.totals(run["id"], shard["id"])["cost_picodollars"])
        table.add_row(shard["shard_key"], shard["status"], shard["provider_batch_id"] or "",
                      shard["provider_status"] or "", f"{shard['request_count']:,}",
                      f"{shard['bytes'] / 1e6:.2f}", usd(cost))
    console.print(table)


@cli.command()
@click.argument("shard_key")
@click.argument("batch_id")
@click.option("--task", required=True, help="The task of the shard's run.")
def attach(shard_key: str, batch_id: str, task: str) -> None:
    """Record the provider batch of a shard whose batch id a crash lost."""
    from lanewise.batch.context import LaneContext
    from lanewise.batch.steps import attach_batch

    attach_batch(LaneContext.build(task), shard_key, batch_id)
    console.print(f"shard {shard_key} now follows batch {batch_id}; rerun the run to go on")


@cli.command()
@click.option("--model", "models", multiple=True,
              help="Only this model (repeatable) [default: the snapshot's and the catalog's].")
@click.option("--table", "table_path", type=click.Path(path_type=Path), default=None,
              help="A price table in LiteLLM's format [default: LANEWISE_PRICES_PATH].")
def prices(models: tuple[str, ...], table_path: Path | None) -> None:
    """The price table (USD per million tokens) and the rates charged conservatively."""
    from rich.table import Table

    from lanewise.catalog import load_catalog
    from lanewise.pricing import BATCH_KEYS, LIVE_KEYS, PriceTable, per_million
    from lanewise.settings import get_settings

    settings = get_settings()
    table_path = table_path or settings.prices_path
    price_table = PriceTable.from_file(table_path)
    if not models:
        needed = {task.model for task in load_catalog(settings.catalog_path).tasks.values()}
        models = tuple(sorted(set(price_table.annotated_models()) | needed))
    rows = [price_table.price(model) for model in models]

    def shown(price: Any, key: str) -> str:
        value = price.rate_of(key)
        if value is None:
            return "-"
        return f"{per_million(value):f}" + ("*" if key in price.unconfirmed else "")

    console.print(f"Prices from {table_path}, USD per million tokens (* unconfirmed: "
                  "charged conservatively, see below)")
    labels = ("input", "output", "cached", "write 5m", "write 1h")
    for lane, lane_keys in (("Live (standard API)", LIVE_KEYS), ("Batch API", BATCH_KEYS)):
        rates = Table(title=lane, title_justify="left")
        rates.add_column("model", no_wrap=True)
        for label in labels:
            rates.add_column(label, justify="right")
        for price in rows:
            rates.add_row(price.model, *(shown(price, key) for key in lane_keys.values()))
        console.print(rates)
    sources = Table(title="Where each model's rates come from", title_justify="left")
    sources.add_column("model", no_wrap=True)
    sources.add_column("checked", no_wrap=True)
    sources.add_column("source", overflow="fold")
    for price in rows:
        sources.add_row(price.model, price.checked or "-", price.source or "-")
    console.print(sources)

    def rate_notes(title: str, why: str, notes: str) -> Table:
        """One row per (model, rate) with its note: `notes` names the ModelPrice dict."""
        table = Table(title=title, title_justify="left")
        for column in ("model", "rate", "charged", why):
            table.add_column(column, overflow="fold", no_wrap=column == "model",
                             justify="right" if column == "charged" else "left")
        for price in rows:
            for key, note in getattr(price, notes).items():
                table.add_row(price.model, key, shown(price, key), note)
        return table

    unconfirmed = rate_notes("Unconfirmed rates: no public figure, charged conservatively",
                             "why", "unconfirmed")
    if unconfirmed.row_count:
        console.print(unconfirmed)
    else:
        console.print("No unconfirmed rates: every rate shown has a public source.")
    derived = rate_notes("Rates lanewise derived or added, by a published rule", "rule",
                         "derived")
    if derived.row_count:
        console.print(derived)


@cli.command()
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Reconcile this UTC day [default: yesterday].")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Reconcile every UTC day from this one to today.")
@click.option("--provider", type=click.Choice(["openai", "anthropic"]), default=None,
              help="Only this provider [default: both; one without an admin key is skipped "
              "if the ledger holds none of its costs].")
@click.option("--tolerance", default=None, metavar="USD",
              help="Largest difference accepted per day, model and lane "
              "[default: LANEWISE_RECONCILE_TOLERANCE_USD, 0.01].")
def reconcile(day, since, provider: str | None, tolerance: str | None) -> None:
    """Compare the ledger's costs with the provider's own cost report.

    Reads OpenAI's organization costs API and Anthropic's cost report with an admin
    key (LANEWISE_OPENAI_ADMIN_KEY / LANEWISE_ANTHROPIC_ADMIN_KEY, or a
    lanewise-provider-admin-key block; the emulator's reports when the lane runs on the
    emulator), compares per UTC day, model and lane, and exits non-zero when any
    difference exceeds the tolerance.
    """
    from decimal import Decimal, InvalidOperation

    from lanewise.errors import ReconciliationError
    from lanewise.reconcile import period
    from lanewise.reconcile import reconcile as reconcile_costs

    try:
        limit = None if tolerance is None else Decimal(tolerance)
    except InvalidOperation:
        raise click.BadParameter(f"{tolerance!r} is not an amount of USD",
                                 param_hint="--tolerance") from None
    if limit is not None and limit < 0:
        raise click.BadParameter("must not be negative", param_hint="--tolerance")
    if day is not None and since is not None:
        raise click.UsageError("--date and --since exclude each other")
    start, end = period(day.date() if day else None, since.date() if since else None)
    report = reconcile_costs(start, end, provider=provider, tolerance_usd=limit)
    console.print(report.table())
    for note in report.notes():
        console.print(f"[dim]{note}[/]")
    if report.mismatches:
        raise ReconciliationError(report.message())
    console.print(f"[green]{report.message()}[/]")


def entry() -> None:
    """The `lanewise` script and `python -m lanewise`: `main`, after which the process
    ends once the exit handlers ran, without the interpreter's teardown (see
    `_exit_without_teardown`). In-process callers (tests) call `main` instead."""
    _exit_status["code"] = 0
    # pyarrow's default pool (mimalloc in its wheels) keeps what a run's input and
    # results files took: 35 MB of a 100,000-row run's peak RSS. The C library's
    # allocator gives it back. Read once, when pyarrow first allocates; the user's own
    # choice wins.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    # Registered before anything the command imports registers its own handlers, so it
    # runs after them (handlers run last-registered first); only logging's came earlier,
    # and `_exit_without_teardown` shuts logging down itself.
    atexit.register(_exit_without_teardown)
    try:
        main()
    except SystemExit as exc:
        _exit_status["code"] = exc.code if isinstance(exc.code, int) else \
            (0 if exc.code is None else 1)
        raise
    except KeyboardInterrupt:
        _exit_status["code"] = 130  # as a shell reports a command ended by Ctrl-C
        raise
    except BaseException:
        _exit_status["code"] = 1  # Python prints the traceback before the exit handlers
        raise


_exit_status: dict[str, int] = {"code": 0}


def _exit_without_teardown() -> None:
    """End the process once the exit handlers ran (threads joined, Prefect's logs and
    events sent, the temporary server stopped), skipping the interpreter's teardown:
    freeing every object of a large run one by one took 0.8 s after a 20,000-row run
    had finished. Logging and the standard streams are flushed first; every file
    lanewise writes is closed by its own `with` before this."""
    logging.shutdown()
    code = _exit_status["code"]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone (a pipe whose reader left)
            code = code or 120  # what Python exits with when it cannot flush stdout
    os._exit(code)


def main() -> None:
    """Entry point of the `lanewise` command: lanewise errors become one-line messages."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        error_console.print("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except LanewiseError as exc:
        error_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)


# `lanewise up`, `down` and `status` (the local stack): lanewise/cli_ops.py.
from lanewise import cli_ops  # noqa: E402 - registered after the group is defined

for _command in (cli_ops.up, cli_ops.down, cli_ops.status):
    cli.add_command(_command)

# `lanewise enqueue`, `result` and `queue` (the deferred-work queue): lanewise/cli_queue.py.
from lanewise import cli_queue  # noqa: E402 - registered after the group is defined

for _command in (cli_queue.enqueue, cli_queue.result, cli_queue.queue_counts):
    cli.add_command(_command)

# `lanewise serve` (the HTTP service over the live lane and the queue): lanewise/cli_serve.py.
from lanewise import cli_serve  # noqa: E402 - registered after the group is defined

cli.add_command(cli_serve.serve)

# `lanewise whatif` (a move tried before it is made): lanewise/cli_whatif.py; `lanewise
# sample-month` (a month of sample traffic for the audit): lanewise/cli_sample.py.
# `lanewise audit` (the routing review): lanewise/cli_audit.py.
from lanewise import cli_audit, cli_sample, cli_whatif  # noqa: E402 - registered after the group

cli.add_command(cli_audit.audit)
cli.add_command(cli_whatif.whatif)
cli.add_command(cli_sample.sample_month)
