"""The ledger's `result_cache` rows: succeeded answers by request content hash, shared by
both lanes (`lanewise/cache.py` is the interface the lanes call).

Part of `Ledger` (mixed in). The first answer to a request wins and keeps its source;
a later answer replaces an entry only once that entry is too old: past its own expiry,
or older than the TTL the new answer is stored with (the storing task's, the same rule
a task's lookups apply, so an entry stored without a TTL is refreshed by a task that
has one instead of blocking it for ever). Many answers are
one statement per chunk (PostgreSQL: `INSERT ... SELECT FROM unnest(...)`; SQLite:
`executemany`), written on the caller's connection when they belong to a change of
item states (collect stores a shard's answers in the transaction that records them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from lanewise.ledger.schema import items, live_calls, result_cache

ANSWER_COLUMNS = ("content_hash", "task", "provider", "model", "output_text", "source",
                  "cost_picodollars", "live_cost_picodollars", "created_at", "expires_at")
USAGE_COLUMNS = ("input_tokens", "cached_input_tokens", "cache_write_tokens",
                 "cache_write_1h_tokens", "output_tokens", "reasoning_tokens")
CHUNK = 5000
LOOKUP_CHUNK = 500  # hashes per IN list (SQLite's bound-variable limit, and plan size)
_PG_TYPES = ("text", "text", "text", "text", "text", "text", "int8", "int8", "float8",
             "float8")
_REPLACED = ", ".join(f"{c} = excluded.{c}" for c in ANSWER_COLUMNS[1:])
# Only a stale entry gives way (the first answer to a request wins while it is valid):
# past its own expiry, or older than the new answer's TTL (its expiry minus its creation).
_ONLY_STALE = ("(result_cache.expires_at IS NOT NULL AND result_cache.expires_at <= {now}) "
               "OR (excluded.expires_at IS NOT NULL AND result_cache.created_at "
               "+ (excluded.expires_at - excluded.created_at) <= {now})")
_PG_UPSERT = (
    f"INSERT INTO result_cache ({', '.join(ANSWER_COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'%b::{t}[]' for t in _PG_TYPES)}) "
    f"ON CONFLICT (content_hash) DO UPDATE SET {_REPLACED} "
    f"WHERE {_ONLY_STALE.format(now='%s')}")  # `now` twice, after the arrays
_SQLITE_UPSERT = (
    f"INSERT INTO result_cache ({', '.join(ANSWER_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in ANSWER_COLUMNS)}) "
    f"ON CONFLICT (content_hash) DO UPDATE SET {_REPLACED} "
    f"WHERE {_ONLY_STALE.format(now=f'?{len(ANSWER_COLUMNS) + 1}')}")  # `now` after the row


def store_answers(conn: sa.Connection, dialect: str, answers: Iterable[dict[str, Any]],
                  now: float) -> int:
    """Upsert answers (dicts of `ANSWER_COLUMNS`) on `conn`, inside its transaction;
    returns how many entries were written (new, or replacing an expired one).

    Within one call the first answer of a hash wins too (PostgreSQL refuses to upsert
    one row twice in a statement). Rows go in hash order, so two transactions storing
    overlapping answers lock them in the same order and never deadlock.
    """
    unique: dict[str, tuple[Any, ...]] = {}
    for answer in answers:
        if answer["content_hash"] not in unique:
            text = answer["output_text"]
            if "\x00" in text:  # PostgreSQL text cannot hold NUL; both dialects store alike
                answer = {**answer, "output_text": text.replace("\x00", "\ufffd")}
            unique[answer["content_hash"]] = tuple(answer[c] for c in ANSWER_COLUMNS)
    rows = [unique[h] for h in sorted(unique)]
    written = 0
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        if dialect == "postgresql":
            columns = [list(c) for c in zip(*chunk, strict=True)]
            result = conn.exec_driver_sql(_PG_UPSERT, (*columns, now, now))
        else:
            result = conn.exec_driver_sql(_SQLITE_UPSERT, [(*row, now) for row in chunk])
        written += max(result.rowcount, 0)
    return written


def _usable(now: float, max_age_seconds: float | None) -> list[Any]:
    """Conditions of an entry that may answer a request at `now`."""
    conditions = [sa.or_(result_cache.c.expires_at.is_(None), result_cache.c.expires_at > now)]
    if max_age_seconds is not None:
        conditions.append(result_cache.c.created_at > now - max_age_seconds)
    return conditions


class CacheRecords:
    """Result-cache reads and writes; needs the ledger's `engine`, `dialect` and
    `_write`."""

    engine: sa.Engine
    dialect: str
    _write: Callable[[], AbstractContextManager[sa.Connection]]

    def cached_answer(self, content_hash: str, *, now: float,
                      max_age_seconds: float | None = None) -> dict[str, Any] | None:
        """The cache entry for one request if it may answer at `now` (unexpired, and
        younger than `max_age_seconds` when given), else None. One primary-key read."""
        query = sa.select(result_cache).where(result_cache.c.content_hash == content_hash,
                                              *_usable(now, max_age_seconds))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def cached_answers(self, hashes: Iterable[str], *, now: float,
                       max_age_seconds: float | None = None) -> dict[str, dict[str, Any]]:
        """{hash: entry} of the requests among `hashes` the cache may answer at `now`."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                query = sa.select(result_cache).where(
                    result_cache.c.content_hash.in_(wanted[start:start + LOOKUP_CHUNK]),
                    *_usable(now, max_age_seconds))
                found.update((r["content_hash"], dict(r))
                             for r in conn.execute(query).mappings())
        return found

    def store_answers(self, answers: list[dict[str, Any]], *, now: float) -> int:
        """Upsert answers in one transaction (see `store_answers`); returns entries
        written."""
        if not answers:
            return 0
        with self._write() as conn:
            return store_answers(conn, self.dialect, answers, now)

    def answer_usage(self, sources: Iterable[str]) -> dict[str, dict[str, int]]:
        """{source: billed usage} of the original answers named `item:<id>` or
        `live:<id>` that are still in the ledger (others are left out)."""
        ids: dict[str, set[int]] = {"item": set(), "live": set()}
        for source in sources:
            kind, _, number = source.partition(":")
            if kind in ids and number.isdigit():
                ids[kind].add(int(number))
        found: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for kind, table in (("item", items), ("live", live_calls)):
                wanted = sorted(ids[kind])
                for start in range(0, len(wanted), LOOKUP_CHUNK):
                    query = sa.select(table.c.id, *(table.c[c] for c in USAGE_COLUMNS)).where(
                        table.c.id.in_(wanted[start:start + LOOKUP_CHUNK]))
                    for row in conn.execute(query):
                        found[f"{kind}:{row[0]}"] = dict(zip(USAGE_COLUMNS, row[1:],
                                                             strict=True))
        return found
