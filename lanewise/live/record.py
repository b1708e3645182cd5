"""Recording live calls in the ledger (`live_calls`), and never losing one.

Each call is written synchronously, before `call` returns: one INSERT, and for a
cache-enabled task its answer's `result_cache` entry (source `live:<id>`) in the same
transaction. There is no write-behind: once `call` has returned, its record is
committed.

How durable that commit is, is `LANEWISE_LIVE_RECORD_FSYNC`:

* default: committed to the database's log without waiting for the disk (SQLite in WAL
  mode with `synchronous=NORMAL` on the live lane's connections; PostgreSQL with
  `synchronous_commit=off` on them). The record is in the WAL (written to the file, in
  the kernel's cache) before `call` returns, so a crash or kill of any lanewise process
  afterwards cannot lose it; only an OS crash or power loss before the kernel writes
  it out could (PostgreSQL's WAL writer flushes within a second; SQLite's WAL pages
  within the kernel's writeback interval or the next checkpoint).
* `true`: each commit waits for its disk flush (`synchronous=FULL` / `synchronous_commit
  =on`), which survives power loss too and costs one fsync per call: 4 to 5 ms p50 on
  this machine's virtual disk against ~0.01 ms without (measured with SQLite, WAL mode,
  one 500-byte row per transaction), which alone would break the live lane's
  under-2-ms overhead target. Figures in docs/benchmarks.md.

When the ledger cannot be written (PostgreSQL down, a SQLite lock held past its busy
timeout), the record goes to a local append-only journal instead (one JSON line,
fsync'd before `call` returns) and the call still answers: a billed call is never lost
because the ledger was away. The journal is replayed into the ledger when a lane starts
and after the next write that succeeds; rows already in the ledger (a crash between a
replay's commit and the journal's removal) are recognised by (created_at,
content_hash, task) and not inserted twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from lanewise import cache
from lanewise.errors import LedgerError
from lanewise.ledger import Ledger
from lanewise.ledger.cache_records import store_answers
from lanewise.ledger.schema import live_calls

log = logging.getLogger("lanewise.live")


class LiveRecorder:
    """Writes `live_calls` rows (and their cache entries) through one ledger engine."""

    def __init__(self, ledger: Ledger, journal_path: Path, *, fsync: bool = False) -> None:
        self.ledger = ledger
        self.journal_path = journal_path
        self.fsync = fsync
        _set_durability(ledger.engine, ledger.dialect, fsync)
        self._insert = live_calls.insert()
        self._pending = journal_path.exists()
        if self._pending:
            self.replay()

    def write(self, row: dict[str, Any], answer: dict[str, Any] | None = None) -> int | None:
        """Insert one live call (and, given `answer`, a `cache.entry(...)` whose source
        is filled in as `live:<id>`); returns the row's id, or None when the ledger could
        not be written and the row went to the journal."""
        try:
            with self.ledger._write() as conn:  # BEGIN IMMEDIATE on SQLite
                call_id = self._insert_row(conn, row, answer)
        except SQLAlchemyError as exc:
            self._journal(row, answer, exc)
            return None
        if self._pending:
            self.replay()
        return call_id

    def _insert_row(self, conn: sa.Connection, row: dict[str, Any],
                    answer: dict[str, Any] | None) -> int:
        call_id = int(conn.execute(self._insert, row).inserted_primary_key[0])
        if answer is not None:
            store_answers(conn, self.ledger.dialect, [{**answer, "source": f"live:{call_id}"}],
                          answer["created_at"])
        return call_id

    def _journal(self, row: dict[str, Any], answer: dict[str, Any] | None,
                 exc: BaseException) -> None:
        line = json.dumps({"row": row, "answer": answer}, ensure_ascii=False) + "\n"
        try:
            self.journal_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode("utf-8", "surrogatepass"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as journal_error:
            raise LedgerError(f"cannot record a live call: the ledger refused it ({exc}) "
                              f"and so did the journal {self.journal_path} "
                              f"({journal_error})") from exc
        self._pending = True
        log.warning("live call recorded in the journal %s (the ledger refused it: %s); it "
                    "is replayed into the ledger once the ledger takes writes again",
                    self.journal_path, exc)

    def replay(self) -> int:
        """Move the journal's rows into the ledger (one transaction); returns how many
        were inserted. Safe to run from several processes at once (a file lock)."""
        if not self.journal_path.exists():
            self._pending = False
            return 0
        with open(self.journal_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            entries = [json.loads(line) for line in handle.read().decode(
                "utf-8", "surrogatepass").splitlines() if line.strip()]
            try:
                inserted = self._replay_entries(entries)
            except SQLAlchemyError as exc:
                log.warning("live journal %s not replayed yet: %s", self.journal_path, exc)
                return 0
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.journal_path)
        self._pending = False
        if inserted:
            log.info("replayed %d live call(s) from the journal into the ledger", inserted)
        return inserted

    def _replay_entries(self, entries: list[dict[str, Any]]) -> int:
        inserted = 0
        with self.ledger._write() as conn:
            for entry in entries:
                row = entry["row"]
                there = conn.execute(sa.select(live_calls.c.id).where(
                    live_calls.c.created_at == row["created_at"],
                    live_calls.c.content_hash == row["content_hash"],
                    live_calls.c.task == row["task"])).first()
                if there is None:
                    self._insert_row(conn, row, entry.get("answer"))
                    inserted += 1
        return inserted


def cache_entry(task: str, route_hash: str, provider: str, model: str, text: str,
                cost_picodollars: int, ttl_hours: float | None) -> dict[str, Any]:
    """A result-cache entry for a live answer (its source filled in when recorded)."""
    return cache.entry(route_hash, task, provider, model, text, "live:?", cost_picodollars,
                       cost_picodollars, ttl_hours, now=time.time())


def _set_durability(engine: sa.Engine, dialect: str, fsync: bool) -> None:
    """Make every connection of the live lane's engine commit as `fsync` says (see the
    module docstring); connections pooled before this are dropped."""
    if dialect == "sqlite":
        statement = f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}"
    elif dialect == "postgresql":
        statement = f"SET synchronous_commit TO {'on' if fsync else 'off'}"
    else:
        return

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(statement)
        cursor.close()
        if dialect == "postgresql":
            dbapi_connection.commit()  # psycopg opened a transaction for the SET

    sa.event.listen(engine, "connect", on_connect)
    engine.dispose()
