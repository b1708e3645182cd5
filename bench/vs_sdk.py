"""lanewise against the plain OpenAI SDK (bench/plain_sdk.py) on the same work; prints
wall time and peak memory of both, and their ratios.

    python bench/vs_sdk.py [--sizes 20000,100000] [--rounds 2] [--passes 1,2,3]
                           [--no-with-server] [--workdir DIR]

One emulator process for the whole invocation (zero delay: no validating, running or
finalizing time; its enqueued-token limit set per pass through this script's own
control channel, as the `lanewise emulator` command cannot set limits). For each pass
and size, rounds interleaved (ABBA: plain, lanewise, lanewise, plain, ...), each tool a
real subprocess over the same clean tickets (`lanewise.sampledata`, seed 1):

- plain: `python bench/plain_sdk.py --input F --out R --base-url EMU/v1 ...`;
- lanewise: `lanewise run ticket-tagging --input F --all-rows --run-key K`, with a fresh
  ledger and storage root per run (`LANEWISE_DATABASE_URL`, `LANEWISE_STORAGE_ROOT`: no
  result-cache hits) under one `LANEWISE_HOME` per invocation (where lanewise keeps its
  temporary Prefect server's database, migrated once, as on a user's machine),
  `LANEWISE_EMULATOR_URL` pointing at the bench's emulator (no background emulator, no
  API key), and `LANEWISE_CATALOG_PATH` at a copy of the project's catalog with every
  task's result cache off and budget removed (bench/bench_catalog.py says why).

Passes:

1. the emulator's limit = lanewise's default budget (`openai_enqueued_token_budget`,
   2,000,000); lanewise at its defaults, plain given `--enqueued-token-limit` = it.
2. a limit large enough for the plain script's natural 50,000-request batches all in
   flight at once (computed from the largest input); emulator, lanewise
   (`LANEWISE_OPENAI_ENQUEUED_TOKEN_BUDGET`) and plain all given it.
3. (`--with-server`, on by default) pass 1 with a Prefect server already running
   (`PREFECT_API_URL` given to lanewise): lanewise without its temporary server.

Measured per run: wall time (spawn to exit), the main process's peak RSS (VmHWM) and
the whole process tree's peak RSS (the sum of VmRSS over the tree, sampled from /proc
every 50 ms, a child forked but not yet exec'd left out as it shares its parent's
pages; lanewise's tree includes its temporary Prefect server, never the emulator nor
pass 3's server). The emulator's batch count and bill are read around each run.
Logs, and every figure as JSON (results.json), are kept in WORKDIR/logs.

Checked per run (failing loudly): exit code 0, every input row once in the tool's
results file and succeeded, and the emulator billed exactly one request per row (the
same work for both tools). Before any run, plain_sdk's request bodies and token
estimates are checked equal to lanewise's for the first rows. Each pass starts with an
untimed warm-up run of both tools (`--warmup-rows`: Prefect's database migrated, the
page cache warm). lanewise keeps one ledger per pass, as a deployment does across
nights, so the warm-up is the night before the timed runs.

Targets (printed, not asserted): lanewise/plain time <= 1.3x at 100,000 rows, <= 1.5x
at 20,000; peak RSS <= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from bench_catalog import write_budget_free_catalog  # noqa: E402 - after the path is set

TASK = "ticket-tagging"
SAMPLE_SECONDS = 0.05
RUN_TIMEOUT = 3600
CHECK_ROWS = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tickets(rows: int, workdir: Path) -> Path:
    """A clean ticket file of `rows` rows (made once per work dir)."""
    from lanewise.sampledata import write

    path = workdir / "inputs" / f"tickets-{rows}.parquet"
    if not path.exists():
        partial = path.with_suffix(".partial")
        write(rows, partial, seed=1, clean=True)
        partial.rename(path)
    return path


# --- fairness: the plain script sends what lanewise sends -------------------------------

def check_same_requests(input_path: Path) -> None:
    """plain_sdk's bodies and token estimates equal lanewise's for the first rows."""
    import itertools

    import plain_sdk

    from lanewise.catalog import load_catalog
    from lanewise.inputs import read_rows
    from lanewise.providers.openai_adapter import OpenAIAdapter
    from lanewise.requests import prepare

    task = load_catalog().get(TASK)
    adapter = OpenAIAdapter(client=None)
    for row in itertools.islice(read_rows(str(input_path)), CHECK_ROWS):
        request = prepare(task, row)
        ours = adapter.request_body(task, request)
        plain = plain_sdk.request_body(row.values["subject"], row.values["body"])
        if json.dumps(ours, sort_keys=True) != json.dumps(plain, sort_keys=True):
            raise SystemExit(f"row {row.number}: plain_sdk's body differs from lanewise's:\n"
                             f"  lanewise: {ours}\n  plain:    {plain}")
        if plain_sdk.estimated_tokens(plain) != request.estimated_tokens:
            raise SystemExit(f"row {row.number}: plain_sdk estimates "
                             f"{plain_sdk.estimated_tokens(plain)} tokens, lanewise "
                             f"{request.estimated_tokens}")


def input_tokens(input_path: Path) -> tuple[int, int]:
    """(total, largest row's) estimated input tokens of a tickets file."""
    import plain_sdk

    total = largest = 0
    for batch in pq.ParquetFile(input_path).iter_batches(columns=["subject", "body"]):
        for subject, body in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            tokens = plain_sdk.estimated_tokens(plain_sdk.request_body(subject, body))
            total += tokens
            largest = max(largest, tokens)
    return total, largest


# --- the emulator: one child process, its limit settable through stdin -------------------

def emulator_child(state_dir: Path) -> None:
    """Serve an emulator at zero delay; stdin lines {"openai_enqueued_tokens": N} set its
    limit (answered on stdout); it stops when stdin closes."""
    from lanewise.emulator import running_emulator
    from lanewise.emulator.config import EmulatorConfig, Timing

    # Zero delay; the compressed 24 h window made long enough never to expire a batch.
    timing = Timing(batch_seconds=0, validating_seconds=0, finalizing_seconds=0,
                    expiry_seconds=86_400)
    with running_emulator(EmulatorConfig(timing=timing), state_dir=state_dir) as emu:
        print(json.dumps({"url": emu.url}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            limits = emu.state.config.limits
            with emu.state.lock:
                limits.openai_enqueued_tokens = int(command["openai_enqueued_tokens"])
            print(json.dumps({"openai_enqueued_tokens": limits.openai_enqueued_tokens}),
                  flush=True)


class Emulator:
    """The bench's emulator process."""

    def __init__(self, workdir: Path) -> None:
        self.log = (workdir / "logs" / "emulator.log").open("ab")
        self.state_dir = state_dir = workdir / "emulator"
        shutil.rmtree(state_dir, ignore_errors=True)
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--emulator-child", str(state_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=clean_env(), cwd=ROOT)
        self.url = json.loads(self._answer())["url"]

    def _answer(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the emulator stopped; see {self.log.name}")
        return line

    def set_limit(self, tokens: int) -> None:
        self.process.stdin.write(json.dumps({"openai_enqueued_tokens": tokens}) + "\n")
        self.process.stdin.flush()
        if json.loads(self._answer())["openai_enqueued_tokens"] != tokens:
            raise SystemExit("the emulator did not take its new limit")

    def counters(self) -> dict[str, Any]:
        """Billing totals, plus `batches`: batches created so far (refused ones too)."""
        billed = httpx.get(f"{self.url}/_emulator/billing", timeout=30).json()["total"]
        health = httpx.get(f"{self.url}/_emulator/health", timeout=30).json()
        return {**billed, "batches": health["batches"]}

    def close(self, keep_state: bool) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        if not keep_state:  # every file both tools sent and got: gigabytes
            shutil.rmtree(self.state_dir, ignore_errors=True)


# --- a Prefect server already running (pass 3) ------------------------------------------

class PrefectServer:
    """`prefect server start` on a free port with its own PREFECT_HOME, UI off."""

    def __init__(self, workdir: Path) -> None:
        self.home = home = Path(tempfile.mkdtemp(prefix="prefect-home-", dir=workdir))
        port = free_port()
        env = {**clean_env(), "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "0"}
        env.pop("PREFECT_API_URL", None)
        self.log = (workdir / "logs" / "prefect-server.log").open("ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "server", "start",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        self.api_url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"the Prefect server did not start; see {self.log.name}")
            time.sleep(0.3)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


# --- measuring one process tree -------------------------------------------------------

def _status_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB; (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                kids.extend(int(k) for k in handle.read().split())
    except (OSError, ValueError):
        pass
    return kids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _tree(root: int) -> list[tuple[int, str]]:
    """The root and its descendants, leaving out a child forked but not yet exec'd (the
    same command line as its parent): its pages are its parent's, shared copy-on-write,
    and counting them would double the parent for that instant (e.g. the `uname -p`
    that `platform.processor()` runs)."""
    pids, todo = [], [(root, None)]
    while todo:
        pid, parent_cmdline = todo.pop()
        cmdline = _cmdline(pid)
        if parent_cmdline is not None and cmdline == parent_cmdline:
            continue
        pids.append((pid, cmdline))
        todo.extend((child, cmdline) for child in _children(pid))
    return pids


@dataclass
class Measure:
    seconds: float
    main_mb: float
    tree_mb: float
    returncode: int
    processes: int
    children: list[str]


def measure(command: list[str], env: dict[str, str], log_path: Path) -> Measure:
    """Run `command` to its end; wall time and peak RSS of it and of its process tree."""
    peak: dict[str, Any] = {"main_kb": 0, "tree_kb": 0, "pids": {}}
    stop = threading.Event()
    with log_path.open("wb") as log:
        now = time.time()
        log.write(f"# {time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d}"
                  f" started: {' '.join(command)}\n".encode())
        log.flush()
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)

        def sample() -> None:
            while True:
                tree = _tree(process.pid)
                for pid, cmdline in tree[1:]:
                    peak["pids"][pid] = cmdline[:160] or peak["pids"].get(pid, "")
                sizes = [_status_kb(pid) for pid, _ in tree]
                peak["main_kb"] = max(peak["main_kb"], sizes[0][1], sizes[0][0])
                # The main process's high-water mark bounds the tree's from below.
                peak["tree_kb"] = max(peak["tree_kb"], peak["main_kb"],
                                      sum(rss for rss, _ in sizes))
                if stop.wait(SAMPLE_SECONDS):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            process.wait(timeout=RUN_TIMEOUT)
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        finally:
            seconds = time.perf_counter() - started
            stop.set()
            sampler.join()
    # The main process's own high-water mark can only be read while it lives: the last
    # sample is at most 50 ms before its exit.
    return Measure(seconds, peak["main_kb"] / 1024, peak["tree_kb"] / 1024,
                   process.returncode, 1 + len(peak["pids"]), sorted(set(peak["pids"].values())))


# --- the two tools ------------------------------------------------------------------

def clean_env() -> dict[str, str]:
    """The environment without any lanewise setting or provider key of the caller."""
    dropped = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "PREFECT_API_URL")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LANEWISE_") and k not in dropped}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


@dataclass
class Pass:
    number: int
    title: str
    limit: int
    lanewise_budget: int | None
    server: bool


@dataclass
class Result:
    pass_number: int
    size: int
    tool: str
    round: int
    measure: Measure
    billed_requests: int
    billed_input_tokens: int
    batches: int


class Bench:
    def __init__(self, workdir: Path, emulator: Emulator, keep_runs: bool) -> None:
        self.workdir = workdir
        self.emulator = emulator
        self.keep_runs = keep_runs
        self.prefect_home = workdir / "prefect-home"  # lanewise's temporary servers' db
        # The same work as plain: no result cache (the sample tickets repeat texts, and
        # the ledger is kept across a pass's runs), and no budget refusing the run.
        # Written afresh: a --workdir kept from an older invocation may hold a stale one.
        self.catalog = write_budget_free_catalog(workdir, result_cache=False)

    def run_dir(self, label: str) -> Path:
        path = self.workdir / "runs" / label
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def plain(self, spec: Pass, input_path: Path, rows: int, label: str) -> Measure:
        run_dir = self.run_dir(label)
        out = run_dir / "results.parquet"
        command = [sys.executable, str(BENCH / "plain_sdk.py"), "--input", str(input_path),
                   "--out", str(out), "--base-url", f"{self.emulator.url}/v1",
                   "--api-key", "sk-lanewise-emulator", "--workdir", str(run_dir / "jsonl"),
                   "--enqueued-token-limit", str(spec.limit)]
        result = measure(command, clean_env(), self.workdir / "logs" / f"{label}.log")
        if result.returncode != 0:
            raise SystemExit(f"{label}: plain_sdk exited {result.returncode}; see "
                             f"{self.workdir / 'logs' / f'{label}.log'}")
        self.check_results(label, out, "ticket_id", rows)
        self.done(run_dir)
        return result

    def lanewise(self, spec: Pass, input_path: Path, rows: int, label: str,
                 prefect_api_url: str | None) -> Measure:
        run_dir = self.run_dir(label)
        home = self.workdir / "lanewise-home"
        storage = run_dir / "storage"
        env = {**clean_env(), "LANEWISE_HOME": str(home),
               "LANEWISE_CATALOG_PATH": str(self.catalog),
               # One ledger per pass, as one deployment keeps across nights: the untimed
               # warm-up run is its "last night" (what lanewise learned from it, such as
               # how long batches take, applies to the timed runs).
               "LANEWISE_DATABASE_URL":
                   f"sqlite:///{self.workdir / f'ledger-pass{spec.number}.sqlite3'}",
               "LANEWISE_STORAGE_ROOT": str(storage),
               "LANEWISE_EMULATOR_URL": self.emulator.url,
               "PREFECT_HOME": str(self.prefect_home),
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
        if spec.lanewise_budget is not None:
            env["LANEWISE_OPENAI_ENQUEUED_TOKEN_BUDGET"] = str(spec.lanewise_budget)
        if prefect_api_url:
            env["PREFECT_API_URL"] = prefect_api_url
        script = Path(sys.executable).parent / "lanewise"
        launcher = [str(script)] if script.exists() else [sys.executable, "-m", "lanewise"]
        command = [*launcher, "run", TASK, "--input", str(input_path), "--all-rows",
                   "--run-key", f"vs-sdk-{label}-{time.time_ns()}"]
        log = self.workdir / "logs" / f"{label}.log"
        result = measure(command, env, log)
        if result.returncode != 0:
            raise SystemExit(f"{label}: lanewise run exited {result.returncode}; see {log}")
        if (home / "emulator").exists():
            raise SystemExit(f"{label}: lanewise started its own emulator in {home}")
        found = sorted(storage.glob("**/results.parquet"))
        if len(found) != 1:
            raise SystemExit(f"{label}: expected one results.parquet under {storage}, "
                             f"found {len(found)}")
        self.check_results(label, found[0], "input_key", rows)
        self.done(run_dir)
        return result

    @staticmethod
    def check_results(label: str, path: Path, key: str, rows: int) -> None:
        """Rows in = rows out: each key once, every one succeeded."""
        table = pq.read_table(path, columns=[key, "status"])
        keys = pc.count_distinct(table[key]).as_py()
        succeeded = pc.sum(pc.equal(table["status"], "succeeded")).as_py() or 0
        if table.num_rows != rows or keys != rows or succeeded != rows:
            raise SystemExit(f"{label}: {rows:,} rows in, {table.num_rows:,} out "
                             f"({keys:,} distinct, {succeeded:,} succeeded) in {path}")

    def done(self, run_dir: Path) -> None:
        if not self.keep_runs:
            shutil.rmtree(run_dir, ignore_errors=True)

    def one(self, spec: Pass, tool: str, input_path: Path, rows: int, round_: int,
            prefect_api_url: str | None, warmup: bool = False) -> Result:
        label = f"pass{spec.number}-{rows}-{tool}-{'warmup' if warmup else f'r{round_}'}"
        before = self.emulator.counters()
        if tool == "plain":
            result = self.plain(spec, input_path, rows, label)
        else:
            result = self.lanewise(spec, input_path, rows, label, prefect_api_url)
        after = self.emulator.counters()
        billed = after["requests"] - before["requests"]
        if billed != rows:
            raise SystemExit(f"{label}: the emulator billed {billed:,} requests for "
                             f"{rows:,} rows")
        return Result(spec.number, rows, tool, round_, result, billed,
                      after["input_tokens"] - before["input_tokens"],
                      after["batches"] - before["batches"])


# --- report ---------------------------------------------------------------------------

def time_target(size: int) -> float:
    return 1.3 if size >= 100_000 else 1.5


RSS_TARGET = 1.5


def print_pass(spec: Pass, results: list[Result]) -> None:
    print()
    print(f"Pass {spec.number}: {spec.title}")
    print()
    print("| size | tool | round | wall s | peak RSS main MB | peak RSS tree MB | processes "
          "| batches created | billed input tokens |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.size:,} | {r.tool} | {r.round} | {r.measure.seconds:.1f} | "
              f"{r.measure.main_mb:.0f} | {r.measure.tree_mb:.0f} | {r.measure.processes} | "
              f"{r.batches} | {r.billed_input_tokens:,} |")
    print()
    print("| size | lanewise s | plain s | time ratio | target | RSS main ratio | "
          "RSS tree ratio | target |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in sorted({r.size for r in results}):
        def median(tool: str, attr: str, size: int = size) -> float:
            return statistics.median(getattr(r.measure, attr) for r in results
                                     if r.size == size and r.tool == tool)

        ratios = {attr: median("lanewise", attr) / median("plain", attr)
                  for attr in ("seconds", "main_mb", "tree_mb")}

        def verdict(ratio: float, target: float) -> str:
            return f"{ratio:.2f}x ({'met' if ratio <= target else 'MISSED'})"

        print(f"| {size:,} | {median('lanewise', 'seconds'):.1f} | "
              f"{median('plain', 'seconds'):.1f} | "
              f"{verdict(ratios['seconds'], time_target(size))} | <= {time_target(size)}x | "
              f"{verdict(ratios['main_mb'], RSS_TARGET)} | "
              f"{verdict(ratios['tree_mb'], RSS_TARGET)} | <= {RSS_TARGET}x |")
    sys.stdout.flush()


# --- main -----------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--passes", default="1,2,3")
    parser.add_argument("--with-server", action=argparse.BooleanOptionalAction, default=True,
                        help="Run pass 3 (a Prefect server already running).")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Inputs are cached here (default: a temporary folder).")
    parser.add_argument("--warmup-rows", type=int, default=500,
                        help="Untimed run of each tool first in every pass (0: none).")
    parser.add_argument("--keep-runs", action="store_true",
                        help="Keep every run's ledger, storage and JSONL files, and the "
                        "emulator's state.")
    parser.add_argument("--emulator-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emulator_child:
        emulator_child(args.emulator_child)
        return

    from lanewise.settings import Settings

    sizes = [int(s) for s in args.sizes.split(",")]
    passes = [int(p) for p in args.passes.split(",")]
    if not args.with_server:
        passes = [p for p in passes if p != 3]
    with tempfile.TemporaryDirectory(prefix="lanewise-vs-sdk-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        inputs = {size: tickets(size, workdir) for size in sizes}
        warmup = tickets(args.warmup_rows, workdir) if args.warmup_rows else None
        check_same_requests(inputs[min(sizes)])
        default_budget = Settings.model_fields["openai_enqueued_token_budget"].default
        total, largest = input_tokens(inputs[max(sizes)])
        # Pass 2's limit: every batch of the largest input in flight at once, and room
        # for a full 50,000-request shard within lanewise's per-shard share of its budget.
        share = getattr(Settings.model_fields.get("shard_token_share"), "default", 1.0)
        needed = max(total, 50_000 * largest / share)
        big = int(-(-needed // 10_000_000) * 10_000_000)
        print(f"Inputs: {', '.join(f'{s:,}' for s in sizes)} clean tickets in {workdir}; "
              f"the largest is ~{total:,} estimated input tokens (largest row {largest}); "
              f"plain_sdk's first {CHECK_ROWS} request bodies and token estimates equal "
              "lanewise's.")
        print(f"Pass 2 limit: {big:,} tokens (>= the largest input's {total:,}, and "
              f">= 50,000 x {largest} / lanewise's shard token share {share}).")
        specs = {
            1: Pass(1, f"emulator limit {default_budget:,} (lanewise's default budget); "
                    "lanewise at its defaults with its temporary Prefect server; plain "
                    f"--enqueued-token-limit {default_budget:,}",
                    default_budget, None, False),
            2: Pass(2, f"emulator limit {big:,}; LANEWISE_OPENAI_ENQUEUED_TOKEN_BUDGET="
                    f"{big}; plain --enqueued-token-limit {big:,} (its 50,000-request "
                    "batches all at once)", big, big, False),
            3: Pass(3, f"as pass 1 (limit {default_budget:,}), with a Prefect server "
                    "already running (PREFECT_API_URL given to lanewise)",
                    default_budget, None, True),
        }
        emulator = Emulator(workdir)
        print(f"Emulator at {emulator.url} (zero delay).", flush=True)
        bench = Bench(workdir, emulator, args.keep_runs)
        all_results: list[Result] = []
        try:
            for number in passes:
                spec = specs[number]
                emulator.set_limit(spec.limit)
                server = PrefectServer(workdir) if spec.server else None
                api_url = server.api_url if server else None
                try:
                    if warmup is not None:
                        for tool in ("plain", "lanewise"):
                            bench.one(spec, tool, warmup, args.warmup_rows, 0, api_url,
                                      warmup=True)
                    results = []
                    for size in sizes:
                        for round_ in range(1, args.rounds + 1):
                            order = ("plain", "lanewise") if round_ % 2 else ("lanewise",
                                                                              "plain")
                            for tool in order:
                                r = bench.one(spec, tool, inputs[size], size, round_,
                                              api_url)
                                print(f"  pass {number} {size:,} {tool} round {round_}: "
                                      f"{r.measure.seconds:.1f} s, RSS main "
                                      f"{r.measure.main_mb:.0f} MB, tree "
                                      f"{r.measure.tree_mb:.0f} MB, {r.batches} batches "
                                      f"(1-min load average {os.getloadavg()[0]:.1f} on "
                                      f"{os.cpu_count()} CPUs)", flush=True)
                                results.append(r)
                finally:
                    if server is not None:
                        server.close()
                print_pass(spec, results)
                all_results.extend(results)
        finally:
            emulator.close(keep_state=args.keep_runs)
        (workdir / "logs" / "results.json").write_text(json.dumps(
            [{**{k: v for k, v in vars(r).items() if k != "measure"},
              **vars(r.measure)} for r in all_results], indent=1))


if __name__ == "__main__":
    main()
