"""Helpers for the live-lane tests: a catalog with tuned live settings, lanes on the
test emulator, the emulator's live billing, the ledger's live_calls."""

from __future__ import annotations

import copy
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml

from lanewise.ledger.schema import live_calls
from lanewise.pricing import from_picodollars
from lanewise.settings import DATA_DIR, Settings


def ticket(i: int, body: str | None = None) -> dict[str, Any]:
    """One ticket row, distinct per `i` (so no two share a content hash)."""
    return {"ticket_id": f"T-{i}", "subject": "Export",
            "body": body or f"The CSV export fails on invoice {i}. Please help.",
            "created_at": "2026-11-30"}


def write_catalog(folder: Path, **tasks: dict[str, Any]) -> Path:
    """The shipped catalog with some tasks' fields replaced (e.g. reply_draft={"live":
    {...}}; underscores stand for the dashes of task names)."""
    raw = yaml.safe_load((DATA_DIR / "catalog.yaml").read_text())
    for name, changes in tasks.items():
        spec = raw["tasks"][name.replace("_", "-")]
        for field, value in changes.items():
            spec[field] = copy.deepcopy(value)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def live_settings(tmp_path: Path, emulator: Any, **fields: Any) -> Settings:
    """Settings on the test emulator with a home under tmp_path and no Redis unless given."""
    values: dict[str, Any] = {"home": tmp_path / "home", "emulator_url": emulator.url,
                              "redis_url": None, "database_url": None}
    values.update(fields)
    return Settings(**values)


def billed_live(emulator: Any, since: float) -> tuple[int, Decimal]:
    """(requests, USD) the emulator billed on the live lane since `since`."""
    total = httpx.get(f"{emulator.url}/_emulator/billing",
                      params={"lane": "live", "since": since}).json()["total"]
    return total["requests"], Decimal(total["cost_usd"])


def recorded(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every live_calls row, oldest first."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(live_calls).order_by(live_calls.c.id)).mappings()]


def recorded_cost(engine: sa.Engine) -> Decimal:
    """The ledger's live cost, USD."""
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.coalesce(
            sa.func.sum(live_calls.c.cost_picodollars), 0))).scalar_one()
    return from_picodollars(int(total))


def wall(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """fn's result and the wall-clock milliseconds it took."""
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, (time.perf_counter() - started) * 1000
