"""Reading input rows in record batches: Parquet, CSV or JSONL, local or s3://.

Rows are never read whole: Parquet and CSV stream through pyarrow record batches,
JSONL line by line. Text cells are decoded per cell, so a row with undecodable bytes
becomes that row's error instead of failing the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lanewise.errors import InputError

BATCH_ROWS = 10_000


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


def _decode_cells(number: int, record: dict[str, Any]) -> InputRow:
    values: dict[str, Any] = {}
    problem = None
    for name, value in record.items():
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = problem or (name, f"undecodable bytes (not UTF-8) at byte {exc.start}")
                value = None
        values[name] = value
    return InputRow(number, values, problem)


def _parquet_rows(handle) -> Iterator[InputRow]:
    number = 0
    for batch in pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS):
        for record in batch.to_pylist():
            number += 1
            yield _decode_cells(number, record)


def _csv_rows(handle) -> Iterator[InputRow]:
    # Read every column as binary so one bad cell cannot fail the whole file.
    header = pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=1 << 20))
    names = header.schema.names
    handle.seek(0)
    reader = pacsv.open_csv(
        handle, read_options=pacsv.ReadOptions(block_size=1 << 20),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.binary() for n in names}, strings_can_be_null=True))
    number = 0
    for batch in reader:
        for record in batch.to_pylist():
            number += 1
            yield _decode_cells(number, record)


def _jsonl_rows(handle) -> Iterator[InputRow]:
    number = 0
    for raw in handle:
        if not raw.strip():
            continue
        number += 1
        try:
            record = json.loads(raw)
        except UnicodeDecodeError as exc:
            yield InputRow(number, {}, ("line", f"undecodable bytes at byte {exc.start}"))
            continue
        except ValueError as exc:
            yield InputRow(number, {}, ("line", f"not valid JSON: {exc}"))
            continue
        if not isinstance(record, dict):
            yield InputRow(number, {}, ("line", "not a JSON object"))
            continue
        yield InputRow(number, record)


def read_rows(url: str) -> Iterator[InputRow]:
    """Stream the rows of an input file at a local path or fsspec URL (s3://...)."""
    kind = input_format(url)
    try:
        opened = fsspec.open(url, "rb")
        with opened as handle:
            if kind == "parquet":
                yield from _parquet_rows(handle)
            elif kind == "csv":
                yield from _csv_rows(handle)
            else:
                yield from _jsonl_rows(handle)
    except FileNotFoundError as exc:
        raise InputError(f"input file not found: {url}") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"cannot read {url} as {kind}: {exc}") from exc
