"""The OpenAI surface of the emulator, driven through the official `openai` SDK."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import httpx
import openai
import pytest

from lanewise.pricing import Lane, Usage, load_price_table
from lanewise.settings import get_settings
from tests.conftest import OPENAI_TERMINAL, chat_line, upload_lines, wait_for

TAGS = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "enum": ["billing", "login", "export", "bug", "other"]},
        "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "labels": {"type": "array", "items": {"type": "string"}, "minItems": 2},
    },
    "required": ["topic", "urgency", "confidence", "labels"],
}


def run_batch(oai: openai.OpenAI, lines: list, **kwargs):
    file_id = upload_lines(oai, lines)
    batch = oai.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h", **kwargs)
    return wait_for(lambda: oai.batches.retrieve(batch.id), lambda b: b.status in OPENAI_TERMINAL)


def read_jsonl(oai: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(x) for x in oai.files.content(file_id).text.splitlines()]


def test_missing_key_is_401_in_openai_format(emulator):
    response = httpx.get(f"{emulator.openai_base_url}/batches")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        emulator.state.config.api_key = "right"
        openai.OpenAI(base_url=emulator.openai_base_url, api_key="wrong",
                      max_retries=0).batches.list()


def test_chat_completion_answers_a_schema_by_the_words_of_the_input(oai):
    response = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Tag tickets."},
                  {"role": "user", "content": "Ticket:\n\nI was charged twice, refund now!"}],
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": TAGS}})
    tags = json.loads(response.choices[0].message.content)
    assert tags["topic"] == "billing"
    assert tags["urgency"] == "high"
    assert 0 <= tags["confidence"] <= 1 and len(tags["labels"]) == 2
    again = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Tag tickets."},
                  {"role": "user", "content": "Ticket:\n\nI was charged twice, refund now!"}],
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": TAGS}})
    assert again.choices[0].message.content == response.choices[0].message.content
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0


def test_text_answer_is_a_shortened_input_and_max_tokens_truncates(oai):
    long_text = "Summarize:\n\n" + " ".join(f"Sentence number {i} is here." for i in range(40))
    answer = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": long_text}])
    text = answer.choices[0].message.content
    assert text.startswith("Sentence number 0 is here.") and len(text.split()) <= 30
    short = oai.chat.completions.create(
        model="gpt-4o-mini", max_tokens=3, messages=[{"role": "user", "content": long_text}])
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3


def test_unknown_model_is_404(oai):
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])


def test_repeated_long_prefix_reports_cached_tokens(oai):
    prefix = "Policy text. " * 800  # ~2,600 tokens under the four-characters rule
    messages = [{"role": "system", "content": prefix}, {"role": "user", "content": "Hi there."}]
    first = oai.chat.completions.create(model="gpt-4o", messages=messages)
    second = oai.chat.completions.create(model="gpt-4o", messages=messages)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and cached % 128 == 0 and cached < second.usage.prompt_tokens


def test_files_round_trip_and_pagination(oai):
    ids = [upload_lines(oai, [chat_line(f"f{i}")]) for i in range(5)]
    listed = [f.id for f in oai.files.list(limit=2, purpose="batch")]
    assert set(ids) <= set(listed)
    assert oai.files.retrieve(ids[0]).bytes > 0
    assert json.loads(oai.files.content(ids[0]).text)["custom_id"] == "f0"
    assert oai.files.delete(ids[0]).deleted
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(ids[0])


def test_batch_lifecycle_advances_and_completes(oai, emulator):
    emulator.state.config.timing.batch_seconds = 1.0
    emulator.state.config.timing.finalizing_seconds = 0.5
    file_id = upload_lines(oai, [chat_line(f"r{i}") for i in range(20)])
    batch = oai.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={"shard": "s1"})
    assert batch.status == "validating" and batch.output_file_id is None
    seen, counts = set(), []
    while batch.status not in OPENAI_TERMINAL:
        seen.add(batch.status)
        counts.append(batch.request_counts.completed)
        assert batch.output_file_id is None
        time.sleep(0.05)
        batch = oai.batches.retrieve(batch.id)
    assert {"validating", "in_progress", "finalizing"} <= seen
    assert counts == sorted(counts) and 0 < len(set(counts))
    assert batch.status == "completed" and batch.error_file_id is None
    assert batch.request_counts.completed == 20 and batch.metadata == {"shard": "s1"}
    lines = read_jsonl(oai, batch.output_file_id)
    assert sorted(x["custom_id"] for x in lines) == sorted(f"r{i}" for i in range(20))
    first = lines[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    assert first["response"]["body"]["object"] == "chat.completion"
    total_in = sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in lines)
    assert batch.usage.input_tokens == total_in
    assert batch.completed_at and batch.in_progress_at and batch.finalizing_at


def test_a_batch_whose_time_is_up_ends_when_its_worker_is_done_without_a_poll(oai, emulator):
    """At zero delay the worker itself writes the result files and commits the bill, as
    a provider's batch ends on its own; no poll has to trigger (and wait for) it."""
    timing = emulator.state.config.timing
    timing.batch_seconds = timing.validating_seconds = timing.finalizing_seconds = 0
    file_id = upload_lines(oai, [chat_line(f"w{i}") for i in range(30)])
    batch = oai.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    job = emulator.state.jobs[batch.id]
    deadline = time.monotonic() + 30
    while not job.finalized:  # read in-process: no request may look at the batch
        assert time.monotonic() < deadline, "the worker did not end the batch"
        time.sleep(0.02)
    assert job.final_phase == "completed"
    done = oai.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 30
    assert len(read_jsonl(oai, done.output_file_id)) == 30


@pytest.mark.parametrize(
    ("lines", "code", "line"),
    [
        ([json.dumps(chat_line("a")), "{not json"], "invalid_json_line", 2),
        ([chat_line("a"), chat_line("a")], "duplicate_custom_id", 2),
        ([chat_line("a"), chat_line("b", model="gpt-4o")], "model_mismatch", 2),
        ([chat_line("a"), {**chat_line("b"), "url": "/v1/embeddings"}], "url_mismatch", 2),
        ([], "empty_file", None),
    ],
)
def test_validation_failures_fail_the_batch_with_real_codes(oai, lines, code, line):
    batch = run_batch(oai, lines)
    assert batch.status == "failed" and batch.failed_at
    error = batch.errors.data[0]
    assert error.code == code and error.line == line
    assert batch.output_file_id is None and batch.error_file_id is None


def test_too_many_tasks_over_50000_lines(oai):
    tiny = json.dumps(chat_line("x", text="hi"))
    lines = [tiny.replace('"x"', f'"c{i}"') for i in range(50_001)]
    batch = run_batch(oai, lines)
    assert batch.status == "failed" and batch.errors.data[0].code == "too_many_tasks"


def test_input_over_the_byte_limit_fails(oai, emulator):
    emulator.state.config.limits.openai_max_file_bytes = 1000
    batch = run_batch(oai, [chat_line(f"r{i}") for i in range(20)])
    assert batch.status == "failed" and batch.errors.data[0].code == "file_too_large"


def test_enqueued_token_limit_fails_an_over_limit_batch(oai, emulator):
    emulator.state.config.timing.batch_seconds = 5
    emulator.state.config.limits.openai_enqueued_tokens = 400
    text = "Summarize:\n\n" + "word " * 100  # ~130 tokens a line
    first = oai.batches.create(input_file_id=upload_lines(oai, [chat_line("a", text),
                                                               chat_line("b", text)]),
                               endpoint="/v1/chat/completions", completion_window="24h")
    second = run_batch(oai, [chat_line("c", text), chat_line("d", text)])
    assert second.status == "failed"
    assert second.errors.data[0].code == "token_limit_exceeded"
    assert oai.batches.retrieve(first.id).status in ("validating", "in_progress")
    oai.batches.cancel(first.id)


def test_item_errors_go_to_the_error_file_and_all_failed_means_no_output_file(oai, emulator):
    emulator.state.set_faults(emulator.state.config.faults.model_copy(
        update={"item_4xx_rate": 0.5, "item_5xx_rate": 0.5}))
    batch = run_batch(oai, [chat_line(f"r{i}") for i in range(30)])
    assert batch.status == "completed" and batch.output_file_id is None
    errors = read_jsonl(oai, batch.error_file_id)
    codes = {x["response"]["status_code"] for x in errors}
    assert codes == {400, 500} and len(errors) == 30
    assert all(x["error"] is None and "error" in x["response"]["body"] for x in errors)
    assert batch.request_counts.failed == 30


def test_whole_batch_failure(oai, emulator):
    emulator.state.set_faults(emulator.state.config.faults.model_copy(
        update={"batch_fail_rate": 1.0}))
    batch = run_batch(oai, [chat_line("r1")])
    assert batch.status == "failed" and batch.errors.data[0].code == "batch_failed"


def test_expiry_keeps_finished_results_and_marks_the_rest_expired(oai, emulator, control):
    emulator.state.config.timing.expiry_seconds = 1.0
    control.patch("/faults", json={"batch_expire_rate": 1.0, "expire_finished_fraction": 0.4})
    batch = run_batch(oai, [chat_line(f"r{i}") for i in range(10)])
    assert batch.status == "expired" and batch.expired_at
    done = read_jsonl(oai, batch.output_file_id)
    never = read_jsonl(oai, batch.error_file_id)
    assert len(done) == 4 and len(never) == 6
    assert all(x["response"] is None and x["error"]["code"] == "batch_expired" for x in never)
    assert {x["custom_id"] for x in done} | {x["custom_id"] for x in never} == {
        f"r{i}" for i in range(10)}
    billed = control.get("/billing", params={"batch_id": batch.id}).json()["total"]
    assert billed["requests"] == 4


def test_cancel_goes_through_cancelling_and_keeps_partial_results(oai, emulator):
    emulator.state.config.timing.batch_seconds = 2.0
    emulator.state.config.timing.cancel_seconds = 0.3
    file_id = upload_lines(oai, [chat_line(f"r{i}") for i in range(20)])
    batch = oai.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    wait_for(lambda: oai.batches.retrieve(batch.id),
             lambda b: b.status == "in_progress" and b.request_counts.completed >= 5)
    cancelling = oai.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    final = wait_for(lambda: oai.batches.retrieve(batch.id), lambda b: b.status == "cancelled")
    done = read_jsonl(oai, final.output_file_id)
    never = read_jsonl(oai, final.error_file_id)
    assert 5 <= len(done) < 20 and len(done) + len(never) == 20
    assert {x["error"]["code"] for x in never} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError):
        oai.batches.cancel(batch.id)


def test_batch_list_pages_with_after_cursor(oai):
    created = [oai.batches.create(input_file_id=upload_lines(oai, [chat_line("a")]),
                                  endpoint="/v1/chat/completions",
                                  completion_window="24h").id for _ in range(5)]
    first_page = oai.batches.list(limit=2)
    assert len(first_page.data) == 2 and first_page.has_more
    walked = [b.id for b in oai.batches.list(limit=2)]  # auto-pagination follows `after`
    assert set(created) <= set(walked) and walked == sorted(walked, reverse=True)
    assert len(walked) == len(set(walked))


@pytest.mark.parametrize("status", [500, 503])
def test_live_server_errors(oai, control, status):
    control.post("/faults/next", json={"status": status, "provider": "openai"})
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(model="gpt-4o-mini",
                                    messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == status


def test_sdk_retries_a_429_honouring_retry_after(emulator, control):
    client = openai.OpenAI(base_url=emulator.openai_base_url, api_key="k", max_retries=2)
    control.post("/faults/next", json={"status": 429, "provider": "openai",
                                       "retry_after": 1.0})
    calls = emulator.state.stats["openai_live_calls"]
    started = time.monotonic()
    response = client.chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": "hi"}])
    assert response.choices[0].message.content
    assert time.monotonic() - started >= 1.0
    assert emulator.state.stats["openai_live_calls"] == calls + 2


def test_seeded_fault_rates_repeat_and_can_change_at_run_time(oai, control):
    def outcomes() -> list[int]:
        result = []
        for _ in range(30):
            try:
                oai.chat.completions.create(model="gpt-4o-mini",
                                            messages=[{"role": "user", "content": "hi"}])
                result.append(200)
            except openai.APIStatusError as error:
                result.append(error.status_code)
        return result

    control.patch("/faults", json={"seed": 7, "rate_limit_rate": 0.3, "server_error_rate": 0.2})
    first = outcomes()
    control.patch("/faults", json={"seed": 7})
    assert outcomes() == first and {200, 429, 500} <= set(first)
    control.patch("/faults", json={"rate_limit_rate": 0, "server_error_rate": 0})
    assert set(outcomes()) == {200}


def test_latency_is_added(oai, control):
    control.patch("/faults", json={"latency_ms": 200})
    started = time.monotonic()
    oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - started >= 0.2


def test_billing_record_matches_the_usage_to_the_cent(oai, control):
    control.delete("/billing")
    prices = load_price_table(get_settings().prices_path)
    expected = Decimal(0)
    for i in range(3):
        r = oai.chat.completions.create(model="gpt-4o", messages=[
            {"role": "user", "content": f"Summarize:\n\nTicket {i} about exports."}])
        expected += prices.cost_usd("gpt-4o", Usage.from_openai(r.usage.model_dump()), Lane.LIVE)
    batch = run_batch(oai, [chat_line(f"r{i}", model="gpt-4o") for i in range(4)])
    for line in read_jsonl(oai, batch.output_file_id):
        usage = Usage.from_openai(line["response"]["body"]["usage"])
        expected += prices.cost_usd("gpt-4o", usage, Lane.BATCH)
    billed = control.get("/billing", params={"provider": "openai"}).json()
    assert Decimal(billed["total"]["cost_usd"]) == expected
    assert {row["lane"] for row in billed["by_model"]} == {"live", "batch"}
    records = [json.loads(x) for x in control.get("/billing/records").text.splitlines()]
    assert len(records) == 7 and records[-1]["batch_id"] == batch.id
