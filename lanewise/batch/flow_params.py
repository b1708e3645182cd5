"""The flows' parameters as pydantic models: what the Prefect UI's custom-run form shows.

Each flow takes one model (`params`), so the form lists its fields with their
descriptions; the JSON schema Prefect derives from it refuses at submit what a schema
can say (a task not in the catalog, a date that is not a date, a missing field). What
it cannot say (an end before the start) the model's validator refuses when the run
starts, and the run fails at once with one line (`parse`).

Optional fields are written to the schema as their plain type, not as a choice between
the type and null: Prefect's UI renders that choice as `Property is type "None"`.
Prefect's server still accepts an omitted or null optional field (its validation
makes non-required fields without a default nullable).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import WithJsonSchema

from lanewise.catalog import LanePolicy, load_catalog
from lanewise.errors import ConfigurationError

SAMPLE_INPUT = "data/tickets.parquet"
M = TypeVar("M", bound=BaseModel)


def batch_task_names() -> list[str]:
    """The catalog's tasks that may run in the batch lane (lane batch or auto), sorted."""
    catalog = load_catalog()
    return sorted(name for name, spec in catalog.tasks.items() if spec.lane != LanePolicy.LIVE)


# Built from the catalog when this module is imported (by the flow modules): a task
# added to data/catalog.yaml is a choice in the form after the next deploy.
BatchTask = Enum("BatchTask", {name: name for name in batch_task_names()}, type=str)


def _clean_optional(schema: dict[str, Any]) -> None:
    """Show optional fields as their plain type: drop the null branch and a null default."""
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf")
        if branches and any(b.get("type") == "null" for b in branches):
            kept = [b for b in branches if b.get("type") != "null"]
            if len(kept) == 1:
                del prop["anyOf"]
                prop.update({k: v for k, v in kept[0].items() if k not in prop})
        if "default" in prop and prop["default"] is None:
            del prop["default"]


def _config(title: str) -> ConfigDict:
    """The models' config: `title` heads the form; unknown fields are refused."""
    return ConfigDict(title=title, json_schema_extra=_clean_optional, extra="forbid")


def _blank_is_none(value: Any) -> Any:
    """A text box cleared in the form sends "": that means not set."""
    return None if isinstance(value, str) and not value.strip() else value


TaskField = Annotated[BatchTask, WithJsonSchema(
    {"type": "string", "enum": [t.value for t in BatchTask]})]
INPUT_URL_DESCRIPTION = (
    "Where the tickets are: a path on the worker (relative to the project folder) or an "
    "s3:// URL. Parquet, CSV or JSONL, told by the file name (.parquet, .csv, .jsonl).")
RUN_KEY_DESCRIPTION = (
    "The run's key in the ledger. Leave empty: it is made from the task and the date(s), "
    "so running the same night or range again resumes that run and never pays twice. Set "
    "it only to start a separate run over the same dates.")


class NightlyParams(BaseModel):
    """One night of one task in the batch lane."""

    model_config = _config("Nightly run")

    task: TaskField = Field(title="Task", description="The catalog task to run.")
    run_date: date | None = Field(
        default=None, title="Night",
        description="The day whose rows are run (by the task's date column). Leave empty "
        "for the day before the run's scheduled time (UTC).")
    input_url: str = Field(default=SAMPLE_INPUT, title="Input", min_length=1,
                           description=INPUT_URL_DESCRIPTION)
    filter_by_date: bool = Field(
        default=True, title="Only that night's rows",
        description="Pick the rows dated on the night. Off: every row of the input (for a "
        "file already cut to one night).")
    run_key: str | None = Field(default=None, title="Run key", description=RUN_KEY_DESCRIPTION)

    _blank = field_validator("run_key", "run_date", mode="before")(_blank_is_none)

    def day(self) -> date:
        """The night this run covers."""
        return self.run_date or scheduled_day() - timedelta(days=1)


class BackfillParams(BaseModel):
    """One task over a range of days in the batch lane."""

    model_config = _config("Backfill")

    task: TaskField = Field(title="Task", description="The catalog task to run.")
    start: date = Field(title="Start", description="First day of the range (inclusive).")
    end: date = Field(title="End", description="Last day of the range (inclusive); on or "
                      "after the start.")
    input_url: str = Field(default=SAMPLE_INPUT, title="Input", min_length=1,
                           description=INPUT_URL_DESCRIPTION)
    run_key: str | None = Field(default=None, title="Run key", description=RUN_KEY_DESCRIPTION)

    _blank = field_validator("run_key", mode="before")(_blank_is_none)

    @model_validator(mode="after")
    def _end_not_before_start(self) -> BackfillParams:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}; pick an end on "
                             "or after the start")
        return self


class DigestParams(BaseModel):
    """One week of ticket summaries grouped into themes."""

    model_config = _config("Weekly digest")

    week_of: date | None = Field(
        default=None, title="Week of",
        description="Any day of the week to digest (weeks run Monday to Sunday). Leave empty "
        "for the last full week before the run's scheduled time (UTC).")
    run_key: str | None = Field(default=None, title="Run key", description=RUN_KEY_DESCRIPTION)

    _blank = field_validator("run_key", "week_of", mode="before")(_blank_is_none)

    def week(self) -> tuple[date, date]:
        """The Monday and Sunday of the week to digest."""
        if self.week_of is not None:
            monday = self.week_of - timedelta(days=self.week_of.weekday())
        else:
            today = scheduled_day()
            monday = today - timedelta(days=today.weekday() + 7)
        return monday, monday + timedelta(days=6)


def scheduled_day() -> date:
    """The UTC day of the current flow run's scheduled start (today outside a flow run),
    so a retried or late run still covers the night or week it was scheduled for."""
    try:
        from prefect.runtime import flow_run

        when = flow_run.scheduled_start_time
    except Exception:  # noqa: BLE001 - outside a flow run there is no schedule
        when = None
    if not isinstance(when, datetime):
        when = datetime.now(timezone.utc)
    when = when.astimezone(timezone.utc) if when.tzinfo else when
    return date(when.year, when.month, when.day)


def parse(model: type[M], raw: Any) -> M:
    """`raw` (a model, or the dict a deployment run passes) as `model`, or a
    ConfigurationError whose message is one line naming every bad field."""
    if isinstance(raw, model):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ConfigurationError("bad parameters, nothing was run: "
                                 + "; ".join(problems)) from None


def _raw_params() -> dict[str, Any]:
    """The current flow run's `params`, as given (a dict from a deployment run)."""
    from prefect.runtime import flow_run

    raw = (flow_run.parameters or {}).get("params")
    return raw.model_dump() if isinstance(raw, BaseModel) else dict(raw or {})


def _task_text(raw: dict[str, Any]) -> str:
    task = raw.get("task")
    return str(getattr(task, "value", task) or "no task")


def nightly_run_name() -> str:
    """The flow run's name: the task and the night (`ticket-tagging 2026-11-29`)."""
    try:
        raw = _raw_params()
        try:
            day = parse(NightlyParams, raw).day().isoformat()
        except ConfigurationError:
            day = str(raw.get("run_date") or "bad parameters")
        every = "" if raw.get("filter_by_date", True) else " (all rows)"
        return f"{_task_text(raw)} {day}{every}"
    except Exception:  # noqa: BLE001 - a name must never stop a run
        return "nightly-batch"


def backfill_run_name() -> str:
    """The flow run's name: the task and the range (`ticket-tagging 2026-11-01..2026-11-07`)."""
    try:
        raw = _raw_params()
        start, end = str(raw.get("start") or "?"), str(raw.get("end") or "?")
        return f"{_task_text(raw)} {start if start == end else f'{start}..{end}'}"
    except Exception:  # noqa: BLE001 - a name must never stop a run
        return "backfill"


def digest_run_name() -> str:
    """The flow run's name: the digest task and the week (`weekly-digest MON..SUN`)."""
    from lanewise.batch.digest import DIGEST_TASK

    try:
        monday, sunday = parse(DigestParams, _raw_params()).week()
        return f"{DIGEST_TASK} {monday}..{sunday}"
    except Exception:  # noqa: BLE001 - a name must never stop a run
        return DIGEST_TASK
