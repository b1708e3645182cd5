"""Bulk item writes: one driver call per chunk, no per-row SQLAlchemy work.

SQLAlchemy's executemany builds and type-processes a parameter dict per row, and on
PostgreSQL its INSERT ... RETURNING turns a chunk into one statement with thousands of
named parameters that psycopg parses again on every call: most of the ledger's cost
at 100,000 rows. Here the SQL of each shape of write is built once per dialect and
handed to the driver as plain tuples or column arrays:

* SQLite: the sqlite3 module's `executemany` (a C loop over tuples). Inserted ids are
  read back as the rows above the table's largest id before the insert, which is exact
  inside the write transaction (`BEGIN IMMEDIATE`: no other writer can interleave).
* PostgreSQL: one statement per chunk over `unnest` of one binary array per column
  (`INSERT ... SELECT ... FROM unnest(...) ON CONFLICT DO NOTHING RETURNING`,
  `UPDATE ... FROM unnest(...)`), so psycopg dumps a few arrays in C and the server
  plans one small statement. An update reaches its items through the primary key only:
  the expected states come in through an optimization fence, so stale statistics can
  never make the planner scan every item of a state (the run) to change a chunk.

Every call runs on the caller's connection, inside the caller's transaction: a bulk
write is part of the same transaction as the state change it belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

from lanewise.ledger.schema import items

CHUNK = 5000
_STATE = re.compile(r"^[a-z_]+$")


def _pg_type(column: sa.Column) -> str:
    kind = column.type
    if isinstance(kind, sa.BigInteger):
        return "int8"
    if isinstance(kind, sa.Integer):
        return "int4"
    if isinstance(kind, sa.Boolean):
        return "bool"
    if isinstance(kind, sa.Float):
        return "float8"
    return "text"


# Columns an insert fills when a row does not say: NOT NULL ones with a default.
_DEFAULTS = {c.name: c.default.arg for c in items.columns
             if not c.nullable and c.default is not None and not c.primary_key}
_TEXT = frozenset(c.name for c in items.columns if _pg_type(c) == "text")
_ARRAY = {"b_id": "%b::int4[]", **{c.name: f"%b::{_pg_type(c)}[]" for c in items.columns}}


def _literal(dialect: str, value: Any) -> str:
    """An SQL literal for a state name, an int or a bool (never free text)."""
    if isinstance(value, bool):
        return ("true" if value else "false") if dialect == "postgresql" else str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and _STATE.match(value):
        return f"'{value}'"
    raise ValueError(f"not an SQL literal this module writes: {value!r}")


def _states(where_status: str | Sequence[str] | None) -> tuple[str, ...]:
    if where_status is None:
        return ()
    return (where_status,) if isinstance(where_status, str) else tuple(where_status)


def _has_nul(column: list[Any]) -> bool:
    try:
        return "\x00" in "".join(filter(None, column))
    except TypeError:  # not only text (and None) after all
        return any(isinstance(v, str) and "\x00" in v for v in column)


def storable_columns(names: Sequence[str], columns: list[list[Any]]) -> list[list[Any]]:
    """Columns whose text PostgreSQL can store: a NUL character (in an answer that
    echoes its input, say) becomes U+FFFD; otherwise the whole chunk would be refused
    on every rerun and its items never settle. Checked a column at a time (one join);
    both dialects store the same text."""
    for index, name in enumerate(names):
        if name in _TEXT and _has_nul(columns[index]):
            columns[index] = [v.replace("\x00", "\ufffd") if isinstance(v, str) else v
                              for v in columns[index]]
    return columns


def _transposed(rows: Sequence[tuple], width: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _by_shape(rows: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Rows grouped by their keys (in order); usually one group, found in C."""
    shapes = set(map(tuple, rows))
    if len(shapes) == 1:
        return {shapes.pop(): rows}
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return groups


def _getter(names: Sequence[str]):
    if len(names) == 1:
        name = names[0]
        return lambda row: (row[name],)
    return itemgetter(*names)


class BulkItems:
    """Item inserts and updates in bulk, for one engine's dialect."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self._sql: dict[tuple, str] = {}

    # --- inserts -------------------------------------------------------------------

    def insert(self, conn: sa.Connection, run_id: int, rows: list[dict[str, Any]], *,
               skip_conflicts: bool) -> list[tuple[int, int]]:
        """Insert item rows (dicts of column values) into run `run_id`; returns
        (row number, item id) of the rows inserted. With `skip_conflicts`, a row that
        collides with a unique key (a key already in the run) is skipped; without, it
        fails the transaction. Columns a row leaves out take their defaults."""
        inserted: list[tuple[int, int]] = []
        for shape, group in _by_shape(rows).items():
            if "run_id" in shape:
                raise ValueError("items are inserted into the run given, not a row's run_id")
            take = _getter(shape)
            for start in range(0, len(group), CHUNK):
                values = [take(r) for r in group[start:start + CHUNK]]
                columns = storable_columns(shape, _transposed(values, len(shape)))
                inserted += self._insert(conn, run_id, shape, columns, skip_conflicts)
        return inserted

    def _insert_sql(self, shape: tuple[str, ...], skip_conflicts: bool) -> str:
        key = ("insert", shape, skip_conflicts)
        sql = self._sql.get(key)
        if sql is not None:
            return sql
        defaults = {k: v for k, v in _DEFAULTS.items() if k not in shape}
        names = ", ".join(("run_id", *shape, *defaults))
        fixed = "".join(f", {_literal(self.dialect, v)}" for v in defaults.values())
        conflicts = " ON CONFLICT DO NOTHING" if skip_conflicts else ""
        if self.dialect == "postgresql":
            sql = (f"INSERT INTO items ({names}) SELECT %s, "
                   f"{', '.join(f'v.{n}' for n in shape)}{fixed} "
                   f"FROM unnest({', '.join(_ARRAY[n] for n in shape)}) AS v"
                   f"({', '.join(shape)}){conflicts} RETURNING row_number, id")
        else:
            sql = (f"INSERT INTO items ({names}) VALUES (?, {', '.join('?' for _ in shape)}"
                   f"{fixed}){conflicts}")
        self._sql[key] = sql
        return sql

    def _insert(self, conn: sa.Connection, run_id: int, shape: tuple[str, ...],
                columns: list[list[Any]], skip_conflicts: bool) -> list[tuple[int, int]]:
        sql = self._insert_sql(shape, skip_conflicts)
        if self.dialect == "postgresql":
            return [tuple(r) for r in conn.exec_driver_sql(sql, (run_id, *columns)).all()]
        before = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM items").scalar_one()
        conn.exec_driver_sql(sql, list(zip([run_id] * len(columns[0]), *columns, strict=True)))
        return [tuple(r) for r in conn.exec_driver_sql(
            "SELECT row_number, id FROM items WHERE id > ?", (before,)).all()]

    # --- updates -------------------------------------------------------------------

    def update(self, conn: sa.Connection, rows: list[dict[str, Any]], *,
               where_status: str | Sequence[str] | None = None,
               constants: dict[str, Any] | None = None) -> int:
        """Update items by id (`b_id` in each row), setting the row's other keys and
        `constants` (the same for every row), only where the item's status is one of
        `where_status` when given; returns the number of items changed."""
        changed = 0
        states = _states(where_status)
        for shape, group in _by_shape(rows).items():
            columns = tuple(k for k in shape if k != "b_id")
            take = _getter(("b_id", *columns))
            for start in range(0, len(group), CHUNK):
                values = [take(r) for r in group[start:start + CHUNK]]
                changed += self._update(conn, columns, values, states, constants or {})
        return changed

    def _update_sql(self, columns: tuple[str, ...], states: tuple[str, ...],
                    constants: tuple[str, ...]) -> str:
        key = ("update", columns, states, constants)
        sql = self._sql.get(key)
        if sql is not None:
            return sql
        if self.dialect == "postgresql":
            names = ("b_id", *columns)
            sets = ", ".join([*(f"{c} = v.{c}" for c in columns),
                              *(f"{k} = %s" for k in constants)])
            sql = (f"UPDATE items SET {sets} FROM unnest({', '.join(_ARRAY[n] for n in names)})"
                   f" AS v({', '.join(names)})")
            if states:
                # OFFSET 0 keeps the states a join value, not a constant the planner
                # could drive an index scan of every item in that state with.
                sql += " CROSS JOIN (SELECT %b::text[] AS states OFFSET 0) AS w"
            sql += " WHERE items.id = v.b_id AND items.id = ANY(%b::int4[])"
            if states:
                sql += " AND items.status = ANY(w.states)"
        else:
            sets = ", ".join(f"{c} = ?" for c in (*columns, *constants))
            sql = f"UPDATE items SET {sets} WHERE id = ?"
            if states:
                sql += f" AND status IN ({', '.join(_literal('sqlite', s) for s in states)})"
        self._sql[key] = sql
        return sql

    def _update(self, conn: sa.Connection, columns: tuple[str, ...], values: list[tuple],
                states: tuple[str, ...], constants: dict[str, Any]) -> int:
        if self.dialect == "postgresql" and len({v[0] for v in values}) != len(values):
            # The same item twice in one statement would be changed once: apply the
            # chunk in layers of distinct items, in order, as one statement per row
            # would (sqlite3's executemany is one statement per row).
            seen: dict[int, int] = {}
            layers: list[list[tuple]] = []
            for value in values:
                depth = seen[value[0]] = seen.get(value[0], -1) + 1
                if depth == len(layers):
                    layers.append([])
                layers[depth].append(value)
            return sum(self._update(conn, columns, layer, states, constants)
                       for layer in layers)
        arrays = storable_columns(("b_id", *columns), _transposed(values, 1 + len(columns)))
        sql = self._update_sql(columns, states, tuple(constants))
        if self.dialect == "postgresql":
            params = (*constants.values(), *arrays, *((list(states),) if states else ()),
                      arrays[0])
            result = conn.exec_driver_sql(sql, params)
        else:
            fixed = [repeat(v, len(values)) for v in constants.values()]
            result = conn.exec_driver_sql(sql, list(zip(*arrays[1:], *fixed, arrays[0],
                                                        strict=True)))
        return max(result.rowcount, 0)
