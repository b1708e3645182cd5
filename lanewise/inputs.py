"""Reading input rows: Parquet, CSV or JSONL, local or s3://.

Rows are never read whole: Parquet streams through pyarrow record batches, CSV
through Python's `csv` module record by record, JSONL line by line. A bad row becomes
that row's problem (row number, field, reason) and reading goes on; only a problem
with the file as a whole (missing, empty, not the format, lacking the columns the task
needs) raises an `InputError`, before any row is yielded.

What counts as a bad row:

- a cell that is not UTF-8 (CSV, binary Parquet columns): `undecodable bytes (not
  UTF-8) at byte N`, N counted within the cell;
- text that cannot be encoded as UTF-8 (a JSON `"\\ud83d"` escape, a lone surrogate),
  also inside nested values: `text cannot be encoded as UTF-8 (lone surrogate at
  character N)`;
- a CSV record with more or fewer fields than the header, or one the CSV parser
  refuses: field `(row)`;
- a JSONL line that is not JSON or not an object: field `line`.

The cell with the problem is set to None, so nothing unencodable travels further.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from lanewise.errors import InputError

BATCH_ROWS = 10_000
JSONL_PROBE_ROWS = 5_000  # JSONL has no header: its columns are judged from these first rows
CSV_FIELD_LIMIT = 1 << 30  # any sane cell fits; bounds memory if a quote is never closed
ROW_FIELD = "(row)"  # the field named when a whole CSV record is wrong
FIELD_NAME_MAX = 100  # the ledger's error_field column holds at most this much

_SURROGATE = re.compile("[\ud800-\udfff]")
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass
class InputRow:
    """One input row: its 1-based position in the file, its cells, and a decode problem."""

    number: int
    values: dict[str, Any]
    problem: tuple[str, str] | None = None  # (field, reason)


def input_format(url: str) -> str:
    """The input format from the file name: parquet, csv or jsonl."""
    name = url.lower().split("?")[0]
    for suffix, kind in ((".parquet", "parquet"), (".pq", "parquet"), (".csv", "csv"),
                         (".jsonl", "jsonl"), (".ndjson", "jsonl")):
        if name.endswith(suffix):
            return kind
    raise InputError(f"cannot tell the format of {url!r}: name it .parquet, .csv or .jsonl")


def _field_name(name: Any) -> str:
    """A column name fit for a message and the ledger: printable UTF-8, bounded length."""
    text = name if isinstance(name, str) else str(name)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= FIELD_NAME_MAX else text[:FIELD_NAME_MAX - 3] + "..."


def _name_list(names: Iterable[str], limit: int = 12) -> str:
    shown = [_field_name(n) for n in names]
    if not shown:
        return "(none)"
    more = len(shown) - limit
    return ", ".join(shown[:limit]) + (f", ... ({more} more)" if more > 0 else "")


def _unencodable(value: Any) -> str | None:
    """Why `value` (text, or a list/dict holding text) cannot be encoded as UTF-8, or None.

    Walks nested values without recursion (a deeply nested JSON value must not blow the
    stack); dict keys are checked too.
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                where = f" in {path}" if path else ""
                return (f"text cannot be encoded as UTF-8 (lone surrogate at character "
                        f"{found.start()}{where})")
        elif isinstance(item, dict):
            for key, inner in reversed(list(item.items())):
                step = f"{path}[{json.dumps(key) if isinstance(key, str) else key}]"
                stack.append((inner, step))
                if isinstance(key, str) and _SURROGATE.search(key):
                    stack.append((key, f"the key {step}"))
        elif isinstance(item, list | tuple):
            stack.extend((inner, f"{path}[{i}]") for i, inner in reversed(list(enumerate(item))))
    return None


def _checked(number: int, values: dict[str, Any],
             problem: tuple[str, str] | None = None) -> InputRow:
    """The row, with any cell that cannot be encoded as UTF-8 made its problem (and None)."""
    for name, value in values.items():
        if isinstance(value, str):
            # The common case, answered in C: ASCII text, or text without a surrogate.
            if value.isascii() or _SURROGATE.search(value) is None:
                continue
            reason = _unencodable(value)
        elif isinstance(value, dict | list):
            reason = _unencodable(value)
        else:
            continue
        if reason is not None:
            problem = problem or (_field_name(name), reason)
            values[name] = None
    return InputRow(number, values, problem)


def _decode_cells(number: int, record: dict[str, Any]) -> InputRow:
    """The row of one record (decoded in place: the record is the reader's own)."""
    problem = None
    for name, value in record.items():
        if isinstance(value, bytes):
            try:
                record[name] = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = problem or (_field_name(name),
                                      f"undecodable bytes (not UTF-8) at byte {exc.start}")
                record[name] = None
    return _checked(number, record, problem)


def _require(url: str, required: Sequence[str], have: Iterable[str], where: str) -> None:
    """A file lacking a column the task needs fails as a whole, naming what it has."""
    present = dict.fromkeys(have)
    missing = [c for c in dict.fromkeys(required) if c not in present]
    if missing:
        raise InputError(f"input file {url} lacks required column(s) {_name_list(missing)}; "
                         f"{where}: {_name_list(present, limit=30)}")


def _parquet_rows(handle, url: str, required: Sequence[str]) -> Iterator[InputRow]:
    source = pq.ParquetFile(handle)
    _require(url, required, source.schema_arrow.names, "its columns")
    number = 0
    for batch in source.iter_batches(batch_size=BATCH_ROWS):
        for record in _parquet_records(batch):
            number += 1
            yield _decode_cells(number, record)


_UTC_NAMES = {"UTC", "utc", "Etc/UTC", "+00:00", "Z"}


def _parquet_records(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The batch's rows. A string column holding bytes that are not UTF-8 (a writer
    that did not check) is read as binary instead, so only those cells are rejected."""
    if any(pa.types.is_timestamp(c.type) and c.type.tz in _UTC_NAMES for c in batch.columns):
        # Reading UTC timestamps as aware datetimes makes pyarrow import pandas (a
        # second of start-up); as naive UTC they name the same instant and day.
        batch = pa.RecordBatch.from_arrays(
            [c.cast(pa.timestamp(c.type.unit)) if pa.types.is_timestamp(c.type)
             and c.type.tz in _UTC_NAMES else c for c in batch.columns],
            names=batch.schema.names)
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        binary = {pa.string(): pa.binary(), pa.large_string(): pa.large_binary()}
        columns = [c.view(binary[c.type]) if c.type in binary else c for c in batch.columns]
        return pa.RecordBatch.from_arrays(columns, names=batch.schema.names).to_pylist()


def _raise_csv_field_limit() -> None:
    limit = CSV_FIELD_LIMIT
    while csv.field_size_limit() < limit:
        try:
            csv.field_size_limit(min(limit, sys.maxsize))
        except OverflowError:  # a C long smaller than the limit (Windows)
            limit //= 2


def _csv_cells(number: int, names: list[str], record: list[str]) -> InputRow:
    """A record of the width of the header: empty cells are None; undecodable bytes
    (decoded as surrogate escapes) make the row's problem, counted in bytes of the cell."""
    values = {name: cell or None for name, cell in zip(names, record, strict=True)}
    if not _SURROGATE.search("".join(record)):
        return InputRow(number, values)
    problem = None
    for name, cell in zip(names, record, strict=True):
        found = _SURROGATE.search(cell)
        if found:
            at = len(cell[:found.start()].encode("utf-8", "surrogateescape"))
            problem = problem or (_field_name(name),
                                  f"undecodable bytes (not UTF-8) at byte {at}")
            values[name] = None
    return InputRow(number, values, problem)


def _csv_rows(handle, url: str, required: Sequence[str]) -> Iterator[InputRow]:
    """Stream the records of a CSV file; the first non-blank record is the header.

    Bytes that are not UTF-8 are kept as surrogate escapes until the cell is looked at,
    so they reject that row only. Blank lines are skipped and not counted; row numbers
    count data records (header excluded), as a spreadsheet user would.
    """
    _raise_csv_field_limit()
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape",
                            newline="")
    try:
        # strict: an unclosed quote is an error for that record, not a cell that
        # silently swallows the rest of the file.
        records = csv.reader(text, strict=True)
        try:
            header = next(r for r in records if r)
        except StopIteration:
            raise InputError(f"input file {url} has no header row") from None
        except csv.Error as exc:
            raise InputError(f"input file {url}: cannot read the header row: {exc}") from None
        names = [n.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                 for n in header]
        repeated = sorted({n for n in names if n and names.count(n) > 1})
        if repeated:
            raise InputError(f"input file {url} repeats column name(s) in its header: "
                             f"{_name_list(repeated)}")
        _require(url, required, names, "its columns")
        width = len(names)
        expected = f"expected {width} fields ({_name_list(names)}), got"
        number = 0
        while True:
            first_line = records.line_num + 1
            try:
                record = next(records)
            except StopIteration:
                break
            except csv.Error as exc:
                number += 1
                lines = records.line_num - first_line + 1
                where = f"line {first_line}" if lines <= 1 else \
                    f"lines {first_line}-{records.line_num}"
                yield InputRow(number, {}, (ROW_FIELD,
                                            f"unreadable CSV record ({where}): {exc}"))
                continue
            if not record:
                continue
            number += 1
            if len(record) != width:
                yield InputRow(number, {}, (ROW_FIELD, f"{expected} {len(record)}"))
                continue
            yield _csv_cells(number, names, record)
    finally:
        text.detach()  # the caller closes the file itself


def _jsonl_records(handle) -> Iterator[tuple[InputRow, dict[str, Any] | None]]:
    """Each non-blank line as a row, with the parsed object when it is one."""
    number = 0
    first = True
    for raw in handle:
        if first:
            first = False
            if raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]
        if not raw.strip():
            continue
        number += 1
        try:
            record = json.loads(raw)
        except UnicodeDecodeError as exc:
            yield InputRow(number, {}, ("line", f"undecodable bytes at byte {exc.start}")), None
            continue
        except ValueError as exc:
            yield InputRow(number, {}, ("line", f"not valid JSON: {exc}")), None
            continue
        except RecursionError:
            yield InputRow(number, {}, ("line", "not valid JSON: nested too deeply")), None
            continue
        if not isinstance(record, dict):
            yield InputRow(number, {}, ("line", "not a JSON object")), None
            continue
        yield _checked(number, record), record


def _jsonl_rows(handle, url: str, required: Sequence[str]) -> Iterator[InputRow]:
    """JSONL rows; with required columns, the first rows are held back until it is
    known that some object among them has each one (a column no object of the first
    JSONL_PROBE_ROWS rows has is missing from the file). With no object there at all
    (only bad lines), the lines are rejected one by one instead."""
    records = _jsonl_records(handle)
    if not required:
        yield from (row for row, _ in records)
        return
    held: list[InputRow] = []
    seen: dict[str, None] = {}
    objects = 0
    for row, record in records:
        held.append(row)
        if record is not None:
            objects += 1
            seen.update(dict.fromkeys(record))
        if len(held) >= JSONL_PROBE_ROWS:
            break
    if objects:
        _require(url, required, seen, f"its columns (in its first {len(held)} rows)")
    yield from held
    del held
    yield from (row for row, _ in records)


def read_rows(url: str, required: Sequence[str] = ()) -> Iterator[InputRow]:
    """Stream the rows of an input file at a local path or fsspec URL (s3://...).

    `required` names the columns the caller cannot do without (the task's key and
    required text); a file lacking one fails with an `InputError` before any row.
    """
    kind = input_format(url)
    try:
        opened = fsspec.open(url, "rb")
        with opened as handle:
            start = handle.read(4)
            if not start:
                raise InputError(f"input file {url} is empty (0 bytes)")
            if kind != "parquet" and start[:2] in _UTF16_BOMS:
                raise InputError(f"input file {url} is UTF-16 text; save it as UTF-8")
            handle.seek(0)
            if kind == "parquet":
                yield from _parquet_rows(handle, url, required)
            elif kind == "csv":
                yield from _csv_rows(handle, url, required)
            else:
                yield from _jsonl_rows(handle, url, required)
    except FileNotFoundError as exc:
        raise InputError(f"input file not found: {url}") from exc
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {url} as {kind}: {exc}") from exc
