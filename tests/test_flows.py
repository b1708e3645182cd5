"""The Prefect flows as operators see them, under one session-scoped Prefect test harness:
run and task run names, logs, the final state message, artifacts, the ledger link."""

from __future__ import annotations

import logging
import time
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from lanewise.settings import get_settings
from tests.lane_helpers import billed_for, sample_input

pytestmark = pytest.mark.prefect


@pytest.fixture()
def flow_env(emulator, tmp_path, monkeypatch, prefect_harness):
    """Settings for flows: this test's home, the test emulator, quick polls."""
    from lanewise.batch.prefect_tasks import context_for

    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LANEWISE_EMULATOR_URL", emulator.url)
    monkeypatch.setenv("LANEWISE_POLL_INITIAL_SECONDS", "0.05")
    monkeypatch.setenv("LANEWISE_POLL_MAX_SECONDS", "0.2")
    get_settings.cache_clear()
    context_for.cache_clear()
    yield
    get_settings.cache_clear()
    context_for.cache_clear()


def _poll(fetch, done, timeout: float = 15.0) -> Any:
    """Read from the API until `done` (task runs and logs arrive a moment after the run)."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = fetch()
    return value


def flow_run_record(state) -> tuple[Any, list[Any], list[str]]:
    """The flow run as the API has it, its task runs, and its log lines."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    flow_run_id = state.state_details.flow_run_id
    APILogWorker.drain_all(timeout=5)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = _poll(lambda: client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])), limit=200),
            lambda runs: all(r.state and r.state.is_final() for r in runs))
        logs = _poll(lambda: client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))),
            lambda found: any(log.message == state.message for log in found))
    return flow_run, task_runs, [f"{logging.getLevelName(log.level)} {log.message}"
                                 for log in logs]


def artifacts(key: str, *states) -> list[Any]:
    """The versions of the artifact with this key made by these flow runs, newest first
    (the harness's server is shared by the session's tests)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    runs = ArtifactFilterFlowRunId(any_=[s.state_details.flow_run_id for s in states])
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=runs),
            sort=ArtifactSort.CREATED_DESC, limit=50)


def test_nightly_run_is_named_logged_and_ends_with_its_outcome(flow_env, emulator, tmp_path):
    from flows.batch import nightly_batch
    from lanewise.batch.prefect_tasks import context_for

    state = nightly_batch(params={"task": "ticket-tagging",
                                  "input_url": sample_input(tmp_path, rows=40),
                                  "run_date": "2026-08-01", "filter_by_date": False},
                          return_state=True)
    assert state.is_completed()
    brief = state.result()
    assert brief["run_key"] == "ticket-tagging:2026-08-01" and brief["rows"] == 40
    ctx = context_for("ticket-tagging")
    run = ctx.ledger.run_by_key(brief["run_key"])
    shards = ctx.ledger.shards(run["id"])
    billed = billed_for(emulator, [s["provider_batch_id"] for s in shards])
    assert Decimal(brief["cost_usd"]) == billed > 0
    succeeded = brief["counts"]["succeeded"]
    # The outcome in one line: rows, succeeded, failed, cost, saving.
    assert "\n" not in state.message
    assert state.message.startswith(f"ticket-tagging:2026-08-01: 40 rows, {succeeded} succeeded, "
                                    f"{40 - succeeded} failed")
    assert f"cost ${billed:,.6f} (this attempt ${billed:,.6f}), saving $" in state.message

    flow_run, task_runs, logs = flow_run_record(state)
    assert flow_run.name == "ticket-tagging 2026-08-01 (all rows)"
    assert flow_run.state.message == state.message
    assert run["prefect_flow_run_id"] == str(flow_run.id)
    names = {r.name for r in task_runs}
    assert "plan ticket-tagging:2026-08-01" in names and "finish ticket-tagging" in names
    for shard in shards:
        number = shard["shard_key"].rsplit("/s", 1)[1]
        assert {f"submit ticket-tagging r{shard['attempt']} #{number}",
                f"collect ticket-tagging r{shard['attempt']} #{number}"} <= names
    # never one task run per row
    assert len(task_runs) <= 4 + 3 * len(shards)
    text = "\n".join(logs)
    assert "read 40 row(s) of" in text and "shard(s) planned" in text
    for shard in shards:
        assert f"created batch {shard['provider_batch_id']} for shard" in text
        assert f"batch {shard['provider_batch_id']} of shard {shard['shard_key']} ended" in text
    assert f"INFO {state.message}" in logs
    for kind in ("progress", "cost", "summary"):
        assert artifacts(f"ticket-tagging-batch-{kind}", state), kind


def test_a_window_with_no_rows_completes_with_a_warning(flow_env, tmp_path):
    from flows.batch import backfill, nightly_batch

    state = nightly_batch(params={"task": "ticket-tagging", "run_date": "2031-01-01",
                                  "input_url": sample_input(tmp_path, rows=40)},
                          return_state=True)
    assert state.is_completed()
    assert state.message == (f"WARNING: ticket-tagging 2031-01-01: no rows in window "
                             f"2031-01-01 of {sample_input(tmp_path, rows=40)}: nothing was "
                             "sent and nothing was paid")
    flow_run, _, logs = flow_run_record(state)
    assert flow_run.name == "ticket-tagging 2031-01-01"
    assert f"WARNING {state.message}" in logs
    assert any(line.startswith("WARNING read 40 row(s)") and "0 dated 2031-01-01..2031-01-01"
               in line for line in logs)
    summary = artifacts("ticket-tagging-batch-summary", state)[0]
    assert "**Warning**: no rows in window 2031-01-01" in summary.data

    empty = backfill(params={"task": "ticket-summary", "start": "2031-01-01",
                             "end": "2031-01-31", "input_url": sample_input(tmp_path, rows=40)},
                     return_state=True)
    assert empty.is_completed() and empty.message.startswith(
        "WARNING: ticket-summary 2031-01-01..2031-01-31: no rows in window")


def test_end_before_start_fails_the_run_at_once_with_one_line(flow_env, emulator, tmp_path):
    from flows.batch import backfill
    from lanewise.batch.prefect_tasks import context_for
    from lanewise.errors import ConfigurationError
    from tests.lane_helpers import batches_created

    before = batches_created(emulator)
    state = backfill(params={"task": "ticket-tagging", "start": "2026-11-07",
                             "end": "2026-11-01", "input_url": sample_input(tmp_path, rows=40)},
                     return_state=True)
    assert state.is_failed()
    assert state.message == ("bad parameters, nothing was run: end 2026-11-01 is before start "
                             "2026-11-07; pick an end on or after the start")
    flow_run, task_runs, logs = flow_run_record(state)
    assert flow_run.state.type.value == "FAILED" and flow_run.state.message == state.message
    assert flow_run.name == "ticket-tagging 2026-11-07..2026-11-01"
    assert task_runs == [] and f"ERROR {state.message}" in logs
    assert batches_created(emulator) == before
    assert context_for("ticket-tagging").ledger.recent_run_ids(5) == []
    # Called from Python (the CLI), the run raises the same error.
    with pytest.raises(ConfigurationError, match="end 2026-11-01 is before start"):
        backfill(params={"task": "ticket-tagging", "start": date(2026, 11, 7),
                         "end": date(2026, 11, 1)})
    # A task that is no batch task of the catalog fails the same way.
    typo = backfill(params={"task": "ticket-taging", "start": "2026-11-01",
                            "end": "2026-11-01"}, return_state=True)
    assert typo.is_failed() and typo.message.startswith(
        "bad parameters, nothing was run: task: Input should be")


def test_rerun_says_this_attempt_spent_nothing_under_stable_artifact_keys(flow_env, emulator,
                                                                          tmp_path):
    from flows.batch import backfill
    from lanewise.batch.prefect_tasks import context_for

    params = {"task": "ticket-summary", "start": "2026-08-01", "end": "2026-08-01",
              "input_url": sample_input(tmp_path, rows=60)}
    first = backfill(params=params, return_state=True)
    second = backfill(params=params, return_state=True)
    one, two = first.result(), second.result()
    assert one["run_key"] == two["run_key"] == "ticket-summary:2026-08-01"
    ctx = context_for("ticket-summary")
    run = ctx.ledger.run_by_key(one["run_key"])
    total = billed_for(emulator, [s["provider_batch_id"] for s in ctx.ledger.shards(run["id"])])
    assert Decimal(one["attempt_cost_usd"]) == Decimal(one["cost_usd"]) == total > 0
    assert Decimal(two["attempt_cost_usd"]) == 0 and Decimal(two["cost_usd"]) == total
    assert "(this attempt $0.000000)" in second.message
    # The second flow run drives the run now.
    assert run["prefect_flow_run_id"] == str(second.state_details.flow_run_id)

    costs = artifacts("ticket-summary-batch-cost", first, second)
    assert len(costs) == 2  # one key, a version per attempt: the task's history
    latest = {row["metric"]: row["value"] for row in _table(costs[0])}
    earliest = {row["metric"]: row["value"] for row in _table(costs[1])}
    assert latest["cost this attempt USD"] == "0.000000"
    assert latest["cost of the run in all USD"] == earliest["cost this attempt USD"] \
        == f"{total:.6f}"
    assert "this attempt spent $0.000000" in costs[0].description
    summaries = artifacts("ticket-summary-batch-summary", first, second)
    assert len(summaries) == 2 and "This attempt spent $0.000000; the run has spent " \
        f"${total:,.6f} in all." in summaries[0].data
    assert len(artifacts("ticket-summary-batch-progress", first, second)) == 2


def _table(artifact) -> list[dict[str, Any]]:
    import json

    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def test_weekly_digest_groups_the_weeks_summaries_end_to_end(flow_env, emulator, tmp_path):
    import json

    import pyarrow.parquet as pq

    from flows.batch import nightly_batch
    from flows.digest import weekly_digest
    from lanewise.batch.prefect_tasks import context_for

    tickets = sample_input(tmp_path, rows=300)  # 1 and 2 August 2026: Saturday, Sunday
    briefs = [nightly_batch(params={"task": "ticket-summary", "run_date": day,
                                    "input_url": tickets})
              for day in ("2026-08-01", "2026-08-02")]
    # Answered: sent, or answered from the result cache (the sample repeats bodies).
    succeeded = sum(b["counts"]["succeeded"] + b["counts"].get("cached", 0) for b in briefs)

    state = weekly_digest(params={"week_of": "2026-07-29"}, return_state=True)
    assert state.is_completed(), state.message
    brief = state.result()
    assert brief["run_key"] == "weekly-digest:2026-07-27..2026-08-02"
    assert brief["tickets"] == succeeded and brief["rows"] == 1
    assert brief["source_runs"] == ["ticket-summary:2026-08-01", "ticket-summary:2026-08-02"]
    assert state.message.startswith("weekly-digest 2026-07-27..2026-08-02: 1 row, 1 succeeded")
    flow_run, _, logs = flow_run_record(state)
    assert flow_run.name == "weekly-digest 2026-07-27..2026-08-02"
    assert any("no finished ticket-summary run covers 2026-07-27, 2026-07-28, 2026-07-29, "
               "2026-07-30, 2026-07-31" in line for line in logs)

    ctx = context_for("weekly-digest")
    run = ctx.ledger.run_by_key(brief["run_key"])
    with ctx.storage.open(run["input_url"], "rb") as handle:
        rows = [json.loads(line) for line in handle]
    assert rows[0]["ticket_count"] == succeeded == rows[0]["summaries"].count("\n") + 1
    summary_ctx = context_for("ticket-summary")
    first = summary_ctx.ledger.run_by_key("ticket-summary:2026-08-01")
    with summary_ctx.storage.open(first["results_url"], "rb") as handle:
        some = pq.read_table(handle).to_pylist()[0]
    assert f"- {some['input_key']}: {' '.join(some['raw_text'].split())}" in rows[0]["summaries"]
    with ctx.storage.open(run["results_url"], "rb") as handle:
        result = pq.read_table(handle).to_pylist()
    themes = json.loads(result[0]["output_themes"])
    assert result[0]["status"] == "succeeded" and themes and themes[0]["theme"]
    digest = artifacts("weekly-digest-batch-themes", state)[0]
    assert "Themes of weekly-digest 2026-07-27..2026-08-02" in digest.data
    assert themes[0]["topic"] in digest.data

    nothing = weekly_digest(params={"week_of": "2026-08-10"}, return_state=True)
    assert nothing.is_completed() and nothing.message.startswith(
        "WARNING: weekly-digest 2026-08-10..2026-08-16: no ticket summaries")


def test_credentials_block_is_used_when_named(prefect_harness, emulator, monkeypatch):
    from blocks.provider_credentials import ProviderCredentials
    from lanewise.providers import get_adapter, resolve_credentials

    ProviderCredentials(provider="openai", api_key="sk-from-block",
                        base_url=emulator.openai_base_url).save("test-openai", overwrite=True)
    monkeypatch.setenv("LANEWISE_OPENAI_CREDENTIALS_BLOCK", "test-openai")
    get_settings.cache_clear()
    try:
        creds = resolve_credentials("openai")
        assert creds.source == "block" and creds.api_key.get_secret_value() == "sk-from-block"
        assert get_adapter("openai").client.batches.list(limit=1) is not None
    finally:
        get_settings.cache_clear()


def test_a_deployments_nightly_run_publishes_the_tasks_cost_history(flow_env, emulator,
                                                                   tmp_path, monkeypatch):
    """Nightly runs from a deployment add a version to `<task>-batch-cost-history`: the
    task's daily cost with its chart against all-live; a run by hand publishes none."""
    from flows.batch import nightly_batch

    params = {"task": "ticket-tagging", "input_url": sample_input(tmp_path, rows=30),
              "run_date": "2026-08-02", "filter_by_date": False}
    by_hand = nightly_batch(params=params, return_state=True)
    assert by_hand.is_completed()
    assert not artifacts("ticket-tagging-batch-cost-history", by_hand)
    # Prefect's runtime reads this override where a deployment's run has its id.
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "5d0f2a3e-0000-4000-8000-000000000001")
    deployed = nightly_batch(params={**params, "run_key": "tagging:deployed"},
                             return_state=True)
    assert deployed.is_completed()
    [history] = artifacts("ticket-tagging-batch-cost-history", deployed)
    assert "data:image/png;base64," in history.data
    from datetime import datetime, timezone

    today = datetime.now(timezone.utc).date().isoformat()
    # The day's billed requests: the first run's 26; the deployed run's rows over the
    # same tickets came from the result cache, billed nothing.
    assert f"| {today} | 26 |" in history.data
    assert "all-live" in history.data
