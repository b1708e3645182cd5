"""Helpers for tests of the running stack (`lanewise up`): the CLI in a fresh process,
and what the Prefect UI shows of a flow run, read through the REST API as the UI reads
it (name, state and message, logs, artifacts), the ledger by SQL and the emulator's
bill. Used by tests/test_operations_e2e.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from lanewise.sampledata import write

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess:
    """`lanewise ARGS` in a fresh process, as a user types it (wide output)."""
    done = subprocess.run([sys.executable, "-m", "lanewise", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"lanewise {args}: {done.stdout}\n{done.stderr}"
    return done


@dataclass
class Stack:
    """The stack under test: its home, environment, state and REST client."""

    home: Path
    env: dict[str, str]
    state: dict[str, Any]
    api: httpx.Client
    cold_up_seconds: float
    _ledger: sa.Engine | None = None

    @property
    def emulator_url(self) -> str:
        """The emulator every flow run of the stack uses."""
        return self.state["emulator_url"]

    def deployment(self, name: str) -> dict[str, Any]:
        """A deployment by its name (prefect.yaml's `name`)."""
        found = ok(self.api.post("/deployments/filter", json={
            "deployments": {"name": {"any_": [name]}}}))
        assert len(found) == 1, f"deployment {name!r}: {found}"
        return found[0]

    def ledger(self) -> sa.Engine:
        """The ledger the flow runs write (this home's SQLite file), read by SQL."""
        if self._ledger is None:
            self._ledger = sa.create_engine(f"sqlite:///{self.home / 'ledger.sqlite3'}",
                                            poolclass=sa.pool.NullPool)
        return self._ledger

    def emulator(self, path: str, **params: Any) -> Any:
        """GET the emulator's control API (`/_emulator/<path>`)."""
        return ok(httpx.get(f"{self.emulator_url}/_emulator/{path}", params=params,
                            trust_env=False, timeout=10))


class RetryingClient(httpx.Client):
    """A client that retries a 503, as Prefect's own client and UI do: the server
    answers 503 while its SQLite database is locked by another writer."""

    def request(self, *args: Any, **kwargs: Any) -> httpx.Response:
        """The request, sent again after a 503 (up to six times)."""
        for attempt in range(6):
            response = super().request(*args, **kwargs)
            if response.status_code != 503:
                break
            time.sleep(0.5 * (attempt + 1))
        return response


def ok(response: httpx.Response) -> Any:
    """The response's JSON, after asserting it is not an error."""
    assert response.status_code < 400, f"{response.request.url}: {response.status_code} " \
                                        f"{response.text[:500]}"
    return response.json() if response.content else None


def start_stack(home: Path, **env: str) -> Stack:
    """`lanewise up` on free ports in `home`, as a user runs it (PREFECT_* and
    LANEWISE_* of this process left out); the stack and how long `up` took."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("PREFECT_", "LANEWISE_"))}
    environment.update({"LANEWISE_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "COLUMNS": "200", **env})
    began = time.monotonic()
    run_cli(["up", "--port", "0", "--emulator-port", "0"], environment, timeout=300)
    cold = time.monotonic() - began
    state = json.loads(run_cli(["status", "--json"], environment).stdout)
    api = RetryingClient(base_url=state["api_url"], trust_env=False, timeout=30)
    return Stack(home, environment, state, api, cold)



@contextmanager
def running_stack(home: Path) -> Iterator[Stack]:
    """`lanewise up` on free ports in `home`, quick to pick up and poll runs; `lanewise
    down` at the end unless a test has done it."""
    stack = start_stack(home, **{
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # the worker picks a run up within a second
        "LANEWISE_POLL_INITIAL_SECONDS": "0.1", "LANEWISE_POLL_MAX_SECONDS": "0.5"})
    try:
        yield stack
    finally:
        stack.api.close()
        if (home / "stack" / "stack.json").exists():
            run_cli(["down"], stack.env, timeout=120, check=False)

def flow_run(stack: Stack, run_id: str) -> dict[str, Any]:
    """The flow run (name, state type and message, infrastructure pid ...)."""
    return ok(stack.api.get(f"/flow_runs/{run_id}"))


def flow_run_logs(stack: Stack, run_id: str) -> list[str]:
    """The flow run's log messages, oldest first."""
    logs = ok(stack.api.post("/logs/filter", json={
        "logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}))
    return [entry["message"] for entry in logs]


def flow_run_artifacts(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    """The artifacts the flow run published (key, type, data)."""
    return ok(stack.api.post("/artifacts/filter", json={
        "artifacts": {"flow_run_id": {"any_": [run_id]}}}))


def wait_final(stack: Stack, run_id: str, timeout: float = 120) -> dict[str, Any]:
    """Wait until the flow run is in a final state; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        run = flow_run(stack, run_id)
        if run["state_type"] in TERMINAL:
            return run
        assert time.monotonic() < deadline, f"flow run still {run['state_type']}: {run}"
        time.sleep(0.5)


def parameters_for(deployment: dict[str, Any], **values: Any) -> dict[str, Any]:
    """`values` placed as the deployment's parameter schema wants them: as top-level
    parameters, or inside the one object parameter (e.g. `params`) that holds them."""
    properties = deployment["parameter_openapi_schema"].get("properties", {})
    if set(values) <= set(properties):
        return values
    nested = [name for name, prop in properties.items()
              if "$ref" in prop or "allOf" in prop or prop.get("type") == "object"]
    assert len(nested) == 1, f"where do {sorted(values)} go in {properties}?"
    return {nested[0]: values}


def submit(stack: Stack, deployment: str, **values: Any) -> httpx.Response:
    """A custom run of a deployment, as the UI's form submits it."""
    found = stack.deployment(deployment)
    return stack.api.post(f"/deployments/{found['id']}/create_flow_run", json={
        "parameters": parameters_for(found, **values), "state": {"type": "SCHEDULED"},
        "job_variables": {}})


def ledger_run(stack: Stack, task: str, start: str, end: str) -> dict[str, Any]:
    """The ledger's run of a backfill: its row, items and provider batch ids."""
    with stack.ledger().connect() as conn:
        runs = conn.execute(sa.text(
            "SELECT * FROM runs WHERE task = :task AND window_start = :start AND "
            "window_end = :end"), {"task": task, "start": start, "end": end}).mappings().all()
        assert len(runs) == 1, runs
        run = dict(runs[0])
        items = conn.execute(sa.text(
            "SELECT row_number, status, cost_picodollars FROM items WHERE run_id = :id"),
            {"id": run["id"]}).mappings().all()
        batches = conn.execute(sa.text(
            "SELECT provider_batch_id FROM shards WHERE run_id = :id AND "
            "provider_batch_id IS NOT NULL"), {"id": run["id"]}).scalars().all()
    return {"run": run, "items": [dict(i) for i in items], "batch_ids": sorted(batches)}


def billed(stack: Stack, batch_ids: list[str]) -> tuple[Decimal, list[dict[str, Any]]]:
    """What the emulator billed for these batches: the total and the records."""
    total, records = Decimal(0), []
    for batch_id in batch_ids:
        total += Decimal(stack.emulator("billing", batch_id=batch_id)["total"]["cost_usd"])
        raw = httpx.get(f"{stack.emulator_url}/_emulator/billing/records",
                        params={"batch_id": batch_id}, trust_env=False, timeout=10).text
        records += [json.loads(line) for line in raw.splitlines() if line.strip()]
    return total, records


def ledger_cost(items: list[dict[str, Any]]) -> Decimal:
    """What the ledger says these items cost, in USD."""
    from lanewise.pricing import from_picodollars

    return from_picodollars(sum(item["cost_picodollars"] for item in items))


def tickets(tmp_path: Path, rows: int) -> str:
    """A ticket file (dated from 2026-08-01, 7 minutes apart, bad rows at the end)."""
    path = tmp_path / f"tickets-{rows}.parquet"
    write(rows, path, seed=11, clean=False)
    return str(path)


def what_the_run_shows(stack: Stack, run_id: str) -> dict[str, Any]:
    """A flow run as the UI shows it: name, state message, log lines, artifact keys."""
    run = flow_run(stack, run_id)
    message = run["state"].get("message") or ""
    # A run's logs reach the API in batches, after its final state at times: wait for
    # its last line (the outcome, which lanewise logs as the state message) to arrive.
    deadline = time.monotonic() + 20
    logs = flow_run_logs(stack, run_id)
    while message and message not in logs and time.monotonic() < deadline:
        time.sleep(0.5)
        logs = flow_run_logs(stack, run_id)
    shown = {"name": run["name"], "message": message, "logs": logs,
             "keys": sorted(a["key"] for a in flow_run_artifacts(stack, run_id) if a["key"])}
    print(f"\nflow run {shown['name']!r}: {run['state_type']}, {shown['message']!r}, "
          f"artifacts {shown['keys']}, logs:\n  " + "\n  ".join(shown["logs"]))
    return shown


def in_flight_batches(stack: Stack, start: str, end: str) -> list[str]:
    """Provider batch ids the ledger holds for a backfill's run (none before it exists)."""
    with stack.ledger().connect() as conn:
        if not sa.inspect(conn).has_table("shards"):
            return []
        return list(conn.execute(sa.text(
            "SELECT provider_batch_id FROM shards JOIN runs ON runs.id = shards.run_id "
            "WHERE runs.window_start = :start AND runs.window_end = :end AND "
            "provider_batch_id IS NOT NULL"), {"start": start, "end": end}).scalars())
