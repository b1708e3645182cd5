"""The Prefect flows, under one session-scoped Prefect test harness."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

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


def test_nightly_flow_runs_coarse_tasks_and_publishes_artifacts(flow_env, emulator, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import ArtifactSort, TaskRunSort

    from flows.batch import nightly_batch
    from lanewise.batch.prefect_tasks import context_for

    state = nightly_batch(task="ticket-tagging", input_url=sample_input(tmp_path, rows=40),
                          run_date=date(2026, 8, 1), filter_by_date=False, return_state=True)
    brief = state.result()
    assert brief["run_key"] == "ticket-tagging:2026-08-01" and brief["rows"] == 40
    ctx = context_for("ticket-tagging")
    shards = ctx.ledger.shards(ctx.ledger.run_by_key(brief["run_key"])["id"])
    assert Decimal(brief["cost_usd"]) == billed_for(emulator, [s["provider_batch_id"]
                                                               for s in shards])
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
                any_=[state.state_details.flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200)
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="lanewise-")),
            sort=ArtifactSort.CREATED_DESC, limit=50)}
    # plan, next-shards x2, submit/await/collect per shard, finish: never one per row
    assert len(task_runs) <= 4 + 3 * len(shards)
    assert {f"lanewise-{kind}-ticket-tagging-2026-08-01"
            for kind in ("progress", "cost", "summary")} <= keys


def test_backfill_flow_takes_rows_of_the_date_range(flow_env, emulator, tmp_path):
    from flows.batch import backfill

    brief = backfill(task="ticket-summary", start=date(2026, 8, 1), end=date(2026, 8, 1),
                     input_url=sample_input(tmp_path, rows=300))
    assert brief["run_key"] == "ticket-summary:2026-08-01"
    # 7 minutes apart from midnight: rows of 1 August are the first ~205 (and bad rows dated
    # 1 August at the end of the file)
    assert 150 < brief["rows"] < 300
    again = backfill(task="ticket-summary", start=date(2026, 8, 1), end=date(2026, 8, 2),
                     input_url=sample_input(tmp_path, rows=300))
    assert again["run_key"] == "ticket-summary:2026-08-01..2026-08-02"
    assert again["rows"] == 300


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
