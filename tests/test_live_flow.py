"""The live-on-demand flow (flows/live.py, lanewise/live/flow.py): parameters, and runs
under the session's Prefect test harness against the emulator (name, cost artifact,
one-line outcome, bounded concurrency, rows picked from an input by key)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest
import yaml

from lanewise.catalog import LanePolicy, load_catalog
from lanewise.emulator import Faults
from lanewise.errors import ConfigurationError
from lanewise.pricing import from_picodollars
from lanewise.settings import REPO_ROOT, get_settings
from tests.live_helpers import billed_live, ticket


def test_parameters_take_rows_or_an_input_with_keys():
    from lanewise.batch.flow_params import parse
    from lanewise.live.flow import MAX_ROWS, LiveParams, LiveTask

    live = sorted(n for n, s in load_catalog().tasks.items() if s.lane != LanePolicy.BATCH)
    assert [t.value for t in LiveTask] == live and "reply-draft" in live
    ok = parse(LiveParams, {"task": "reply-draft", "rows": [ticket(1)]})
    assert (ok.count(), ok.concurrency) == (1, 8)
    assert parse(LiveParams, {"task": "reply-draft", "input_url": "t.jsonl",
                              "keys": ["T-1", "T-2"], "rows": ""}).count() == 2
    for raw, problem in (
            ({"task": "reply-draft"}, "give either rows, or an input with keys"),
            ({"task": "reply-draft", "rows": [ticket(1)], "input_url": "t.jsonl",
              "keys": ["T-1"]}, "give either rows"),
            ({"task": "reply-draft", "input_url": "t.jsonl"}, "needs the keys"),
            ({"task": "reply-draft", "rows": [ticket(1)], "keys": ["T-1"]}, "give the input"),
            ({"task": "reply-draft", "rows": []}, "rows is empty"),
            ({"task": "ticket-tagging", "rows": [ticket(1)]}, "task"),
            ({"task": "reply-draft", "rows": [ticket(1)], "concurrency": 0}, "concurrency"),
            ({"task": "reply-draft", "rows": [ticket(i) for i in range(MAX_ROWS + 1)]},
             "rows"),
            ({"task": "reply-draft", "rows": [ticket(1)], "sharding": True}, "sharding")):
        with pytest.raises(ConfigurationError, match=problem):
            parse(LiveParams, raw)


def test_the_deployment_is_on_demand_with_valid_parameters():
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.live import live_on_demand

    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    deployment = next(d for d in config["deployments"] if d["name"] == "live-on-demand")
    assert deployment["entrypoint"] == "flows/live.py:live_on_demand"
    assert not deployment.get("schedules") and deployment["work_pool"]["name"] == "lanewise"
    schema = parameter_schema(live_on_demand).model_dump_for_openapi()
    validate(deployment["parameters"], schema, raise_on_error=True, ignore_required=True)
    fields = schema["definitions"]["LiveParams"]["properties"]
    assert fields["task"]["enum"] == ["escalation-summary", "faq-candidates", "reply-draft"]
    assert all(field.get("description") for field in fields.values())


def flow_run_and_artifact(state, key: str) -> tuple[Any, list[dict[str, Any]]]:
    """The flow run as the API has it, and the data of its artifact `key`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(found) == 1, key
    data = found[0].data
    return flow_run, json.loads(data) if isinstance(data, str) else data


def live_calls_of(flow_run_id: str) -> list[dict[str, Any]]:
    """The live_calls rows this flow run recorded (by the context it gives each call)."""
    import sqlalchemy as sa

    from tests.live_helpers import recorded

    engine = sa.create_engine(get_settings().resolved_database_url)
    try:
        return [r for r in recorded(engine)
                if json.loads(r["context"] or "{}").get("flow_run_id") == flow_run_id]
    finally:
        engine.dispose()


def most_in_flight(calls: list[dict[str, Any]]) -> int:
    """The most calls whose [start, end] overlapped (end: created_at; start: end - latency)."""
    edges = sorted([(c["created_at"] - c["latency_ms"] / 1000, 1) for c in calls]
                   + [(c["created_at"], -1) for c in calls])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


@pytest.mark.prefect
def test_a_live_run_answers_its_rows_names_itself_and_publishes_its_cost(live_flow_env, emulator):
    from flows.live import live_on_demand

    rows = [ticket(i) for i in range(1, 21)]
    rows[4] = {**rows[4], "body": "  "}  # a row the lane refuses: counted failed, not lost
    # Each call takes ~300 ms at the emulator, so calls that overlap are seen overlapping.
    emulator.state.set_faults(Faults(latency_ms=300))
    since = time.time()
    state = live_on_demand(params={"task": "reply-draft", "rows": rows, "concurrency": 4},
                           return_state=True)
    requests, billed = billed_live(emulator, since)

    assert state.is_completed(), state.message
    assert requests == 19 and billed > 0
    assert "\n" not in state.message
    assert state.message.startswith(
        f"reply-draft live: 20 rows, 19 succeeded, 1 failed, cost ${billed:,.6f}, "
        "latency p50 "), state.message
    assert state.message.endswith(" ms") and ", p95 " in state.message
    brief = state.result()
    assert brief["counts"] == {"succeeded": 19, "failed": 1}
    assert Decimal(brief["cost_usd"]) == billed
    assert 300 <= brief["latency_p50_ms"] <= brief["latency_p95_ms"]
    results = brief["results"]
    assert [r["key"] for r in results] == [r["ticket_id"] for r in rows]
    refused = results[4]
    assert (refused["status"], refused["call_id"]) == ("failed", None)
    assert "'body'" in refused["error"]
    assert all(r["output"] and r["output"].strip() for r in results if r is not refused)

    flow_run, cost = flow_run_and_artifact(state, "reply-draft-live-cost")
    assert flow_run.name == "reply-draft live 20 rows"
    assert flow_run.state.message == state.message
    table = {row["metric"]: row["value"] for row in cost}
    assert (table["rows"], table["succeeded"], table["failed"]) == (20, 19, 1)
    assert Decimal(table["cost USD (live prices)"]) == billed
    assert table["answered by live"] == 19 and table["provider calls"] == 19
    _, per_row = flow_run_and_artifact(state, "reply-draft-live-results")
    assert [r["key"] for r in per_row] == [r["ticket_id"] for r in rows]
    shown = json.dumps(per_row)  # answers stay in the ledger, not in the UI
    assert not any(r["output"] in shown for r in results if r["output"])

    # Every paid call is in the ledger, tied to this flow run, at most 4 at once.
    calls = live_calls_of(str(flow_run.id))
    assert len(calls) == 19
    assert from_picodollars(sum(c["cost_picodollars"] for c in calls)) == billed
    assert {json.loads(c["context"])["flow_run"] for c in calls} == {flow_run.name}
    assert 2 <= most_in_flight(calls) <= 4


@pytest.mark.prefect
def test_a_live_run_picks_rows_from_an_input_by_key(live_flow_env, emulator, tmp_path):
    from flows.live import live_on_demand

    source = tmp_path / "tickets.jsonl"
    source.write_text("".join(json.dumps(ticket(i)) + "\n" for i in range(1, 31)))
    since = time.time()
    state = live_on_demand(params={"task": "reply-draft", "input_url": str(source),
                                   "keys": ["T-12", "T-3", "T-27"]}, return_state=True)
    assert state.is_completed(), state.message
    assert state.message.startswith("reply-draft live: 3 rows, 3 succeeded, 0 failed")
    assert [r["key"] for r in state.result()["results"]] == ["T-12", "T-3", "T-27"]
    assert billed_live(emulator, since)[0] == 3
    flow_run, _ = flow_run_and_artifact(state, "reply-draft-live-cost")
    assert flow_run.name == "reply-draft live 3 rows"

    # A key the input lacks: the run fails at once, naming it, and calls nothing.
    since = time.time()
    missing = live_on_demand(params={"task": "reply-draft", "input_url": str(source),
                                     "keys": ["T-2", "T-99"]}, return_state=True)
    assert missing.is_failed()
    assert "T-99" in missing.message and "nothing was called" in missing.message
    # Every row refused: the run fails, with its outcome as the message.
    broken = live_on_demand(params={"task": "reply-draft", "rows": [
        {**ticket(1), "body": ""}, {"ticket_id": "T-2"}]}, return_state=True)
    assert broken.is_failed()
    assert broken.message.startswith("reply-draft live: 2 rows, 0 succeeded, 2 failed, "
                                     "cost $0.000000, no call made")
    assert billed_live(emulator, since)[0] == 0
