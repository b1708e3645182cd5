"""The live lane against raw official-SDK calls, the service's throughput, and a queue drain.

    python bench/live_lane.py [--calls 2000] [--task reply-draft]
                              [--clients 32] [--service-calls 3200] [--rounds 2]
                              [--drain-rows 100000] [--drain-task ticket-tagging]
                              [--skip-call] [--skip-service] [--skip-drain]

One invocation, one emulator *process* at zero delay (the shared background emulator of
a temporary folder, started with batch, validating and finalizing times of 0; stopped at
the end), three measurements, each printed next to its baseline from the same invocation:

1. **The live call's added latency** (`bench/live_call_overhead.py`'s `measure`,
   imported): raw sync SDK call vs `LiveLane.call` vs the lane without its ledger write,
   interleaved one by one; p50 and p99 of each and the added latency (targets: under
   2 ms p50, under 10 ms p99; printed, not asserted).
2. **The service's throughput with `--clients` concurrent clients**: `lanewise serve` as
   a real uvicorn process (bearer token, its own SQLite ledger), `--service-calls` fresh
   rows per round sent by `--clients` asyncio tasks sharing one `httpx.AsyncClient`
   (`POST /v1/tasks/<task>/call`), against the official SDK's async client for the task's
   provider (`AsyncAnthropic` for reply-draft, `AsyncOpenAI` for an OpenAI task) sending
   the same request bodies from the same number of tasks. Rounds alternate raw/service
   (ABAB...) after an untimed warm-up of each; calls per second per round, medians and
   the ratio service/raw. Every call must succeed (the service's answered by the task's
   own model, never a fallback nor the cache: every row is new). The service is given a
   concurrency limit of `--clients` for the provider, so both sides keep the same number
   of calls in flight.
3. **Draining `--drain-rows` queued requests end to end**: `lanewise.queue.enqueue_many`
   into a fresh SQLite ledger (timed), then one `drain_task` (claim size = every row)
   through the batch lane in this process (timed). Checked: every queue item
   `succeeded`, and the queue items' cost equals what the emulator billed for the drain.
   Every row's text is unique, so the result cache answers none of them.

Prints the load average before and after each part (the machine is shared), and all
figures as one JSON object at the end. Every part uses the project's catalog without
its budgets (bench/bench_catalog.py says why).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from bench_catalog import use_catalog, write_budget_free_catalog  # noqa: E402
from live_call_overhead import measure  # noqa: E402 - after the path is set

ZERO_DELAY = {"LANEWISE_EMULATOR_BATCH_SECONDS": "0",
              "LANEWISE_EMULATOR_VALIDATING_SECONDS": "0",
              "LANEWISE_EMULATOR_FINALIZING_SECONDS": "0"}


def load() -> str:
    """The 1, 5 and 15 minute load averages, as text."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def say(message: str) -> None:
    """A progress line on stderr, with the time and the load average."""
    stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
    print(f"[{stamp} load {load()}] {message}", file=sys.stderr, flush=True)


def billed(url: str) -> dict[str, Any]:
    """The emulator's whole bill so far (requests, cost_usd, ...)."""
    return httpx.get(f"{url}/_emulator/billing", timeout=60).json()["total"]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process `pid` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def live_row(spec: Any, i: int) -> dict[str, Any]:
    """A fresh row for a live task (unique text: never a cache hit)."""
    return {spec.input.key: f"S-{i}", "subject": "Export", "body":
            f"The CSV export of invoice {i} fails with error 500 since Monday. Please help."}


# --- 2. the service against a raw async SDK client ------------------------------------

class Service:
    """`lanewise serve` as a real uvicorn process on a free port, with its own home."""

    def __init__(self, folder: Path, emulator_url: str, provider: str, clients: int,
                 catalog: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        home = folder / "service-home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LANEWISE_")}
        env.update(LANEWISE_HOME=str(home), LANEWISE_EMULATOR_URL=emulator_url,
                   LANEWISE_SERVICE_TOKEN=self.token, LANEWISE_CATALOG_PATH=str(catalog),
                   **{f"LANEWISE_{provider.upper()}_MAX_CONCURRENCY": str(clients)})
        self.log = (folder / "service.log").open("wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "lanewise"), "serve", "--port", str(self.port),
             "--log-level", "warning"], cwd=ROOT, env=env, stdout=self.log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"lanewise serve exited {self.process.returncode}; see "
                                   f"{folder / 'service.log'}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("lanewise serve did not answer /health within 60 s")
            time.sleep(0.2)

    def close(self) -> None:
        """Stop the service (SIGTERM, then SIGKILL)."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


async def drive(clients: int, calls: int, one: Any) -> float:
    """`calls` calls of `one(i)` from `clients` tasks pulling from one counter; seconds."""
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started


async def throughput(service: Service, emulator_url: str, emulator_pid: int, folder: Path,
                     *, task: str, clients: int, calls: int, rounds: int,
                     warmup: int) -> dict[str, Any]:
    """Calls per second of the service and of the raw async SDK client, rounds alternated."""
    from lanewise.inputs import InputRow
    from lanewise.live.lane import LiveLane
    from lanewise.providers import live_client, resolve_credentials
    from lanewise.requests import prepare
    from lanewise.settings import Settings

    settings = Settings(home=folder / "raw-home", emulator_url=emulator_url)
    lane = LiveLane(settings)  # only for the catalog and the adapter's request body
    spec = lane.task(task)
    adapter = lane.adapter(spec.provider)
    raw = live_client(spec.provider, resolve_credentials(spec.provider, settings),
                      asynchronous=True)
    create = raw.messages.create if spec.provider == "anthropic" else \
        raw.chat.completions.create
    http = httpx.AsyncClient(base_url=service.url, timeout=120,
                             headers={"Authorization": f"Bearer {service.token}"},
                             limits=httpx.Limits(max_connections=clients,
                                                 max_keepalive_connections=clients))
    offset = [0]
    unexpected: list[str] = []

    async def raw_call(i: int) -> None:
        prepared = prepare(spec, InputRow(1, live_row(spec, offset[0] + i)))
        await create(**adapter.request_body(spec, prepared))

    async def service_call(i: int) -> None:
        response = await http.post(f"/v1/tasks/{task}/call",
                                   json={"row": live_row(spec, offset[0] + i),
                                         "context": {"bench": "live_lane"}})
        body = response.json()
        if (response.status_code != 200 or body.get("status") != "succeeded"
                or body.get("answered_by") != "live" or body.get("model") != spec.model):
            unexpected.append(f"{response.status_code} {json.dumps(body)[:300]}")

    kinds = {"raw": raw_call, "service": service_call}
    per_round: dict[str, list[float]] = {"raw": [], "service": []}
    cpu_ms: dict[str, list[float]] = {"service_process": [], "emulator_process": []}
    try:
        for one in kinds.values():  # warm-up: connections, clients, first writes
            offset[0] += 10 ** 7
            await drive(clients, warmup, one)
        for round_ in range(rounds):
            for kind in (("raw", "service") if round_ % 2 == 0 else ("service", "raw")):
                offset[0] += 10 ** 7
                before = billed(emulator_url)["requests"]
                cpu_before = (cpu_seconds(service.process.pid), cpu_seconds(emulator_pid))
                seconds = await drive(clients, calls, kinds[kind])
                sent = billed(emulator_url)["requests"] - before
                if kind == "service":  # CPU per call: the machine has few cores to share
                    cpu_ms["service_process"].append(
                        (cpu_seconds(service.process.pid) - cpu_before[0]) * 1000 / calls)
                cpu_ms["emulator_process"].append(
                    (cpu_seconds(emulator_pid) - cpu_before[1]) * 1000 / calls)
                if sent != calls:
                    unexpected.append(f"{kind} round {round_}: the emulator billed {sent} "
                                      f"requests for {calls} calls")
                per_round[kind].append(calls / seconds)
                say(f"throughput round {round_ + 1} {kind}: {calls / seconds:,.0f} calls/s")
    finally:
        await http.aclose()
        await raw.close()
        lane.close()
    if unexpected:
        raise RuntimeError(f"{len(unexpected)} unexpected outcome(s), first: {unexpected[0]}")
    raw_rate = statistics.median(per_round["raw"])
    service_rate = statistics.median(per_round["service"])
    return {"task": task, "provider": spec.provider, "model": spec.model,
            "clients": clients, "calls_per_round": calls, "rounds": rounds,
            "raw_calls_per_s": [round(x, 1) for x in per_round["raw"]],
            "service_calls_per_s": [round(x, 1) for x in per_round["service"]],
            "raw_median": round(raw_rate, 1), "service_median": round(service_rate, 1),
            "ratio_service_over_raw": round(service_rate / raw_rate, 3),
            "service_process_cpu_ms_per_call": round(
                statistics.median(cpu_ms["service_process"]), 3),
            "emulator_process_cpu_ms_per_call": round(
                statistics.median(cpu_ms["emulator_process"]), 3)}


# --- 3. draining the queue ------------------------------------------------------------

def drain_rows(spec: Any, rows: int) -> list[dict[str, Any]]:
    """`rows` sample tickets (lanewise.sampledata, seed 1), each body made unique."""
    import random

    from lanewise.sampledata import ticket

    rng = random.Random(1)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    out = []
    for index in range(rows):
        row = ticket(rng, index, start)
        row["body"] = f"{row['body']} (ref {row['ticket_id']})"
        out.append(row)
    return out


def drain(emulator_url: str, folder: Path, *, task: str, rows: int) -> dict[str, Any]:
    """Enqueue `rows` rows, then one drain through the batch lane; timed and checked."""
    from lanewise.batch.context import LaneContext
    from lanewise.batch.drain import drain_task
    from lanewise.catalog import load_catalog
    from lanewise.queue import enqueue_many
    from lanewise.settings import Settings

    settings = Settings(home=folder / "drain-home", emulator_url=emulator_url,
                        poll_initial_seconds=0.2, poll_max_seconds=1)
    catalog = load_catalog(settings.catalog_path)
    spec = catalog.get(task)
    data = drain_rows(spec, rows)
    ctx = LaneContext.build(task, settings)
    started = time.perf_counter()
    report = enqueue_many(ctx.ledger, task, data, catalog=catalog)
    enqueue_seconds = time.perf_counter() - started
    if report.added != rows:
        raise RuntimeError(f"enqueued {report.added} of {rows} rows")
    say(f"enqueued {rows:,} rows in {enqueue_seconds:.1f} s; draining")
    before = billed(emulator_url)
    started = time.perf_counter()
    drained = drain_task(ctx, claim_size=rows)
    drain_seconds = time.perf_counter() - started
    after = billed(emulator_url)
    bill = Decimal(str(after["cost_usd"])) - Decimal(str(before["cost_usd"]))
    requests = after["requests"] - before["requests"]
    statuses: dict[str, int] = {}
    for run in drained.runs:
        for status, n in run.counts.items():
            statuses[status] = statuses.get(status, 0) + n
    ok = (statuses == {"succeeded": rows} and drained.settled == rows
          and drained.cost_usd == bill and requests == rows)
    summaries = [r.summary for r in drained.runs if r.summary is not None]
    return {"task": task, "provider": spec.provider, "rows": rows,
            "enqueue_seconds": round(enqueue_seconds, 2),
            "enqueue_rows_per_s": round(rows / enqueue_seconds),
            "drain_seconds": round(drain_seconds, 2),
            "drain_rows_per_s": round(rows / drain_seconds),
            "end_to_end_seconds": round(enqueue_seconds + drain_seconds, 2),
            "runs": len(drained.runs), "shards": sum(s.shards for s in summaries),
            "queue_statuses": statuses,
            "queue_cost_usd": str(drained.cost_usd), "billed_usd": str(bill),
            "billed_requests": requests, "ok": ok}


# --- the invocation -------------------------------------------------------------------

def emulator_pid(state_dir: Path) -> int:
    """The pid of the background emulator serving `state_dir` (from its server.json)."""
    from lanewise.emulator.folder import read_server_info

    return int((read_server_info(state_dir) or {})["pid"])


def stop_emulator(state_dir: Path) -> None:
    """SIGTERM the background emulator this bench started (its pid from server.json)."""
    from lanewise.emulator.folder import read_server_info

    info = read_server_info(state_dir) or {}
    pid = info.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def main() -> None:
    """Run the three measurements against one fresh emulator process; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000,
                        help="timed calls of each kind for the added latency")
    parser.add_argument("--task", default="reply-draft", help="the live task called")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--service-calls", type=int, default=3200,
                        help="calls per throughput round (each side)")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds per side")
    parser.add_argument("--drain-rows", type=int, default=100_000)
    parser.add_argument("--drain-task", default="ticket-tagging")
    parser.add_argument("--skip-call", action="store_true")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--skip-drain", action="store_true")
    args = parser.parse_args()
    os.environ.update(ZERO_DELAY)  # read by the emulator process started below
    from lanewise.emulator.background import shared_emulator_url

    figures: dict[str, Any] = {"load_at_start": load(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="lanewise-live-lane-bench-") as name:
        folder = Path(name)
        # Thousands of calls and rows: the tasks' budgets would defer or refuse them.
        catalog = use_catalog(write_budget_free_catalog(folder))
        state_dir = folder / "emulator"
        url = shared_emulator_url(state_dir)
        say(f"emulator process at {url}")
        try:
            if not args.skip_call:
                say(f"added latency: {args.calls} calls of each kind")
                call_home = folder / "call-home"
                call_home.mkdir()
                figures["added_latency"] = measure(url, call_home, calls=args.calls,
                                                   task=args.task)
                figures["added_latency"]["load_after"] = load()
                added = figures["added_latency"]["added"]
                say(f"added p50 {added['p50_ms']} ms, p99 {added['p99_ms']} ms")
            if not args.skip_service:
                from lanewise.catalog import load_catalog

                provider = load_catalog().get(args.task).provider
                service = Service(folder, url, provider, args.clients, catalog)
                say(f"service at {service.url}; throughput with {args.clients} clients")
                try:
                    figures["service_throughput"] = asyncio.run(throughput(
                        service, url, emulator_pid(state_dir), folder, task=args.task,
                        clients=args.clients, calls=args.service_calls, rounds=args.rounds,
                        warmup=4 * args.clients))
                finally:
                    service.close()
                figures["service_throughput"]["load_after"] = load()
            if not args.skip_drain:
                say(f"drain: {args.drain_rows:,} rows of {args.drain_task}")
                figures["drain"] = drain(url, folder, task=args.drain_task,
                                         rows=args.drain_rows)
                figures["drain"]["load_after"] = load()
        finally:
            stop_emulator(state_dir)
    print(json.dumps(figures, indent=2))
    print_summary(figures)
    if "drain" in figures and not figures["drain"]["ok"]:
        sys.exit("drain check failed: see the figures above")


def print_summary(figures: dict[str, Any]) -> None:
    """The figures against their baselines, one line each."""
    lines = [f"load average at start: {figures['load_at_start']} ({figures['cpus']} CPUs)"]
    if "added_latency" in figures:
        f = figures["added_latency"]
        verdict = ("met" if f["added"]["p50_ms"] < 2 and f["added"]["p99_ms"] < 10
                   else "NOT met")
        lines.append(f"live call: raw p50 {f['raw']['p50_ms']} / p99 {f['raw']['p99_ms']} ms; "
                     f"lane p50 {f['lane']['p50_ms']} / p99 {f['lane']['p99_ms']} ms; added "
                     f"p50 {f['added']['p50_ms']} / p99 {f['added']['p99_ms']} ms (targets "
                     f"<2 / <10: {verdict}); ledger write p50 {f['ledger_write']['p50_ms']} ms")
    if "service_throughput" in figures:
        f = figures["service_throughput"]
        lines.append(f"service, {f['clients']} clients: {f['service_median']} calls/s vs raw "
                     f"async SDK {f['raw_median']} calls/s: ratio "
                     f"{f['ratio_service_over_raw']}; CPU per call: service process "
                     f"{f['service_process_cpu_ms_per_call']} ms, emulator "
                     f"{f['emulator_process_cpu_ms_per_call']} ms")
    if "drain" in figures:
        f = figures["drain"]
        lines.append(f"drain of {f['rows']:,} rows: enqueue {f['enqueue_seconds']} s, drain "
                     f"{f['drain_seconds']} s ({f['drain_rows_per_s']:,} rows/s), "
                     f"{f['shards']} shard(s); ledger ${f['queue_cost_usd']} = billed "
                     f"${f['billed_usd']}: {'ok' if f['ok'] else 'CHECK FAILED'}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
