"""The flows' parameters as the Prefect UI's custom-run form and Prefect's server see
them: the JSON schema Prefect derives, what it refuses at submit, and the models."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
import yaml

from lanewise.settings import DATA_DIR


def _schemas() -> dict[str, dict[str, Any]]:
    from prefect.utilities.callables import parameter_schema

    from flows.batch import backfill, nightly_batch
    from flows.digest import weekly_digest

    return {f.name: parameter_schema(f).model_dump_for_openapi()
            for f in (nightly_batch, backfill, weekly_digest)}


def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_task_choice_is_the_catalogs_batch_tasks():
    from lanewise.batch.flow_params import BatchTask

    raw = yaml.safe_load((DATA_DIR / "catalog.yaml").read_text())["tasks"]
    batch = {name for name, body in raw.items() if body.get("lane", "batch") != "live"}
    assert {"ticket-tagging", "ticket-summary", "weekly-digest"} <= batch
    assert "reply-draft" not in batch
    assert {task.value for task in BatchTask} == batch
    for name in ("nightly-batch", "backfill"):
        schema = _schemas()[name]
        model = next(iter(schema["definitions"].values()))
        assert set(model["properties"]["task"]["enum"]) == batch
        assert model["properties"]["task"]["type"] == "string"


def test_parameter_schema_is_clean_for_the_form():
    for name, schema in _schemas().items():
        assert list(schema["properties"]) == ["params"], name
        for node in _walk(schema):
            assert node.get("type") != "null", (name, node)  # `Property is type "None"`
            assert "anyOf" not in node and "allOf" not in node, (name, node)
        model = schema["definitions"][schema["properties"]["params"]["$ref"].rsplit("/", 1)[1]]
        assert model["additionalProperties"] is False
        for field, prop in model["properties"].items():
            assert prop.get("description") and prop.get("title"), (name, field)
            assert prop.get("default", "set") is not None, (name, field)
        run_key = model["properties"]["run_key"]
        assert run_key["type"] == "string" and "run_key" not in model.get("required", [])
    backfill = _schemas()["backfill"]["definitions"]["BackfillParams"]
    assert backfill["title"] == "Backfill"
    assert backfill["required"] == ["task", "start", "end"]
    for field in ("start", "end"):
        assert backfill["properties"][field] | {"description": "", "title": ""} == {
            "type": "string", "format": "date", "description": "", "title": ""}
    assert "s3://" in backfill["properties"]["input_url"]["description"]
    assert "Parquet, CSV or JSONL" in backfill["properties"]["input_url"]["description"]
    nightly = _schemas()["nightly-batch"]["definitions"]["NightlyParams"]
    assert nightly["properties"]["run_date"]["format"] == "date"
    assert nightly["required"] == ["task"]


@pytest.mark.parametrize(("params", "refused"), [
    ({"task": "ticket-tagging", "start": "2026-11-01", "end": "2026-11-07"}, None),
    ({"task": "ticket-tagging", "start": "2026-11-01", "end": "2026-11-07", "run_key": None,
      "input_url": "s3://bucket/tickets.csv"}, None),
    ({"task": "ticket-taging", "start": "2026-11-01", "end": "2026-11-07"}, "ticket-taging"),
    ({"task": "reply-draft", "start": "2026-11-01", "end": "2026-11-07"}, "reply-draft"),
    ({"task": "ticket-tagging", "start": "2026-11-01"}, "'end' is a required property"),
    ({"task": "ticket-tagging", "start": "2026-11-01", "end": "2026-11-07", "ende": "x"},
     "ende"),
])
def test_server_refuses_at_submit_what_the_schema_can_say(params, refused):
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    schema = _schemas()["backfill"]
    if refused is None:
        validate({"params": params}, schema, raise_on_error=True)  # as the server does
        return
    with pytest.raises(ValidationError, match=refused):
        validate({"params": params}, schema, raise_on_error=True)


def test_end_before_start_is_refused_in_one_line():
    from lanewise.batch.flow_params import BackfillParams, parse
    from lanewise.errors import ConfigurationError

    good = parse(BackfillParams, {"task": "ticket-tagging", "start": "2026-11-01",
                                  "end": "2026-11-01", "run_key": ""})
    assert good.start == good.end == date(2026, 11, 1) and good.run_key is None
    with pytest.raises(ConfigurationError) as caught:
        parse(BackfillParams, {"task": "ticket-tagging", "start": "2026-11-07",
                               "end": "2026-11-01"})
    assert str(caught.value) == ("bad parameters, nothing was run: end 2026-11-01 is before "
                                 "start 2026-11-07; pick an end on or after the start")
    # Prefect's server does not check `format: date` (the form's date picker does): a
    # bad date sent through the API fails the run as it starts.
    with pytest.raises(ConfigurationError, match="start: Input should be a valid date"):
        parse(BackfillParams, {"task": "ticket-tagging", "start": "2026-11-31",
                               "end": "2026-12-07"})
    with pytest.raises(ConfigurationError) as caught:
        parse(BackfillParams, {"task": "nope", "start": "2026-11-07"})
    assert "\n" not in str(caught.value)
    assert "task: Input should be" in str(caught.value) and "end: Field required" \
        in str(caught.value)


def test_default_night_and_week_follow_the_scheduled_day(monkeypatch):
    from lanewise.batch import flow_params
    from lanewise.batch.flow_params import DigestParams, NightlyParams

    monkeypatch.setattr(flow_params, "scheduled_day", lambda: date(2026, 12, 1))  # a Tuesday
    assert NightlyParams(task="ticket-tagging").day() == date(2026, 11, 30)
    assert NightlyParams(task="ticket-tagging", run_date="2026-11-02").day() == date(2026, 11, 2)
    assert DigestParams().week() == (date(2026, 11, 23), date(2026, 11, 29))
    assert DigestParams(week_of="2026-11-29").week() == (date(2026, 11, 23), date(2026, 11, 29))
    assert DigestParams(week_of="2026-11-30").week() == (date(2026, 11, 30), date(2026, 12, 6))


def test_prefect_yaml_deploys_the_flows_with_valid_parameters():
    from prefect.utilities.schema_tools.validation import validate

    from lanewise.settings import REPO_ROOT

    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"nightly-ticket-tagging", "nightly-ticket-summary",
                                "weekly-digest", "backfill", "daily-reconcile",
                                "drain-queue", "live-on-demand", "support-day",
                                "routing-audit"}
    by_flow = {"flows/batch.py:nightly_batch": "nightly-batch",
               "flows/batch.py:backfill": "backfill",
               "flows/digest.py:weekly_digest": "weekly-digest"}
    schemas = _schemas()
    for name, deployment in deployments.items():
        assert deployment.get("description"), name
        assert deployment["work_pool"]["name"] == "lanewise"
        flow_name = by_flow.get(deployment["entrypoint"])
        if flow_name is not None:  # as the server checks a deployment's parameters
            validate(deployment.get("parameters", {}), schemas[flow_name],
                     raise_on_error=True, ignore_required=True)
        crons = [s["cron"] for s in deployment.get("schedules", [])]
        assert (crons == []) == (name in ("backfill", "live-on-demand", "support-day")), name
    assert deployments["weekly-digest"]["schedules"][0]["cron"].split()[-1] != "*"
