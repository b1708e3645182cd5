"""The emulator's disk state: uploaded and generated files, and the billing record."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

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


class FileStore:
    """Files streamed to and from a folder, never held whole in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root / "files"
        self.root.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, StoredFile] = {}
        self._ids = itertools.count(1)
        self._instance = f"{time.time_ns() // 1_000_000:011x}"
        self._lock = threading.Lock()

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

    def register(self, file_id: str, filename: str, purpose: str, size: int) -> StoredFile:
        """Record a file already written at `path_for(file_id)`."""
        stored = StoredFile(file_id, filename, purpose, size, int(time.time()),
                            self.path_for(file_id))
        with self._lock:
            self._files[file_id] = stored
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
        stored.path.unlink(missing_ok=True)
        return True

    def all(self) -> list[StoredFile]:
        """Every file, oldest first."""
        with self._lock:
            return sorted(self._files.values(), key=lambda f: f.id)


BILLING_COLUMNS = (
    "provider", "lane", "batch_id", "custom_id", "request_id", "model",
    "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
    "cost_picodollars",
)


class BillingRecord:
    """What the provider would bill, one row per billed request, in SQLite on disk."""

    def __init__(self, root: Path, prices: PriceTable) -> None:
        self.prices = prices
        self._lock = threading.Lock()
        self._db = sqlite3.connect(root / "billing.sqlite3", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS billing (id INTEGER PRIMARY KEY, "
            "provider TEXT, lane TEXT, batch_id TEXT, custom_id TEXT, request_id TEXT, "
            "model TEXT, input_tokens INTEGER, cached_input_tokens INTEGER, "
            "cache_write_tokens INTEGER, output_tokens INTEGER, cost_picodollars INTEGER)"
        )

    def row(self, provider: str, lane: Lane, model: str, usage: Usage, *,
            batch_id: str | None = None, custom_id: str | None = None,
            request_id: str | None = None) -> tuple[Any, ...]:
        """One billing row, priced from the price table."""
        cost = to_picodollars(self.prices.cost_usd(model, usage, lane))
        return (provider, lane.value, batch_id, custom_id, request_id, model,
                usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens,
                usage.output_tokens, cost)

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        """Append billing rows."""
        if not rows:
            return
        placeholders = ",".join("?" * len(BILLING_COLUMNS))
        with self._lock:
            self._db.executemany(
                f"INSERT INTO billing ({','.join(BILLING_COLUMNS)}) VALUES ({placeholders})",
                rows)
            self._db.commit()

    def _where(self, filters: dict[str, str | None]) -> tuple[str, list[str]]:
        clauses, params = [], []
        for column in ("provider", "lane", "batch_id", "model"):
            value = filters.get(column)
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def summary(self, **filters: str | None) -> dict[str, Any]:
        """Totals overall and per (provider, lane, model), costs in USD strings."""
        where, params = self._where(filters)
        sums = ("COUNT(*), SUM(input_tokens), SUM(cached_input_tokens), "
                "SUM(cache_write_tokens), SUM(output_tokens), SUM(cost_picodollars)")
        with self._lock:
            total = self._db.execute(f"SELECT {sums} FROM billing{where}", params).fetchone()
            groups = self._db.execute(
                f"SELECT provider, lane, model, {sums} FROM billing{where} "
                "GROUP BY provider, lane, model ORDER BY provider, lane, model", params
            ).fetchall()

        def shape(values: tuple[Any, ...]) -> dict[str, Any]:
            count, inp, cached, write, out, cost = (v or 0 for v in values)
            return {"requests": count, "input_tokens": inp, "cached_input_tokens": cached,
                    "cache_write_tokens": write, "output_tokens": out,
                    "cost_picodollars": cost, "cost_usd": str(from_picodollars(cost))}

        return {
            "total": shape(total),
            "by_model": [
                {"provider": g[0], "lane": g[1], "model": g[2], **shape(g[3:])} for g in groups
            ],
        }

    def records(self, **filters: str | None) -> Iterator[dict[str, Any]]:
        """Every billing row matching the filters, streamed."""
        where, params = self._where(filters)
        with self._lock:
            cursor = self._db.execute(
                f"SELECT {','.join(BILLING_COLUMNS)} FROM billing{where} ORDER BY id", params)
            rows = cursor.fetchmany(5000)
        while rows:
            for row in rows:
                yield dict(zip(BILLING_COLUMNS, row, strict=True))
            with self._lock:
                rows = cursor.fetchmany(5000)

    def clear(self) -> None:
        """Forget every billing row."""
        with self._lock:
            self._db.execute("DELETE FROM billing")
            self._db.commit()
