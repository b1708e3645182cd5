"""Moving replayed records to the simulated time they stand for.

The sample month runs in minutes of wall time; each record it leaves is then dated at
the moment of the month it represents, so the ledger reads as a month of traffic.
Durations are kept (a live call's latency is its real latency) or, for the batch lane,
stretched by a stated factor (`BatchTimeline.scale`): the emulator ends a batch in about
a second, a provider in minutes to hours. Each move is one transaction.

Only the sample's own records are moved (by live call id and by run id), never others.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from lanewise.ledger import Ledger
from lanewise.ledger.schema import items, live_calls, result_cache, runs, shards

SHARD_TIMES = ("intent_at", "submitted_at", "ended_at")
CHUNK = 500


@dataclass(frozen=True)
class BatchTimeline:
    """Where a replayed run goes: it starts at `at`, and every moment of it that was
    `t` seconds after its real start lands `t * scale` seconds after `at`."""

    at: datetime
    scale: float = 1.0

    def place(self, real_start: float, moment: float | None) -> float | None:
        """The simulated epoch of a real epoch `moment` of a run that started at
        `real_start`."""
        if moment is None:
            return None
        return self.at.timestamp() + (moment - real_start) * self.scale


def _move_cache(conn: sa.Connection, sources: list[str], shift_of: dict[str, float]) -> None:
    """Move cache entries by the shift their source got (expiry keeps its distance)."""
    for first in range(0, len(sources), CHUNK):
        chunk = sources[first:first + CHUNK]
        for source, created, expires in conn.execute(
                sa.select(result_cache.c.source, result_cache.c.created_at,
                          result_cache.c.expires_at)
                .where(result_cache.c.source.in_(chunk))).all():
            shift = shift_of[source]
            conn.execute(result_cache.update().where(result_cache.c.source == source).values(
                created_at=created + shift,
                expires_at=None if expires is None else expires + shift))


def date_live_calls(ledger: Ledger, moments: dict[int, datetime]) -> None:
    """Date each live call (by id) at its moment (when its answer came back), with its
    cache entry, in one transaction."""
    if not moments:
        return
    ids = list(moments)
    with ledger._write() as conn:
        shift_of: dict[str, float] = {}
        for first in range(0, len(ids), CHUNK):
            for call_id, created in conn.execute(
                    sa.select(live_calls.c.id, live_calls.c.created_at)
                    .where(live_calls.c.id.in_(ids[first:first + CHUNK]))):
                shift_of[f"live:{call_id}"] = moments[call_id].timestamp() - created
        conn.execute(live_calls.update().where(live_calls.c.id == sa.bindparam("call_id"))
                     .values(created_at=sa.bindparam("at")),
                     [{"call_id": call_id, "at": at.timestamp()}
                      for call_id, at in moments.items()])
        _move_cache(conn, list(shift_of), shift_of)


def date_run(ledger: Ledger, run_id: int, timeline: BatchTimeline) -> None:
    """Date run `run_id`, its shards and its answers' cache entries on `timeline`.

    A provider states a batch's end in whole seconds, so a stretched end could land
    before the submission it follows: each moment is kept at or after the one before it
    (planned, intent, submitted, ended, and the run's end after its last batch)."""
    with ledger._write() as conn:
        run = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one()
        real_start = float(run["created_at"])
        start = timeline.place(real_start, real_start) or 0.0
        last = start
        for shard in conn.execute(sa.select(shards).where(shards.c.run_id == run_id)
                                  ).mappings().all():
            placed, floor = {}, start
            for name in SHARD_TIMES:
                moment = timeline.place(real_start, shard[name])
                if moment is not None:
                    placed[name] = floor = max(moment, floor)
            last = max(last, floor)
            conn.execute(shards.update().where(shards.c.id == shard["id"]).values(**placed))
        finished = timeline.place(real_start, run["finished_at"])
        conn.execute(runs.update().where(runs.c.id == run_id).values(
            created_at=start, finished_at=None if finished is None else max(finished, last)))
        answered = [f"item:{item_id}" for (item_id,) in conn.execute(
            sa.select(items.c.id).where(items.c.run_id == run_id,
                                        items.c.status == "succeeded"))]
        # A cache entry was written when its shard was collected: it moves with the run's
        # end (the collection is the last thing a run does before it finishes).
        end = run["finished_at"] or real_start
        shift = (timeline.place(real_start, end) or 0.0) - end
        _move_cache(conn, answered, dict.fromkeys(answered, shift))
