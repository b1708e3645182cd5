"""The ledger: runs, shards, items, usage and cost, in SQLite or PostgreSQL.

The source of truth for resuming: every state change is committed before the next
paid step, and every change that a resume rule reads (a shard and its items) is one
transaction (see `schema.py` for the states and docs/architecture.md for the rules).

Writes on SQLite use `BEGIN IMMEDIATE`, so two processes on one ledger queue for the
write lock (busy timeout) instead of failing with "database is locked" when a read
transaction tries to become a write one.
"""

from __future__ import annotations

import contextlib
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
from lanewise.ledger.lease_records import LeaseRecords, dialect_insert
from lanewise.ledger.schema import TERMINAL_ITEM_STATES, items, run_leases, runs, shards

MIGRATIONS = Path(__file__).parent / "migrations"
CHUNK = 2000
# pg_advisory_xact_lock key that serializes migrations of one PostgreSQL database.
MIGRATION_LOCK_KEY = 0x6C616E6577697365  # "lanewise"


class Ledger(LeaseRecords):
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
            # pysqlite commits DDL on its own; take over BEGIN so a migration is atomic,
            # and take the write lock up front in write transactions (see module doc).
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        self.migrate()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite)."""
        with self.engine.connect() as conn:
            conn.execution_options(lanewise_write=True)
            with conn.begin():
                yield conn

    def migrate(self) -> None:
        """Bring the schema to the newest migration, one process at a time.

        Any number of first runs may open a new ledger at once: SQLite migrates under
        its write lock (BEGIN IMMEDIATE, others wait on the busy timeout), PostgreSQL
        under a transaction-scoped advisory lock; whoever comes second finds the schema
        at head and does nothing.
        """
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.connect() as connection:
                raw = connection.connection.driver_connection
                if self.dialect == "sqlite":
                    # SQLite migrations rebuild tables; enforced foreign keys would refuse
                    # to drop the old one. The pragma only works outside a transaction.
                    raw.execute("PRAGMA foreign_keys=OFF")
                connection.execution_options(lanewise_write=True)
                with connection.begin():
                    if self.dialect == "postgresql":
                        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                                           {"key": MIGRATION_LOCK_KEY})
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
        with self._write() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_key == run_key)).mappings().first()
            if row is not None:
                return dict(row), False
            conn.execute(runs.insert().values(
                run_key=run_key, token=secrets.token_hex(3), task=task, provider=provider,
                model=model,
                input_url=input_url, status="planning", created_at=time.time()))
            row = conn.execute(sa.select(runs).where(runs.c.run_key == run_key)).mappings().one()
            return dict(row), True

    def sent_shards(self, run_id: int) -> int:
        """How many of a run's shards got past `planned` (something may have been paid)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(shards).where(
                shards.c.run_id == run_id, shards.c.status != "planned")).scalar_one()

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
        with self._write() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(**values))

    def reset_planning(self, run_id: int, *, input_url: str | None = None) -> None:
        """Forget a run's items and shards, which only planning made (nothing was sent);
        with `input_url`, the run takes that input and goes back to `planning`. One
        transaction, refused if any shard got past `planned`."""
        with self._write() as conn:
            sent = conn.execute(sa.select(sa.func.count()).select_from(shards).where(
                shards.c.run_id == run_id, shards.c.status != "planned")).scalar_one()
            if sent:
                raise LedgerError(f"run {run_id} has sent {sent} batch(es); its items and "
                                  "input are fixed")
            conn.execute(items.delete().where(items.c.run_id == run_id))
            conn.execute(shards.delete().where(shards.c.run_id == run_id))
            if input_url is not None:
                conn.execute(runs.update().where(runs.c.id == run_id).values(
                    input_url=input_url, status="planning"))

    # --- items ----------------------------------------------------------------------

    def add_items(self, run_id: int, accepted: list[dict[str, Any]],
                  rejected: list[dict[str, Any]]) -> dict[int, int]:
        """Insert rows; returns {row number: item id} of accepted rows whose key was new.

        `accepted` rows carry `dedup_key`; a key already in the run makes the insert a
        no-op, and the caller records that row as a duplicate.
        """
        base = {"run_id": run_id, "attempt": 0, "excerpted": False, "input_tokens": 0,
                "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 0,
                "cache_write_1h_tokens": 0, "reasoning_tokens": 0, "cost_picodollars": 0,
                "live_cost_picodollars": 0, "shard_id": None, "custom_id": None,
                "error_field": None, "error_reason": None, "output_text": None,
                "dedup_key": None}
        inserted: dict[int, int] = {}
        with self._write() as conn:
            if accepted:
                statement = dialect_insert(self.dialect, items).on_conflict_do_nothing().returning(
                    items.c.row_number, items.c.id)
                for start in range(0, len(accepted), CHUNK):
                    chunk = _storable([{**base, **row}
                                       for row in accepted[start : start + CHUNK]])
                    inserted.update(tuple(r) for r in conn.execute(statement, chunk).all())
            if rejected:
                conn.execute(items.insert(), _storable([{**base, **row} for row in rejected]))
        return inserted

    def update_items(self, updates: list[dict[str, Any]], *,
                     where_status: str | None = None) -> int:
        """Update items by id (`b_id`), setting the other keys; returns rows changed."""
        if not updates:
            return 0
        with self._write() as conn:
            return self._update_items(conn, updates, where_status)

    @staticmethod
    def _update_items(conn: sa.Connection, updates: list[dict[str, Any]],
                      where_status: str | None) -> int:
        """Group updates by their keys and apply each group as executemany."""
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for update in updates:
            by_shape.setdefault(tuple(update), []).append(update)
        changed = 0
        for shape, group in by_shape.items():
            columns = [k for k in shape if not k.startswith("b_")]
            condition = [items.c.id == sa.bindparam("b_id")]
            if where_status is not None:
                condition.append(items.c.status == where_status)
            statement = items.update().where(*condition).values(
                {c: sa.bindparam(c) for c in columns})
            for start in range(0, len(group), CHUNK):
                result = conn.execute(statement, _storable(group[start : start + CHUNK]))
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
            "cache_write_1h_tokens", "reasoning_tokens", "cost_picodollars",
            "live_cost_picodollars")]
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
        with self._write() as conn:
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
        with self._write() as conn:
            result = conn.execute(shards.update().where(
                shards.c.id == shard_id, shards.c.status == "submitting",
                shards.c.provider_batch_id.is_(None),
            ).values(status="submitted", provider_batch_id=batch_id, submitted_at=time.time()))
            if result.rowcount != 1:
                return False
            conn.execute(items.update().where(items.c.shard_id == shard_id,
                                              items.c.status == "queued")
                         .values(status="submitted"))
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

    def finish_collect(self, shard_id: int, updates: list[dict[str, Any]]) -> None:
        """Apply the last item updates of a shard and mark it `collected`, in one
        transaction (updates by `b_id`, only to items still `submitted`)."""
        with self._write() as conn:
            self._update_items(conn, updates, "submitted")
            conn.execute(shards.update().where(shards.c.id == shard_id)
                         .values(status="collected"))

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


def _storable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose text PostgreSQL can store: a NUL character (in an answer that echoes
    its input, say) becomes U+FFFD; otherwise the whole chunk would be refused on every
    rerun and its items never settle."""
    cleaned = rows
    for index, row in enumerate(rows):
        if any(isinstance(v, str) and "\x00" in v for v in row.values()):
            if cleaned is rows:
                cleaned = list(rows)
            cleaned[index] = {k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v
                              for k, v in row.items()}
    return cleaned


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by the "begin" hook
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching a new file to WAL needs a lock that another
    # process opening the same new ledger may hold for a moment.
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    immediate = conn.get_execution_options().get("lanewise_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
