"""The ledger: runs, shards, items, usage and cost, in SQLite or PostgreSQL.

The source of truth for resuming: every state change is committed before the next
paid step (see `schema.py` for the states and docs/architecture.md for the rules).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import SQLAlchemyError

from lanewise.errors import LedgerError
from lanewise.ledger.schema import TERMINAL_ITEM_STATES, items, runs, shards

MIGRATIONS = Path(__file__).parent / "migrations"
CHUNK = 2000


def _insert(dialect: str, table: sa.Table):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


class Ledger:
    """Reads and writes the ledger through one SQLAlchemy engine."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(url, future=True)
        except (SQLAlchemyError, ImportError) as exc:
            raise LedgerError(f"cannot open the ledger at {url!r}: {exc}") from exc
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            # pysqlite commits DDL on its own; take over BEGIN so a migration is atomic.
            sa.event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest migration."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.connect() as connection:
                raw = connection.connection.driver_connection
                if self.dialect == "sqlite":
                    # SQLite migrations rebuild tables; enforced foreign keys would refuse
                    # to drop the old one. The pragma only works outside a transaction.
                    raw.execute("PRAGMA foreign_keys=OFF")
                with connection.begin():
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
                if self.dialect == "sqlite":
                    raw.execute("PRAGMA foreign_keys=ON")
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot migrate the ledger: {exc}") from exc

    # --- runs -----------------------------------------------------------------------

    def open_run(self, run_key: str, task: str, provider: str, model: str,
                 input_url: str) -> tuple[dict[str, Any], bool]:
        """The run with `run_key`, created if new; returns (run, created)."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_key == run_key)).mappings().first()
            if row is not None:
                return dict(row), False
            conn.execute(runs.insert().values(
                run_key=run_key, token=secrets.token_hex(3), task=task, provider=provider,
                model=model,
                input_url=input_url, status="planning", created_at=time.time()))
            row = conn.execute(sa.select(runs).where(runs.c.run_key == run_key)).mappings().one()
            return dict(row), True

    def run(self, run_id: int) -> dict[str, Any]:
        """One run's row."""
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one())

    def recent_run_ids(self, limit: int) -> list[int]:
        """Ids of the newest runs."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(runs.c.id).order_by(runs.c.id.desc())
                                     .limit(limit)).scalars())

    def run_by_key(self, run_key: str) -> dict[str, Any] | None:
        """The run with this key, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_key == run_key)).mappings().first()
        return dict(row) if row else None

    def set_run(self, run_id: int, **values: Any) -> None:
        """Update a run's columns."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(**values))

    def reset_planning(self, run_id: int) -> None:
        """Forget a half-planned run's items and shards (nothing was submitted yet)."""
        with self.engine.begin() as conn:
            submitted = conn.execute(sa.select(sa.func.count()).select_from(shards).where(
                shards.c.run_id == run_id, shards.c.status != "planned")).scalar_one()
            if submitted:
                raise LedgerError(f"run {run_id} is marked planning but has submitted shards")
            conn.execute(items.delete().where(items.c.run_id == run_id))
            conn.execute(shards.delete().where(shards.c.run_id == run_id))

    # --- items ----------------------------------------------------------------------

    def add_items(self, run_id: int, accepted: list[dict[str, Any]],
                  rejected: list[dict[str, Any]]) -> dict[int, int]:
        """Insert rows; returns {row number: item id} of accepted rows whose key was new.

        `accepted` rows carry `dedup_key`; a key already in the run makes the insert a
        no-op, and the caller records that row as a duplicate.
        """
        base = {"run_id": run_id, "attempt": 0, "excerpted": False, "input_tokens": 0,
                "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 0,
                "cost_picodollars": 0, "live_cost_picodollars": 0, "shard_id": None,
                "custom_id": None, "error_field": None, "error_reason": None,
                "output_text": None, "dedup_key": None}
        inserted: dict[int, int] = {}
        with self.engine.begin() as conn:
            if accepted:
                statement = _insert(self.dialect, items).on_conflict_do_nothing().returning(
                    items.c.row_number, items.c.id)
                for start in range(0, len(accepted), CHUNK):
                    chunk = [{**base, **row} for row in accepted[start : start + CHUNK]]
                    inserted.update(tuple(r) for r in conn.execute(statement, chunk).all())
            if rejected:
                conn.execute(items.insert(), [{**base, **row} for row in rejected])
        return inserted

    def update_items(self, updates: list[dict[str, Any]], *,
                     where_status: str | None = None) -> int:
        """Update items by id (`b_id`), setting the other keys; returns rows changed."""
        if not updates:
            return 0
        columns = [k for k in updates[0] if not k.startswith("b_")]
        condition = [items.c.id == sa.bindparam("b_id")]
        if where_status is not None:
            condition.append(items.c.status == where_status)
        statement = items.update().where(*condition).values(
            {c: sa.bindparam(c) for c in columns})
        changed = 0
        with self.engine.begin() as conn:
            for start in range(0, len(updates), CHUNK):
                result = conn.execute(statement, updates[start : start + CHUNK])
                changed += max(result.rowcount, 0)
        return changed

    def iter_items(self, run_id: int, *, status: str | None = None,
                   shard_id: int | None = None,
                   columns: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Stream a run's items in row order (optionally of one status or shard)."""
        selected = [items.c[c] for c in columns] if columns else [items]
        query = sa.select(*selected).where(items.c.run_id == run_id)
        if status is not None:
            query = query.where(items.c.status == status)
        if shard_id is not None:
            query = query.where(items.c.shard_id == shard_id)
        last_row = 0
        while True:
            page = query.where(items.c.row_number > last_row).order_by(
                items.c.row_number).limit(5000)
            with self.engine.connect() as conn:
                rows = [dict(r) for r in conn.execute(page).mappings()]
            if not rows:
                return
            yield from rows
            last_row = rows[-1]["row_number"]

    def count_items(self, run_id: int) -> dict[str, int]:
        """Items per status."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(items.c.status, sa.func.count()).where(
                items.c.run_id == run_id).group_by(items.c.status)).all()
        return {status: count for status, count in rows}

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
        sums = [sa.func.coalesce(sa.func.sum(items.c[c]), 0).label(c) for c in (
            "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
            "cost_picodollars", "live_cost_picodollars")]
        query = sa.select(*sums).where(items.c.run_id == run_id)
        if shard_id is not None:
            query = query.where(items.c.shard_id == shard_id)
        with self.engine.connect() as conn:
            return {k: int(v) for k, v in conn.execute(query).mappings().one().items()}

    # --- shards ---------------------------------------------------------------------

    def add_shard(self, run_id: int, shard: dict[str, Any],
                  assignments: list[dict[str, Any]]) -> int:
        """Record a planned shard and queue its items, in one transaction.

        Each assignment is `{"b_id": item id, "custom_id": new, "attempt": n}`: the item
        (pending, or waiting for a retry) moves into this shard under custom_id `new`.
        """
        with self.engine.begin() as conn:
            shard_id = conn.execute(shards.insert().values(
                run_id=run_id, status="planned", **shard).returning(shards.c.id)).scalar_one()
            statement = items.update().where(
                items.c.id == sa.bindparam("b_id"),
                sa.or_(items.c.status == "pending", items.c.status == "retry"),
            ).values(shard_id=shard_id, status="queued", custom_id=sa.bindparam("custom_id"),
                     attempt=sa.bindparam("attempt"))
            for start in range(0, len(assignments), CHUNK):
                conn.execute(statement, assignments[start : start + CHUNK])
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
        with self.engine.begin() as conn:
            conn.execute(shards.update().where(shards.c.id == shard_id).values(**values))

    def mark_shard_items(self, shard_id: int, from_status: str, to_status: str) -> None:
        """Move a shard's items from one status to another."""
        with self.engine.begin() as conn:
            conn.execute(items.update().where(items.c.shard_id == shard_id,
                                              items.c.status == from_status)
                         .values(status=to_status))

    def claimed_batch_ids(self) -> set[str]:
        """Provider batch ids already recorded for some shard."""
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(shards.c.provider_batch_id).where(
                shards.c.provider_batch_id.is_not(None))).scalars())

    def unfinished_items(self, run_id: int) -> int:
        """Items not yet in a terminal state."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(items).where(
                items.c.run_id == run_id, items.c.status.not_in(TERMINAL_ITEM_STATES))
            ).scalar_one()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by the "begin" hook
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
