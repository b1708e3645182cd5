"""The temporary Prefect server of `lanewise run` (lanewise/ops/prefect_server.py):
one slot (database, log, lock) per live server under LANEWISE_HOME/prefect-temp, so
servers started at once never share a SQLite file; migrations only on a slot's first
start; a killed server frees its slot; a configured PREFECT_API_URL wins."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys

import httpx

from lanewise.ops.prefect_server import (
    early_temporary_server,
    launch_temporary_server,
    prefect_api,
)


def _works(server) -> None:
    """The server answers, and writes to its database."""
    api = server.wait_until_healthy(300)
    with httpx.Client(base_url=api, trust_env=False, timeout=30) as client:
        created = client.post("/flows/", json={"name": f"probe-{server.slot.name}"})
        assert created.status_code in (200, 201), created.text
        assert client.post("/flows/filter", json={}).json()[0]["name"].startswith("probe")


def test_two_servers_at_once_take_two_slots_and_later_starts_skip_migrations(tmp_path):
    home = tmp_path / "home"
    first = launch_temporary_server(home)
    second = launch_temporary_server(home)
    try:
        assert {first.slot.name, second.slot.name} == {"slot-0", "slot-1"}
        assert first.migrates and second.migrates  # fresh databases
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(_works, (first, second)))
    finally:
        first.stop()
        second.stop()
    again = launch_temporary_server(home)
    try:
        assert again.slot.name == "slot-0"  # free again once its server stopped
        assert not again.migrates  # the database is at the recorded revision
        _works(again)
    finally:
        again.stop()


def test_a_killed_server_frees_its_slot(tmp_path):
    home = tmp_path / "home"
    killed = launch_temporary_server(home)
    other = launch_temporary_server(home)
    replacement = None
    try:
        assert (killed.slot.name, other.slot.name) == ("slot-0", "slot-1")
        os.kill(killed.process.pid, signal.SIGKILL)
        killed.process.wait()
        replacement = launch_temporary_server(home)
        assert replacement.slot.name == "slot-0"
    finally:
        for server in (killed, other, replacement):
            if server is not None:
                server.stop()


def test_a_configured_api_url_wins_over_a_launched_server(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    notes: list[str] = []
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with early_temporary_server(tmp_path) as early:
            assert early is None  # Prefect (imported here) names an API: nothing launched
        server = launch_temporary_server(tmp_path)  # as if launched on a guess
        with prefect_api(tmp_path, launched=server, notice=notes.append) as api:
            assert api == "http://127.0.0.1:9/api"
            assert server.process.poll() is not None  # stopped at once
    assert notes == []


LAUNCH_WITHOUT_PREFECT = """
import sys
from pathlib import Path
from lanewise.ops.prefect_server import early_temporary_server

with early_temporary_server(Path(sys.argv[1])) as server:
    launched = server is not None
    if launched:
        server.stop()
print(launched, "prefect" in sys.modules)
"""


def test_the_early_launch_imports_no_prefect_and_heeds_the_environment(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile naming an API
    command = [sys.executable, "-c", LAUNCH_WITHOUT_PREFECT, str(tmp_path / "home")]
    unset = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert unset.stdout.split() == ["True", "False"], unset.stderr
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    given = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert given.stdout.split() == ["False", "False"], given.stderr


def test_the_temporary_server_runs_flows_without_heartbeats_and_answers_the_head_start(
        tmp_path, monkeypatch):
    """Against the temporary server (it ends with the command) Prefect's flow-run
    heartbeats are off; a configured server keeps them. The head start's check of a
    configured server: it answers (yes), a closed port (no), nothing configured (no)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from lanewise.cli import _flow_server_answers

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert not _flow_server_answers(tmp_path)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert not _flow_server_answers(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with prefect_api(tmp_path) as api:
            assert get_current_settings().flows.heartbeat_frequency is None
            monkeypatch.setenv("PREFECT_API_URL", api)
            assert _flow_server_answers(tmp_path)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with prefect_api(tmp_path):
            assert get_current_settings().flows.heartbeat_frequency is not None
