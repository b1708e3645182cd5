"""The live call's added latency over a raw SDK call, and the ledger write's share of it.

    python bench/live_call_overhead.py [--calls 2000] [--task reply-draft]
                                       [--database-url URL] [--redis-url URL] [--fsync]

Against an emulator at zero delay in its own process (the shared background emulator
of a temporary folder), one call of each kind in turn, so drift hits all alike:

1. raw: the official SDK's sync client (max_retries=0) sending the very body the lane
   sends, as an application would (`messages.create` / `chat.completions.create`);
2. lane: `LiveLane.call` on a fresh row (render the request, limiter, the call, the
   schema check, the ledger write, the answer parsed);
3. lane without the ledger write (the recorder's write replaced by a no-op): what the
   write itself costs.

Prints p50 and p99 of each and the added latency (lane minus raw) at p50 and p99, in
milliseconds, as one JSON object. `measure` is importable (bench/live_lane.py); it
uses the catalog the settings name, which `main` (and bench/live_lane.py's) points at the
project's catalog without budgets (bench/bench_catalog.py says why).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], share: float) -> float:
    """The `share` quantile (0..1) of `values`, by the nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def measure(emulator_url: str, home: Path, *, calls: int = 2000, task: str = "reply-draft",
            database_url: str | None = None, redis_url: str | None = None,
            fsync: bool = False, warmup: int = 50) -> dict[str, Any]:
    """Time raw SDK calls, lane calls and lane calls without the ledger write (ms)."""
    from lanewise.inputs import InputRow
    from lanewise.live.lane import LiveLane
    from lanewise.providers import live_client, resolve_credentials
    from lanewise.requests import prepare
    from lanewise.settings import Settings

    settings = Settings(home=home, emulator_url=emulator_url, database_url=database_url,
                        redis_url=redis_url, redis_prefix=f"lanewise-bench-{home.name}",
                        live_record_fsync=fsync)
    lane = LiveLane(settings)
    spec = lane.task(task)
    raw_client = live_client(spec.provider, resolve_credentials(spec.provider, settings))
    create = (raw_client.messages.create if spec.provider == "anthropic"
              else raw_client.chat.completions.create)
    adapter = lane.adapter(spec.provider)

    def row(i: int) -> dict[str, Any]:
        return {spec.input.key: f"B-{i}", "subject": "Export", "body":
                f"The CSV export of invoice {i} fails with error 500. Please help us."}

    def raw_call(i: int) -> None:
        prepared = prepare(spec, InputRow(1, row(i)))
        create(**adapter.request_body(spec, prepared))

    write = lane.recorder.write
    timings: dict[str, list[float]] = {"raw": [], "lane": [], "lane_no_ledger_write": []}
    for i in range(-warmup, calls):
        for kind in timings:
            lane.recorder.write = (  # type: ignore[method-assign]
                (lambda row, answer=None: None) if kind == "lane_no_ledger_write" else write)
            started = time.perf_counter()
            if kind == "raw":
                raw_call(i)
            else:
                result = lane.call(task, row(i if kind == "lane" else i + 10 ** 7))
                assert result.status == "succeeded", result
            if i >= 0:
                timings[kind].append((time.perf_counter() - started) * 1000)
    lane.recorder.write = write  # type: ignore[method-assign]
    if redis_url:
        client = lane.limiter._client  # type: ignore[attr-defined]
        for key in client.scan_iter(f"{settings.redis_prefix}:*"):
            client.delete(key)
    lane.close()
    raw_client.close()
    figures: dict[str, Any] = {"calls": calls, "task": task,
                               "ledger": lane.ledger.dialect,
                               "limits": "redis" if redis_url else "in-process",
                               "record_fsync": fsync}
    for kind, values in timings.items():
        figures[kind] = {"p50_ms": round(statistics.median(values), 3),
                         "p99_ms": round(percentile(values, 0.99), 3)}
    for share, name in ((0.5, "p50_ms"), (0.99, "p99_ms")):
        figures.setdefault("added", {})[name] = round(
            percentile(timings["lane"], share) - percentile(timings["raw"], share), 3)
        figures.setdefault("ledger_write", {})[name] = round(
            percentile(timings["lane"], share)
            - percentile(timings["lane_no_ledger_write"], share), 3)
    return figures


def main() -> None:
    """Run the measurement against a fresh background emulator; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--task", default="reply-draft")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--fsync", action="store_true",
                        help="LANEWISE_LIVE_RECORD_FSYNC: each record flushed to disk")
    args = parser.parse_args()
    import os
    import signal

    from bench_catalog import use_catalog, write_budget_free_catalog

    from lanewise.emulator.background import shared_emulator_url
    from lanewise.emulator.folder import read_server_info

    with tempfile.TemporaryDirectory(prefix="lanewise-live-bench-") as folder:
        # Thousands of calls: the task's daily budget would defer most of them.
        use_catalog(write_budget_free_catalog(Path(folder)))
        state_dir = Path(folder) / "emulator"
        url = shared_emulator_url(state_dir)
        try:
            figures = measure(url, Path(folder), calls=args.calls, task=args.task,
                              database_url=args.database_url, redis_url=args.redis_url,
                              fsync=args.fsync)
        finally:
            # Its folder goes with this bench: stop it rather than leave it to idle out.
            info = read_server_info(state_dir) or {}
            if isinstance(info.get("pid"), int):
                try:
                    os.kill(info["pid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
