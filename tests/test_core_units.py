"""Fast unit tests of the core: requests, custom ids, sharding, inputs, windows (no server)."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime

import pytest

from lanewise.batch.context import DateWindow, run_key_for, storage_prefix
from lanewise.catalog import Catalog, load_catalog
from lanewise.errors import ConfigurationError, InputError
from lanewise.inputs import InputRow, read_rows
from lanewise.providers.base import BatchLimits
from lanewise.requests import PreparedRequest, RowRejection, custom_id_for, prepare
from lanewise.sharding import ShardWriter, encode_line
from lanewise.storage import Storage

ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def row(number: int, **values) -> InputRow:
    return InputRow(number, {"ticket_id": "T-1", "subject": "Hi", "body": "Charged twice.",
                             **values})


def test_catalog_ships_the_tasks(catalog):
    tagging = catalog.get("ticket-tagging")
    assert tagging.output.type == "json" and "topic" in tagging.output.fields()
    assert catalog.get("ticket-summary").output.type == "text"
    with pytest.raises(ConfigurationError,
                       match="known: escalation-summary, faq-candidates, reply-draft"):
        catalog.get("nope")


def test_catalog_errors_name_task_and_field(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text("tasks:\n  broken:\n    provider: openai\n    model: gpt-4o-mini\n"
                    "    input: {key: id}\n    prompt: {user: '{text}'}\n"
                    "    output: {type: json}\n")
    with pytest.raises(ConfigurationError, match="task 'broken', field output"):
        Catalog.from_file(path)


def test_prepare_builds_the_prompt(catalog):
    request = prepare(catalog.get("ticket-tagging"), row(3))
    assert isinstance(request, PreparedRequest) and request.key == "T-1"
    assert request.messages[0]["content"].endswith("Subject: Hi\nCharged twice.")
    assert request.system and request.estimated_tokens > 0 and not request.excerpted


@pytest.mark.parametrize(
    ("values", "field", "reason"),
    [
        ({"body": None}, "body", "missing text"),
        ({"body": "  "}, "body", "empty text"),
        ({"ticket_id": None}, "ticket_id", "missing key"),
        ({"ticket_id": " "}, "ticket_id", "empty key"),
    ],
)
def test_prepare_rejects_bad_rows_naming_row_and_field(catalog, values, field, reason):
    rejection = prepare(catalog.get("ticket-summary"), row(7, **values))
    assert rejection == RowRejection(7, rejection.key, field, reason)


def test_decode_problem_is_the_rejection(catalog):
    bad = InputRow(4, {"ticket_id": "X", "body": None}, ("body", "undecodable bytes"))
    assert prepare(catalog.get("ticket-summary"), bad).reason == "undecodable bytes"


def test_oversize_is_excerpted_or_rejected_per_task(catalog):
    long_body = "word " * 5000
    excerpted = prepare(catalog.get("ticket-tagging"), row(1, body=long_body))
    assert excerpted.excerpted and excerpted.estimated_tokens <= 2000
    assert excerpted.messages[0]["content"].endswith(" [...]")
    rejected = prepare(catalog.get("ticket-summary"), row(1, body=long_body))
    assert isinstance(rejected, RowRejection) and rejected.field == "body"
    assert "over the model's context" in rejected.reason


@pytest.mark.parametrize("key", ["T-0001", "a" * 80, "has space/and:colon", "ünïcode", "_x"])
def test_custom_ids_are_valid_for_both_providers_and_distinct(key):
    ids = {custom_id_for(key, attempt, "a1b2c3") for attempt in range(12)}
    assert len(ids) == 12 and all(ANTHROPIC_ID.match(i) for i in ids)
    assert custom_id_for(key, 0, "a1b2c3") != custom_id_for(key + "x", 0, "a1b2c3")
    assert custom_id_for(key, 0, "a1b2c3") != custom_id_for(key, 0, "d4e5f6")


def test_shard_writer_respects_count_bytes_and_tokens(tmp_path):
    storage = Storage(str(tmp_path))
    limits = BatchLimits(max_requests=3, max_bytes=10_000, enqueued_token_budget=None)
    writer = ShardWriter(storage, "run/shard", limits, token_budget=25)
    closed = []
    for i in range(8):
        line = encode_line({"custom_id": f"c{i}", "body": {"x": "y" * 10}})
        shard = writer.add(f"c{i}", line, estimated_tokens=10)
        if shard:
            closed.append(shard)
    closed.append(writer.close())
    assert [s.request_count for s in closed] == [2, 2, 2, 2]  # 3 lines would pass 25 tokens
    assert sum(s.request_count for s in closed) == 8
    with storage.open(closed[0].url) as handle:
        assert [json.loads(x)["custom_id"] for x in handle] == ["c0", "c1"]
    byte_limited = ShardWriter(storage, "run/bytes", BatchLimits(100, 200, None))
    sizes = []
    for i in range(5):
        shard = byte_limited.add(f"c{i}", b"x" * 90 + b"\n", 1)
        if shard:
            sizes.append(shard.bytes)
    assert all(size <= 196 for size in sizes)


def test_a_ramped_shard_writer_starts_small_and_doubles_up_to_the_limits(tmp_path):
    """Shards sent while planning goes on: the first closes at `ramp_from` requests, each
    next at twice the last, then at the provider's limits; every line lands once."""
    storage = Storage(str(tmp_path))
    writer = ShardWriter(storage, "run/ramp", BatchLimits(20, 10_000_000, None),
                         token_budget=1_000, ramp_from=3)
    sizes = []
    for i in range(70):
        shard = writer.add(i, encode_line({"custom_id": f"c{i}"}), estimated_tokens=1)
        if shard:
            sizes.append(shard.request_count)
    sizes.append(writer.close().request_count)
    assert sizes == [3, 6, 12, 20, 20, 9]
    # The token cap still binds inside the ramp.
    capped = ShardWriter(storage, "run/capped", BatchLimits(20, 10_000_000, None),
                         token_budget=5, ramp_from=3)
    sizes = [s.request_count for i in range(12)
             if (s := capped.add(i, encode_line({"custom_id": f"c{i}"}), 1))]
    assert sizes == [3, 5]


def test_date_window_and_run_keys():
    window = DateWindow(date(2026, 8, 1), date(2026, 8, 3))
    assert window.contains(datetime(2026, 8, 2, 23, tzinfo=UTC))
    assert window.contains("2026-08-03T10:00:00Z") and not window.contains("2026-08-04")
    assert window.contains("garbage") is None and window.contains(None) is None
    assert run_key_for("t", window) == "t:2026-08-01..2026-08-03"
    assert run_key_for("t", None, date(2026, 8, 5)) == "t:2026-08-05"
    assert storage_prefix("t:2026-08-01..2026-08-03") == "runs/t_2026-08-01..2026-08-03"


def test_inputs_stream_parquet_csv_jsonl(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"ticket_id,body\nA,hello\nB,caf\xe9\n")
    rows = list(read_rows(str(tmp_path / "a.csv")))
    assert rows[0].values == {"ticket_id": "A", "body": "hello"} and rows[0].number == 1
    assert rows[1].problem[0] == "body"
    (tmp_path / "a.jsonl").write_text('{"ticket_id": "A"}\n\n[1]\n')
    rows = list(read_rows(str(tmp_path / "a.jsonl")))
    assert rows[1].problem == ("line", "not a JSON object")
    with pytest.raises(InputError, match="not found"):
        list(read_rows(str(tmp_path / "missing.parquet")))
    with pytest.raises(InputError, match="format"):
        list(read_rows(str(tmp_path / "a.txt")))


def test_line_encoder_matches_a_plain_dump_byte_for_byte(catalog):
    from lanewise.providers.anthropic_adapter import AnthropicAdapter
    from lanewise.providers.openai_adapter import OpenAIAdapter
    from lanewise.sharding import LineEncoder

    tricky = 'quote " backslash \\ newline \n tab \t nul \x00 ünïcode 😀 </script>'
    for name, adapter in (("ticket-tagging", OpenAIAdapter(None)),
                          ("ticket-summary", AnthropicAdapter(None))):
        task = catalog.get(name)
        request = prepare(task, row(1, subject=tricky, body=tricky))
        custom_id = custom_id_for("T-1", 2, "a1b2c3")
        expected = encode_line(adapter.batch_line(custom_id, adapter.request_body(task, request)))
        assert LineEncoder(adapter, task).encode(custom_id, request) == expected
