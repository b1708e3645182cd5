"""The ledger's `queue_items` rows: deferred work, idempotent by (task, key).

Part of `Ledger` (mixed in). States and crash rules are in `lanewise/queue.py` and
`lanewise/batch/drain.py`; here each state change is one transaction:

* enqueue: insert unless (task, key) exists (ON CONFLICT DO NOTHING on the unique
  constraint), so two callers racing on one key both get the one row;
* claim: queued -> claimed with the drain's run key, `SELECT ... FOR UPDATE SKIP LOCKED`
  on PostgreSQL (two drains take disjoint items), under SQLite's write lock elsewhere;
* settle: a finished run's item outcomes copied onto its claimed queue items, all of
  them in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from lanewise.ledger.schema import items, queue_items

# Queue states: waiting, attached to a drain run, and the terminal ones copied from it.
QUEUED, CLAIMED = "queued", "claimed"
QUEUE_TERMINAL = ("succeeded", "invalid_output", "failed")
# A run item's terminal state -> its queue item's. `cached` (answered from the result
# cache at zero cost) is an answer like any other; `rejected` (the row could not become
# a request) is a failure whose reason names the field.
ITEM_TO_QUEUE = {"succeeded": "succeeded", "cached": "succeeded",
                 "invalid_output": "invalid_output", "failed": "failed", "rejected": "failed"}
INSERT_CHUNK = 5000
ID_CHUNK = 1000  # ids per `IN (...)` of a claim
_PG_SETTLE = ("UPDATE queue_items AS q SET status = u.s, output_text = u.o, error = u.e, "
              "cost_picodollars = u.c, finished_at = %s "
              "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int8[]) "
              'AS u(k, s, o, e, c) WHERE q.task = %s AND q."key" = u.k AND q.run_key = %s '
              "AND q.status = 'claimed'")
_SQLITE_SETTLE = ("UPDATE queue_items SET status = ?, output_text = ?, error = ?, "
                  'cost_picodollars = ?, finished_at = ? WHERE task = ? AND "key" = ? '
                  "AND run_key = ? AND status = 'claimed'")
_COLUMNS = 'task, "key", row, status, cost_picodollars, created_at'
_PG_INSERT = (f"INSERT INTO queue_items ({_COLUMNS}) SELECT %s, u.k, u.r, 'queued', 0, %s "
              "FROM unnest(%s::text[], %s::text[]) AS u(k, r) "
              'ON CONFLICT (task, "key") DO NOTHING')
_SQLITE_INSERT = (f"INSERT INTO queue_items ({_COLUMNS}) VALUES (?, ?, ?, 'queued', 0, ?) "
                  'ON CONFLICT (task, "key") DO NOTHING')
PAGE = 5000


class QueueRecords:
    """Queue reads and writes; needs the ledger's `engine`, `dialect`, `_write` and
    `iter_items`."""

    engine: sa.Engine
    dialect: str
    _write: Callable[[], AbstractContextManager[sa.Connection]]
    iter_items: Callable[..., Iterator[dict[str, Any]]]

    def add_queue_items(self, task: str, entries: list[tuple[str, str]]) -> int:
        """Insert (key, row JSON) entries of `task` whose key is not queued yet; returns how
        many were new. An existing (task, key) is left exactly as it is. One transaction
        per chunk of INSERT_CHUNK entries."""
        added = 0
        now = time.time()
        for start in range(0, len(entries), INSERT_CHUNK):
            chunk = entries[start:start + INSERT_CHUNK]
            with self._write() as conn:
                # Idempotent by the unique (task, key): a key already there, or twice in
                # this chunk, inserts nothing and raises nothing. Straight to the driver
                # (one executemany on SQLite, one statement over arrays on PostgreSQL), as
                # in bulk.py: SQLAlchemy's per-row work would be most of the cost.
                if self.dialect == "postgresql":
                    result = conn.exec_driver_sql(_PG_INSERT, (
                        task, now, [k for k, _ in chunk], [r for _, r in chunk]))
                else:
                    result = conn.exec_driver_sql(
                        _SQLITE_INSERT, [(task, k, r, now) for k, r in chunk])
                added += max(result.rowcount, 0)
        return added

    def queue_item_by_key(self, task: str, key: str) -> dict[str, Any] | None:
        """The queue item of (task, key), if any."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(queue_items).where(
                queue_items.c.task == task, queue_items.c.key == key)).mappings().first()
        return dict(row) if row else None

    def queue_item(self, item_id: int) -> dict[str, Any] | None:
        """One queue item's row, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(queue_items).where(
                queue_items.c.id == item_id)).mappings().first()
        return dict(row) if row else None

    def queue_counts(self) -> list[tuple[str, str, int, int]]:
        """(task, status, items, cost in picodollars) for every task and status there is."""
        query = sa.select(queue_items.c.task, queue_items.c.status, sa.func.count(),
                          sa.func.coalesce(sa.func.sum(queue_items.c.cost_picodollars), 0)
                          ).group_by(queue_items.c.task, queue_items.c.status
                                     ).order_by(queue_items.c.task, queue_items.c.status)
        with self.engine.connect() as conn:
            return [(t, s, int(n), int(c)) for t, s, n, c in conn.execute(query)]

    def queue_tasks_with_work(self) -> list[str]:
        """Tasks with items queued or claimed (what a drain has to do), sorted."""
        query = sa.select(queue_items.c.task).where(
            queue_items.c.status.in_((QUEUED, CLAIMED))).distinct().order_by(queue_items.c.task)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def unfinished_drain_runs(self, task: str) -> list[str]:
        """Run keys holding claimed items of `task`: drains that claimed and did not settle
        (crashed, or still running elsewhere), oldest claim first."""
        query = sa.select(queue_items.c.run_key, sa.func.min(queue_items.c.claimed_at)).where(
            queue_items.c.status == CLAIMED, queue_items.c.task == task
        ).group_by(queue_items.c.run_key).order_by(sa.func.min(queue_items.c.claimed_at))
        with self.engine.connect() as conn:
            return [run_key for run_key, _ in conn.execute(query)]

    def claim_queue_items(self, task: str, limit: int, run_key: str, claimed_by: str) -> int:
        """Attach up to `limit` queued items of `task` (oldest first) to `run_key`; returns
        how many. One transaction: the items are claimed together or not at all."""
        wanted = (sa.select(queue_items.c.id)
                  .where(queue_items.c.status == QUEUED, queue_items.c.task == task)
                  .order_by(queue_items.c.id).limit(limit)
                  # PostgreSQL: lock the rows picked and pass over rows another drain's
                  # open claim has locked, so two drains at once take disjoint items
                  # without waiting for each other. SQLite ignores FOR UPDATE: its claim
                  # runs under the database write lock (BEGIN IMMEDIATE), one at a time.
                  .with_for_update(skip_locked=True))
        claim = queue_items.update().where(
            queue_items.c.id.in_(sa.bindparam("ids", expanding=True)),
            # Checked again on the row itself (the rows are locked or the database is,
            # so this never drops one; it keeps a claim from ever taking a claimed item).
            queue_items.c.status == QUEUED,
        ).values(status=CLAIMED, run_key=run_key, claimed_by=claimed_by,
                 claimed_at=time.time())
        claimed = 0
        with self._write() as conn:
            # Two statements, not `UPDATE ... WHERE id IN (SELECT ... SKIP LOCKED LIMIT n)`:
            # PostgreSQL may evaluate that subquery more than once while updating (a
            # rescan under SKIP LOCKED returns other rows), and one claim then took
            # far more than its limit. The ids are picked (and locked) once, here.
            ids = list(conn.execute(wanted).scalars())
            for start in range(0, len(ids), ID_CHUNK):
                claimed += max(conn.execute(claim, {"ids": ids[start:start + ID_CHUNK]})
                               .rowcount, 0)
        return claimed

    def claimed_rows(self, run_key: str) -> Iterator[tuple[int, str, str]]:
        """(id, key, row JSON) of every item attached to `run_key`, in id order, a page at
        a time: what the run's input file holds, rebuilt the same way every time."""
        after = 0
        while True:
            query = sa.select(queue_items.c.id, queue_items.c.key, queue_items.c.row).where(
                queue_items.c.run_key == run_key, queue_items.c.id > after
            ).order_by(queue_items.c.id).limit(PAGE)
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            yield from ((int(i), k, r) for i, k, r in rows)
            after = int(rows[-1][0])

    def settle_queue_run(self, task: str, run_key: str, run_id: int,
                         missing_reason: str) -> int:
        """Copy the outcomes of a finished run's items onto the queue items claimed for it;
        returns how many were settled. One transaction for the whole run.

        Matched by key (the queue's key is the item's `input_key`). Only items still
        `claimed` under this run key change, so settling twice (two drains, or a crash
        after the commit) changes nothing the second time. A claimed item the run has no
        item for (its row was refused before its key could be read) fails with
        `missing_reason`: a finished run will never answer it.
        """
        now = time.time()
        settled = 0
        with self._write() as conn:
            batch: list[tuple[str, str, str | None, str | None, int]] = []
            # The run is finished: its items no longer change, so they are read on other
            # connections a page at a time while this transaction holds the writes.
            for item in self.iter_items(run_id, columns=(
                    "input_key", "status", "output_text", "error_reason",
                    "cost_picodollars")):
                status = ITEM_TO_QUEUE.get(item["status"])
                if item["input_key"] is None or status is None:
                    continue  # no key to match, or not terminal (then it stays claimed)
                batch.append((item["input_key"], status, item["output_text"],
                              item["error_reason"], int(item["cost_picodollars"] or 0)))
                if len(batch) >= PAGE:
                    settled += self._settle_chunk(conn, task, run_key, batch, now)
                    batch = []
            if batch:
                settled += self._settle_chunk(conn, task, run_key, batch, now)
            answered = sa.select(items.c.id).where(items.c.run_id == run_id,
                                                   items.c.input_key == queue_items.c.key)
            result = conn.execute(queue_items.update().where(
                queue_items.c.run_key == run_key, queue_items.c.status == CLAIMED,
                ~answered.exists()).values(status="failed", error=missing_reason,
                                           finished_at=now))
            settled += max(result.rowcount, 0)
        return settled

    def _settle_chunk(self, conn: sa.Connection, task: str, run_key: str,
                      outcomes: list[tuple[str, str, str | None, str | None, int]],
                      now: float) -> int:
        """Outcomes (key, status, output, error, cost) onto their claimed queue items, each
        found through the unique (task, key) index. Straight to the driver, as in bulk.py:
        one statement over arrays on PostgreSQL (an executemany there is a round trip per
        row), sqlite3's executemany on SQLite."""
        if self.dialect == "postgresql":
            keys, states, outputs, errors, costs = (list(c) for c in zip(*outcomes, strict=True))
            result = conn.exec_driver_sql(_PG_SETTLE, (now, keys, states, outputs, errors,
                                                       costs, task, run_key))
            return max(result.rowcount, 0)
        result = conn.exec_driver_sql(_SQLITE_SETTLE, [
            (status, output, error, cost, now, task, key, run_key)
            for key, status, output, error, cost in outcomes])
        return max(result.rowcount, 0)

    def queue_run_totals(self, run_key: str) -> tuple[dict[str, int], int]:
        """The run key's queue items per status, and what they cost (picodollars)."""
        query = sa.select(queue_items.c.status, sa.func.count(), sa.func.coalesce(
            sa.func.sum(queue_items.c.cost_picodollars), 0)).where(
            queue_items.c.run_key == run_key).group_by(queue_items.c.status)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {status: int(n) for status, n, _ in rows}, sum(int(c) for _, _, c in rows)

