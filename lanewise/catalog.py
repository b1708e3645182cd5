"""The task catalog: what each AI task of the product is, as data in `data/`."""

from __future__ import annotations

import string
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from lanewise.errors import ConfigurationError


class LanePolicy(StrEnum):
    """Which lane a task runs in."""

    LIVE = "live"
    BATCH = "batch"
    AUTO = "auto"


class InputSpec(BaseModel):
    """How input rows map onto requests."""

    key: str = Field(description="Column holding each row's stable key (e.g. the ticket id).")
    required: list[str] = Field(default_factory=list,
                                description="Columns that must be present and non-empty.")
    date_column: str | None = Field(
        default=None, description="Column of each row's date, for nightly and backfill "
        "runs over a date range.")


class PromptSpec(BaseModel):
    """The prompt: an optional system text and a user template over input columns."""

    system: str | None = None
    user: str

    def columns(self) -> frozenset[str]:
        """Input columns the templates refer to (parsed once per pair of templates:
        planning asks for every row)."""
        return _template_columns(self.system or "", self.user)


@lru_cache(maxsize=256)
def _template_columns(*templates: str) -> frozenset[str]:
    return frozenset(field for template in templates
                     for _, field, _, _ in string.Formatter().parse(template) if field)


class OutputSpec(BaseModel):
    """What comes back: free text, or JSON matching a schema."""

    type: Literal["text", "json"] = "text"
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")

    @model_validator(mode="after")
    def _schema_for_json(self) -> OutputSpec:
        if self.type == "json" and not self.json_schema:
            raise ValueError("output.type json needs output.schema")
        return self

    def fields(self) -> list[str]:
        """Top-level fields of the JSON output, in schema order."""
        if self.json_schema is None:
            return []
        return list(self.json_schema.get("properties", {}))


class FallbackSpec(BaseModel):
    """One step of a task's live fallback policy (tried in order when the task's own
    model cannot answer within the budget): another model, a cached answer, or defer."""

    kind: Literal["model", "cache", "defer"]
    provider: Literal["openai", "anthropic"] | None = Field(
        default=None, description="For `model`: the provider of the fallback model (the "
        "prompt is rendered again for its adapter).")
    model: str | None = Field(default=None, description="For `model`: the fallback model.")

    @model_validator(mode="after")
    def _model_needs_target(self) -> FallbackSpec:
        if self.kind == "model" and not (self.provider and self.model):
            raise ValueError("a `model` fallback needs a provider and a model")
        if self.kind != "model" and (self.provider or self.model):
            raise ValueError(f"a `{self.kind}` fallback takes no provider or model")
        return self


class LiveSpec(BaseModel):
    """How the live lane answers the task: its latency budget, retries and fallbacks."""

    latency_budget_ms: int = Field(
        10_000, gt=0, description="Longest a live call may take, retries and fallbacks "
        "included; a retry whose wait would overrun it is not made.")
    primary_share: float = Field(
        0.6, gt=0, le=1, description="Share of the budget the task's own model may use, "
        "retries included, before the model fallbacks get the rest (all of it when the "
        "task has no model fallback).")
    max_attempts: int = Field(3, ge=1, description="Most calls per model (first call "
                              "plus retries on 429, 5xx and 529).")
    fallbacks: list[FallbackSpec] = Field(default_factory=list)


class CacheSpec(BaseModel):
    """Whether the task's answers go to the result cache shared by both lanes, and how
    long one is reused (lanewise/cache.py)."""

    enabled: bool = Field(False, description="Answer requests from the result cache when "
                          "an identical request (same content hash) was answered before, "
                          "in either lane, and store this task's succeeded answers there.")
    ttl_hours: float | None = Field(
        default=None, gt=0, description="How long a cached answer is reused, from when it "
        "was answered; none: until the request changes.")


class BudgetSpec(BaseModel):
    """What a task may spend (USD), enforced by both lanes: a batch run whose upper-bound
    estimate would pass the per-run ceiling or what is left of the day's or month's
    budget is refused before it sends anything; the live lane stops paying once the
    day's or month's budget is spent and answers by the task's cache or defer fallback."""

    daily_usd: Decimal | None = Field(
        default=None, gt=0, description="Most the task may spend in one UTC day, both "
        "lanes together.")
    monthly_usd: Decimal | None = Field(
        default=None, gt=0, description="Most the task may spend in one UTC calendar "
        "month, both lanes together.")
    run_ceiling_usd: Decimal | None = Field(
        default=None, gt=0, description="Most one batch run of the task may cost, by its "
        "upper-bound estimate (every request at the task's max output tokens).")

    def is_set(self) -> bool:
        """Whether any limit is set."""
        return any(v is not None for v in (self.daily_usd, self.monthly_usd,
                                           self.run_ceiling_usd))


#: Days in each period an expected volume may be declared per.
VOLUME_PERIOD_DAYS = {"day": 1, "week": 7, "month": 30}


class TaskSpec(BaseModel):
    """One AI task of the product: prompt, model, output, lane policy and limits."""

    name: str
    description: str = ""
    owner: str = ""
    provider: Literal["openai", "anthropic"]
    model: str
    lane: LanePolicy = LanePolicy.BATCH
    person_waits: bool = False
    max_delay_hours: float = 24
    expected_volume: int = Field(0, ge=0, description="Requests the task is expected to "
                                 "make per `expected_volume_period` (the audit compares "
                                 "the measured volume with it).")
    expected_volume_period: Literal["day", "week", "month"] = "day"
    retry_budget: int = Field(2, ge=0)
    input: InputSpec
    prompt: PromptSpec
    max_input_tokens: int = Field(8000, gt=0)
    oversize: Literal["excerpt", "reject"] = "excerpt"
    max_output_tokens: int = Field(256, gt=0)
    output: OutputSpec = Field(default_factory=OutputSpec)
    live: LiveSpec = Field(default_factory=LiveSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)

    def expected_per_day(self) -> float:
        """The declared volume as requests per day."""
        return self.expected_volume / VOLUME_PERIOD_DAYS[self.expected_volume_period]


class Catalog:
    """All task specs, by name."""

    def __init__(self, tasks: dict[str, TaskSpec]) -> None:
        self.tasks = tasks

    @classmethod
    def from_file(cls, path: Path) -> Catalog:
        """Load and check the catalog file."""
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"cannot read task catalog {path}: {exc}") from exc
        tasks = {}
        for name, body in (raw.get("tasks") or {}).items():
            try:
                tasks[name] = TaskSpec.model_validate({"name": name, **(body or {})})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ConfigurationError(
                    f"task catalog {path}: task {name!r}, field {where}: {first['msg']}"
                ) from exc
        return cls(tasks)

    def get(self, name: str) -> TaskSpec:
        """The spec of task `name`, or an error naming the known tasks."""
        try:
            return self.tasks[name]
        except KeyError:
            raise ConfigurationError(
                f"no task {name!r} in the catalog (known: {', '.join(sorted(self.tasks))})"
            ) from None


def load_catalog(path: Path | None = None) -> Catalog:
    """The catalog at `path`, or at the configured catalog path."""
    from lanewise.settings import get_settings

    return Catalog.from_file(path or get_settings().catalog_path)
