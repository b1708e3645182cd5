"""Kill `lanewise run` with SIGKILL at seeded random moments, rerun it until it is done,
and check the batch lane's promises against the emulator's own billing.

Used by tests/test_chaos.py (CI-sized) and bench/chaos.py (full-sized). Everything is a
real process: the emulator (`lanewise emulator`), each `lanewise run`, the ledger
(SQLite file or PostgreSQL database); Prefect is a server given by its API URL.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import httpx
import pandas as pd
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("planning", "submitting", "awaiting", "collecting")
TERMINAL = {"succeeded", "invalid_output", "failed", "rejected"}


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lanewise_command() -> list[str]:
    """How to start the `lanewise` command with this interpreter."""
    return [sys.executable, "-m", "lanewise"]


@contextmanager
def emulator_process(state_dir: Path, *extra: str) -> Iterator[str]:
    """`lanewise emulator` in its own process; yields its URL."""
    port = free_port()
    log = open(state_dir.parent / f"emulator-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [*lanewise_command(), "emulator", "--port", str(port), "--state-dir", str(state_dir),
         *extra], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/_emulator/health", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the emulator did not start; see {log.name}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of `server_url`; dropped after."""
    name = f"lanewise_chaos_{os.getpid()}_{random.randrange(1 << 30)}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(server_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class ChaosReport:
    """What a chaos run did and what it found."""

    task: str
    ledger: str
    rows: int
    kills: int
    kills_by_phase: Counter = field(default_factory=Counter)
    runs: int = 0
    exit_codes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    shards: int = 0
    batches_created: int = 0
    distinct_batch_ids: int = 0
    rows_in_results: int = 0
    rows_in_ledger: int = 0
    ledger_cost: Decimal = Decimal(0)
    billed_cost: Decimal = Decimal(0)
    billed_requests: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every promise held."""
        return not self.problems

    def line(self) -> str:
        """One printable line of figures."""
        shown = (*PHASES, *(p for p in ("sent_while_planning", "in_flight", "time")
                            if p in self.kills_by_phase))
        phases = ", ".join(f"{p} {self.kills_by_phase.get(p, 0)}" for p in shown)
        return (f"{self.task} on {self.ledger}: {self.rows:,} rows, {self.kills} kills "
                f"({phases}), {self.runs} runs in {self.seconds:.0f} s; {self.shards} shards, "
                f"{self.batches_created} batches created; results {self.rows_in_results:,} "
                f"rows; ledger ${self.ledger_cost} vs billed ${self.billed_cost}; "
                f"{'OK' if self.ok else 'BROKEN: ' + '; '.join(self.problems)}")


class LedgerProbe:
    """Reads the ledger of the run under test to see which phase it is in."""

    def __init__(self, url: str, run_key: str) -> None:
        self.engine = sa.create_engine(url)
        self.run_key = run_key

    def phase_counts(self) -> dict[str, int]:
        """Counts that tell the phases apart (0 when the ledger is not there yet)."""
        query = sa.text(
            "SELECT r.status AS run_status,"
            " (SELECT COUNT(*) FROM items i WHERE i.run_id = r.id) AS items,"
            " (SELECT COUNT(*) FROM shards s WHERE s.run_id = r.id"
            "   AND s.status IN ('submitting')) AS submitting,"
            " (SELECT COUNT(*) FROM shards s WHERE s.run_id = r.id"
            "   AND s.status IN ('planned', 'submitting')) AS planned_or_submitting,"
            " (SELECT COUNT(*) FROM shards s WHERE s.run_id = r.id"
            "   AND s.provider_batch_id IS NOT NULL) AS with_batch,"
            " (SELECT COUNT(*) FROM shards s WHERE s.run_id = r.id"
            "   AND s.status = 'submitted') AS submitted,"
            " (SELECT COUNT(*) FROM shards s WHERE s.run_id = r.id"
            "   AND s.status IN ('ended', 'failed')) AS ended,"
            " (SELECT COUNT(*) FROM items i WHERE i.run_id = r.id AND i.status IN"
            "   ('succeeded', 'failed', 'invalid_output', 'retry')) AS settled"
            " FROM runs r WHERE r.run_key = :key")
        try:
            with self.engine.connect() as conn:
                row = conn.execute(query, {"key": self.run_key}).mappings().first()
        except sa.exc.SQLAlchemyError:
            return {}
        return dict(row) if row else {}

    def lease_holder(self) -> str | None:
        """Who holds the run key's lease now, if anyone."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(sa.text("SELECT holder FROM run_leases WHERE run_key = :k"),
                                    {"k": self.run_key}).scalar()
        except sa.exc.SQLAlchemyError:
            return None

    def close(self) -> None:
        """Release the probe's connections."""
        self.engine.dispose()


def _in_phase(phase: str, now: dict[str, int], start: dict[str, int]) -> bool:
    if not now:
        return False
    if phase == "planning":
        return now["run_status"] == "planning" and now["items"] > 0
    if phase == "sent_while_planning":  # a task with no budget sends as it plans
        return now["run_status"] == "planning" and now["with_batch"] > 0
    if phase == "submitting":
        return now["submitting"] > 0 or now["with_batch"] > start.get("with_batch", 0)
    if phase == "awaiting":
        return now["submitted"] > 0
    if phase == "in_flight":  # several batches of the run at the provider at once
        return now["submitted"] >= 2
    return now["ended"] > 0 or now["settled"] > start.get("settled", 0)


def _still_possible(phase: str, now: dict[str, int]) -> str:
    """The phase to aim at: `phase` while the run can still reach it, else a random
    moment (a run is planned once; shards are all submitted early when no token budget
    holds them back), so every planned kill lands somewhere in the remaining work."""
    if not now:
        return phase
    if phase in ("planning", "sent_while_planning") and now["run_status"] != "planning":
        return "time"
    if phase == "submitting" and now["planned_or_submitting"] == 0:
        return "time"
    return phase


def _wait_and_kill(process: subprocess.Popen, probe: LedgerProbe, phase: str,
                   rng: random.Random, timeout: float) -> str | None:
    """Kill the process once the ledger shows `phase` (after a random extra delay up to
    a quarter second), or at a random moment when `phase` is "time" (or becomes
    impossible while waiting: the run left planning); the phase it was killed in, or
    None when the process ended first."""
    start = probe.phase_counts()
    deadline = time.monotonic() + timeout
    if phase != "time":
        while not _in_phase(phase, now := probe.phase_counts(), start):
            if process.poll() is not None or time.monotonic() > deadline:
                return None
            if _still_possible(phase, now) == "time":
                phase = "time"
                break
            time.sleep(0.02)
        else:
            # Planning goes on for well under a second after its first batch at bench
            # sizes.
            time.sleep(rng.uniform(0.0, 0.05 if phase == "sent_while_planning" else 0.25))
    if phase == "time":
        # A moment drawn at random once the process drives the run (holds its lease),
        # so it lands anywhere in the work rather than in the imports.
        while probe.lease_holder() is None:
            if process.poll() is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        moment = time.monotonic() + rng.uniform(0.0, 3.0)
        while time.monotonic() < moment:
            if process.poll() is not None:
                return None
            time.sleep(0.02)
    if process.poll() is not None:
        return None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return phase


def kill_plan(kills: int, rng: random.Random) -> list[str]:
    """Which moment each kill aims at: every phase in turn, with every third kill at a
    purely random time instead; the planning kills first, since a run is planned only
    until its first planning finishes."""
    plan = ["time" if i % 3 == 2 else PHASES[(i - i // 3) % len(PHASES)] for i in range(kills)]
    rest = [p for p in plan if p != "planning"]
    rng.shuffle(rest)
    planning = [p for p in plan if p == "planning"]
    # The second planning kill aims after a batch was created while the run still plans
    # (a task with no budget): its rerun must keep that batch and plan around it.
    planning[1:2] = ["sent_while_planning"] * len(planning[1:2])
    return planning + rest


def run_chaos(*, task: str, rows: int, kills: int, seed: int, workdir: Path,
              ledger_url: str, emulator_url: str, prefect_api_url: str,
              shard_max_requests: int, run_timeout: float = 600.0,
              plan: list[str] | None = None, extra_env: dict[str, str] | None = None,
              log=print) -> ChaosReport:
    """Kill `lanewise run` `kills` times at seeded random moments, then let it finish,
    and check every promise (see the module docstring)."""
    from lanewise.sampledata import write

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    input_path = workdir / f"tickets-{rows}.parquet"
    if not input_path.exists():
        write(rows, input_path, seed=seed, clean=False)
    run_key = f"{task}:chaos-{seed}"
    env = {**os.environ, "LANEWISE_HOME": str(workdir / "home"),
           "LANEWISE_DATABASE_URL": ledger_url, "LANEWISE_EMULATOR_URL": emulator_url,
           "LANEWISE_POLL_INITIAL_SECONDS": "0.2", "LANEWISE_POLL_MAX_SECONDS": "1",
           "LANEWISE_SHARD_MAX_REQUESTS": str(shard_max_requests),
           "PREFECT_API_URL": prefect_api_url, "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(extra_env or {})}
    command = [*lanewise_command(), "run", task, "--input", str(input_path), "--all-rows",
               "--run-key", run_key]
    report = ChaosReport(task=task, ledger=sa.engine.make_url(ledger_url).get_backend_name(),
                         rows=rows, kills=0)
    probe = LedgerProbe(ledger_url, run_key)
    plan = plan or kill_plan(kills, rng)
    started = time.monotonic()
    logs = workdir / "runs.log"
    try:
        with logs.open("ab") as log_file:
            for phase in plan:
                phase = _still_possible(phase, probe.phase_counts())
                process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log_file,
                                           stderr=subprocess.STDOUT)
                report.runs += 1
                killed_in = _wait_and_kill(process, probe, phase, rng, run_timeout)
                if killed_in is not None:
                    report.kills += 1
                    report.kills_by_phase[killed_in] += 1
                    log(f"  killed run {report.runs} while {killed_in}")
                else:
                    report.exit_codes.append(process.returncode)
                    log(f"  run {report.runs} ended with {process.returncode} before a "
                        f"{phase} kill")
            for _ in range(3):  # the unkilled reruns must finish the run
                process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log_file,
                                           stderr=subprocess.STDOUT)
                report.runs += 1
                try:
                    code = process.wait(timeout=run_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    code = -9
                    report.problems.append(f"a rerun hung for {run_timeout:.0f} s")
                report.exit_codes.append(code)
                if code == 0:
                    break
                report.problems.append(f"rerun {report.runs} exited {code} (see {logs})")
    finally:
        probe.close()
    report.seconds = time.monotonic() - started
    _check(report, ledger_url, emulator_url, run_key, rows)
    return report


def _check(report: ChaosReport, ledger_url: str, emulator_url: str, run_key: str,
           rows: int) -> None:
    """Compare the ledger, the results file and the emulator's billing."""
    from lanewise.batch.results import summarize
    from lanewise.ledger import Ledger
    from lanewise.storage import Storage

    ledger = Ledger(ledger_url)
    run = ledger.run_by_key(run_key)
    health = httpx.get(f"{emulator_url}/_emulator/health").json()
    report.batches_created = health["openai_batches_created"] + \
        health["anthropic_batches_created"]
    billed = httpx.get(f"{emulator_url}/_emulator/billing").json()["total"]
    report.billed_cost = Decimal(billed["cost_usd"])
    report.billed_requests = billed["requests"]
    if run is None:
        report.problems.append("the run is not in the ledger")
        return
    summary = summarize(ledger, run["id"])
    shards = ledger.shards(run["id"])
    report.shards = len(shards)
    batch_ids = [s["provider_batch_id"] for s in shards if s["provider_batch_id"]]
    report.distinct_batch_ids = len(set(batch_ids))
    report.ledger_cost = summary.cost_usd
    item_rows = Counter(i["row_number"] for i in ledger.iter_items(
        run["id"], columns=("row_number", "status")))
    report.rows_in_ledger = sum(item_rows.values())
    if report.batches_created != len(batch_ids) or len(set(batch_ids)) != len(batch_ids):
        report.problems.append(f"{report.batches_created} batches created at the provider "
                               f"for {len(batch_ids)} shards with a batch")
    if len(batch_ids) != len(shards):
        report.problems.append(f"{len(shards) - len(batch_ids)} shards never submitted")
    if sorted(item_rows) != list(range(1, rows + 1)) or max(item_rows.values()) != 1:
        report.problems.append("the ledger's items are not every input row exactly once")
    unfinished = ledger.unfinished_items(run["id"])
    if unfinished:
        report.problems.append(f"{unfinished} items not terminal")
    if run["status"] != "finished" or not run["results_url"]:
        report.problems.append(f"the run is {run['status']}, not finished")
    else:
        storage = Storage(str(Path(run["results_url"]).parent))
        with storage.open(run["results_url"], "rb") as handle:
            results = pd.read_parquet(handle, columns=["row_number", "status"])
        report.rows_in_results = len(results)
        if sorted(results["row_number"]) != list(range(1, rows + 1)):
            report.problems.append("the results file is not every input row exactly once")
        if not set(results["status"]) <= TERMINAL:
            report.problems.append("the results file has non-terminal rows")
    if report.ledger_cost != report.billed_cost:
        report.problems.append(f"ledger ${report.ledger_cost} != billed ${report.billed_cost}")
    if report.ledger_cost <= 0:
        report.problems.append("nothing was billed")
    ledger.engine.dispose()
