"""Batch-lane benchmarks, all in one invocation; prints figures and ratios.

    python bench/batch_lane.py [--rows 1000000] [--small 100000] [--e2e 100000]

1. Build and shard JSONL for `--rows` requests (prompt rendering, request bodies,
   custom ids, token estimates, shard files) against a plain JSON dump of the same
   lines; ratio target <= 2x.
2. Peak memory of planning a whole run (input read in record batches, every row in
   the ledger, shard files written) at `--small` and `--rows` rows, each in a fresh
   process; target < 500 MB and within 1.2x of each other.
3. A `--e2e`-request run end to end against the in-process emulator at zero delay.

The task's catalog budget is removed for the run (bench/bench_catalog.py says why).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tickets(rows: int, workdir: Path) -> str:
    """A clean ticket file of `rows` rows (made once per folder)."""
    from lanewise.sampledata import write

    path = workdir / f"tickets-{rows}.parquet"
    if not path.exists():
        write(rows, path, seed=1, clean=True)
    return str(path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_sharding(rows: int, workdir: Path) -> dict:
    """Time our line building + sharding against json.dumps + write of the same lines."""
    from lanewise.catalog import load_catalog
    from lanewise.inputs import read_rows
    from lanewise.providers.base import BatchLimits
    from lanewise.providers.openai_adapter import OpenAIAdapter
    from lanewise.requests import custom_id_for, prepare
    from lanewise.sharding import LineEncoder, ShardWriter
    from lanewise.storage import Storage

    task = load_catalog().get("ticket-tagging")
    adapter = OpenAIAdapter(client=None)  # building lines needs no client
    writer = ShardWriter(Storage(str(workdir / "shards")), "bench/shard",
                         BatchLimits(50_000, 200 * 1024 * 1024, None), token_budget=2_000_000)
    encoder = LineEncoder(adapter, task)
    ours = plain = 0.0
    shards = 0
    source = read_rows(tickets(rows, workdir))
    with open(workdir / "plain.jsonl", "w") as plain_out:
        while chunk := list(itertools.islice(source, 10_000)):
            started = time.perf_counter()
            requests = []
            for row in chunk:
                request = prepare(task, row)
                custom_id = custom_id_for(request.key, 0, "b3nch0")
                requests.append((custom_id, request))
                if writer.add(custom_id, encoder.encode(custom_id, request),
                              request.estimated_tokens):
                    shards += 1
            ours += time.perf_counter() - started
            # The baseline: the same lines, already built as dicts, dumped plainly.
            lines = [adapter.batch_line(c, adapter.request_body(task, r)) for c, r in requests]
            started = time.perf_counter()
            for line in lines:
                plain_out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False)
                                + "\n")
            plain += time.perf_counter() - started
    shards += 1 if writer.close() else 0
    return {"rows": rows, "ours_s": ours, "plain_s": plain, "ratio": ours / plain,
            "shards": shards}


def bench_planning(rows: int, workdir: Path) -> dict:
    """Plan a whole run (ledger + shard files) and report time and peak memory."""
    from lanewise.batch.context import LaneContext
    from lanewise.batch.planning import open_run
    from lanewise.providers.openai_adapter import OpenAIAdapter
    from lanewise.settings import Settings

    home = Path(tempfile.mkdtemp(dir=workdir))
    ctx = LaneContext.build("ticket-tagging", Settings(home=home),
                            adapter=OpenAIAdapter(client=None))
    input_url = tickets(rows, workdir)
    started = time.perf_counter()
    run_id = open_run(ctx, f"bench:{rows}", input_url)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "shards": len(ctx.ledger.shards(run_id)),
            "items": sum(ctx.ledger.count_items(run_id).values()), "peak_rss_mb": peak_rss_mb()}


def bench_end_to_end(rows: int, workdir: Path) -> dict:
    """A whole run against the emulator at zero delay."""
    from lanewise.batch.context import LaneContext
    from lanewise.batch.runner import run_batch_lane
    from lanewise.emulator import EmulatorConfig, Timing, running_emulator
    from lanewise.settings import Settings

    input_url = tickets(rows, workdir)
    timing = Timing(batch_seconds=0, validating_seconds=0, finalizing_seconds=0)
    with running_emulator(EmulatorConfig(timing=timing),
                          state_dir=Path(tempfile.mkdtemp(dir=workdir))) as emu:
        settings = Settings(home=Path(tempfile.mkdtemp(dir=workdir)), emulator_url=emu.url,
                            poll_initial_seconds=0.2, poll_max_seconds=1)
        ctx = LaneContext.build("ticket-tagging", settings)
        started = time.perf_counter()
        summary = run_batch_lane(ctx, f"bench-e2e:{rows}", input_url)
        seconds = time.perf_counter() - started
        billed = emu.state.billing.summary()["total"]
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "succeeded": summary.counts.get("succeeded", 0), "shards": summary.shards,
            "cost_usd": str(summary.cost_usd), "billed_usd": billed["cost_usd"],
            "peak_rss_mb": peak_rss_mb()}


CHILDREN = {"shard": bench_sharding, "plan": bench_planning, "e2e": bench_end_to_end}


def child(kind: str, rows: int, workdir: Path) -> dict:
    """Run one measurement in a fresh process (clean peak memory)."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--child-rows", str(rows),
                          "--workdir", str(workdir)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--e2e", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.child_rows, args.workdir)))
        return
    from bench_catalog import use_catalog, write_budget_free_catalog

    with tempfile.TemporaryDirectory(prefix="lanewise-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        # The children inherit it: the task's budget would refuse these volumes.
        use_catalog(write_budget_free_catalog(workdir))
        shard = child("shard", args.rows, workdir)
        print(f"1. build+shard {shard['rows']:,} requests: {shard['ours_s']:.1f} s, plain JSON "
              f"dump of the same lines {shard['plain_s']:.1f} s, ratio {shard['ratio']:.2f}x "
              f"(target <= 2x), {shard['shards']} shards")
        small, large = child("plan", args.small, workdir), child("plan", args.rows, workdir)
        for plan in (small, large):
            print(f"2. plan {plan['rows']:,} rows: {plan['seconds']:.1f} s, {plan['shards']} "
                  f"shards, {plan['items']:,} items, peak RSS {plan['peak_rss_mb']:.0f} MB")
        print(f"   peak RSS ratio {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x for "
              f"{large['rows'] / small['rows']:.0f}x rows (target < 500 MB, within 1.2x)")
        e2e = child("e2e", args.e2e, workdir)
        print(f"3. end to end {e2e['rows']:,} requests against the emulator: "
              f"{e2e['seconds']:.1f} s ({e2e['rows_per_s']:.0f} rows/s), {e2e['shards']} "
              f"shards, {e2e['succeeded']:,} succeeded, ledger ${e2e['cost_usd']} = billed "
              f"${e2e['billed_usd']}, peak RSS {e2e['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
