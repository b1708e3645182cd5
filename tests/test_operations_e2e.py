"""Operating lanewise end to end, with real processes, as a team does.

`lanewise up` on free ports with a temporary LANEWISE_HOME (a Prefect server, the
emulator, a process work pool and worker, the block types, every deployment of
prefect.yaml); the nightly deployments' scheduled runs; a backfill triggered through
the REST API as the UI's custom-run form sends it, run by the worker to Completed, and
its ledger record against the emulator's bill; a flow run SIGKILLed while its batch is
in flight, rerun through the deployment, paying once; an end-before-start backfill;
`lanewise run`'s choice of the stack's server; and `lanewise down`.

Select with `-m e2e` (it takes about a minute; the tests share one stack and run in
file order). The assertions under "TIGHTEN LATER" read what the flows show (flow run
names, logs, state messages, artifact keys) only as far as it exists today.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import sqlalchemy as sa
import yaml

from lanewise.ops.processes import family, is_alive, start_time
from tests.stack_helpers import (
    ROOT,
    Stack,
    billed,
    flow_run,
    in_flight_batches,
    ledger_cost,
    ledger_run,
    ok,
    run_cli,
    running_stack,
    submit,
    tickets,
    wait_final,
    what_the_run_shows,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """`lanewise up` on free ports in a temporary home; `lanewise down` at the end if a
    test has not done it."""
    with running_stack(tmp_path_factory.mktemp("ops") / "home") as stack:
        yield stack


# --- the tests, in the order a team meets them ---------------------------------------

def test_up_starts_the_whole_stack_and_up_again_says_it_is_up(stack: Stack):
    state = stack.state
    assert state["up"] is True
    processes = state["processes"]
    assert {"server", "emulator", "worker:lanewise"} <= set(processes)
    assert all(p["alive"] for p in processes.values())
    # The server's database and the logs live under LANEWISE_HOME.
    assert (stack.home / "stack" / "prefect" / "prefect.db").exists()
    for record in processes.values():
        assert Path(record["log"]).parent == stack.home / "stack" / "logs"
    # The UI answers at the printed address.
    page = httpx.get(state["ui_url"], trust_env=False, timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    # The work pool is a process pool, with our worker online.
    assert ok(stack.api.get("/work_pools/lanewise"))["type"] == "process"
    workers = ok(stack.api.post("/work_pools/lanewise/workers/filter", json={}))
    assert any(w["status"] == "ONLINE" for w in workers)
    # Every deployment of prefect.yaml is deployed.
    declared = {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())
                ["deployments"]}
    deployed = {d["name"] for d in ok(stack.api.post("/deployments/filter", json={}))}
    assert declared <= deployed
    # Every block class of the blocks/ package is registered.
    from prefect.blocks.core import Block

    import blocks

    exported = {value.get_block_type_slug() for value in vars(blocks).values()
                if isinstance(value, type) and issubclass(value, Block)}
    assert len(exported) >= 2
    registered = {b["slug"] for b in ok(stack.api.post("/block_types/filter", json={}))}
    assert exported <= registered and set(state["block_types"]) <= registered
    # The worker (and so every flow run) uses the one emulator and this home.
    worker_pid = processes["worker:lanewise"]["pid"]
    environ = dict(line.split("=", 1) for line in Path(f"/proc/{worker_pid}/environ")
                   .read_bytes().decode(errors="replace").split("\0") if "=" in line)
    assert environ["LANEWISE_EMULATOR_URL"] == stack.emulator_url
    assert environ["LANEWISE_HOME"] == str(stack.home)
    assert environ["PREFECT_API_URL"] == state["api_url"]
    assert ok(httpx.get(f"{stack.emulator_url}/_emulator/health", trust_env=False))[
        "state_dir"] == str(stack.home / "emulator")
    # Up again: already up, nothing started.
    began = time.monotonic()
    again = run_cli(["up"], stack.env)
    warm = time.monotonic() - began
    assert "already up" in again.stdout
    after = json.loads(run_cli(["status", "--json"], stack.env).stdout)
    assert {n: p["pid"] for n, p in after["processes"].items()} == \
        {n: p["pid"] for n, p in processes.items()}
    print(f"\nlanewise up: cold {stack.cold_up_seconds:.1f} s, warm {warm:.2f} s")
    # A dead worker: `up` starts only what is missing.
    worker = processes["worker:lanewise"]
    os.killpg(worker["pid"], signal.SIGKILL)
    began = time.monotonic()
    run_cli(["up"], stack.env, timeout=120)
    print(f"lanewise up with its worker dead: {time.monotonic() - began:.1f} s")
    after = json.loads(run_cli(["status", "--json"], stack.env).stdout)
    assert after["up"] is True
    assert after["processes"]["worker:lanewise"]["pid"] != worker["pid"]
    for name in ("server", "emulator"):
        assert after["processes"][name]["pid"] == processes[name]["pid"]
    stack.state = after


def test_each_scheduled_deployment_has_scheduled_runs(stack: Stack):
    declared = [d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
                if d.get("schedules")]
    assert {"nightly-ticket-tagging", "nightly-ticket-summary"} <= {d["name"] for d in declared}
    deadline = time.monotonic() + 60
    for declared_deployment in declared:
        deployment = stack.deployment(declared_deployment["name"])
        while True:
            scheduled = ok(stack.api.post("/flow_runs/filter", json={
                "deployments": {"id": {"any_": [deployment["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}))
            if scheduled or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert scheduled, f"{declared_deployment['name']} has no scheduled runs"
        assert all(run["expected_start_time"] for run in scheduled)


def test_a_backfill_from_the_ui_runs_to_completed_and_costs_what_was_billed(stack, tmp_path):
    input_url = tickets(tmp_path, 30)  # all dated 2026-08-01
    created = ok(submit(stack, "backfill", task="ticket-tagging", start="2026-08-01",
                        end="2026-08-01", input_url=input_url))
    run = wait_final(stack, created["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    record = ledger_run(stack, "ticket-tagging", "2026-08-01", "2026-08-01")
    rows = sorted(item["row_number"] for item in record["items"])
    assert len(rows) == 30 and len(set(rows)) == 30  # every row once, in a final state
    assert all(item["status"] != "pending" for item in record["items"])
    total, records = billed(stack, record["batch_ids"])
    assert record["batch_ids"] and total > 0
    assert ledger_cost(record["items"]) == total  # the run costs what the provider bills
    assert len({r["custom_id"] for r in records}) == len(records)  # billed once each

    # TIGHTEN LATER: what the flows show (flows/ and lanewise/batch are being changed as
    # this is written). Asserted as far as it exists today; see what_the_run_shows.
    shown = what_the_run_shows(stack, created["id"])
    assert "ticket-tagging" in shown["name"] and "2026-08-01" in shown["name"]
    assert "30 rows" in shown["message"] and "$" in shown["message"]
    for batch_id in record["batch_ids"]:  # each batch id is in the run's logs
        assert any(batch_id in line for line in shown["logs"]), shown["logs"]
    assert any(key.startswith("ticket-tagging") and "cost" in key for key in shown["keys"])


def test_a_flow_run_killed_mid_await_is_rerun_and_pays_once(stack: Stack, tmp_path):
    timing = stack.emulator("timing")
    ok(httpx.patch(f"{stack.emulator_url}/_emulator/timing", json={"batch_seconds": 8},
                   trust_env=False))
    try:
        before = stack.emulator("health")["openai_batches_created"]
        input_url = tickets(tmp_path, 40)
        values = dict(task="ticket-tagging", start="2026-08-01", end="2026-08-02",
                      input_url=input_url)
        first = ok(submit(stack, "backfill", **values))
        # Wait until the ledger holds its batch (submitted: the flow now awaits it, for
        # 8 s), then kill the flow run's processes.
        deadline = time.monotonic() + 60
        while not in_flight_batches(stack, "2026-08-01", "2026-08-02"):
            assert time.monotonic() < deadline, flow_run(stack, first["id"])
            time.sleep(0.2)
        assert flow_run(stack, first["id"])["state_type"] == "RUNNING"
        pid = int(flow_run(stack, first["id"])["infrastructure_pid"].rsplit(":", 1)[-1])
        victims = family((pid, start_time(pid)))
        assert len(victims) >= 1
        os.killpg(pid, signal.SIGKILL)  # the flow-run process and its group, as kill -9
        deadline = time.monotonic() + 10
        while any(is_alive(v) for v in victims):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        crashed = wait_final(stack, first["id"], timeout=60)
        assert crashed["state_type"] != "COMPLETED"
        in_flight = ledger_run(stack, "ticket-tagging", "2026-08-01", "2026-08-02")
        assert in_flight["batch_ids"]  # recorded before the kill
        # Rerun through the deployment: it reattaches to the batch, pays nothing twice.
        second = ok(submit(stack, "backfill", **values))
        rerun = wait_final(stack, second["id"])
        assert rerun["state_type"] == "COMPLETED", rerun["state"]
        # TIGHTEN LATER: the rerun's logs say it reattached to the killed run's batch.
        shown = what_the_run_shows(stack, second["id"])
        assert any(batch_id in line for line in shown["logs"]
                   for batch_id in in_flight["batch_ids"])
    finally:
        ok(httpx.patch(f"{stack.emulator_url}/_emulator/timing", json=timing,
                       trust_env=False))
    record = ledger_run(stack, "ticket-tagging", "2026-08-01", "2026-08-02")
    assert record["batch_ids"] == in_flight["batch_ids"]  # no second batch created
    assert stack.emulator("health")["openai_batches_created"] - before == \
        len(record["batch_ids"])
    rows = [item["row_number"] for item in record["items"]]
    assert len(rows) == 40 and len(set(rows)) == 40  # every row once
    total, records = billed(stack, record["batch_ids"])
    assert len({r["custom_id"] for r in records}) == len(records)  # nothing billed twice
    assert ledger_cost(record["items"]) == total


def test_an_end_before_start_backfill_is_refused_or_fails_saying_why(stack: Stack):
    response = submit(stack, "backfill", task="ticket-tagging", start="2026-08-05",
                      end="2026-08-01", input_url="data/tickets.parquet")
    if 400 <= response.status_code < 500:
        return  # refused at submit by the parameter schema
    run = wait_final(stack, ok(response)["id"])
    assert run["state_type"] in {"FAILED", "CRASHED"}, run["state"]
    message = run["state"]["message"] or ""
    print(f"\nend before start: {run['state_type']}, {message!r}")
    assert "2026-08-05" in message and "2026-08-01" in message, message
    with stack.ledger().connect() as conn:  # nothing was planned for it
        assert not conn.execute(sa.text("SELECT id FROM runs WHERE window_start = "
                                        "'2026-08-05'")).all()


def test_lanewise_run_uses_the_stacks_server_and_emulator(stack: Stack, tmp_path):
    env = dict(stack.env)
    env["PREFECT_HOME"] = str(tmp_path / "user-prefect-home")  # no profile naming an API
    input_url = tickets(tmp_path, 30)
    done = run_cli(["run", "ticket-summary", "--input", input_url, "--date", "2026-08-01"],
                   env, timeout=180)
    assert "lanewise up" in done.stderr  # it says which server it uses
    assert not (stack.home / "prefect-temp").exists()  # no temporary server was started
    # The flow run is on the stack's server, and finished there.
    runs = ok(stack.api.post("/flow_runs/filter", json={
        "flows": {"name": {"any_": ["nightly-batch"]}},
        "flow_runs": {"deployment_id": {"is_null_": True}}}))
    assert [run["state_type"] for run in runs] == ["COMPLETED"], runs
    # Its batches went to the stack's emulator (the one the deployments use).
    record = ledger_run(stack, "ticket-summary", "2026-08-01", "2026-08-01")
    total, _ = billed(stack, record["batch_ids"])
    assert record["batch_ids"] and total == ledger_cost(record["items"]) > 0


def test_down_stops_exactly_what_up_started(stack: Stack, tmp_path):
    # A flow run in flight: its processes (the worker's children, in a session of their
    # own) must go with the worker.
    ok(httpx.patch(f"{stack.emulator_url}/_emulator/timing", json={"batch_seconds": 60},
                   trust_env=False))
    # Tickets the earlier tests did not answer: the result cache would answer theirs,
    # and nothing would be in flight.
    from lanewise.sampledata import write

    write(30, tmp_path / "unanswered.parquet", seed=12, clean=False)
    ok(submit(stack, "backfill", task="ticket-tagging", start="2026-07-31",
              end="2026-08-01", input_url=str(tmp_path / "unanswered.parquet")))
    deadline = time.monotonic() + 60
    while not in_flight_batches(stack, "2026-07-31", "2026-08-01"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    state = json.loads(run_cli(["status", "--json"], stack.env).stdout)
    started = []
    for record in state["processes"].values():
        started += family((record["pid"], record["started"]))
    worker = state["processes"]["worker:lanewise"]
    flow_run_processes = [identity for identity in family((worker["pid"], worker["started"]))
                          if os.getsid(identity[0]) != worker["pid"]]
    assert flow_run_processes  # in sessions of their own, outside the worker's group
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        began = time.monotonic()
        done = run_cli(["down"], stack.env, timeout=120)
        print(f"\nlanewise down ({time.monotonic() - began:.1f} s):\n{done.stdout}")
        assert done.stdout.count("stopped") == len(state["processes"]), done.stdout
        assert not [identity for identity in started if is_alive(identity)]
        assert bystander.poll() is None  # nothing else was killed
        assert run_cli(["status"], stack.env, check=False).returncode == 1
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{state['api_url']}/health", trust_env=False, timeout=2)
        again = run_cli(["down"], stack.env)
        assert "nothing to stop" in again.stdout
    finally:
        bystander.kill()
        bystander.wait()
