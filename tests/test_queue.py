"""The deferred-work queue: idempotent enqueue, drains through the batch lane against the
emulator, crash rules, the CLI and the drain-queue flow. Ledger tests run on SQLite
always and on PostgreSQL when LANEWISE_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
import sqlalchemy as sa

from lanewise.batch.drain import drain_input_url, drain_task, write_drain_input
from lanewise.errors import ConfigurationError, InputError
from lanewise.ledger import Ledger
from lanewise.ledger.schema import queue_items
from lanewise.queue import enqueue, enqueue_many, put, result
from tests import queue_helpers
from tests.lane_helpers import SimulatedCrash, batches_created, crash_at, make_context
from tests.queue_helpers import (
    billed_keys,
    billed_usd,
    billing_records,
    drain_batch_ids,
    queue_rows,
    tickets,
)

queue_ledger_url = queue_helpers.queue_ledger_url  # the fixture, for this module


def test_enqueue_is_idempotent_by_task_and_key(queue_ledger_url):
    ledger = Ledger(queue_ledger_url)
    row = tickets(1)[0]
    first, new = put(ledger, "ticket-tagging", "T-0000001", row)
    assert new and first.status == "queued" and first.output is None and not first.done
    assert first.cost_usd == Decimal(0) and first.run_key is None
    stored = json.loads(ledger.queue_item(first.id)["row"])
    assert stored["body"] == row["body"] and stored["created_at"] == row["created_at"].isoformat()

    again, new = put(ledger, "ticket-tagging", " T-0000001 ", {**row, "body": "Changed."})
    assert not new and again == first
    assert json.loads(ledger.queue_item(first.id)["row"])["body"] == row["body"]  # untouched
    assert enqueue(ledger, "ticket-summary", "T-0000001", row).id != first.id  # other task

    # Once answered, enqueuing the key again neither re-queues nor clears it.
    with ledger.engine.begin() as conn:
        conn.execute(queue_items.update().where(queue_items.c.id == first.id).values(
            status="succeeded", output_text='{"topic": "billing"}', cost_picodollars=7))
    done = enqueue(ledger, "ticket-tagging", "T-0000001", row)
    assert done.status == "succeeded" and done.output == {"topic": "billing"}
    assert done.cost_usd == Decimal(7) / 10**12

    # Callers racing on one new key get one item.
    racing = tickets(1, first=9)[0]
    found: list[int] = []
    threads = [threading.Thread(target=lambda: found.append(
        enqueue(Ledger(queue_ledger_url), "ticket-tagging", racing["ticket_id"], racing).id))
        for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 6 and len(set(found)) == 1
    assert len(queue_rows(ledger)) == 3


def test_enqueue_refuses_what_the_batch_lane_would_reject(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    row = tickets(1)[0]
    with pytest.raises(ConfigurationError, match=r"no task 'nope'.*known: .*ticket-tagging"):
        enqueue(ledger, "nope", "k", row)
    refusals = [
        ("T-0000001", {**row, "body": "  "}, "body", "empty text"),
        ("T-0000001", {k: v for k, v in row.items() if k != "body"}, "body", "missing text"),
        ("T-9", row, "ticket_id", "not the key"),
        ("", {**row, "ticket_id": None}, "ticket_id", "missing key"),
        ("x" * 201, {**row, "ticket_id": None}, "ticket_id", "key too long"),
        ("T-0000001", {**row, "extra": object()}, "row", "cannot be stored as JSON"),
        ("T-0000001", {**row, "body": "bad \ud800"}, "row", "cannot be stored as JSON"),
    ]
    for key, bad, field, reason in refusals:
        with pytest.raises(InputError, match=reason) as caught:
            enqueue(ledger, "ticket-tagging", key, bad)
        assert caught.value.field == field, (key, reason)
    assert ledger.queue_counts() == []  # nothing was stored

    rows = tickets(4)
    with pytest.raises(InputError, match=r"row 3, field 'body'"):
        enqueue_many(ledger, "ticket-tagging", [*rows[:2], {**rows[2], "body": ""}, rows[3]])
    assert ledger.queue_counts() == []  # one bad row enqueues nothing
    report = enqueue_many(ledger, "ticket-tagging", [*rows, rows[0]])
    assert (report.added, report.existing) == (4, 1)


def test_drain_takes_queued_rows_through_the_batch_lane_and_costs_what_was_billed(
        emulator, tmp_path, queue_ledger_url):
    ctx = make_context("ticket-tagging", emulator, tmp_path, queue_ledger_url)
    rows = tickets(25)
    ids = [enqueue(ctx.ledger, "ticket-tagging", r["ticket_id"], r).id for r in rows]
    batches_before = batches_created(emulator)

    report = drain_task(ctx)

    assert [r.resumed for r in report.runs] == [False] and report.settled == 25
    run_key = report.runs[0].run_key
    assert run_key.startswith("drain:ticket-tagging:")
    items = [result(ctx.ledger, item_id) for item_id in ids]
    assert {i.status for i in items} == {"succeeded"}
    assert all(i.done and i.run_key == run_key and i.finished_at for i in items)
    # A JSON task's output is parsed, and it is the batch lane's answer for that row.
    assert all(set(i.output) == {"topic", "sentiment", "urgency"} for i in items)
    assert items[0].record()["output"] == json.loads(items[0].output_text)
    run = ctx.ledger.run_by_key(run_key)
    assert run["status"] == "finished" and run["input_url"] == drain_input_url(ctx, run_key)
    records = billing_records(emulator, drain_batch_ids(ctx.ledger, {run_key}))
    assert billed_keys(records) == {r["ticket_id"]: 1 for r in rows}
    assert all(i.cost_usd > 0 for i in items)
    assert sum(i.cost_usd for i in items) == billed_usd(records) == report.cost_usd
    assert batches_created(emulator) - batches_before == len(ctx.ledger.shards(run["id"]))

    # Nothing left: the next drain claims nothing and creates no run or batch.
    again = drain_task(ctx)
    assert again.runs == [] and again.line() == "ticket-tagging: nothing queued"
    assert len(ctx.ledger.recent_run_ids(10)) == 1


def test_a_drain_claims_at_most_its_claim_size_oldest_first(emulator, tmp_path):
    ctx = make_context("ticket-summary", emulator, tmp_path)
    rows = tickets(7)
    for row in rows:
        enqueue(ctx.ledger, "ticket-summary", row["ticket_id"], row)
    first = drain_task(ctx, claim_size=5)
    states = [(r["key"], r["status"]) for r in queue_rows(ctx.ledger)]
    assert states == [(r["ticket_id"], "succeeded") for r in rows[:5]] + \
        [(r["ticket_id"], "queued") for r in rows[5:]]
    second = drain_task(ctx, claim_size=5)
    assert first.runs[0].run_key != second.runs[0].run_key
    done = [result(ctx.ledger, r["id"]) for r in queue_rows(ctx.ledger)]
    assert {i.status for i in done} == {"succeeded"}
    assert all(isinstance(i.output, str) and i.output for i in done)  # a text task


def test_an_item_the_result_cache_answers_is_done_at_no_cost_without_a_batch(emulator,
                                                                             tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    assert ctx.task.cache.enabled  # the catalog caches ticket-tagging
    rows = tickets(3)
    for row in rows:
        enqueue(ctx.ledger, "ticket-tagging", row["ticket_id"], row)
    drain_task(ctx)
    paid = {r["key"]: r for r in queue_rows(ctx.ledger)}
    batches_before = batches_created(emulator)
    for row in rows:  # the same tickets again under new keys: the same requests
        again = {**row, "ticket_id": row["ticket_id"] + "-again"}
        enqueue(ctx.ledger, "ticket-tagging", again["ticket_id"], again)
    report = drain_task(ctx)
    assert batches_created(emulator) == batches_before  # nothing sent
    for row in rows:
        item = ctx.ledger.queue_item_by_key("ticket-tagging", row["ticket_id"] + "-again")
        original = paid[row["ticket_id"]]
        assert (item["status"], item["cost_picodollars"]) == ("succeeded", 0)
        assert item["output_text"] == original["output_text"] and original["cost_picodollars"]
    assert report.cost_usd == 0


def test_deferred_live_work_drains_too(emulator, tmp_path):
    """reply-draft is a live-lane task: what its `defer` fallback queues is drained by
    the batch lane like any other queued work."""
    ctx = make_context("reply-draft", emulator, tmp_path)
    row = tickets(1)[0]
    item = enqueue(ctx.ledger, "reply-draft", row["ticket_id"], row)
    report = drain_task(ctx)
    done = result(ctx.ledger, item.id)
    assert done.status == "succeeded" and isinstance(done.output, str) and done.output
    assert done.run_key == report.runs[0].run_key and done.cost_usd > 0


def test_failed_requests_end_failed_with_their_reason(emulator, tmp_path):
    from lanewise.emulator import Faults

    emulator.state.set_faults(Faults(seed=5, item_4xx_rate=1.0))  # every request a 400
    ctx = make_context("ticket-tagging", emulator, tmp_path)
    for row in tickets(6):
        enqueue(ctx.ledger, "ticket-tagging", row["ticket_id"], row)
    report = drain_task(ctx)
    items = [result(ctx.ledger, r["id"]) for r in queue_rows(ctx.ledger)]
    assert {i.status for i in items} == {"failed"}
    assert all(i.error and i.output is None and i.done for i in items)
    items_of_run = ctx.ledger.iter_items(ctx.ledger.run_by_key(report.runs[0].run_key)["id"])
    assert sorted(i.error for i in items) == sorted(i["error_reason"] for i in items_of_run)
    assert "failed 6" in report.line()


@pytest.mark.parametrize("point", ["drain_after_claim", "drain_after_input", "after_create",
                                   "after_record", "mid_collect", "drain_before_settle"])
def test_a_drain_killed_anywhere_is_resumed_first_and_nothing_is_paid_twice(
        point, emulator, tmp_path):
    """A drain dies at `point`; the next drain resumes its run key before claiming what
    was queued since, creates no second batch for it, and every item is done once."""
    crashing = make_context("ticket-tagging", emulator, tmp_path, crash_hook=crash_at(point),
                            collect_chunk=7)  # mid_collect: after 7 of the 20 results
    ledger = crashing.ledger
    rows = tickets(20)
    for row in rows:
        enqueue(ledger, "ticket-tagging", row["ticket_id"], row)
    batches_before = batches_created(emulator)
    with pytest.raises(SimulatedCrash):
        drain_task(crashing)
    claimed = queue_rows(ledger)
    crashed_key = claimed[0]["run_key"]
    assert {(r["status"], r["run_key"]) for r in claimed} == {("claimed", crashed_key)}
    url = drain_input_url(crashing, crashed_key)
    assert crashing.storage.exists(url) == (point != "drain_after_claim")
    later = tickets(5, first=100)
    for row in later:
        enqueue(ledger, "ticket-tagging", row["ticket_id"], row)

    report = drain_task(make_context("ticket-tagging", emulator, tmp_path, ledger=ledger))

    assert [(r.run_key, r.resumed) for r in report.runs[:1]] == [(crashed_key, True)]
    assert [r.resumed for r in report.runs] == [True, False]
    if point == "drain_before_settle":
        assert report.runs[0].summary is None  # the run had finished: only settled
    final = queue_rows(ledger)
    assert {r["status"] for r in final} == {"succeeded"}
    assert [r["run_key"] for r in final[:20]] == [crashed_key] * 20  # never claimed again
    run_keys = {r.run_key for r in report.runs}
    records = billing_records(emulator, drain_batch_ids(ledger, run_keys))
    assert billed_keys(records) == {r["ticket_id"]: 1 for r in rows + later}
    shards = sum(len(ledger.shards(ledger.run_by_key(k)["id"])) for k in run_keys)
    assert batches_created(emulator) - batches_before == shards  # no batch made twice
    paid = sum(Decimal(r["cost_picodollars"]) for r in final) / 10**12
    assert paid == billed_usd(records)


def test_a_lost_input_file_is_written_again_with_the_same_bytes(emulator, tmp_path):
    ctx = make_context("ticket-tagging", emulator, tmp_path,
                       crash_hook=crash_at("drain_after_input"))
    rows = tickets(12)
    for row in reversed(rows):  # ids in another order than keys
        enqueue(ctx.ledger, "ticket-tagging", row["ticket_id"], row)
    with pytest.raises(SimulatedCrash):
        drain_task(ctx)
    run_key = queue_rows(ctx.ledger)[0]["run_key"]
    url = drain_input_url(ctx, run_key)
    with ctx.storage.open(url, "rb") as handle:
        written = handle.read()
    assert [json.loads(line)["ticket_id"] for line in written.splitlines()] == \
        [r["ticket_id"] for r in reversed(rows)]
    ctx.storage.remove(url)
    assert write_drain_input(ctx, run_key) == url
    with ctx.storage.open(url, "rb") as handle:
        assert handle.read() == written
    assert not any(".partial" in path for path in ctx.storage.fs.find(ctx.storage.root))


def test_cli_enqueue_result_and_queue(emulator, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lanewise import cli_queue
    from lanewise.batch.context import LaneContext
    from lanewise.cli import cli
    from lanewise.settings import get_settings

    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LANEWISE_EMULATOR_URL", emulator.url)
    monkeypatch.setenv("LANEWISE_POLL_INITIAL_SECONDS", "0.05")
    monkeypatch.delenv("LANEWISE_DATABASE_URL", raising=False)
    monkeypatch.setattr(cli_queue.console, "width", 200)
    get_settings.cache_clear()
    runner = CliRunner()
    rows = tickets(3)
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows[1:] + rows[:1]))
    try:
        empty = runner.invoke(cli, ["queue"])
        row = json.dumps(rows[0], default=str)
        first = runner.invoke(cli, ["enqueue", "ticket-summary", "T-0000001", "--row", row])
        again = runner.invoke(cli, ["enqueue", "ticket-summary", "--row", row])
        many = runner.invoke(cli, ["enqueue", "ticket-summary", "--file", str(rows_file)])
        bad = runner.invoke(cli, ["enqueue", "ticket-summary", "T-0000009", "--row",
                                  json.dumps({"subject": "no body"})])
        both = runner.invoke(cli, ["enqueue", "ticket-summary", "K", "--row", row,
                                   "--file", str(rows_file)])
        waiting = runner.invoke(cli, ["result", "1", "--json"])
        listed = runner.invoke(cli, ["queue"], terminal_width=200)
        drain_task(LaneContext.build("ticket-summary", get_settings()))
        done = runner.invoke(cli, ["result", "1"])
        done_json = runner.invoke(cli, ["result", "1", "--json"])
        counts = runner.invoke(cli, ["queue", "--json"])
        missing = runner.invoke(cli, ["result", "999"])
    finally:
        get_settings.cache_clear()
    assert empty.exit_code != 0 and "no ledger at" in str(empty.exception)  # never created
    assert first.exit_code == 0, first.output
    assert "queued: item 1 (ticket-summary T-0000001), queued" in first.output
    assert "already queued (unchanged): item 1" in again.output
    assert "ticket-summary: 2 queued, 1 already queued (unchanged)" in many.output
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError)
    assert "field 'body'" in str(bad.exception)
    assert both.exit_code != 0 and "one of --row JSON or --file" in both.output
    record = json.loads(waiting.output)
    assert (record["status"], record["output"], record["run_key"]) == ("queued", None, None)
    header = next(x for x in listed.output.splitlines() if x.strip().startswith("task"))
    line = next(x for x in listed.output.splitlines() if x.strip().startswith("ticket-summary"))
    assert header.split() == ["task", "queued", "total", "cost"]  # only states there are
    assert line.split() == ["ticket-summary", "3", "3", "$0.000000"]
    final = json.loads(done_json.output)
    assert final["status"] == "succeeded" and isinstance(final["output"], str)
    shown = " ".join(done.output.split())  # as printed: wrapped at the console's width
    assert " ".join(final["output"].split()) in shown and final["run_key"] in shown
    assert Decimal(final["cost_usd"]) > 0
    assert json.loads(counts.output)[0]["counts"] == {"succeeded": 3}
    assert missing.exit_code == 1 and "no queue item 999" in missing.output


def test_the_drain_flow_schema_and_deployment(tmp_path):
    import yaml
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.drain import drain_queue
    from lanewise.settings import REPO_ROOT

    schema = parameter_schema(drain_queue).model_dump_for_openapi()
    text = json.dumps(schema)
    assert '"type": "null"' not in text and "anyOf" not in text
    model = schema["definitions"][schema["properties"]["params"]["$ref"].rsplit("/", 1)[1]]
    assert {"task", "claim_size"} == set(model["properties"])
    assert "ticket-tagging" in model["properties"]["task"]["enum"]
    assert "reply-draft" in model["properties"]["task"]["enum"]  # deferred live work too
    deployment = next(d for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
                      ["deployments"] if d["name"] == "drain-queue")
    assert deployment["entrypoint"] == "flows/drain.py:drain_queue"
    validate(deployment["parameters"], schema, raise_on_error=True, ignore_required=True)
    with pytest.raises(Exception, match="claim_size"):
        validate({"params": {"claim_size": 0}}, schema, raise_on_error=True)


@pytest.fixture()
def flow_env(emulator, tmp_path, monkeypatch, prefect_harness):
    """Settings for flows: this test's home, the test emulator, quick polls."""
    from lanewise.batch.prefect_tasks import context_for
    from lanewise.settings import get_settings

    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LANEWISE_EMULATOR_URL", emulator.url)
    monkeypatch.setenv("LANEWISE_POLL_INITIAL_SECONDS", "0.05")
    monkeypatch.setenv("LANEWISE_POLL_MAX_SECONDS", "0.2")
    get_settings.cache_clear()
    context_for.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    context_for.cache_clear()


@pytest.mark.prefect
def test_the_drain_queue_flow_drains_every_task_with_work(flow_env, emulator):
    from flows.drain import drain_queue

    ledger = Ledger(flow_env.resolved_database_url)
    for task in ("ticket-tagging", "ticket-summary"):
        for row in tickets(4):
            enqueue(ledger, task, row["ticket_id"], row)

    state = drain_queue(params={}, return_state=True)

    assert state.is_completed(), state.message
    assert "ticket-summary: drain:ticket-summary:" in state.message
    assert "ticket-tagging: drain:ticket-tagging:" in state.message
    assert {r["status"] for r in queue_rows(ledger)} == {"succeeded"}
    briefs = state.result()
    assert [b["settled"] for b in briefs] == [4, 4]
    nothing = drain_queue(params={"task": "ticket-tagging"}, return_state=True)
    assert nothing.is_completed() and nothing.message == "ticket-tagging: nothing queued"
    refused = drain_queue(params={"claim_size": 0}, return_state=True)
    assert refused.is_failed() and "claim_size" in refused.message
    with ledger.engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one()
    assert runs == 2  # one run per task; the empty drain made none
