"""The emulator's disk state: its SQLite database, files, billing record and batch jobs."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from lanewise.emulator.jobs import BatchJob
from lanewise.pricing import Lane, PriceTable, Usage, from_picodollars, to_picodollars

COPY_CHUNK = 1024 * 1024


@dataclass
class StoredFile:
    """Metadata of one OpenAI file; the bytes live on disk at `path`."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path

    def to_api(self) -> dict[str, Any]:
        """The OpenAI file object."""
        return {
            "id": self.id, "object": "file", "bytes": self.bytes,
            "created_at": self.created_at, "filename": self.filename,
            "purpose": self.purpose, "status": "processed", "status_details": None,
            "expires_at": None,
        }


class StateDB:
    """The state folder's SQLite database, `billing.sqlite3`: the billing rows, the file
    registry and the batch jobs.

    One file, so that finalizing a batch commits its billing rows and its `finalized`
    mark in one transaction: a process killed at any point has either both or neither.
    """

    def __init__(self, root: Path) -> None:
        self.lock = threading.Lock()
        self.conn = sqlite3.connect(root / "billing.sqlite3", check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            self.conn.execute(statement)
        self._migrate()
        for statement in INDEXES:
            self.conn.execute(statement)
        self.conn.commit()

    def _migrate(self) -> None:
        """Bring a `billing` table an older emulator created up to date: add the
        columns it lacks (their values stay NULL on the rows already there)."""
        present = {row[1] for row in self.conn.execute("PRAGMA table_info(billing)")}
        for column, kind in BILLING_ADDED_COLUMNS:
            if column not in present:
                self.conn.execute(f"ALTER TABLE billing ADD COLUMN {column} {kind}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, for statements that commit together (or roll back on error)."""
        with self.lock:
            try:
                yield self.conn
            except BaseException:
                self.conn.rollback()
                raise
            self.conn.commit()

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self.conn.close()


SCHEMA = (
    "CREATE TABLE IF NOT EXISTS billing (id INTEGER PRIMARY KEY, "
    "provider TEXT, lane TEXT, batch_id TEXT, custom_id TEXT, request_id TEXT, "
    "model TEXT, input_tokens INTEGER, cached_input_tokens INTEGER, "
    "cache_write_tokens INTEGER, output_tokens INTEGER, cost_picodollars INTEGER, "
    "cache_write_1h_tokens INTEGER, reasoning_tokens INTEGER, billed_at REAL)",
    "CREATE TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, filename TEXT NOT NULL, "
    "purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL)",
    # One row per batch: what create fixed, then cancel, the worker's end, finalize
    # and delete each update only their own columns.
    "CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, provider TEXT NOT NULL, "
    "input_path TEXT NOT NULL, total INTEGER NOT NULL, created_at REAL NOT NULL, "
    "model TEXT, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL, metadata TEXT, "
    "enqueued_tokens INTEGER NOT NULL, fate TEXT NOT NULL, failure TEXT, "
    "cancel_requested_at REAL, cancel_cut INTEGER, "
    "worker_finished INTEGER NOT NULL DEFAULT 0, processed INTEGER NOT NULL DEFAULT 0, "
    "worker_done_at REAL, outcomes BLOB, "
    "finalized INTEGER NOT NULL DEFAULT 0, final_phase TEXT, final_ended_at REAL, "
    "results TEXT, deleted INTEGER NOT NULL DEFAULT 0)",
)

# Columns later emulators added to `billing` (`StateDB._migrate` adds them to old files).
BILLING_ADDED_COLUMNS = (
    ("cache_write_1h_tokens", "INTEGER"), ("reasoning_tokens", "INTEGER"),
    ("billed_at", "REAL"),
)
# The UTC day a row was billed on, as SQLite computes it; cost reports group by it (with
# model and lane), so it is indexed: use exactly this expression to hit the index.
BILLED_DAY = "date(billed_at, 'unixepoch')"
INDEXES = (
    f"CREATE INDEX IF NOT EXISTS billing_by_day ON billing ({BILLED_DAY}, provider, model, "
    "lane)",
    "CREATE INDEX IF NOT EXISTS billing_billed_at ON billing (billed_at)",
)

FILE_ID = re.compile(r"^file-emu[0-9a-f]{11}[0-9]{8}$")


def id_instance(item_id: str) -> int:
    """The start-time part of an emulator id (prefix, 11 hex digits, 8-digit sequence)."""
    try:
        return int(item_id[-19:-8], 16)
    except ValueError:
        return 0


class FileStore:
    """Files streamed to and from a folder, never held whole in memory; the registry
    (ids, names, purposes, sizes) is kept in the state database too."""

    def __init__(self, root: Path, db: StateDB) -> None:
        self.root = root / "files"
        self.root.mkdir(parents=True, exist_ok=True)
        self._db = db
        self._files: dict[str, StoredFile] = {}
        with db.lock:
            rows = db.conn.execute(
                "SELECT id, filename, purpose, bytes, created_at FROM files").fetchall()
        for file_id, filename, purpose, size, created_at in rows:
            self._files[file_id] = StoredFile(file_id, filename, purpose, size, created_at,
                                              self.path_for(file_id))
        self._ids = itertools.count(1)
        self._instance = f"{time.time_ns() // 1_000_000:011x}"
        self._lock = threading.Lock()

    def start_ids_at(self, instance: str) -> None:
        """Make new ids carry `instance` (the state picks one above every stored id)."""
        self._instance = instance

    def remove_strays(self) -> None:
        """Delete file bytes no registry entry names (an upload or a finalize cut short)."""
        for path in self.root.iterdir():
            if FILE_ID.match(path.name) and path.name not in self._files:
                path.unlink(missing_ok=True)

    def new_id(self) -> str:
        """A fresh file id; ids sort in creation order."""
        with self._lock:
            return f"file-emu{self._instance}{next(self._ids):08d}"

    def path_for(self, file_id: str) -> Path:
        """Where the bytes of `file_id` live."""
        return self.root / file_id

    def save_stream(self, source: BinaryIO, filename: str, purpose: str) -> StoredFile:
        """Copy an upload to disk chunk by chunk and register it."""
        file_id = self.new_id()
        path = self.path_for(file_id)
        size = 0
        with path.open("wb") as out:
            while chunk := source.read(COPY_CHUNK):
                out.write(chunk)
                size += len(chunk)
        return self.register(file_id, filename, purpose, size)

    def describe(self, file_id: str, filename: str, purpose: str, size: int) -> StoredFile:
        """Metadata of a file written at `path_for(file_id)`, not yet registered."""
        return StoredFile(file_id, filename, purpose, size, int(time.time()),
                          self.path_for(file_id))

    @staticmethod
    def insert_row(conn: sqlite3.Connection, stored: StoredFile) -> None:
        """Add `stored` to the registry table (inside the caller's transaction)."""
        conn.execute("INSERT INTO files (id, filename, purpose, bytes, created_at) "
                     "VALUES (?, ?, ?, ?, ?)", (stored.id, stored.filename, stored.purpose,
                                                stored.bytes, stored.created_at))

    def remember(self, stored: StoredFile) -> None:
        """Serve `stored` (its row is committed)."""
        with self._lock:
            self._files[stored.id] = stored

    def register(self, file_id: str, filename: str, purpose: str, size: int) -> StoredFile:
        """Record a file already written at `path_for(file_id)`."""
        stored = self.describe(file_id, filename, purpose, size)
        with self._db.transaction() as conn:
            self.insert_row(conn, stored)
        self.remember(stored)
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        """The file's metadata, or None."""
        return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        """Forget a file and remove its bytes."""
        with self._lock:
            stored = self._files.pop(file_id, None)
        if stored is None:
            return False
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
        stored.path.unlink(missing_ok=True)
        return True

    def all(self) -> list[StoredFile]:
        """Every file, oldest first."""
        with self._lock:
            return sorted(self._files.values(), key=lambda f: f.id)


BILLING_COLUMNS = (
    "provider", "lane", "batch_id", "custom_id", "request_id", "model",
    "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
    "cost_picodollars", "cache_write_1h_tokens", "reasoning_tokens", "billed_at",
)
# Token columns summed in totals, in `pricing.Usage` order, then the cost.
SUMMED = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
          "cache_write_1h_tokens", "reasoning_tokens", "cost_picodollars")
COLUMN_LIST = ",".join(BILLING_COLUMNS)
PLACEHOLDERS = ",".join("?" * len(BILLING_COLUMNS))


class BillingRecord:
    """What the provider would bill, one row per billed request, in SQLite on disk."""

    def __init__(self, db: StateDB, prices: PriceTable) -> None:
        self.prices = prices
        self._db = db
        self._lock = db.lock
        # A finalizing batch's rows wait here (a per-connection table, gone with the
        # process) until `commit_staged` moves them in the transaction that marks the
        # batch finalized.
        db.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS staged_billing "
                        f"({', '.join(BILLING_COLUMNS)})")

    def row(self, provider: str, lane: Lane, model: str, usage: Usage, *,
            batch_id: str | None = None, custom_id: str | None = None,
            request_id: str | None = None, billed_at: float | None = None) -> tuple[Any, ...]:
        """One billing row, priced from the price table; billed now unless `billed_at`
        (unix seconds) says when."""
        cost = to_picodollars(self.prices.cost_usd(model, usage, lane))
        return (provider, lane.value, batch_id, custom_id, request_id, model,
                usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens,
                usage.output_tokens, cost, usage.cache_write_1h_tokens, usage.reasoning_tokens,
                time.time() if billed_at is None else billed_at)

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        """Append billing rows."""
        if not rows:
            return
        with self._db.transaction() as conn:
            conn.executemany(f"INSERT INTO billing ({COLUMN_LIST}) VALUES ({PLACEHOLDERS})",
                             rows)

    def stage(self, rows: list[tuple[Any, ...]]) -> None:
        """Hold a finalizing batch's rows aside; they count once `commit_staged` ran."""
        if not rows:
            return
        with self._db.transaction() as conn:
            conn.executemany(f"INSERT INTO staged_billing ({COLUMN_LIST}) "
                             f"VALUES ({PLACEHOLDERS})", rows)

    def discard_staged(self, batch_id: str) -> None:
        """Drop rows an interrupted finalize of `batch_id` left staged."""
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM staged_billing WHERE batch_id = ?", (batch_id,))

    @staticmethod
    def commit_staged(conn: sqlite3.Connection, batch_id: str) -> None:
        """Move `batch_id`'s staged rows into the record (inside the caller's transaction)."""
        conn.execute(f"INSERT INTO billing ({COLUMN_LIST}) SELECT {COLUMN_LIST} "
                     "FROM staged_billing WHERE batch_id = ? ORDER BY rowid", (batch_id,))
        conn.execute("DELETE FROM staged_billing WHERE batch_id = ?", (batch_id,))

    def _where(self, filters: dict[str, Any]) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column in ("provider", "lane", "batch_id", "model"):
            value = filters.get(column)
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if filters.get("since") is not None:
            clauses.append("billed_at >= ?")
            params.append(float(filters["since"]))
        if filters.get("until") is not None:
            clauses.append("billed_at < ?")
            params.append(float(filters["until"]))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    @staticmethod
    def _totals(values: tuple[Any, ...]) -> dict[str, Any]:
        count, *sums = (v or 0 for v in values)
        shaped = dict(zip(SUMMED, sums, strict=True))
        return {"requests": count, **shaped,
                "cost_usd": str(from_picodollars(shaped["cost_picodollars"]))}

    def summary(self, **filters: Any) -> dict[str, Any]:
        """Totals overall and per (provider, lane, model), costs in USD strings.

        Filters: provider, lane, batch_id, model, and `since`/`until` (unix seconds,
        on `billed_at`; rows an emulator older than the column billed have none)."""
        where, params = self._where(filters)
        sums = "COUNT(*), " + ", ".join(f"SUM({column})" for column in SUMMED)
        with self._lock:
            total = self._db.conn.execute(f"SELECT {sums} FROM billing{where}", params).fetchone()
            groups = self._db.conn.execute(
                f"SELECT provider, lane, model, {sums} FROM billing{where} "
                "GROUP BY provider, lane, model ORDER BY provider, lane, model", params
            ).fetchall()
        return {
            "total": self._totals(total),
            "by_model": [
                {"provider": g[0], "lane": g[1], "model": g[2], **self._totals(g[3:])}
                for g in groups
            ],
        }

    def by_day(self, *, provider: str | None = None, since_day: str | None = None,
               until_day: str | None = None) -> list[dict[str, Any]]:
        """Totals per UTC day of `billed_at`, provider, model and lane (what a provider's
        cost report groups by), oldest day first; `since_day`/`until_day` are inclusive
        `YYYY-MM-DD` bounds. Served by the `billing_by_day` index."""
        clauses, params = ["billed_at IS NOT NULL"], []
        if provider:
            clauses.append("provider = ?")
            params.append(provider)
        if since_day:
            clauses.append(f"{BILLED_DAY} >= ?")
            params.append(since_day)
        if until_day:
            clauses.append(f"{BILLED_DAY} <= ?")
            params.append(until_day)
        sums = "COUNT(*), " + ", ".join(f"SUM({column})" for column in SUMMED)
        with self._lock:
            rows = self._db.conn.execute(
                f"SELECT {BILLED_DAY} AS day, provider, model, lane, {sums} FROM billing "
                f"WHERE {' AND '.join(clauses)} GROUP BY day, provider, model, lane "
                "ORDER BY day, provider, model, lane", params).fetchall()
        return [{"day": r[0], "provider": r[1], "model": r[2], "lane": r[3],
                 **self._totals(r[4:])} for r in rows]

    def records(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every billing row matching the filters, streamed."""
        where, params = self._where(filters)
        with self._lock:
            cursor = self._db.conn.execute(
                f"SELECT {COLUMN_LIST} FROM billing{where} ORDER BY id", params)
            rows = cursor.fetchmany(5000)
        while rows:
            for row in rows:
                yield dict(zip(BILLING_COLUMNS, row, strict=True))
            with self._lock:
                rows = cursor.fetchmany(5000)

    def clear(self) -> None:
        """Forget every billing row."""
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM billing")


class JobStore:
    """Batch jobs in the state database: written at create, cancel, the worker's end,
    finalize and delete, and read back when a new emulator opens the folder."""

    def __init__(self, db: StateDB, state_dir: Path) -> None:
        self._db = db
        self._state_dir = state_dir

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self._state_dir))
        except ValueError:
            return str(path)

    def insert(self, job: BatchJob) -> None:
        """Record a new job as create fixed it."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO batches (id, provider, input_path, total, created_at, model, "
                "endpoint, input_file_id, metadata, enqueued_tokens, fate, failure) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.provider, self._relative(job.input_path), job.total,
                 job.created_at, job.model, job.endpoint, job.input_file_id,
                 _dump(job.metadata), job.enqueued_tokens, job.fate, _dump(job.failure)))

    def save_cancel(self, job: BatchJob) -> None:
        """Record a cancel request."""
        with self._db.transaction() as conn:
            conn.execute("UPDATE batches SET cancel_requested_at = ?, cancel_cut = ? "
                         "WHERE id = ?", (job.cancel_requested_at, job.cancel_cut, job.id))

    def save_worker(self, job: BatchJob) -> None:
        """Record where the worker left the job (its staged file is complete up to here)."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE batches SET failure = ?, worker_finished = ?, processed = ?, "
                "worker_done_at = ?, outcomes = ? WHERE id = ?",
                (_dump(job.failure), int(job.worker_finished), job.processed,
                 job.worker_done_at, bytes(job.outcomes), job.id))

    @staticmethod
    def save_final(conn: sqlite3.Connection, job_id: str, phase: str, ended_at: float,
                   cut: int, results: dict[str, Any]) -> None:
        """Mark a job finalized (inside the transaction that commits its bill)."""
        conn.execute("UPDATE batches SET finalized = 1, final_phase = ?, final_ended_at = ?, "
                     "cancel_cut = ?, results = ? WHERE id = ?",
                     (phase, ended_at, cut, json.dumps(results), job_id))

    def save_deleted(self, job: BatchJob) -> None:
        """Record that a job was deleted."""
        with self._db.transaction() as conn:
            conn.execute("UPDATE batches SET deleted = 1 WHERE id = ?", (job.id,))

    def load(self) -> list[BatchJob]:
        """Every stored job, oldest first, as the last process left it."""
        with self._db.lock:
            rows = self._db.conn.execute(
                f"SELECT {', '.join(JOB_COLUMNS)} FROM batches ORDER BY id").fetchall()
        jobs = []
        for row in rows:
            r = dict(zip(JOB_COLUMNS, row, strict=True))
            jobs.append(BatchJob(
                id=r["id"], provider=r["provider"], input_path=self._state_dir / r["input_path"],
                total=r["total"], created_at=r["created_at"], model=r["model"],
                endpoint=r["endpoint"], input_file_id=r["input_file_id"],
                metadata=_load(r["metadata"]), enqueued_tokens=r["enqueued_tokens"],
                failure=_load(r["failure"]), fate=r["fate"],
                processed=r["processed"], worker_done_at=r["worker_done_at"],
                worker_finished=bool(r["worker_finished"]),
                cancel_requested_at=r["cancel_requested_at"], cancel_cut=r["cancel_cut"],
                finalized=bool(r["finalized"]), deleted=bool(r["deleted"]),
                final_phase=r["final_phase"], final_ended_at=r["final_ended_at"],
                outcomes=bytearray(r["outcomes"] or b""), results=_load(r["results"]) or {}))
        return jobs


JOB_COLUMNS = (
    "id", "provider", "input_path", "total", "created_at", "model", "endpoint",
    "input_file_id", "metadata", "enqueued_tokens", "fate", "failure", "cancel_requested_at",
    "cancel_cut", "worker_finished", "processed", "worker_done_at", "outcomes", "finalized",
    "final_phase", "final_ended_at", "results", "deleted",
)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)
