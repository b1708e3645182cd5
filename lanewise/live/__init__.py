"""The live lane as a library: answer one task for one row now.

    from lanewise.live import call
    result = call("reply-draft", {"ticket_id": "T-1", "body": "..."},
                  context={"agent": "ana"})
    result.status, result.output, result.answered_by, result.cost_usd

`call` blocks; `acall` is its coroutine twin (async SDK clients). Both use the
process's `LiveLane` for the settings given (default: the process-wide settings), built
on first use: see `lane.py` (what a call does), `policy.py` (retries, latency budget,
fallbacks), `limits.py` / `shared_limits.py` (rate limits, in-process or in Redis)
and `record.py` (the ledger's `live_calls`, and why no record is lost).

Unknown tasks raise ConfigurationError (naming the known ones); a row that cannot
make a request raises InputError (naming the field); a provider that fails past the
budget and the fallbacks gives a LiveResult with status `failed`, not an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lanewise.live.lane import LiveLane, LiveResult
    from lanewise.settings import Settings

__all__ = ["LiveLane", "LiveResult", "acall", "call", "close_lanes", "get_lane"]


def call(task: str, row: Mapping[str, Any], *, context: Mapping[str, Any] | None = None,
         settings: Settings | None = None) -> LiveResult:
    """Answer `row` for `task` now; `context` (JSON-ready) is recorded with the call."""
    from lanewise.live.lane import get_lane

    return get_lane(settings).call(task, row, context=context)


async def acall(task: str, row: Mapping[str, Any], *,
                context: Mapping[str, Any] | None = None,
                settings: Settings | None = None) -> LiveResult:
    """`call` as a coroutine."""
    from lanewise.live.lane import get_lane

    return await get_lane(settings).acall(task, row, context=context)


def get_lane(settings: Settings | None = None) -> LiveLane:
    """The process's live lane for `settings` (built on first use)."""
    from lanewise.live.lane import get_lane as lane_for

    return lane_for(settings)


def close_lanes() -> None:
    """Close every live lane of the process (its clients and ledger engine)."""
    from lanewise.live.lane import close_lanes as close_all

    close_all()


def __getattr__(name: str) -> Any:
    if name in ("LiveLane", "LiveResult"):
        from lanewise.live import lane

        return getattr(lane, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
