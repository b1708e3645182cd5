"""Real processes against the batch lane: SIGKILL at random moments, two drivers of one
run key, first runs racing on a new ledger. CI-sized; bench/chaos.py is the full size."""

from __future__ import annotations

import os
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.chaos_harness import (
    ROOT,
    emulator_process,
    fresh_postgres_database,
    lanewise_command,
    run_chaos,
)
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.prefect


@pytest.fixture(scope="module")
def prefect_api_url(prefect_harness) -> str:
    """The session's Prefect test server, for `lanewise run` child processes."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture()
def ledger_for(tmp_path):
    """A fresh ledger URL of the asked kind (a new PostgreSQL database each time)."""
    opened = []

    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        if not POSTGRES_URL:
            pytest.skip("LANEWISE_TEST_POSTGRES_URL is not set")
        context = fresh_postgres_database(POSTGRES_URL)
        opened.append(context)
        return context.__enter__()

    yield make
    for context in opened:
        context.__exit__(None, None, None)


@pytest.mark.parametrize("task,kind,seed", [
    ("ticket-tagging", "sqlite", 11),
    ("ticket-summary", "postgresql", 12),
])
def test_random_kills_then_reruns_keep_every_promise(task, kind, seed, tmp_path, ledger_for,
                                                     prefect_api_url):
    ledger_url = ledger_for(kind)
    with emulator_process(tmp_path / "emulator", "--batch-seconds", "3") as emulator_url:
        report = run_chaos(task=task, rows=1200, kills=5, seed=seed, workdir=tmp_path,
                           ledger_url=ledger_url, emulator_url=emulator_url,
                           prefect_api_url=prefect_api_url, shard_max_requests=300,
                           run_timeout=180)
    print(report.line())
    assert report.ok, report.line()
    assert report.kills >= 4  # the moments were reached, not skipped
    assert report.batches_created == report.shards >= 4


def test_a_run_killed_with_several_batches_in_flight_resumes_them_all(tmp_path, ledger_for,
                                                                     prefect_api_url):
    """Pipelined: the budget holds four shards at once; kills land while two or more
    batches are in flight (and once at a random moment). The reruns find every batch
    again: none created twice, no row lost, cost equal to the bill."""
    ledger_url = ledger_for("sqlite")
    with emulator_process(tmp_path / "emulator", "--batch-seconds", "2") as emulator_url:
        report = run_chaos(task="ticket-tagging", rows=1200, kills=3, seed=21,
                           workdir=tmp_path, ledger_url=ledger_url,
                           emulator_url=emulator_url, prefect_api_url=prefect_api_url,
                           shard_max_requests=1000, run_timeout=180,
                           plan=["in_flight", "time", "in_flight"],
                           extra_env={"LANEWISE_OPENAI_ENQUEUED_TOKEN_BUDGET": "80000"})
    print(report.line())
    assert report.ok, report.line()
    assert report.kills_by_phase["in_flight"] == 2
    assert report.batches_created == report.shards >= 8


def _run(task: str, input_path: Path, run_key: str, env: dict[str, str],
         *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*lanewise_command(), "run", task, "--input", str(input_path), "--all-rows",
         "--run-key", run_key, *extra], env=env, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)


def _env(tmp_path: Path, ledger_url: str, emulator_url: str | None,
         prefect_api_url: str) -> dict[str, str]:
    env = {**os.environ, "LANEWISE_HOME": str(tmp_path / "home"),
           "LANEWISE_DATABASE_URL": ledger_url, "LANEWISE_POLL_INITIAL_SECONDS": "0.2",
           "LANEWISE_POLL_MAX_SECONDS": "0.5", "LANEWISE_SHARD_MAX_REQUESTS": "100",
           "PREFECT_API_URL": prefect_api_url, "PREFECT_LOGGING_LEVEL": "WARNING",
           "COLUMNS": "400"}  # messages unwrapped, as the assertions read them
    if emulator_url:
        env["LANEWISE_EMULATOR_URL"] = emulator_url
    else:
        env.pop("LANEWISE_EMULATOR_URL", None)
    return env


def _sample(tmp_path: Path, rows: int) -> Path:
    from lanewise.sampledata import write

    path = tmp_path / f"tickets-{rows}.parquet"
    write(rows, path, seed=5, clean=False)
    return path


def _ledger_matches_bill(ledger_url: str, emulator_url: str, run_keys: list[str]) -> None:
    from lanewise.batch.results import summarize
    from lanewise.ledger import Ledger

    ledger = Ledger(ledger_url)
    total = Decimal(0)
    batch_ids: list[str] = []
    for run_key in run_keys:
        run = ledger.run_by_key(run_key)
        assert run["status"] == "finished"
        summary = summarize(ledger, run["id"])
        assert len(summary.batch_ids) == summary.shards
        batch_ids += summary.batch_ids
        total += summary.cost_usd
    health = httpx.get(f"{emulator_url}/_emulator/health").json()
    assert health["openai_batches_created"] + health["anthropic_batches_created"] == \
        len(batch_ids) == len(set(batch_ids))  # one batch per shard, none twice
    billed = httpx.get(f"{emulator_url}/_emulator/billing").json()["total"]
    assert total == Decimal(billed["cost_usd"]) > 0


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_runs_of_one_key_at_once_pay_once(kind, tmp_path, ledger_for, prefect_api_url):
    """While one process drives a run key, a second is refused naming it, and a third
    with --wait waits for it and then creates nothing."""
    from tests.chaos_harness import LedgerProbe

    ledger_url = ledger_for(kind)
    input_path = _sample(tmp_path, 400)
    with emulator_process(tmp_path / "emulator", "--batch-seconds", "12") as emulator_url:
        env = _env(tmp_path, ledger_url, emulator_url, prefect_api_url)
        driver = _run("ticket-tagging", input_path, "tagging:twice", env)
        probe = LedgerProbe(ledger_url, "tagging:twice")
        deadline = time.monotonic() + 120
        while probe.lease_holder() is None:  # the first process drives the run
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = _run("ticket-tagging", input_path, "tagging:twice", env)
        waiter = _run("ticket-tagging", input_path, "tagging:twice", env, "--wait", "180")
        refused = second.communicate(timeout=240)[0].decode()
        # Refused naming the driver's pid: the two overlapped (batches of 12 s keep the
        # driver busy well past the second process's start-up).
        assert second.returncode == 1, refused
        assert f"run tagging:twice is being driven by process {driver.pid}" in refused
        assert "created nothing" in refused
        for process in (driver, waiter):
            output = process.communicate(timeout=240)[0].decode()
            assert process.returncode == 0, output
        probe.close()
        _ledger_matches_bill(ledger_url, emulator_url, ["tagging:twice"])


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_three_first_runs_at_once_on_a_fresh_ledger_all_succeed(kind, tmp_path, ledger_for,
                                                                prefect_api_url):
    ledger_url = ledger_for(kind)
    input_path = _sample(tmp_path, 60)
    keys = [f"summary:first-{n}" for n in range(3)]
    with emulator_process(tmp_path / "emulator", "--batch-seconds", "0.5") as emulator_url:
        env = _env(tmp_path, ledger_url, emulator_url, prefect_api_url)
        processes = [_run("ticket-summary", input_path, key, env) for key in keys]
        for process in processes:
            output = process.communicate(timeout=240)[0].decode()
            assert process.returncode == 0, output
        _ledger_matches_bill(ledger_url, emulator_url, keys)


def _stop_background_emulator(state_dir: Path) -> None:
    import json
    import signal

    server = state_dir / "server.json"
    if server.exists():
        try:
            os.kill(json.loads(server.read_text())["pid"], signal.SIGTERM)
        except (ProcessLookupError, ValueError, KeyError):
            pass


def test_twenty_runs_on_the_embedded_emulator_in_a_row_none_hangs(tmp_path, prefect_api_url,
                                                                  request):
    """No API key, no emulator URL: each run finds (or starts) the shared local emulator
    outside Prefect's logging, so none can deadlock; a timeout catches a hang."""
    input_path = _sample(tmp_path, 12)
    env = _env(tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite3'}", None, prefect_api_url)
    env["LANEWISE_EMULATOR_BATCH_SECONDS"] = "0.2"
    env["LANEWISE_EMULATOR_IDLE_SECONDS"] = "60"
    durations = []
    request.addfinalizer(lambda: _stop_background_emulator(tmp_path / "home" / "emulator"))
    for n in range(20):
        started = time.monotonic()
        # A ledger per run: with one ledger the result cache would answer runs 2-20 and
        # they would send nothing to the emulator this test is about.
        env["LANEWISE_DATABASE_URL"] = f"sqlite:///{tmp_path / f'ledger-{n}.sqlite3'}"
        process = _run("ticket-summary", input_path, f"summary:row-{n}", env)
        try:
            output = process.communicate(timeout=90)[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"run {n} hung for 90 s")
        assert process.returncode == 0, output
        durations.append(time.monotonic() - started)
    print(f"20 runs: {sum(durations):.0f} s, longest {max(durations):.1f} s")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_killed_run_leaves_no_prefect_server_behind(tmp_path):
    """Without PREFECT_API_URL, `lanewise run` starts a temporary Prefect server; a
    SIGKILL of the run takes the server with it."""
    import signal

    input_path = _sample(tmp_path, 12)
    env = _env(tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "http://127.0.0.1:9",
               "")
    env.pop("PREFECT_API_URL")
    process = _run("ticket-summary", input_path, "summary:orphan", env)
    deadline = time.monotonic() + 120
    server = None
    while server is None:
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "no temporary Prefect server appeared"
        server = next((c for c in _children(process.pid)
                       if "prefect.server.api.server:create_app" in _cmdline(c)), None)
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{server}").exists() and "create_app" in _cmdline(server):
        assert time.monotonic() < deadline, f"the Prefect server {server} outlived its run"
        time.sleep(0.1)
