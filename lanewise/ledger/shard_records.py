"""The ledger's `shards` rows, and the item state changes that go with a shard's.

Part of `Ledger` (mixed in). Every state change a resume rule reads is one
transaction: a shard's row and its items change together (docs/architecture.md,
"Transaction boundaries"); the compare-and-sets say in their `WHERE` what they expect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from lanewise.ledger.bulk import BulkItems
from lanewise.ledger.cache_records import store_answers
from lanewise.ledger.schema import items, run_leases, shards

# What a shard's batch leaves behind on the shard row; cleared when it is requeued.
BATCH_COLUMNS = ("provider_batch_id", "provider_status", "failure", "intent_at",
                 "submitted_at", "ended_at")


class ShardRecords:
    """Shard reads and writes; needs the ledger's `engine`, `bulk` and `_write`."""

    engine: sa.Engine
    dialect: str
    bulk: BulkItems
    _write: Callable[[], AbstractContextManager[sa.Connection]]

    def add_shard(self, run_id: int, shard: dict[str, Any],
                  assignments: list[dict[str, Any]]) -> int:
        """Record a planned shard and queue its items, in one transaction.

        Each assignment is `{"b_id": item id, "custom_id": new, "attempt": n}`: the item
        (pending, or waiting for a retry) moves into this shard under custom_id `new`.
        An assignment of `{"b_id": item id}` alone keeps the item's custom_id and
        attempt (a first-round item, recorded with them).
        """
        with self._write() as conn:
            shard_id = conn.execute(shards.insert().values(
                run_id=run_id, status="planned", **shard).returning(shards.c.id)).scalar_one()
            self.bulk.update(conn, assignments, where_status=("pending", "retry"),
                             constants={"shard_id": shard_id, "status": "queued"})
        return shard_id

    def shard(self, shard_id: int) -> dict[str, Any]:
        """One shard's row."""
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(shards).where(shards.c.id == shard_id))
                        .mappings().one())

    def shard_item_ids(self, shard_id: int, status: str) -> dict[str, tuple[int, int]]:
        """{custom_id: (item id, attempt)} of a shard's items in `status`."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(items.c.custom_id, items.c.id, items.c.attempt).where(
                items.c.shard_id == shard_id, items.c.status == status)).all()
        return {custom_id: (item_id, attempt) for custom_id, item_id, attempt in rows}

    def shard_item_hashes(self, shard_id: int, status: str) -> dict[int, str | None]:
        """{item id: request content hash} of a shard's items in `status`."""
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(items.c.id, items.c.content_hash).where(
                items.c.shard_id == shard_id, items.c.status == status)).all())

    def shard_by_key(self, shard_key: str) -> dict[str, Any] | None:
        """The shard with this key, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(shards).where(shards.c.shard_key == shard_key)
                               ).mappings().first()
        return dict(row) if row else None

    def shards(self, run_id: int) -> list[dict[str, Any]]:
        """A run's shards in creation order."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(shards).where(
                shards.c.run_id == run_id).order_by(shards.c.id)).mappings()]

    def set_shard(self, shard_id: int, **values: Any) -> None:
        """Update a shard's columns."""
        with self._write() as conn:
            conn.execute(shards.update().where(shards.c.id == shard_id).values(**values))

    def claim_shard(self, shard_id: int, from_status: str, run_key: str, holder: str) -> bool:
        """Move a shard to `submitting` (the intent) if it is still in `from_status` and
        `holder` holds the run's lease; False when another process got there first.

        The compare-and-set and the lease check are one statement: two processes can
        never both record the intent for the same shard, and a process whose lease
        lapsed (someone else drives the run now) cannot either.
        """
        now = time.time()
        lease_held = sa.exists().where(run_leases.c.run_key == run_key,
                                       run_leases.c.holder == holder,
                                       run_leases.c.expires_at > now)
        with self._write() as conn:
            result = conn.execute(shards.update().where(
                shards.c.id == shard_id, shards.c.status == from_status, lease_held,
            ).values(status="submitting", intent_at=now))
            return result.rowcount == 1

    def record_submitted(self, shard_id: int, batch_id: str) -> bool:
        """Record a shard's provider batch id and move its items to `submitted`.

        One transaction: a crash can never leave a submitted shard whose items are
        still `queued` (collection reads the items by the shard's state). A
        compare-and-set on `submitting` with no batch id: False (nothing changed) when
        another process already recorded a batch for this shard.
        """
        return self._move_shard(
            shard_id, [shards.c.status == "submitting", shards.c.provider_batch_id.is_(None)],
            {"status": "submitted", "provider_batch_id": batch_id, "submitted_at": time.time()},
            items_from="queued", items_to="submitted")

    def requeue_shard(self, shard_id: int, batch_id: str) -> bool:
        """Put a shard whose batch `batch_id` never ran back to `planned`, to be sent
        again (a batch the provider refused for its enqueued-token limit, say).

        One transaction, a compare-and-set on the batch: only a shard still recorded
        with `batch_id` and `submitted` or `failed` changes. Its batch columns
        (`provider_batch_id`, `provider_status`, `failure`, `intent_at`,
        `submitted_at`, `ended_at`) are cleared and its items still `submitted` go back
        to `queued`, keeping their custom_id and attempt: a batch that never ran
        spent none of their retry budget. Items already settled are left alone.
        False (nothing changed) when the shard is not in that state any more.
        """
        return self._move_shard(
            shard_id, [shards.c.provider_batch_id == batch_id,
                       shards.c.status.in_(("submitted", "failed"))],
            {"status": "planned", **dict.fromkeys(BATCH_COLUMNS)},
            items_from="submitted", items_to="queued")

    def _move_shard(self, shard_id: int, condition: list[Any], values: dict[str, Any], *,
                    items_from: str, items_to: str) -> bool:
        """Compare-and-set a shard (`condition`) to `values` and move its items from one
        state to another, in one transaction; False (nothing changed) when the shard
        no longer matches."""
        with self._write() as conn:
            result = conn.execute(shards.update().where(shards.c.id == shard_id, *condition)
                                  .values(**values))
            if result.rowcount != 1:
                return False
            conn.execute(items.update().where(items.c.shard_id == shard_id,
                                              items.c.status == items_from)
                         .values(status=items_to))
        return True

    def repair_shard_items(self, shard_id: int) -> int:
        """Items of a shard with a provider batch that are still `queued` become
        `submitted`, so collection matches them to the provider's results.

        Only a ledger written before `record_submitted` was one transaction can hold
        such items; the provider's results then say what happened to each.
        """
        with self._write() as conn:
            result = conn.execute(items.update().where(
                items.c.shard_id == shard_id, items.c.status == "queued",
                sa.exists().where(shards.c.id == shard_id,
                                  shards.c.provider_batch_id.is_not(None)),
            ).values(status="submitted"))
            return max(result.rowcount, 0)

    def reopen_stranded_shards(self, run_id: int) -> list[int]:
        """Collected shards that still have unfinished items go back to `submitted`, so
        they are awaited and collected again from the provider's results (an old
        ledger's repair)."""
        stranded = (sa.select(items.c.shard_id).where(
            items.c.run_id == run_id, items.c.status.in_(("queued", "submitted")))
            .distinct().scalar_subquery())
        with self._write() as conn:
            ids = list(conn.execute(sa.select(shards.c.id).where(
                shards.c.run_id == run_id, shards.c.status == "collected",
                shards.c.provider_batch_id.is_not(None),
                shards.c.id.in_(stranded))).scalars())
            if ids:
                conn.execute(shards.update().where(shards.c.id.in_(ids))
                             .values(status="submitted"))
        return ids

    def finish_collect(self, shard_id: int, updates: list[dict[str, Any]],
                       answers: list[dict[str, Any]] | None = None) -> None:
        """Apply the last item updates of a shard, store `answers` in the result cache
        and mark the shard `collected`, in one transaction (updates by `b_id`, only to
        items still `submitted`)."""
        with self._write() as conn:
            self.bulk.update(conn, updates, where_status="submitted")
            if answers:
                store_answers(conn, self.dialect, answers, time.time())
            conn.execute(shards.update().where(shards.c.id == shard_id)
                         .values(status="collected"))

    def claimed_batch_ids(self) -> set[str]:
        """Provider batch ids already recorded for some shard."""
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(shards.c.provider_batch_id).where(
                shards.c.provider_batch_id.is_not(None))).scalars())
