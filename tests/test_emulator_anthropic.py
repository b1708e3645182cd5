"""The Anthropic surface of the emulator, driven through the official `anthropic` SDK."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import anthropic
import httpx
import pytest

from lanewise.pricing import Lane, Usage, load_price_table
from lanewise.settings import get_settings
from tests.conftest import wait_for

MODEL = "claude-haiku-4-5"


def request(custom_id: str, text: str = "Summarize:\n\nLogin fails after the update.",
            **params) -> dict:
    base = {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "params": {**base, **params}}


def run_batch(claude: anthropic.Anthropic, requests: list[dict]):
    batch = claude.messages.batches.create(requests=requests)
    return wait_for(lambda: claude.messages.batches.retrieve(batch.id),
                    lambda b: b.processing_status == "ended")


def test_missing_key_is_401_in_anthropic_format_and_both_headers_work(emulator):
    response = httpx.get(f"{emulator.url}/v1/messages/batches")
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{emulator.url}/v1/messages/batches",
                     headers={"x-api-key": "k"}).status_code == 200
    assert httpx.get(f"{emulator.url}/v1/messages/batches",
                     headers={"authorization": "Bearer k"}).status_code == 200


def test_message_answers_and_tool_schema(claude):
    text = claude.messages.create(model=MODEL, max_tokens=100, messages=[
        {"role": "user", "content": "Summarize:\n\nThe export to CSV fails. It is urgent."}])
    assert text.content[0].text.startswith("The export to CSV fails.")
    assert text.stop_reason == "end_turn" and text.usage.service_tier == "standard"
    tool = {"name": "tag", "input_schema": {"type": "object", "properties": {
        "topic": {"type": "string", "enum": ["billing", "login", "export", "other"]}},
        "required": ["topic"]}}
    tagged = claude.messages.create(
        model=MODEL, max_tokens=100, tools=[tool], tool_choice={"type": "tool", "name": "tag"},
        messages=[{"role": "user", "content": "Ticket:\n\nI was charged twice."}])
    assert tagged.stop_reason == "tool_use"
    assert tagged.content[0].type == "tool_use" and tagged.content[0].input == {
        "topic": "billing"}


def test_cache_control_writes_then_reads(claude):
    # claude-haiku-4-5 caches prefixes of 4,096 tokens or more (see
    # tests/test_emulator_billing_rules.py for the per-model minimums).
    system = [{"type": "text", "text": "Long policy. " * 1400,
               "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": "Hello there."}]
    first = claude.messages.create(model=MODEL, max_tokens=50, system=system,
                                   messages=messages)
    second = claude.messages.create(model=MODEL, max_tokens=50, system=system,
                                    messages=messages)
    assert first.usage.cache_creation_input_tokens > 4096
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.input_tokens == first.usage.input_tokens


def test_batch_lifecycle_counts_stay_zero_until_ended(claude, emulator):
    emulator.state.config.timing.batch_seconds = 0.8
    batch = claude.messages.batches.create(requests=[request(f"r-{i}") for i in range(10)])
    assert batch.processing_status == "in_progress" and batch.results_url is None
    while batch.processing_status != "ended":
        counts = batch.request_counts
        assert counts.processing == 10 and counts.succeeded == counts.errored == 0
        time.sleep(0.05)
        batch = claude.messages.batches.retrieve(batch.id)
    assert batch.request_counts.succeeded == 10 and batch.request_counts.processing == 0
    assert batch.results_url == f"{emulator.url}/v1/messages/batches/{batch.id}/results"
    assert batch.ended_at is not None
    results = list(claude.messages.batches.results(batch.id))
    assert sorted(r.custom_id for r in results) == sorted(f"r-{i}" for i in range(10))
    assert all(r.result.type == "succeeded" for r in results)
    assert results[0].result.message.usage.service_tier == "batch"
    raw = httpx.get(batch.results_url, headers={"x-api-key": "k"}).text
    assert "\n\n" not in raw and raw.endswith("\n")


def test_bad_params_come_back_as_errored_results(claude):
    batch = run_batch(claude, [request("good"),
                               {"custom_id": "no-max", "params": {"model": MODEL,
                                "messages": [{"role": "user", "content": "x"}]}},
                               request("bad-model", model="claude-nope"),
                               request("streamed", stream=True)])
    assert batch.request_counts.succeeded == 1 and batch.request_counts.errored == 3
    by_id = {r.custom_id: r.result for r in claude.messages.batches.results(batch.id)}
    assert by_id["no-max"].type == "errored"
    assert by_id["no-max"].error.error.type == "invalid_request_error"
    assert by_id["bad-model"].error.error.type == "not_found_error"


@pytest.mark.parametrize("custom_id", ["has space", "x" * 65, "", "dot.ted"])
def test_custom_id_must_match_the_pattern(claude, custom_id):
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.batches.create(requests=[request(custom_id)])


def test_custom_id_must_be_unique(claude):
    with pytest.raises(anthropic.BadRequestError, match="not unique"):
        claude.messages.batches.create(requests=[request("a"), request("a")])


def test_over_100000_requests_is_413(claude):
    tiny = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.batches.create(
            requests=[{"custom_id": f"c{i}", "params": tiny} for i in range(100_001)])
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"


def test_over_the_byte_limit_is_413(claude, emulator):
    emulator.state.config.limits.anthropic_max_bytes = 2000
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.batches.create(requests=[request(f"r{i}") for i in range(30)])
    assert info.value.status_code == 413


def test_item_faults_and_whole_batch_failure_are_errored_results(claude, emulator):
    faults = emulator.state.config.faults
    emulator.state.set_faults(faults.model_copy(update={"item_4xx_rate": 0.5,
                                                        "item_5xx_rate": 0.5}))
    batch = run_batch(claude, [request(f"r{i}") for i in range(20)])
    kinds = {r.result.error.error.type for r in claude.messages.batches.results(batch.id)}
    assert kinds == {"invalid_request_error", "api_error"}
    emulator.state.set_faults(faults.model_copy(update={"batch_fail_rate": 1.0}))
    failed = run_batch(claude, [request(f"r{i}") for i in range(3)])
    assert failed.request_counts.errored == 3


def test_expiry_marks_unfinished_requests_expired(claude, emulator, control):
    emulator.state.config.timing.expiry_seconds = 1.0
    control.patch("/faults", json={"batch_expire_rate": 1.0, "expire_finished_fraction": 0.3})
    batch = run_batch(claude, [request(f"r{i}") for i in range(10)])
    assert batch.request_counts.succeeded == 3 and batch.request_counts.expired == 7
    types = [r.result.type for r in claude.messages.batches.results(batch.id)]
    assert types.count("expired") == 7 and types.count("succeeded") == 3


def test_cancel_then_canceled_results_and_delete_only_once_ended(claude, emulator):
    emulator.state.config.timing.batch_seconds = 2.0
    emulator.state.config.timing.cancel_seconds = 0.3
    batch = claude.messages.batches.create(requests=[request(f"r{i}") for i in range(20)])
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.batches.delete(batch.id)
    time.sleep(0.5)
    canceling = claude.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at
    ended = wait_for(lambda: claude.messages.batches.retrieve(batch.id),
                     lambda b: b.processing_status == "ended")
    counts = ended.request_counts
    assert counts.canceled > 0 and counts.succeeded + counts.canceled == 20
    assert claude.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.batches.retrieve(batch.id)


def test_list_pages_with_after_id_and_before_id(claude):
    created = [claude.messages.batches.create(requests=[request("a")]).id for _ in range(5)]
    walked = [b.id for b in claude.messages.batches.list(limit=2)]
    assert set(created) <= set(walked) and walked == sorted(walked, reverse=True)
    page = claude.messages.batches.list(limit=2, after_id=created[-1])
    assert [b.id for b in page.data] == [created[-2], created[-3]]
    before = claude.messages.batches.list(limit=2, before_id=created[0])
    assert [b.id for b in before.data] == [created[2], created[1]]


def test_overloaded_529_and_sdk_retry_on_429(emulator, claude, control):
    control.post("/faults/next", json={"status": 529, "provider": "anthropic"})
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(model=MODEL, max_tokens=10,
                               messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"
    retrying = anthropic.Anthropic(base_url=emulator.anthropic_base_url, api_key="k",
                                   max_retries=2)
    control.post("/faults/next", json={"status": 429, "provider": "anthropic",
                                       "retry_after": 1})
    started = time.monotonic()
    answer = retrying.messages.create(model=MODEL, max_tokens=10,
                                      messages=[{"role": "user", "content": "x"}])
    assert answer.content and time.monotonic() - started >= 1.0


def test_billing_matches_usage_to_the_cent(claude, control):
    control.delete("/billing")
    prices = load_price_table(get_settings().prices_path)
    live = claude.messages.create(model=MODEL, max_tokens=50,
                                  messages=[{"role": "user", "content": "Summarize:\n\nHi."}])
    expected = prices.cost_usd(MODEL, Usage.from_anthropic(live.usage.model_dump()), Lane.LIVE)
    batch = run_batch(claude, [request(f"r{i}") for i in range(5)] + [
        request("bad", model="claude-nope")])
    for result in claude.messages.batches.results(batch.id):
        if result.result.type == "succeeded":
            usage = Usage.from_anthropic(result.result.message.usage.model_dump())
            expected += prices.cost_usd(MODEL, usage, Lane.BATCH)
    billed = control.get("/billing", params={"provider": "anthropic"}).json()
    assert Decimal(billed["total"]["cost_usd"]) == expected
    assert billed["total"]["requests"] == 6  # errored requests are not billed
    assert json.loads(control.get("/billing/records").text.splitlines()[0])["lane"] == "live"
