"""What each batch flow does, from its parameters to its final state; the flow files
only call these.

Every run ends in a state whose message is its outcome in one line (rows, succeeded,
failed, cost, saving), with the run's brief as its data. Bad parameters fail the run
before anything runs, with one line naming every bad field; a run that had no rows
completes with a warning that says so (in the logs, the state message and the summary
artifact), never silently green.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from prefect.logging import get_run_logger
from prefect.states import Completed, Failed, State

from lanewise.batch.context import DateWindow, run_key_for
from lanewise.batch.digest import DIGEST_TASK, SOURCE_TASK, build_digest_input, themes_markdown
from lanewise.batch.flow_params import BackfillParams, DigestParams, NightlyParams, parse
from lanewise.batch.prefect_tasks import LANE, context_for, run_in_prefect
from lanewise.batch.progress import artifact_key
from lanewise.batch.results import RunSummary
from lanewise.errors import BudgetExceededError, ConfigurationError


def refused(exc: ConfigurationError | BudgetExceededError) -> State:
    """The failed state of a run refused for its parameters or its task's budget (the
    error is its data, so a caller in Python gets it raised)."""
    get_run_logger().error("%s", exc)
    return Failed(message=str(exc), data=exc)


def finished(summary: RunSummary, extra: dict[str, Any] | None = None) -> State:
    """The completed state of a run: its outcome line as the message, logged too (as a
    warning when the run had nothing to do)."""
    line = summary.outcome_line()
    logger = get_run_logger()
    if summary.empty_note() is not None:
        logger.warning("%s", line)
    else:
        logger.info("%s", line)
    return Completed(message=line, data={**summary.brief(), **(extra or {})})


def nightly(raw: Any) -> State:
    """One night of one task (the day before the scheduled time unless given)."""
    try:
        params = parse(NightlyParams, raw)
    except ConfigurationError as exc:
        return refused(exc)
    task, day = params.task.value, params.day()
    window = DateWindow(day, day) if params.filter_by_date else None
    run_key = params.run_key or run_key_for(task, None, day)
    try:
        summary = run_in_prefect(task, run_key, params.input_url, window)
    except BudgetExceededError as exc:
        return refused(exc)
    publish_cost_history(task)
    return finished(summary)


COST_HISTORY_DAYS = 30


def publish_cost_history(task: str) -> None:
    """From a deployment's nightly run: the task's daily cost over the last 30 UTC days
    (costs are dated by the day their batches ended) against the all-live cost, chart
    included, under one stable key, so the UI shows how it moved night after night. A
    nightly run started by hand (`lanewise run`) skips it: `lanewise costs --chart`
    draws the same on demand."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import deployment

    if not deployment.id:
        return
    from lanewise.costs import cost_history_markdown

    today = datetime.now(timezone.utc).date()
    since = today - timedelta(days=COST_HISTORY_DAYS - 1)
    create_markdown_artifact(
        cost_history_markdown(context_for(task).ledger, since, today, task=task, lane=LANE),
        key=artifact_key(task, LANE, "cost-history"),
        description=f"Daily cost of {task} ({LANE} lane) over {COST_HISTORY_DAYS} days "
                    "against the same traffic all-live")


def backfill(raw: Any) -> State:
    """One task over every row dated from start to end (inclusive)."""
    try:
        params = parse(BackfillParams, raw)
    except ConfigurationError as exc:
        return refused(exc)
    task = params.task.value
    window = DateWindow(params.start, params.end)
    run_key = params.run_key or run_key_for(task, window)
    try:
        return finished(run_in_prefect(task, run_key, params.input_url, window))
    except BudgetExceededError as exc:
        return refused(exc)


def weekly_digest(raw: Any) -> State:
    """Group one week's ticket summaries into themes (the last full week by default)."""
    from prefect.artifacts import create_markdown_artifact

    try:
        params = parse(DigestParams, raw)
    except ConfigurationError as exc:
        return refused(exc)
    week = DateWindow(*params.week())
    run_key = params.run_key or run_key_for(DIGEST_TASK, week)
    ctx = context_for(DIGEST_TASK)
    logger = get_run_logger()
    built = build_digest_input(ctx, week, run_key)
    if built.missing_days:
        logger.warning("no finished %s run covers %s: those days' tickets are not in the "
                       "digest", SOURCE_TASK, ", ".join(d.isoformat() for d in built.missing_days))
    logger.info("digest input %s: %d ticket summaries from %d run(s) in %d row(s)", built.url,
                built.tickets, len(built.runs), built.rows)
    label = f"{DIGEST_TASK} {week.start}..{week.end}"
    if not built.rows:
        note = (f"no ticket summaries for the week {week.start}..{week.end} (no finished "
                f"{SOURCE_TASK} run with a window inside it): nothing was sent and nothing "
                "was paid")
        create_markdown_artifact(f"# {label}\n\n> **Warning**: {note}.\n",
                                 key=artifact_key(DIGEST_TASK, LANE, "summary"),
                                 description=f"Summary of {label}: WARNING: {note}")
        logger.warning("WARNING: %s: %s", label, note)
        return Completed(message=f"WARNING: {label}: {note}",
                         data={"run_key": run_key, "rows": 0, "tickets": 0})
    try:
        summary = run_in_prefect(DIGEST_TASK, run_key, built.url, week)
    except BudgetExceededError as exc:
        return refused(exc)
    if summary.results_url:
        create_markdown_artifact(themes_markdown(ctx, summary.results_url, f"Themes of {label}"),
                                 key=artifact_key(DIGEST_TASK, LANE, "themes"),
                                 description=f"Recurring themes of {built.tickets} tickets, "
                                 f"{week.start}..{week.end}")
    return finished(summary, {"tickets": built.tickets, "source_runs": built.runs})
