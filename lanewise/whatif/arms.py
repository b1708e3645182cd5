"""The sample's arms: the same requests run through one route (lane, provider, model)
by lanewise's own lanes, in a scratch home.

Each arm gets its own home (a temporary folder): its own SQLite ledger, storage root,
live journal, and a catalog holding only a copy of the task with the arm's lane,
provider and model, with the result cache off (so no answer is taken from the other
arm, or from an earlier request, unpaid) and no budget (the sample is not the task's
production spend). The production ledger, storage and catalog are never opened for
writing: the audit and `lanewise costs` never see the sample.

The live arm is a `LiveLane` over those settings, called once per request in turn (its
latency is the wait). The batch arm writes the requests to a JSONL file in its home
and runs `run_batch_lane` on it directly, without Prefect (its wait is from the arm's
start to the end of each request's batch).

Where the requests go: by default an emulator (`endpoint`), reached through the
settings' API key and base URL fields so that no key in the environment can send the
sample to a real provider; with `real` the configured credentials are used as the lanes
use them (real providers, real money; a provider without a key is then an error).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from pydantic import SecretStr

from lanewise.catalog import BudgetSpec, CacheSpec, LanePolicy, TaskSpec
from lanewise.errors import LanewiseError
from lanewise.ledger.schema import items, live_calls, runs, shards
from lanewise.pricing import to_picodollars
from lanewise.settings import Settings
from lanewise.whatif.agreement import Answer
from lanewise.whatif.proposal import Route

#: The run key of a batch arm's run (in the arm's own scratch ledger), plus the arm.
SAMPLE_RUN_KEY = "whatif-sample"
#: Marks the sample's live calls in the scratch ledger.
SAMPLE_CONTEXT = {"whatif": "sample"}


@dataclass
class ArmResult:
    """What one arm did: its answers by request key, cost and waits."""

    name: str  # current | proposed
    route: Route
    answers: dict[str, Answer]
    cost_picodollars: int
    billed: int  # requests the provider billed
    wall_seconds: float
    answered_by: dict[str, int] = field(default_factory=dict)
    batch_ids: list[str] = field(default_factory=list)

    def waits(self) -> list[float]:
        """Seconds each answered request waited."""
        return [a.wait_seconds for a in self.answers.values() if a.wait_seconds is not None]

    def statuses(self) -> dict[str, int]:
        """Requests by outcome."""
        return dict(Counter(a.status for a in self.answers.values()))


def arm_task(task: TaskSpec, route: Route) -> TaskSpec:
    """The task as an arm runs it: its route, no result cache, no budget."""
    return task.model_copy(update={"lane": LanePolicy(route.lane), "provider": route.provider,
                                   "model": route.model, "cache": CacheSpec(enabled=False),
                                   "budget": BudgetSpec()})


def write_catalog(task: TaskSpec, path: Path) -> Path:
    """A catalog file holding only `task`."""
    body = task.model_dump(mode="json", by_alias=True, exclude={"name"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"tasks": {task.name: body}}, sort_keys=False))
    return path


def scratch_settings(base: Settings, home: Path, catalog: Path,
                     emulator_url: str | None) -> Settings:
    """`base` with everything an arm writes moved into `home`, and its provider calls
    sent to `emulator_url` (None: the configured credentials, real providers)."""
    update: dict[str, Any] = {
        "home": home, "database_url": None, "storage_root": None, "storage_block": None,
        "catalog_path": catalog, "lease_wait_seconds": 0.0, "live_record_fsync": False}
    if emulator_url is None:
        # Real providers only: a provider without a configured key is an error, never
        # the emulator in disguise.
        return base.with_blocks().model_copy(update={**update, "use_emulator": False})
    from lanewise.emulator import EMULATOR_API_KEY

    url = emulator_url.rstrip("/")
    key = SecretStr(EMULATOR_API_KEY)
    update.update({
        # A key and base URL in the settings win over any key in the environment.
        "openai_api_key": key, "anthropic_api_key": key, "openai_base_url": f"{url}/v1",
        "anthropic_base_url": url, "emulator_url": url, "use_emulator": True,
        "openai_credentials_block": None, "anthropic_credentials_block": None,
        "openai_settings_block": None, "anthropic_settings_block": None,
        # The production rate-limit counters are not the emulator's business.
        "redis_url": None})
    return base.model_copy(update=update)


@contextlib.contextmanager
def endpoint(settings: Settings, scratch: Path, emulator_url: str | None,
             real: bool) -> Iterator[str | None]:
    """Where the sample's requests go: `emulator_url`; else LANEWISE_EMULATOR_URL; else
    an emulator of its own, started here for the sample (not the shared background
    emulator of LANEWISE_HOME, whose billing record `lanewise reconcile` compares the
    production ledger with); None with `real` (the configured providers)."""
    if real:
        yield None
        return
    url = emulator_url or settings.emulator_url
    if url:
        yield url
        return
    from lanewise.emulator import EmulatorConfig, running_emulator

    with running_emulator(EmulatorConfig(prices_path=settings.prices_path),
                          state_dir=scratch / "emulator") as emulator:
        yield emulator.url


def _normal(row: dict[str, Any]) -> dict[str, Any]:
    """The row as JSON gives it back, so both arms see the very same values."""
    return json.loads(json.dumps(row, ensure_ascii=False, default=str))


def run_live(name: str, route: Route, settings: Settings, task: str,
             rows: list[tuple[str, dict[str, Any]]]) -> ArmResult:
    """The requests through the live lane, one after the other."""
    from lanewise.live.lane import LiveLane

    lane = LiveLane(settings)
    answers: dict[str, Answer] = {}
    started = time.monotonic()
    try:
        for key, row in rows:
            try:
                result = lane.call(task, _normal(row), context=SAMPLE_CONTEXT)
            except LanewiseError as exc:
                answers[key] = Answer(key, "failed", None, str(exc))
                continue
            answers[key] = Answer(key, result.status, result.text, result.error,
                                  result.latency_ms / 1000, result.answered_by)
        wall = time.monotonic() - started
        with lane.ledger.engine.connect() as conn:
            cost, billed = conn.execute(sa.select(
                sa.func.coalesce(sa.func.sum(live_calls.c.cost_picodollars), 0),
                sa.func.coalesce(sa.func.sum(sa.case(
                    (live_calls.c.cost_picodollars > 0, 1), else_=0)), 0))).one()
    finally:
        lane.close()
    used = Counter(a.answered_by for a in answers.values() if a.answered_by)
    return ArmResult(name, route, answers, int(cost), int(billed), wall, dict(used))


def run_batch(name: str, route: Route, settings: Settings, task: str,
              rows: list[tuple[str, dict[str, Any]]]) -> ArmResult:
    """The requests as one batch-lane run over a JSONL file, driven here (no Prefect)."""
    from lanewise.batch.context import LaneContext
    from lanewise.batch.runner import run_batch_lane

    path = settings.home / "sample.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for _, row in rows:
            out.write(json.dumps(_normal(row), ensure_ascii=False) + "\n")
    keys = {number: key for number, (key, _) in enumerate(rows, start=1)}
    run_key = f"{SAMPLE_RUN_KEY}:{name}"
    ctx = LaneContext.build(task, settings)
    started, clock = time.time(), time.monotonic()
    try:
        summary = run_batch_lane(ctx, run_key, str(path))
        wall = time.monotonic() - clock
        end = sa.func.coalesce(shards.c.ended_at, runs.c.finished_at)
        query = (sa.select(items.c.row_number, items.c.status, items.c.output_text,
                           items.c.error_reason, end)
                 .select_from(items.join(runs, runs.c.id == items.c.run_id)
                              .outerjoin(shards, shards.c.id == items.c.shard_id))
                 .where(runs.c.run_key == run_key))
        answers: dict[str, Answer] = {}
        with ctx.ledger.engine.connect() as conn:
            for number, status, text, error, ended in conn.execute(query):
                key = keys[int(number)]
                answered = status in ("succeeded", "invalid_output")
                answers[key] = Answer(key, status, text, error,
                                      max(float(ended) - started, 0.0)
                                      if answered and ended is not None else None)
    finally:
        ctx.ledger.engine.dispose()
        with contextlib.suppress(Exception):  # the client's close is housekeeping
            ctx.adapter.client.close()  # type: ignore[attr-defined]
    billed = summary.counts.get("succeeded", 0) + summary.counts.get("invalid_output", 0)
    return ArmResult(name, route, answers, to_picodollars(summary.cost_usd), billed, wall,
                     batch_ids=list(summary.batch_ids))


def run_arm(name: str, task: TaskSpec, route: Route, base: Settings, scratch: Path,
            url: str | None, rows: list[tuple[str, dict[str, Any]]]) -> ArmResult:
    """One arm in its own scratch home under `scratch`."""
    home = scratch / name
    catalog = write_catalog(arm_task(task, route), home / "catalog.yaml")
    settings = scratch_settings(base, home, catalog, url)
    run = run_live if route.lane == "live" else run_batch
    return run(name, route, settings, task.name, rows)
