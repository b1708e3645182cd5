"""Chaos at full size: SIGKILL `lanewise run` at seeded random moments over a large run,
rerun until done, check every promise; prints figures and the cost of recovery.

    python bench/chaos.py [--rows 50000] [--kills 16] [--tasks ticket-tagging,ticket-summary]
                          [--ledgers sqlite,postgresql] [--shard-max-requests 5000]

For each task (OpenAI and Anthropic) and ledger: a fresh emulator process and ledger,
one clean run of the same input as the baseline (no kills), then the chaos run with
`--kills` kills spread over planning, submitting, awaiting, collecting and random
moments. Checked after each: batches created at the emulator equal the shards in the
ledger (nobody pays twice), every input row exactly once and terminal in the results
file (nothing lost), the ledger's cost equal to the emulator's bill. The ratio is the
chaos run's wall time against the clean run's. Every run uses the project's catalog
without its budgets (bench/bench_catalog.py says why).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def main() -> int:
    """Run every (task, ledger) pair and print a table of figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--kills", type=int, default=16)
    parser.add_argument("--tasks", default="ticket-tagging,ticket-summary")
    parser.add_argument("--ledgers", default="sqlite,postgresql")
    parser.add_argument("--shard-max-requests", type=int, default=5000)
    # Long enough that 16 kills find work left to interrupt: every batch of a run may be
    # in flight at once (Anthropic has no enqueued-token budget holding shards back).
    parser.add_argument("--batch-seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--postgres", default=os.environ.get(
        "LANEWISE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()

    from bench_catalog import use_catalog, write_budget_free_catalog
    from prefect.settings import PREFECT_API_URL

    from lanewise.ops.prefect_server import start_temporary_server, stop_server
    from tests.chaos_harness import emulator_process, fresh_postgres_database, run_chaos

    # `lanewise run` inherits os.environ (chaos_harness): the tasks' budgets would refuse
    # runs of this size before they send anything.
    catalog_dir = tempfile.TemporaryDirectory(prefix="lanewise-chaos-catalog-")
    use_catalog(write_budget_free_catalog(Path(catalog_dir.name)))
    api_url = PREFECT_API_URL.value()
    server = None
    if not api_url:
        server, api_url = start_temporary_server()
    results = []
    try:
        for task in args.tasks.split(","):
            for kind in args.ledgers.split(","):
                for label, kills in (("clean", 0), ("chaos", args.kills)):
                    with tempfile.TemporaryDirectory(prefix="lanewise-chaos-") as tmp:
                        work = Path(tmp)
                        ledger_ctx = fresh_postgres_database(args.postgres) \
                            if kind == "postgresql" else None
                        ledger_url = ledger_ctx.__enter__() if ledger_ctx else \
                            f"sqlite:///{work / 'ledger.sqlite3'}"
                        try:
                            with emulator_process(work / "emulator", "--batch-seconds",
                                                  str(args.batch_seconds)) as emulator_url:
                                print(f"{task} / {kind} / {label}:", flush=True)
                                report = run_chaos(
                                    task=task, rows=args.rows, kills=kills, seed=args.seed,
                                    workdir=work, ledger_url=ledger_url,
                                    emulator_url=emulator_url, prefect_api_url=api_url,
                                    shard_max_requests=args.shard_max_requests,
                                    run_timeout=1800,
                                    log=lambda line: print(line, flush=True))
                        finally:
                            if ledger_ctx:
                                ledger_ctx.__exit__(None, None, None)
                    print("  " + report.line(), flush=True)
                    results.append((task, kind, label, report))
    finally:
        if server is not None:
            stop_server(server)
        catalog_dir.cleanup()
    print()
    print("| task | ledger | kills (plan/submit/await/collect/time) | runs | seconds | "
          "vs clean | shards | batches created | rows out | ledger $ | billed $ | ok |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    clean_seconds = {(t, k): r.seconds for t, k, label, r in results if label == "clean"}
    broken = 0
    for task, kind, label, r in results:
        if label != "chaos":
            continue
        phases = "/".join(str(r.kills_by_phase.get(p, 0)) for p in
                          ("planning", "submitting", "awaiting", "collecting", "time"))
        ratio = r.seconds / clean_seconds[(task, kind)]
        print(f"| {task} | {kind} | {r.kills} ({phases}) | {r.runs} | {r.seconds:.0f} | "
              f"{ratio:.2f}x | {r.shards} | {r.batches_created} | {r.rows_in_results:,} | "
              f"{r.ledger_cost} | {r.billed_cost} | {'yes' if r.ok else 'NO'} |")
        broken += not r.ok
    for task, kind, label, r in results:
        if label == "clean":
            print(f"clean {task} / {kind}: {r.seconds:.1f} s, {r.shards} shards, "
                  f"ledger ${r.ledger_cost} vs billed ${r.billed_cost}, "
                  f"{'ok' if r.ok else 'BROKEN'}")
            broken += not r.ok
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
