"""Push requests through the emulator's batch endpoints at zero delay; print time and memory.

Usage: python bench/emulator_throughput.py [--requests 1000000] [--baseline 200000]

Runs two child processes in one invocation, a baseline size and the full size, each
with a fresh in-process emulator driven through the official SDKs, and prints wall
time, throughput and peak RSS of each, plus the ratios between them: flat memory
means the peak RSS ratio stays near 1 while the request ratio is 10.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LINE_TEXT = "Summarize:\n\nTicket {i}: the CSV export fails with a blank page. Please help."


def _openai_batch(client, workdir: Path, start: int, count: int) -> int:
    path = workdir / "openai-input.jsonl"
    with path.open("w") as out:
        for i in range(start, start + count):
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [
                        {"role": "user", "content": LINE_TEXT.format(i=i)}]}}
            out.write(json.dumps(line) + "\n")
    with path.open("rb") as handle:
        upload = client.files.create(file=("input.jsonl", handle), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    got = 0
    with client.files.with_streaming_response.content(batch.output_file_id) as response:
        for line in response.iter_lines():
            if line:
                got += 1
    client.files.delete(upload.id)
    client.files.delete(batch.output_file_id)
    return got


def _anthropic_batch(client, start: int, count: int) -> int:
    requests = [{"custom_id": f"r{i}", "params": {
        "model": "claude-haiku-4-5", "max_tokens": 50,
        "messages": [{"role": "user", "content": LINE_TEXT.format(i=i)}]}}
        for i in range(start, start + count)]
    batch = client.messages.batches.create(requests=requests)
    del requests
    while batch.processing_status != "ended":
        time.sleep(0.2)
        batch = client.messages.batches.retrieve(batch.id)
    return sum(1 for r in client.messages.batches.results(batch.id)
               if r.result.type == "succeeded")


def child(total: int, provider: str) -> dict:
    """Run `total` requests through one fresh emulator; return the figures."""
    import anthropic
    import openai

    from lanewise.emulator import EmulatorConfig, Timing, running_emulator

    timing = Timing(batch_seconds=0, validating_seconds=0, finalizing_seconds=0)
    started = time.perf_counter()
    done = 0
    with tempfile.TemporaryDirectory() as tmp, running_emulator(
            EmulatorConfig(timing=timing), state_dir=Path(tmp) / "state") as emu:
        oai = openai.OpenAI(base_url=emu.openai_base_url, api_key=emu.api_key, timeout=600)
        claude = anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key=emu.api_key,
                                     timeout=600)
        shares = {"openai": total, "anthropic": 0} if provider == "openai" else (
            {"openai": 0, "anthropic": total} if provider == "anthropic"
            else {"openai": total // 2, "anthropic": total - total // 2})
        position = 0
        for start in range(0, shares["openai"], 50_000):
            done += _openai_batch(oai, Path(tmp), position + start,
                                  min(50_000, shares["openai"] - start))
        position += shares["openai"]
        for start in range(0, shares["anthropic"], 100_000):
            done += _anthropic_batch(claude, position + start,
                                     min(100_000, shares["anthropic"] - start))
        billed = emu.state.billing.summary()["total"]["requests"]
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"requests": total, "succeeded": done, "billed": billed, "seconds": seconds,
            "per_second": total / seconds, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=200_000)
    parser.add_argument("--provider", choices=["openai", "anthropic", "both"], default="both")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.provider)))
        return
    rows = []
    for size in (args.baseline, args.requests):
        out = subprocess.run([sys.executable, __file__, "--child", str(size), "--provider",
                              args.provider], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'requests':>10} {'ok':>10} {'billed':>10} {'seconds':>9} {'req/s':>9} "
          f"{'peak RSS MB':>12}")
    for row in rows:
        print(f"{row['requests']:>10} {row['succeeded']:>10} {row['billed']:>10} "
              f"{row['seconds']:>9.1f} {row['per_second']:>9.0f} {row['peak_rss_mb']:>12.0f}")
    base, full = rows
    print(f"requests ratio {full['requests'] / base['requests']:.1f}x, "
          f"time ratio {full['seconds'] / base['seconds']:.2f}x, "
          f"peak RSS ratio {full['peak_rss_mb'] / base['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
