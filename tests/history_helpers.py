"""A ledger with known runs, usage and costs, for the history and cost commands' tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from click.testing import CliRunner, Result

from lanewise.ledger import Ledger

PICO = 10 ** 12  # picodollars per dollar
FLOW_RUN_ID = "0b6d3e1c-5f3a-4a8e-9d2c-7e1f2a3b4c5d"


def at(text: str) -> float:
    """Epoch seconds of a UTC time written `YYYY-MM-DD HH:MM`."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


def add_run(ledger: Ledger, run_key: str, task: str, model: str, *,
            provider: str = "openai", lane: str = "batch",
            window: tuple[str, str] | None = None, created: str = "2026-08-02 00:00",
            finished: str | None = None, flow_run_id: str | None = None,
            shards: list[dict[str, Any]] = (), shardless: list[tuple] = (),
            rejected: int = 0) -> int:
    """A run whose items end as given, and its run id.

    Each shard is `{"status", "batch", "ended", "items": [(status, cost, live), ...]}`
    (times `YYYY-MM-DD HH:MM` UTC, costs in picodollars); `shardless` items are
    `(status, cost, live)` with no shard (a live run's); `rejected` bad rows are added.
    """
    run, _ = ledger.open_run(run_key, task, provider, model, "in.parquet",
                             window[0] if window else None, window[1] if window else None)
    run_id = run["id"]
    values: dict[str, Any] = {"lane": lane, "created_at": at(created),
                              "prefect_flow_run_id": flow_run_id}
    if finished:
        values.update(status="finished", finished_at=at(finished),
                      results_url=f"file:///tmp/lanewise/{run_key}/results.parquet")
    else:
        values["status"] = "running"
    ledger.set_run(run_id, **values)
    row = 0
    for number, shard in enumerate(shards):
        keys = []
        for _ in shard["items"]:
            row += 1
            keys.append(row)
        ids = ledger.add_items(run_id, [
            {"row_number": n, "input_key": f"k{n}", "dedup_key": f"k{n}",
             "custom_id": f"k{n}--tok-0", "status": "pending", "excerpted": False}
            for n in keys], [])
        shard_id = ledger.add_shard(run_id, {
            "shard_key": f"{run_key}/r0/s{number}", "attempt": 0,
            "jsonl_url": shard.get("url", f"file:///tmp/lanewise/{run_key}/s{number}.jsonl"),
            "request_count": len(keys), "bytes": 100, "estimated_tokens": 10},
            [{"b_id": ids[n]} for n in keys])
        if shard["status"] == "planned":
            continue
        ledger.set_shard(shard_id, status="submitting", intent_at=at(created))
        assert ledger.record_submitted(shard_id, shard["batch"])
        ledger.set_shard(shard_id, status=shard["status"], submitted_at=at(created),
                         ended_at=at(shard["ended"]) if shard.get("ended") else None)
        ledger.update_items([
            {"b_id": ids[n], "status": status, "cost_picodollars": cost,
             "live_cost_picodollars": live, "input_tokens": 10 if cost else 0}
            for n, (status, cost, live) in zip(keys, shard["items"], strict=True)],
            where_status="submitted")
    for status, cost, live in shardless:
        row += 1
        ids = ledger.add_items(run_id, [
            {"row_number": row, "input_key": f"k{row}", "dedup_key": f"k{row}",
             "custom_id": f"k{row}--tok-0", "status": "pending", "excerpted": False}], [])
        ledger.update_items([{"b_id": ids[row], "status": status, "cost_picodollars": cost,
                              "live_cost_picodollars": live}])
    if rejected:
        ledger.add_items(run_id, [], [
            {"row_number": row + n, "status": "rejected", "error_reason": "bad row"}
            for n in range(1, rejected + 1)])
    return run_id


def known_ledger(url: str) -> Ledger:
    """Four runs with known figures (see the expected totals in test_history_costs.py).

    * tagging: OpenAI gpt-4o-mini, batch, 2026-08-01; a batch ended 2026-08-02 01:00
      (3 answers at 1,000,000 pico each, live 2,000,000; 1 failed) and one ended
      2026-08-03 00:30 (2 answers at 5,000,000, live 10,000,000; 1 invalid output at
      1,000,000, live 2,000,000); 1 rejected row; finished; a Prefect flow run.
    * summary: Anthropic claude-haiku-4-5, batch, 2026-08-01..2026-08-07; a batch ended
      2026-08-03 12:00 with 4 answers at $0.25, live $0.50.
    * reply: OpenAI gpt-4o, live lane, no window; 2 answers without shards at
      3,000,000,000 pico (live the same), finished 2026-08-04 10:00.
    * planned: tagging over all rows, one planned shard, nothing sent.
    """
    ledger = Ledger(url)
    add_run(ledger, "ticket-tagging:2026-08-01", "ticket-tagging", "gpt-4o-mini",
            window=("2026-08-01", "2026-08-01"), created="2026-08-02 00:00",
            finished="2026-08-03 01:00", flow_run_id=FLOW_RUN_ID, rejected=1, shards=[
                {"status": "collected", "batch": "batch_a", "ended": "2026-08-02 01:00",
                 "items": [("succeeded", 1_000_000, 2_000_000)] * 3 + [("failed", 0, 0)]},
                {"status": "collected", "batch": "batch_b", "ended": "2026-08-03 00:30",
                 "items": [("succeeded", 5_000_000, 10_000_000)] * 2
                 + [("invalid_output", 1_000_000, 2_000_000)]}])
    add_run(ledger, "ticket-summary:2026-08-01..2026-08-07", "ticket-summary",
            "claude-haiku-4-5", provider="anthropic", window=("2026-08-01", "2026-08-07"),
            created="2026-08-03 00:00", finished="2026-08-03 13:00", shards=[
                {"status": "collected", "batch": "msgbatch_c", "ended": "2026-08-03 12:00",
                 "items": [("succeeded", PICO // 4, PICO // 2)] * 4}])
    add_run(ledger, "reply-draft:live", "reply-draft", "gpt-4o", lane="live",
            created="2026-08-04 09:00", finished="2026-08-04 10:00",
            shardless=[("succeeded", 3_000_000_000, 3_000_000_000)] * 2)
    add_run(ledger, "ticket-tagging:planned", "ticket-tagging", "gpt-4o-mini",
            created="2026-08-05 00:00", shards=[
                {"status": "planned", "items": [("pending", 0, 0)] * 2}])
    return ledger


def invoke(args: list[str], env: dict[str, str], width: int = 80) -> Result:
    """Run the `lanewise` CLI in-process with these environment variables and a console
    of `width` columns; the settings are read afresh."""
    from lanewise import cli_history
    from lanewise.cli import cli
    from lanewise.settings import get_settings

    get_settings.cache_clear()
    before = cli_history.console.width
    cli_history.console.width = width
    try:
        return CliRunner().invoke(cli, args, env=env, terminal_width=width)
    finally:
        cli_history.console.width = before
        get_settings.cache_clear()
