"""Shared fixtures: one in-process emulator per session, reset before each test."""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Callable, Iterator

import anthropic
import httpx
import openai
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from lanewise.emulator import (  # noqa: E402 - the environment above must be set first
    EmulatorConfig,
    Faults,
    Limits,
    RunningEmulator,
    Timing,
    running_emulator,
)

FAST = Timing(batch_seconds=0.3, validating_seconds=0.05, finalizing_seconds=0.05,
              cancel_seconds=0.05, expiry_seconds=30)


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (it takes ~14 s to start)."""
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    @flow(name="warm-up")
    def warm_up() -> None:
        """Nothing: Prefect's log handlers bind to the stream current at the first flow
        run, which must be the session's stderr, not one test's capsys (closed after it)."""

    with prefect_test_harness(server_startup_timeout=180):
        warm_up()
        yield


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[RunningEmulator]:
    with running_emulator(EmulatorConfig(timing=FAST.model_copy())) as emu:
        yield emu


@pytest.fixture()
def emulator(emulator_session: RunningEmulator) -> RunningEmulator:
    """The session's emulator with default faults, limits and fast timing."""
    state = emulator_session.state
    state.set_faults(Faults())
    state.config.timing = FAST.model_copy()
    state.config.limits = Limits()
    state.config.api_key = None
    state.set_rate_limits()  # no budgets, nothing counted
    with state.lock:
        state.scripted.clear()
    return emulator_session


@pytest.fixture()
def oai(emulator: RunningEmulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.openai_base_url, api_key="sk-test", max_retries=0)


@pytest.fixture()
def claude(emulator: RunningEmulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emulator.anthropic_base_url, api_key="sk-ant-test",
                               max_retries=0)


@pytest.fixture()
def control(emulator: RunningEmulator) -> httpx.Client:
    with httpx.Client(base_url=f"{emulator.url}/_emulator") as client:
        yield client


def chat_line(custom_id: str, text: str = "Summarize.\n\nThe export fails. Help.",
              model: str = "gpt-4o-mini", **body: Any) -> dict[str, Any]:
    """One OpenAI batch input line."""
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body}}


def upload_lines(client: openai.OpenAI, lines: list[Any]) -> str:
    """Upload JSONL (dicts are dumped, strings sent verbatim) and return the file id."""
    payload = "".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines)
    return client.files.create(file=("in.jsonl", io.BytesIO(payload.encode())),
                               purpose="batch").id


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 20) -> Any:
    """Poll `fetch` until `done` says so."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last value {value}")
        time.sleep(0.05)
        value = fetch()
    return value


OPENAI_TERMINAL = ("completed", "failed", "expired", "cancelled")


POSTGRES_URL = os.environ.get("LANEWISE_TEST_POSTGRES_URL")


def _reset_postgres(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in ("items", "shards", "run_leases", "provider_limits", "run_item_counts",
                      "runs", "live_calls", "result_cache", "queue_items", "alembic_version"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request, tmp_path) -> str:
    """The ledger URL: a SQLite file always; PostgreSQL when LANEWISE_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    if not POSTGRES_URL:
        pytest.skip("LANEWISE_TEST_POSTGRES_URL is not set")
    _reset_postgres(POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture()
def live_flow_env(emulator, tmp_path, monkeypatch, prefect_harness):
    """Settings for live-lane flows: this test's home and the test emulator; lanes closed
    after."""
    from lanewise.live import close_lanes
    from lanewise.settings import get_settings

    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LANEWISE_EMULATOR_URL", emulator.url)
    monkeypatch.delenv("LANEWISE_REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield
    close_lanes()
    get_settings.cache_clear()
