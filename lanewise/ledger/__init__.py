"""The ledger: runs, shards, items, usage and cost, in SQLite or PostgreSQL.

The source of truth for resuming: every state change is committed before the next
paid step, and every change that a resume rule reads (a shard and its items) is one
transaction (see `schema.py` for the states and docs/architecture.md for the rules).

Writes on SQLite use `BEGIN IMMEDIATE`, so two processes on one ledger queue for the
write lock (busy timeout) instead of failing with "database is locked" when a read
transaction tries to become a write one.

Bookkeeping is in bulk: items are inserted and updated a chunk per statement or driver
call (`bulk.py`), never one SQLAlchemy statement per item, and every per-item read or
write at collect goes through the item's id or its shard, never through the whole run.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import SQLAlchemyError

from lanewise.errors import LedgerError
from lanewise.ledger.bulk import BulkItems
from lanewise.ledger.cache_records import CacheRecords
from lanewise.ledger.history import HistoryRecords
from lanewise.ledger.item_records import ItemRecords
from lanewise.ledger.lease_records import LeaseRecords
from lanewise.ledger.limit_records import LimitRecords
from lanewise.ledger.queue_records import QueueRecords
from lanewise.ledger.schema import items, runs, shards
from lanewise.ledger.shard_records import ShardRecords

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key that serializes migrations of one PostgreSQL database.
MIGRATION_LOCK_KEY = 0x6C616E6577697365  # "lanewise"


class Ledger(ItemRecords, ShardRecords, LeaseRecords, LimitRecords, HistoryRecords,
             QueueRecords, CacheRecords):
    """Reads and writes the ledger through one SQLAlchemy engine.

    The runs are here; items, shards, leases and learned provider limits are mixed in
    from `item_records.py`, `shard_records.py`, `lease_records.py` and
    `limit_records.py`, run history, billed costs and forgetting a run from
    `history.py`, the result cache from `cache_records.py`. Writes of many items go
    through `bulk.py` (one driver call per chunk, inside the caller's transaction).
    """

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(url, future=True)
        except (SQLAlchemyError, ImportError) as exc:
            raise LedgerError(f"cannot open the ledger at {url!r}: {exc}") from exc
        self.dialect = self.engine.dialect.name
        self.bulk = BulkItems(self.dialect)
        # SQLite has one writer at a time: threads of this process queue for it here, in
        # order, instead of in SQLite's busy handler, which sleeps up to 100 ms between
        # tries (a live service's threads waited on it more than they worked). One lock
        # per database file, shared by every Ledger of the process; reentrant, for a
        # write made while the same thread holds one. Other processes still queue in
        # the busy handler.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            _sqlite_write_lock(url) if self.dialect == "sqlite" else contextlib.nullcontext())
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            # pysqlite commits DDL on its own; take over BEGIN so a migration is atomic,
            # and take the write lock up front in write transactions (see module doc).
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        self.migrate()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite)."""
        with self._write_lock, self.engine.connect() as conn:
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
                 input_url: str, window_start: str | None = None,
                 window_end: str | None = None) -> tuple[dict[str, Any], bool]:
        """The run with `run_key`, created if new; returns (run, created)."""
        with self._write() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_key == run_key)).mappings().first()
            if row is not None:
                return dict(row), False
            conn.execute(runs.insert().values(
                run_key=run_key, token=secrets.token_hex(3), task=task, provider=provider,
                model=model,
                input_url=input_url, status="planning", created_at=time.time(),
                window_start=window_start, window_end=window_end))
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

    def forget_unsent_plan(self, run_id: int) -> list[dict[str, Any]]:
        """Forget what planning made and nothing sent: the shards still `planned` and
        every item outside the other shards; returns the shards kept (those that got
        past `planned`: a batch was, or may have been, created for them). One
        transaction: a crash in it leaves the plan as it was, to forget again."""
        with self._write() as conn:
            kept = [dict(row) for row in conn.execute(sa.select(shards).where(
                shards.c.run_id == run_id, shards.c.status != "planned")
                .order_by(shards.c.id)).mappings()]
            kept_ids = [shard["id"] for shard in kept]
            # Nobody pays twice: the items of a shard that may be at the provider stay,
            # so the replan skips their rows instead of sending them again.
            conn.execute(items.delete().where(
                items.c.run_id == run_id,
                sa.or_(items.c.shard_id.is_(None), items.c.shard_id.not_in(kept_ids))
                if kept_ids else sa.true()))
            conn.execute(shards.delete().where(shards.c.run_id == run_id,
                                               shards.c.status == "planned"))
        return kept


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by the "begin" hook
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching a new file to WAL needs a lock that another
    # process opening the same new ledger may hold for a moment.
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_WRITE_LOCKS: dict[str, threading.RLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _sqlite_write_lock(url: str) -> threading.RLock:
    """The process's write lock of one SQLite file (see `Ledger.__init__`)."""
    key = str(Path(url.removeprefix("sqlite:///")).resolve()) if url.startswith(
        "sqlite:///") else url
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.RLock())


def _sqlite_begin(conn: sa.Connection) -> None:
    immediate = conn.get_execution_options().get("lanewise_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def existing_ledger(settings: Any) -> Ledger:
    """The configured ledger for a read command, never a new one: with no ledger at the
    configured place, a LedgerError that says where it looked and how to point there."""
    url = settings.resolved_database_url
    hint = ("set LANEWISE_HOME to the folder lanewise run used (or LANEWISE_DATABASE_URL "
            "to its ledger)")
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            raise LedgerError(f"no ledger at {path} (LANEWISE_HOME is {settings.home}); "
                              f"nothing has run there yet, or {hint}")
        return Ledger(url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = sa.inspect(conn).has_table("runs")
    except SQLAlchemyError as exc:
        raise LedgerError(f"cannot open the ledger at {engine.url!r}: {exc}") from exc
    finally:
        engine.dispose()
    if not found:
        raise LedgerError(f"no lanewise ledger in {engine.url!r} (no runs table); "
                          f"nothing has run there yet, or {hint}")
    return Ledger(url)
