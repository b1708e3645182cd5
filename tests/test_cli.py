"""The `lanewise emulator` command serves the APIs in the foreground."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import openai


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_emulator_command_serves_both_sdks(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lanewise", "emulator", "--port", str(port), "--state-dir",
         str(tmp_path), "--batch-seconds", "0", "--rate-limit-rate", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_emulator/health").json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.2)
        assert health["status"] == "ok"
        timing = httpx.get(f"http://127.0.0.1:{port}/_emulator/timing").json()
        assert timing["batch_seconds"] == 0
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there."}])
        assert answer.choices[0].message.content == "Hello there."
        assert (tmp_path / "billing.sqlite3").exists()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_runs_and_shards_commands_read_the_ledger(emulator, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lanewise import cli as cli_module
    from lanewise import cli_history
    from lanewise.batch.runner import run_batch_lane
    from lanewise.cli import cli
    from lanewise.settings import get_settings
    from tests.lane_helpers import make_context, sample_input

    ctx = make_context("ticket-summary", emulator, tmp_path)
    summary = run_batch_lane(ctx, "summary:cli", sample_input(tmp_path, rows=12))
    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli_module.console, "width", 200)
    monkeypatch.setattr(cli_history.console, "width", 200)
    get_settings.cache_clear()
    try:
        runs = CliRunner().invoke(cli, ["runs"], terminal_width=200)
        helped = CliRunner().invoke(cli, ["runs", "--help"])
        shards = CliRunner().invoke(cli, ["shards", "summary:cli"], terminal_width=200)
        missing = CliRunner().invoke(cli, ["shards", "nope"])
    finally:
        get_settings.cache_clear()
    assert runs.exit_code == 0 and "run summary:cli  created" in runs.output
    row = next(line for line in runs.output.splitlines() if line.startswith("finished"))
    assert row.split() == ["finished", "ticket-summary", "batch", "all", "rows", "12",
                           f"{sum(n for s, n in summary.counts.items() if s != 'succeeded')}",
                           f"${summary.cost_usd:,.6f}", f"${summary.saving_usd:,.6f}"]
    assert summary.results_url.startswith("file:///")
    assert f"results {summary.results_url}" in runs.output
    assert "forget" in helped.output and "--json" in helped.output
    assert shards.exit_code == 0 and summary.batch_ids[0] in shards.output
    assert missing.exit_code != 0 and "no run 'nope'" in missing.output


def test_print_runs_shows_cost_reasons_and_results(emulator, tmp_path):
    from rich.console import Console

    from lanewise.batch.runner import run_batch_lane
    from lanewise.reporting import print_runs
    from tests.lane_helpers import make_context, sample_input

    ctx = make_context("ticket-summary", emulator, tmp_path)
    summary = run_batch_lane(ctx, "summary:print", sample_input(tmp_path, rows=12))
    console = Console(record=True, width=200)
    print_runs(console, [summary], "What the run cost")
    text = console.export_text()
    assert "What the run cost" in text and f"${summary.cost_usd:,.6f}" in text
    assert "row 8, field 'body': empty text" in text
    assert f"results of summary:print: {summary.results_url}" in text


def test_read_commands_never_create_a_ledger(tmp_path, monkeypatch):
    """From a folder with no ledger, `runs` and `shards` say where they looked and
    create nothing there."""
    from click.testing import CliRunner

    from lanewise.cli import cli
    from lanewise.settings import get_settings

    home = tmp_path / "elsewhere"
    monkeypatch.setenv("LANEWISE_HOME", str(home))
    monkeypatch.delenv("LANEWISE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        results = [CliRunner().invoke(cli, args) for args in (["runs"], ["shards", "x:1"])]
    finally:
        get_settings.cache_clear()
    for result in results:  # a LedgerError, which main() prints as one line
        assert result.exit_code != 0
        assert f"no ledger at {home / 'ledger.sqlite3'}" in str(result.exception)
        assert "LANEWISE_HOME" in str(result.exception)
    assert not home.exists()


def test_read_commands_refuse_a_postgres_database_without_a_ledger(monkeypatch):
    import os

    import pytest
    from click.testing import CliRunner

    from lanewise.cli import cli
    from lanewise.settings import get_settings
    from tests.chaos_harness import fresh_postgres_database

    server = os.environ.get("LANEWISE_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("LANEWISE_TEST_POSTGRES_URL is not set")
    with fresh_postgres_database(server) as url:
        monkeypatch.setenv("LANEWISE_DATABASE_URL", url)
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(cli, ["runs"])
        finally:
            get_settings.cache_clear()
        assert result.exit_code != 0 and "no runs table" in str(result.exception)
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert not sa.inspect(conn).get_table_names()  # nothing was created
        engine.dispose()


def test_run_refuses_an_end_before_its_start_before_touching_anything(tmp_path, monkeypatch):
    """`lanewise run --start B --end A` with A before B is a usage error: no Prefect
    server is started, no ledger is created."""
    from click.testing import CliRunner

    from lanewise.cli import cli
    from lanewise.settings import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("LANEWISE_HOME", str(home))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["run", "ticket-tagging", "--input", "x.parquet",
                                          "--start", "2026-11-07", "--end", "2026-11-01"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "--end 2026-11-01 is before --start 2026-11-07" in result.output
    assert not home.exists()
