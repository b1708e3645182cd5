"""The live lane (lanewise.live) through the official SDKs against the emulator: what a
call answers and records, the cache, retries and fallbacks within the latency budget,
deferring, the async API, and never losing a billed call's record."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import sqlalchemy as sa

from lanewise import cache, queue
from lanewise.emulator import Faults
from lanewise.errors import ConfigurationError, InputError
from lanewise.inputs import InputRow
from lanewise.ledger import Ledger
from lanewise.live import LiveLane, close_lanes, get_lane
from lanewise.pricing import from_picodollars
from lanewise.requests import prepare
from tests.live_helpers import (
    billed_live,
    live_settings,
    recorded,
    recorded_cost,
    ticket,
    wall,
    write_catalog,
)

HAIKU = {"kind": "model", "provider": "anthropic", "model": "claude-haiku-4-5"}


@pytest.fixture()
def make_lane(emulator, tmp_path):
    """Build lanes on the test emulator with catalog overrides; closed afterwards."""
    lanes: list[LiveLane] = []

    def build(**tasks) -> LiveLane:
        catalog = write_catalog(tmp_path / f"catalog-{len(lanes)}", **tasks)
        lane = LiveLane(live_settings(tmp_path, emulator, catalog_path=catalog))
        lanes.append(lane)
        return lane

    yield build
    for lane in lanes:
        lane.close()


def test_a_call_answers_and_records_exactly_what_the_emulator_billed(make_lane, emulator):
    lane = make_lane()
    since = time.time()
    draft = lane.call("reply-draft", ticket(1), context={"agent": "ana", "ticket": "T-1"})
    tags = lane.call("ticket-tagging", ticket(2))

    assert (draft.status, draft.answered_by, draft.provider, draft.model, draft.attempts) == (
        "succeeded", "live", "anthropic", "claude-opus-4-5", 1)
    assert draft.output == draft.text and draft.text.strip()
    assert draft.fallback_reason is None and draft.cost_usd > 0 and draft.latency_ms > 0
    assert (tags.provider, tags.model) == ("openai", "gpt-4o-mini")
    assert set(tags.output) == {"topic", "sentiment", "urgency"}  # parsed, schema-checked

    requests, billed = billed_live(emulator, since)
    assert requests == 2
    assert recorded_cost(lane.ledger.engine) == billed == draft.cost_usd + tags.cost_usd
    rows = recorded(lane.ledger.engine)
    assert [r["id"] for r in rows] == [draft.call_id, tags.call_id]
    first = rows[0]
    assert json.loads(first["context"]) == {"agent": "ana", "ticket": "T-1"}
    assert (first["task"], first["answered_by"], first["status"], first["attempts"]) == (
        "reply-draft", "live", "succeeded", 1)
    assert first["input_tokens"] > 0 and first["output_tokens"] > 0
    assert first["latency_ms"] == pytest.approx(draft.latency_ms)

    # The same row makes the same request, and hash, as the batch lane's planner.
    task = lane.catalog.get("reply-draft")
    prepared = prepare(task, InputRow(1, ticket(1)))
    adapter = lane.adapter("anthropic")
    assert first["content_hash"] == cache.RequestHasher(adapter, task).hash(prepared)


def test_the_hot_path_reuses_clients_and_never_migrates(make_lane, monkeypatch):
    lane = make_lane()
    lane.call("reply-draft", ticket(1))
    clients = (lane.adapter("anthropic").client, lane.adapter("openai").client)
    engine = lane.ledger.engine

    def no_migrations(self):
        raise AssertionError("a live call migrated the ledger")

    monkeypatch.setattr(Ledger, "migrate", no_migrations)
    assert lane.call("reply-draft", ticket(2)).status == "succeeded"
    assert (lane.adapter("anthropic").client, lane.adapter("openai").client) == clients
    assert lane.ledger.engine is engine
    monkeypatch.undo()
    try:
        assert get_lane(lane.settings) is get_lane(lane.settings)  # one lane per settings
    finally:
        close_lanes()


def test_a_cache_hit_makes_no_second_paid_call(make_lane, emulator):
    lane = make_lane()  # ticket-tagging has caching on in the shipped catalog
    since = time.time()
    first = lane.call("ticket-tagging", ticket(7))
    again = lane.call("ticket-tagging", ticket(7))

    assert first.answered_by == "live" and first.cost_usd > 0
    assert (again.status, again.answered_by, again.cost_usd, again.attempts) == (
        "succeeded", "cache", 0, 0)
    assert again.output == first.output and again.cached_from == f"live:{first.call_id}"
    requests, billed = billed_live(emulator, since)
    assert requests == 1 and billed == first.cost_usd == recorded_cost(lane.ledger.engine)
    assert [r["answered_by"] for r in recorded(lane.ledger.engine)] == ["live", "cache"]


def test_a_429_storm_ends_in_retries_then_the_fallback_model_within_budget(make_lane,
                                                                          emulator):
    budget_ms = 2000
    lane = make_lane(reply_draft={"live": {
        "latency_budget_ms": budget_ms, "primary_share": 0.5, "max_attempts": 2,
        "fallbacks": [HAIKU, {"kind": "defer"}]}})
    emulator.state.set_faults(Faults(seed=11, rate_limit_rate=0.3, retry_after_seconds=0.1,
                                     live_scope_models=["claude-opus-4-5"]))
    since = time.time()
    results = []
    for i in range(60):
        result, took_ms = wall(lane.call, "reply-draft", ticket(i))
        assert result.status == "succeeded", result
        assert result.latency_ms <= budget_ms and took_ms <= budget_ms + 100
        results.append(result)

    retried = [r for r in results if r.answered_by == "live" and r.attempts == 2]
    fell_back = [r for r in results if r.answered_by == "fallback_model"]
    assert retried and fell_back
    assert len(retried) + len(fell_back) + sum(r.attempts == 1 for r in results) == 60
    for result in fell_back:  # two 429s on the task's own model, then its fallback
        assert (result.model, result.attempts) == ("claude-haiku-4-5", 3)
        assert "claude-opus-4-5" in result.fallback_reason and "429" in result.fallback_reason
    assert emulator.state.stats["live_faults"] >= 2 * len(fell_back) + len(retried)
    requests, billed = billed_live(emulator, since)
    assert requests == 60 and recorded_cost(lane.ledger.engine) == billed
    rows = recorded(lane.ledger.engine)
    assert sorted(r["answered_by"] for r in rows) == sorted(r.answered_by for r in results)


def test_a_retry_after_beyond_the_budget_goes_straight_to_the_fallback(make_lane, emulator,
                                                                      control):
    lane = make_lane(reply_draft={"live": {"latency_budget_ms": 1500,
                                           "fallbacks": [HAIKU]}})
    control.post("/faults/next", json={"status": 429, "retry_after": 5,
                                       "provider": "anthropic"}).raise_for_status()
    result, took_ms = wall(lane.call, "reply-draft", ticket(1))
    assert (result.status, result.answered_by, result.attempts) == (
        "succeeded", "fallback_model", 2)
    assert "would overrun the budget" in result.fallback_reason and took_ms < 1500
    # The 429's retry-after holds the model for everyone: the next call does not try it.
    held = lane.call("reply-draft", ticket(2))
    assert held.answered_by == "fallback_model" and held.attempts == 1
    assert "retry-after" in held.fallback_reason


def test_a_persistent_outage_defers_and_the_batch_lane_answers_it_later(make_lane, emulator,
                                                                       tmp_path):
    budget_ms = 1200
    lane = make_lane(reply_draft={"cache": {"enabled": True}, "live": {
        "latency_budget_ms": budget_ms, "max_attempts": 2,
        "fallbacks": [HAIKU, {"kind": "cache"}, {"kind": "defer"}]}})
    emulator.state.set_faults(Faults(server_error_rate=1.0))
    since = time.time()
    result, took_ms = wall(lane.call, "reply-draft", ticket(5), context={"agent": "bo"})

    assert (result.status, result.answered_by, result.cost_usd) == ("processing", "deferred", 0)
    assert result.queue_item_id is not None and took_ms <= budget_ms + 100
    assert result.attempts == 4  # two on each model
    reasons = result.fallback_reason.split("; ")
    assert [r.split(":")[0] for r in reasons] == [
        "anthropic/claude-opus-4-5", "anthropic/claude-haiku-4-5", "cache"]
    assert all("HTTP 500" in r for r in reasons[:2]) and reasons[2] == "cache: no cached answer"
    row = recorded(lane.ledger.engine)[-1]
    assert (row["status"], row["answered_by"], row["queue_item_id"]) == (
        "processing", "deferred", result.queue_item_id)
    assert billed_live(emulator, since)[0] == 0  # nothing answered, nothing billed
    assert queue.result(lane.ledger, result.queue_item_id).status == "queued"

    # The outage ends; the night's drain answers it through the batch lane.
    from lanewise.batch.drain import drain_task
    from tests.lane_helpers import make_context

    emulator.state.set_faults(Faults())
    drain_task(make_context("reply-draft", emulator, tmp_path, ledger=lane.ledger))
    item = queue.result(lane.ledger, result.queue_item_id)
    assert item.status == "succeeded" and item.output and item.cost_usd > 0


def test_no_answer_and_no_defer_is_a_failed_result_not_an_exception(make_lane, emulator):
    lane = make_lane(reply_draft={"live": {"latency_budget_ms": 800, "max_attempts": 2,
                                           "fallbacks": []}})
    emulator.state.set_faults(Faults(overloaded_rate=1.0))  # Anthropic 529
    result = lane.call("reply-draft", ticket(1))
    assert (result.status, result.answered_by, result.attempts) == ("failed", "none", 2)
    assert "529" in result.error
    assert recorded(lane.ledger.engine)[-1]["status"] == "failed"


def test_acall_answers_concurrently_from_any_event_loop(make_lane, emulator):
    lane = make_lane()
    since = time.time()

    async def many(start: int):
        return await asyncio.gather(*(lane.acall("ticket-summary", ticket(i))
                                      for i in range(start, start + 6)))

    first = asyncio.run(many(0))
    second = asyncio.run(many(100))  # a new loop gets its own async clients
    results = [*first, *second]
    assert {(r.status, r.answered_by, r.model) for r in results} == {
        ("succeeded", "live", "claude-haiku-4-5")}
    requests, billed = billed_live(emulator, since)
    assert requests == 12 and billed == recorded_cost(lane.ledger.engine)
    assert billed == sum((r.cost_usd for r in results), start=from_picodollars(0))


def test_bad_input_is_refused_before_any_call(make_lane, emulator):
    lane = make_lane()
    since = time.time()
    with pytest.raises(ConfigurationError, match="known: .*reply-draft"):
        lane.call("no-such-task", ticket(1))
    with pytest.raises(InputError) as refused:
        lane.call("reply-draft", {"ticket_id": "T-1", "body": "  "})
    assert refused.value.field == "body"
    assert billed_live(emulator, since)[0] == 0 and recorded(lane.ledger.engine) == []


def test_a_ledger_outage_journals_the_billed_call_and_replays_it(make_lane, emulator,
                                                                monkeypatch):
    lane = make_lane()
    since = time.time()
    real_insert = lane.recorder._insert_row

    def ledger_down(conn, row, answer):
        raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(lane.recorder, "_insert_row", ledger_down)
    lost = lane.call("reply-draft", ticket(1))
    assert lost.status == "succeeded" and lost.call_id is None
    journal = lane.recorder.journal_path
    assert len(journal.read_text().splitlines()) == 1

    monkeypatch.setattr(lane.recorder, "_insert_row", real_insert)
    lane.call("reply-draft", ticket(2))  # the ledger is back: the journal is replayed
    assert not journal.exists()
    assert recorded_cost(lane.ledger.engine) == billed_live(emulator, since)[1]
    assert len(recorded(lane.ledger.engine)) == 2

    # A replay interrupted after its commit (journal not yet removed) inserts nothing twice.
    row = {k: v for k, v in recorded(lane.ledger.engine)[0].items() if k != "id"}
    journal.write_text(json.dumps({"row": row, "answer": None}) + "\n")
    assert lane.recorder.replay() == 0 and len(recorded(lane.ledger.engine)) == 2


def test_call_and_acall_through_the_module_functions(emulator, tmp_path):
    from lanewise.live import acall, call

    settings = live_settings(tmp_path, emulator,
                             catalog_path=write_catalog(tmp_path / "c"))
    try:
        assert call("reply-draft", ticket(1), settings=settings).status == "succeeded"
        result = asyncio.run(acall("reply-draft", ticket(2), settings=settings))
        assert result.status == "succeeded"
        assert httpx.get(f"{emulator.url}/_emulator/health").status_code == 200
    finally:
        close_lanes()


class _Answered(Exception):
    """Stands for an SDK error: carries the failed response's headers."""

    def __init__(self, headers):
        super().__init__("429")
        self.response = type("Response", (), {"headers": headers})()


def test_the_policy_never_plans_past_the_budget():
    """The policy on a simulated clock: the task's own model answers 429 with a
    retry-after every time; retries stop at its share of the budget, the fallback model
    answers, and no wait or call is ever planned past the budget."""
    from lanewise.catalog import FallbackSpec, LiveSpec, load_catalog
    from lanewise.errors import TransientProviderError
    from lanewise.live import policy
    from lanewise.live.limits import Cost, Permit
    from lanewise.providers.base import ItemOutcome, LiveReply

    task = load_catalog().get("reply-draft").model_copy(update={"live": LiveSpec(
        latency_budget_ms=1000, primary_share=0.5, max_attempts=5,
        fallbacks=[FallbackSpec(**HAIKU)])})

    def route(model: str, by: str) -> policy.Route:
        spec = task.model_copy(update={"model": model})
        return policy.Route(by, spec, {"model": model}, model, Cost(), f"anthropic:{model}")

    now = [0.0]
    steps = policy.run(task, route("claude-opus-4-5", "live"),
                       lambda step: route(step.model, "fallback_model"), cache_enabled=False,
                       clock=lambda: now[0], now_epoch=lambda: 1e9 + now[0], start=0.0)
    sent, answer = [], None
    try:
        while True:
            action = steps.send(answer)
            answer = None
            if isinstance(action, policy.Acquire):
                answer = Permit(action.route.limit_key, "t", Cost(), None)
            elif isinstance(action, policy.Wait):
                now[0] += action.seconds
            elif isinstance(action, policy.Send):
                assert now[0] + action.timeout <= 1.0 + 1e-9
                sent.append((action.route.model, round(now[0], 3)))
                now[0] += 0.01
                if action.route.model == "claude-opus-4-5":
                    error = TransientProviderError("HTTP 429", status_code=429)
                    error.__cause__ = _Answered({"retry-after": "0.2"})
                    answer = error
                else:
                    answer = LiveReply(ItemOutcome("live", True, text="hi"), {})
    except StopIteration as done:
        decision = done.value
    # 429 at 0, 0.21: a third try at 0.42 fits the 0.5 s share; a fourth at 0.63 would not.
    assert sent == [("claude-opus-4-5", 0.0), ("claude-opus-4-5", 0.21),
                    ("claude-opus-4-5", 0.42), ("claude-haiku-4-5", 0.43)]
    assert decision.answered_by == "fallback_model" and decision.attempts == 4
    assert "would overrun the budget" in decision.fallback_reason


@pytest.mark.parametrize("fsync, level", [(False, 1), (True, 2)])
def test_the_records_durability_is_the_settings(emulator, tmp_path, fsync, level):
    """Committed to the WAL before `call` returns (NORMAL: survives a process crash), or
    flushed to disk too (FULL) with LANEWISE_LIVE_RECORD_FSYNC."""
    lane = LiveLane(live_settings(tmp_path, emulator, live_record_fsync=fsync))
    try:
        with lane.ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        lane.close()


def test_an_account_out_of_credit_is_not_retried_and_falls_back(make_lane, emulator):
    lane = make_lane(ticket_tagging={"cache": {"enabled": False}})  # fallback: haiku
    emulator.state.set_faults(Faults(openai_insufficient_quota=True))
    result = lane.call("ticket-tagging", ticket(3))
    assert (result.status, result.answered_by, result.model, result.attempts) == (
        "succeeded", "fallback_model", "claude-haiku-4-5", 2)
    assert "out of credit" in result.fallback_reason
    assert set(result.output) == {"topic", "sentiment", "urgency"}  # the tool's JSON
