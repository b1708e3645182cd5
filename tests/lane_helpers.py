"""Helpers for batch-lane tests: small inputs, contexts on the test emulator, checks."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx

from lanewise.batch.context import LaneContext
from lanewise.ledger import Ledger
from lanewise.sampledata import write
from lanewise.settings import Settings


class SimulatedCrash(BaseException):  # noqa: N818 - stands for a killed process
    """Raised by the crash hook; BaseException so nothing on the way catches it."""


def crash_at(point: str, times: int = 1):
    """A crash hook that kills the run the first `times` times `point` is reached."""
    remaining = {"n": times}

    def hook(reached: str) -> None:
        if reached == point and remaining["n"] > 0:
            remaining["n"] -= 1
            raise SimulatedCrash(point)

    return hook


def sample_input(tmp_path: Path, rows: int = 60) -> str:
    """A small ticket file with the deliberately bad rows at its end."""
    path = tmp_path / f"tickets-{rows}.parquet"
    if not path.exists():
        write(rows, path, seed=7, clean=False)
    return str(path)


def make_context(task: str, emulator, tmp_path: Path, ledger_url: str | None = None,
                 **overrides) -> LaneContext:
    """A lane context on the test emulator, with its own ledger and storage."""
    settings = Settings(home=tmp_path / "home", emulator_url=emulator.url,
                        database_url=ledger_url, poll_initial_seconds=0.05,
                        poll_max_seconds=0.2)
    ledger = overrides.pop("ledger", None) or Ledger(settings.resolved_database_url)
    return LaneContext.build(task, settings, ledger=ledger, **overrides)


def billed_for(emulator, batch_ids: list[str]) -> Decimal:
    """What the emulator billed for these batches."""
    total = Decimal(0)
    for batch_id in batch_ids:
        response = httpx.get(f"{emulator.url}/_emulator/billing", params={"batch_id": batch_id})
        total += Decimal(response.json()["total"]["cost_usd"])
    return total


def batches_created(emulator) -> int:
    """Batches the emulator has created, both providers."""
    stats = emulator.state.snapshot()
    return stats["openai_batches_created"] + stats["anthropic_batches_created"]


TERMINAL = {"succeeded", "invalid_output", "failed", "rejected"}
