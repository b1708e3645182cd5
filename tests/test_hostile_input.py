"""Hostile inputs: every bad row is rejected by number, field and reason while the run
goes on (rows in == rows out); a file unusable as a whole fails at once with one message."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lanewise.batch import planning
from lanewise.batch.runner import run_batch_lane
from lanewise.errors import InputError
from lanewise.inputs import read_rows
from tests.lane_helpers import TERMINAL, batches_created, make_context

TASK = "ticket-tagging"  # key ticket_id, required body, prompt over subject and body
NEEDED = ["ticket_id", "body"]
BIG = 10 * 1024 * 1024  # a 10 MB cell, far over pyarrow's 1 MiB block
RAGGED_3 = "expected 3 fields (ticket_id, subject, body), got"


def outcomes(ctx, summary, rows: int) -> dict[int, tuple[str, str | None, str | None]]:
    """Rows in == rows out: each input row once among the items and in the results, each
    terminal. Returns {row number: (status, error_field, error_reason)} from the results."""
    items = list(ctx.ledger.iter_items(ctx.ledger.run_by_key(summary.run_key)["id"]))
    assert sorted(i["row_number"] for i in items) == list(range(1, rows + 1))
    assert {i["status"] for i in items} <= TERMINAL
    results = pd.read_parquet(ctx.storage.open(summary.results_url, "rb"))
    assert sorted(results["row_number"]) == list(range(1, rows + 1))
    return {r.row_number: (r.status, r.error_field, r.error_reason)
            for r in results.itertuples()}


def rejected(row: int, field: str, reason: str) -> tuple[str, str, str]:
    return ("rejected", field, f"row {row}, field {field!r}: {reason}")


def items_of(ctx, run_key: str) -> int:
    run = ctx.ledger.run_by_key(run_key)
    return 0 if run is None else sum(ctx.ledger.count_items(run["id"]).values())


# --- the reader alone -------------------------------------------------------------------

def test_ragged_csv_rows_are_rejected_both_ways(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_bytes(b"ticket_id,subject,body\nA1,Hi,ok\nA2,Hi,one,two\nA3,Hi\n\n"
                     b'A4,"a, quoted\nnewline",fine\r\nA5,Hi,caf\xe9\n')
    rows = list(read_rows(str(path), NEEDED))
    assert [r.number for r in rows] == [1, 2, 3, 4, 5]  # the blank line is not a row
    assert rows[0].values == {"ticket_id": "A1", "subject": "Hi", "body": "ok"}
    assert rows[1].problem == ("(row)", f"{RAGGED_3} 4")
    assert rows[2].problem == ("(row)", f"{RAGGED_3} 2")
    assert rows[3].values == {"ticket_id": "A4", "subject": "a, quoted\nnewline",
                              "body": "fine"} and rows[3].problem is None
    assert rows[4].problem == ("body", "undecodable bytes (not UTF-8) at byte 3")
    assert rows[4].values["body"] is None


def test_csv_cells_of_any_size_bom_nul_and_empty(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "wb") as out:
        out.write(b"\xef\xbb\xbfticket_id,subject,body\nA1,,")
        out.write(b"x" * BIG)
        out.write(b'\nA2,"",nul \x00 inside\n')
    rows = list(read_rows(str(path), NEEDED))
    assert len(rows) == 2 and rows[0].problem is None
    assert len(rows[0].values["body"]) == BIG and rows[0].values["subject"] is None
    assert rows[1].values == {"ticket_id": "A2", "subject": None, "body": "nul \x00 inside"}


def test_an_unreadable_csv_record_rejects_that_row_only(tmp_path, monkeypatch):
    monkeypatch.setattr("lanewise.inputs.CSV_FIELD_LIMIT", 100)
    previous = csv.field_size_limit(100)
    try:
        path = tmp_path / "limit.csv"
        path.write_text(f"ticket_id,body\nA1,ok\nA2,{'y' * 200}\nA3,ok\n")
        rows = list(read_rows(str(path), NEEDED))
    finally:
        csv.field_size_limit(previous)
    assert [r.number for r in rows] == [1, 2, 3]
    assert rows[1].problem == ("(row)", "unreadable CSV record (line 3): field larger than "
                                        "field limit (100)")
    assert rows[2].values == {"ticket_id": "A3", "body": "ok"}


def test_an_unclosed_quote_is_one_rejected_record_naming_the_lines_it_took(tmp_path):
    """Not a cell that silently swallows the rest of the file."""
    path = tmp_path / "quote.csv"
    path.write_text('ticket_id,body\nA1,ok\nA2,"never closed\nA3,x\nA4,y\n')
    rows = list(read_rows(str(path), NEEDED))
    assert [r.number for r in rows] == [1, 2]
    assert rows[0].values == {"ticket_id": "A1", "body": "ok"}
    assert rows[1].problem == ("(row)", "unreadable CSV record (lines 3-5): unexpected end "
                                        "of data")


def test_lone_surrogates_in_jsonl_reject_the_row_nested_too(tmp_path):
    path = tmp_path / "surrogates.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"ticket_id":"B1","body":"ok \\ud83d\\ude00"}\n'
                     b'{"ticket_id":"B2","body":"half \\ud83d here"}\n'
                     b'{"ticket_id":"B3","body":"x","subject":{"a":["ok","\\udc00"]}}\n'
                     b'{"ticket_id":"\\udfff","body":"x"}\n' + b"[" * 100_000 + b"\n")
    rows = list(read_rows(str(path), NEEDED))
    assert rows[0].problem is None and rows[0].values["body"] == "ok \U0001f600"
    assert rows[1].problem == ("body", "text cannot be encoded as UTF-8 "
                                       "(lone surrogate at character 5)")
    assert rows[1].values["body"] is None
    assert rows[2].problem == ("subject", "text cannot be encoded as UTF-8 "
                                          '(lone surrogate at character 0 in ["a"][1])')
    assert rows[3].problem == ("ticket_id", "text cannot be encoded as UTF-8 "
                                            "(lone surrogate at character 0)")
    assert rows[3].values["ticket_id"] is None
    assert rows[4].problem == ("line", "not valid JSON: nested too deeply")


def test_missing_columns_fail_the_file_naming_what_it_has(tmp_path, monkeypatch):
    csv_path = tmp_path / "cols.csv"
    csv_path.write_text("id,subject,text\n1,a,b\n")
    with pytest.raises(InputError) as caught:
        next(read_rows(str(csv_path), NEEDED))
    assert str(caught.value) == (f"input file {csv_path} lacks required column(s) "
                                 "ticket_id, body; its columns: id, subject, text")
    pq_path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"ticket_id": ["a"], "text": ["b"]}), pq_path)
    with pytest.raises(InputError) as caught:
        next(read_rows(str(pq_path), NEEDED))
    assert str(caught.value) == (f"input file {pq_path} lacks required column(s) body; "
                                 "its columns: ticket_id, text")
    # JSONL: a column no object of the first rows has is missing; later ones do not count.
    monkeypatch.setattr("lanewise.inputs.JSONL_PROBE_ROWS", 3)
    jsonl = tmp_path / "cols.jsonl"
    jsonl.write_text('{"ticket_id":"1"}\nnot json\n{"ticket_id":"2","text":"x"}\n'
                     '{"ticket_id":"3","body":"late"}\n')
    with pytest.raises(InputError) as caught:
        next(read_rows(str(jsonl), NEEDED))
    assert str(caught.value) == (f"input file {jsonl} lacks required column(s) body; "
                                 "its columns (in its first 3 rows): ticket_id, text")
    # One object with the column is enough; a JSONL with no object at all is judged by row.
    jsonl.write_text('{"ticket_id":"1"}\n{"ticket_id":"2","body":"x"}\n')
    assert [r.number for r in read_rows(str(jsonl), NEEDED)] == [1, 2]
    jsonl.write_text("not json\n")
    assert read_rows(str(jsonl), NEEDED).__next__().problem[0] == "line"


def test_parquet_string_column_with_bytes_not_utf8(tmp_path):
    """A writer that did not check UTF-8: only the bad cell's row is rejected."""
    raw = pa.array([b"ok", b"caf\xe9", b"fine"], pa.binary())
    body = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # unvalidated
    path = tmp_path / "latin1.parquet"
    pq.write_table(pa.table({"ticket_id": ["a", "b", "c"], "body": body}), path)
    rows = list(read_rows(str(path), NEEDED))
    assert [r.problem for r in rows] == [
        None, ("body", "undecodable bytes (not UTF-8) at byte 3"), None]
    assert rows[2].values == {"ticket_id": "c", "body": "fine"}


@pytest.mark.parametrize("name", ["empty.csv", "empty.jsonl", "empty.parquet"])
def test_an_empty_file_of_any_format_fails_at_once(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(InputError) as caught:
        list(read_rows(str(path)))
    assert str(caught.value) == f"input file {path} is empty (0 bytes)"


def test_files_with_no_rows_are_valid(tmp_path):
    (tmp_path / "header.csv").write_bytes(b"\xef\xbb\xbfticket_id,subject,body\r\n")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    pq.write_table(pa.table({"ticket_id": pa.array([], pa.string()),
                             "body": pa.array([], pa.string())}), tmp_path / "none.parquet")
    for name in ("header.csv", "blank.jsonl", "none.parquet"):
        assert list(read_rows(str(tmp_path / name), NEEDED)) == []


def test_file_level_csv_problems(tmp_path):
    cases = {"utf16.csv": ("ticket_id,body\nA,b\n".encode("utf-16"),
                           "is UTF-16 text; save it as UTF-8"),
             "blank.csv": (b"\n\n", "has no header row"),
             "twice.csv": (b"ticket_id,body,body\n", "repeats column name(s) in its "
                                                     "header: body")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError) as caught:
            list(read_rows(str(tmp_path / name)))
        assert str(caught.value) == f"input file {tmp_path / name} {message}"


# --- whole runs on the emulator ---------------------------------------------------------

def test_hostile_csv_run_rejects_rows_and_finishes(emulator, tmp_path):
    path = tmp_path / "hostile.csv"
    with open(path, "wb") as out:
        out.write(b"ticket_id,subject,body\n"
                  b"A1,Hi,I was charged twice\n"         # 1 fine
                  b"A2,Hi,one,two\n"                     # 2 too many fields
                  b"A3,Hi\n"                             # 3 too few fields
                  b"A4,Big,")                            # 4 a 10 MB body: excerpted
        out.write(b"word " * (BIG // 5))
        out.write(b"\nA5,Hi,nul \x00 in the text\n"     # 5 NUL in text is text
                  b"A\x006,Hi,nul in the key\n"          # 6 NUL in the key
                  b"A7,Hi,caf\xe9\n"                     # 7 not UTF-8
                  b"A8,Hi,login fails\n")                # 8 fine
    ctx = make_context(TASK, emulator, tmp_path)
    summary = run_batch_lane(ctx, "hostile:csv", str(path))
    out = outcomes(ctx, summary, 8)
    assert out[2] == rejected(2, "(row)", f"{RAGGED_3} 4")
    assert out[3] == rejected(3, "(row)", f"{RAGGED_3} 2")
    assert out[6] == rejected(6, "ticket_id", "key contains a NUL character at character 1")
    assert out[7] == rejected(7, "body", "undecodable bytes (not UTF-8) at byte 3")
    assert {out[n][0] for n in (1, 4, 5, 8)} == {"succeeded"}
    assert summary.counts == {"succeeded": 4, "rejected": 4}
    results = pd.read_parquet(ctx.storage.open(summary.results_url, "rb"))
    assert results.loc[results.row_number == 4, "excerpted"].item()


def test_lone_surrogate_in_jsonl_is_a_row_rejection(emulator, tmp_path):
    path = tmp_path / "surrogate.jsonl"
    path.write_bytes(b'{"ticket_id":"B1","subject":"x","body":"login fails"}\n'
                     b'{"ticket_id":"B2","subject":"x","body":"broken \\ud83d emoji"}\n'
                     b'{"ticket_id":"B3","subject":["a","\\ud83d"],"body":"x"}\n'
                     b'{"ticket_id":"B4","subject":"x","body":"export is empty"}\n')
    ctx = make_context(TASK, emulator, tmp_path)
    summary = run_batch_lane(ctx, "hostile:jsonl", str(path))
    out = outcomes(ctx, summary, 4)
    unencodable = "text cannot be encoded as UTF-8 (lone surrogate at character"
    assert out[2] == rejected(2, "body", f"{unencodable} 7)")
    assert out[3] == rejected(3, "subject", f"{unencodable} 0 in [1])")
    assert out[1][0] == out[4][0] == "succeeded"
    # A rerun over the same file finishes the same way (nothing stuck in planning).
    again = run_batch_lane(make_context(TASK, emulator, tmp_path), "hostile:jsonl", str(path))
    assert again.counts == summary.counts == {"succeeded": 2, "rejected": 2}


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl"])
def test_missing_columns_fail_the_run_at_once(kind, emulator, tmp_path):
    path = tmp_path / f"nobody.{kind}"
    table = pa.table({"ticket_id": ["C1", "C2"], "subject": ["a", "b"], "text": ["x", "y"]})
    if kind == "csv":
        path.write_text("ticket_id,subject,text\nC1,a,x\nC2,b,y\n")
    elif kind == "parquet":
        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    where = "its columns (in its first 2 rows)" if kind == "jsonl" else "its columns"
    ctx = make_context(TASK, emulator, tmp_path)
    before = batches_created(emulator)
    with pytest.raises(InputError) as caught:
        run_batch_lane(ctx, f"hostile:nobody:{kind}", str(path))
    assert str(caught.value) == (f"input file {path} lacks required column(s) body; "
                                 f"{where}: ticket_id, subject, text")
    assert items_of(ctx, f"hostile:nobody:{kind}") == 0
    assert batches_created(emulator) == before


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl"])
def test_empty_input_file_fails_the_run_at_once(kind, emulator, tmp_path):
    path = tmp_path / f"empty.{kind}"
    path.write_bytes(b"")
    ctx = make_context(TASK, emulator, tmp_path)
    with pytest.raises(InputError) as caught:
        run_batch_lane(ctx, f"hostile:empty:{kind}", str(path))
    assert str(caught.value) == f"input file {path} is empty (0 bytes)"
    assert items_of(ctx, f"hostile:empty:{kind}") == 0


def test_header_only_csv_finishes_with_no_rows(emulator, tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("ticket_id,subject,body\n")
    ctx = make_context(TASK, emulator, tmp_path)
    summary = run_batch_lane(ctx, "hostile:header", str(path))
    assert summary.rows == 0 and summary.counts == {} and summary.shards == 0
    assert outcomes(ctx, summary, 0) == {}


def test_duplicate_key_in_a_later_chunk_names_the_first_row(emulator, tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "PLAN_CHUNK", 3)
    path = tmp_path / "dups.csv"
    path.write_text("ticket_id,subject,body\nD1,a,x\nD2,a,x\nD3,a,x\nD4,a,x\n"
                    "D2,a,again\nD4,a,again\nD9,a,x\nD1,a,again\n")
    ctx = make_context(TASK, emulator, tmp_path)
    summary = run_batch_lane(ctx, "hostile:dups", str(path))
    out = outcomes(ctx, summary, 8)
    assert out[5] == rejected(5, "ticket_id", "duplicate key (first at row 2)")  # chunk 2
    assert out[6] == rejected(6, "ticket_id", "duplicate key (first at row 4)")  # same chunk
    assert out[8] == rejected(8, "ticket_id", "duplicate key (first at row 1)")  # chunk 3
    assert summary.counts == {"succeeded": 5, "rejected": 3}
