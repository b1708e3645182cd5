"""The ledger's `items` rows: one per input row, its state, usage and cost.

Part of `Ledger` (mixed in). Writes of many items go through `bulk.BulkItems`: one
driver call per chunk, on the caller's transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from lanewise.ledger.bulk import BulkItems
from lanewise.ledger.cache_records import store_answers
from lanewise.ledger.schema import TERMINAL_ITEM_STATES, items, run_item_counts

PAGE = 5000
COST_COLUMNS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                "cache_write_1h_tokens", "reasoning_tokens", "cost_picodollars",
                "live_cost_picodollars", "cache_saving_picodollars")


class ItemRecords:
    """Item reads and writes; needs the ledger's `engine`, `dialect`, `bulk` and
    `_write`."""

    engine: sa.Engine
    dialect: str
    bulk: BulkItems
    _write: Callable[[], AbstractContextManager[sa.Connection]]

    def add_items(self, run_id: int, accepted: list[dict[str, Any]],
                  rejected: list[dict[str, Any]]) -> dict[int, int]:
        """Insert rows; returns {row number: item id} of accepted rows whose key was new.

        `accepted` rows carry `dedup_key`; a key already in the run makes the insert a
        no-op, and the caller records that row as a duplicate. One transaction.
        """
        with self._write() as conn:
            inserted = dict(self.bulk.insert(conn, run_id, accepted, skip_conflicts=True))
            self.bulk.insert(conn, run_id, rejected, skip_conflicts=False)
        return inserted

    def update_items(self, updates: list[dict[str, Any]], *,
                     where_status: str | None = None,
                     answers: list[dict[str, Any]] | None = None) -> int:
        """Update items by id (`b_id`), setting the other keys; returns rows changed.
        With `where_status`, only items still in that state change. `answers` (result
        cache entries, see `cache_records.store_answers`) are stored in the same
        transaction."""
        if not updates and not answers:
            return 0
        with self._write() as conn:
            changed = self.bulk.update(conn, updates, where_status=where_status)
            if answers:
                store_answers(conn, self.dialect, answers, time.time())
            return changed

    def iter_items(self, run_id: int, *, status: str | None = None,
                   shard_id: int | None = None,
                   columns: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Stream a run's items in row order (optionally of one status or shard), each as
        a dict, a page at a time (`iter_item_pages`)."""
        names = list(columns) if columns else [c.name for c in items.columns]
        for page in self.iter_item_pages(run_id, status=status, shard_id=shard_id,
                                         columns=names):
            for row in page:
                yield dict(zip(names, row))  # noqa: B905 - the paging column is dropped

    def iter_item_pages(self, run_id: int, *, status: str | None = None,
                        shard_id: int | None = None,
                        columns: Iterable[str] | None = None) -> Iterator[list[Any]]:
        """Stream a run's items in row order (optionally of one status or shard) as pages
        of rows (tuples of `columns`, then `row_number` when not among them), each page
        its own short read.

        A page is a range of row numbers (`PAGE` of them), never "the next PAGE rows
        after N": with stale statistics PostgreSQL answers that by reading and sorting
        every row after N, which makes reading a whole run quadratic. An empty range
        jumps to the next row there is.
        """
        names = list(columns) if columns else [c.name for c in items.columns]
        selected = [items.c[n] for n in names]
        if "row_number" not in names:
            selected.append(items.c.row_number)
        conditions = [items.c.run_id == run_id]
        if status is not None:
            conditions.append(items.c.status == status)
        if shard_id is not None:
            conditions.append(items.c.shard_id == shard_id)
        after = items.c.row_number > sa.bindparam("after")
        page = sa.select(*selected).where(
            *conditions, after, items.c.row_number <= sa.bindparam("until")
        ).order_by(items.c.row_number)
        following = sa.select(sa.func.min(items.c.row_number)).where(*conditions, after)
        last_row = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(page, {"after": last_row,
                                           "until": last_row + PAGE}).all()
                if not rows:
                    upcoming = conn.execute(following, {"after": last_row}).scalar()
                    if upcoming is None:
                        return
                    last_row = upcoming - 1
                    continue
            yield rows
            last_row += PAGE

    def rows_of_keys(self, run_id: int, keys: list[str]) -> dict[str, int]:
        """{key: row number} of the accepted rows already recorded under these keys."""
        found: dict[str, int] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 500):
                query = sa.select(items.c.dedup_key, items.c.row_number).where(
                    items.c.run_id == run_id, items.c.dedup_key.in_(keys[start:start + 500]))
                found.update((key, row) for key, row in conn.execute(query))
        return found

    def count_items(self, run_id: int) -> dict[str, int]:
        """Items per status (statuses with none left out).

        On PostgreSQL from `run_item_counts`, which triggers keep exact (reading every
        item of a run there costs as much as the run, and progress asks after every
        shard); on SQLite by counting the (run, status) index.
        """
        if self.dialect == "postgresql":
            query = sa.select(run_item_counts.c.status, run_item_counts.c.n).where(
                run_item_counts.c.run_id == run_id, run_item_counts.c.n != 0)
        else:
            query = sa.select(items.c.status, sa.func.count()).where(
                items.c.run_id == run_id).group_by(items.c.status)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {status: int(count) for status, count in rows}

    def reasons(self, run_id: int) -> list[tuple[str, str, int]]:
        """(status, reason, count) of the run's rejected and failed items."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(items.c.status, items.c.error_reason, sa.func.count())
                .where(items.c.run_id == run_id,
                       items.c.status.in_(("rejected", "failed", "invalid_output")))
                .group_by(items.c.status, items.c.error_reason)
                .order_by(sa.func.count().desc())).all()
        return [(s, r or "", n) for s, r, n in rows]

    def totals(self, run_id: int, shard_id: int | None = None) -> dict[str, int]:
        """Summed tokens and costs of a run (or one shard's items)."""
        sums = [sa.func.coalesce(sa.func.sum(items.c[c]), 0).label(c) for c in COST_COLUMNS]
        query = sa.select(*sums).where(items.c.run_id == run_id)
        if shard_id is not None:
            query = query.where(items.c.shard_id == shard_id)
        with self.engine.connect() as conn:
            return {k: int(v) for k, v in conn.execute(query).mappings().one().items()}

    def unfinished_items(self, run_id: int) -> int:
        """Items not yet in a terminal state."""
        return sum(n for status, n in self.count_items(run_id).items()
                   if status not in TERMINAL_ITEM_STATES)
