"""A run's outputs: the results Parquet file and the cost summary."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from lanewise.ledger import Ledger
from lanewise.pricing import from_picodollars

if TYPE_CHECKING:  # pyarrow and the lane context only when a results file is written
    import pyarrow as pa

    from lanewise.batch.context import LaneContext

# The item columns a results file is made of (read from the ledger, nothing else).
RESULT_COLUMNS = ("row_number", "input_key", "status", "error_field", "error_reason",
                  "excerpted", "attempt", "output_text", "input_tokens",
                  "cached_input_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                  "output_tokens", "reasoning_tokens", "cost_picodollars", "cached_from")
#: Item states that carry an answer a results file shows parsed.
ANSWERED_STATES = ("succeeded", "cached")


@dataclass
class RunSummary:
    """What a run did and what it cost, against the same work on the live lane."""

    run_key: str
    task: str
    provider: str
    model: str
    rows: int
    counts: dict[str, int]
    reasons: list[tuple[str, str, int]]
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    cost_usd: Decimal
    live_cost_usd: Decimal
    shards: int
    batch_ids: list[str] = field(default_factory=list)
    results_url: str | None = None
    #: 1-hour cache writes (`cache_write_tokens` are the 5-minute ones), priced apart.
    cache_write_1h_tokens: int = 0
    #: Reasoning tokens, already counted in `output_tokens` (billed as output).
    reasoning_tokens: int = 0
    input_url: str | None = None
    #: The run's date window (ISO dates), None when it took every row of its input.
    window_start: str | None = None
    window_end: str | None = None
    lane: str = "batch"
    prefect_flow_run_id: str | None = None
    #: What this attempt (one flow run) spent: the run's cost at its end minus at its
    #: start. None when the summary is not of an attempt (the CLI's history).
    attempt_cost_usd: Decimal | None = None
    #: What the rows answered from the result cache (status `cached`, never sent, zero
    #: cost) would have cost sent again in this run: their original answers' usage at
    #: batch prices. Apart from `saving_usd`, which compares what was sent with live.
    cache_saving_usd: Decimal = Decimal(0)
    #: The offline estimate made before the run sent anything, at batch prices
    #: (`lanewise.budgets`): expected (the task's measured average output) and upper
    #: bound (every answer at max_output_tokens). None for a run without one.
    estimate_expected_usd: Decimal | None = None
    estimate_upper_usd: Decimal | None = None

    @property
    def saving_usd(self) -> Decimal:
        """What the batch lane saved against the live lane."""
        return self.live_cost_usd - self.cost_usd

    @property
    def estimate_error_pct(self) -> Decimal | None:
        """The expected estimate's error against the billed cost, in percent of the
        billed cost (positive: estimated high); None without an estimate or a bill."""
        if self.estimate_expected_usd is None or not self.cost_usd:
            return None
        return (self.estimate_expected_usd - self.cost_usd) / self.cost_usd * 100

    def estimate_line(self) -> str | None:
        """Estimated against billed in one line, None without an estimate."""
        if self.estimate_expected_usd is None or self.estimate_upper_usd is None:
            return None
        error = self.estimate_error_pct
        off = "" if error is None else f" ({error:+.1f}% against billed)"
        return (f"estimated before sending {_usd(self.estimate_expected_usd)} expected"
                f"{off}, {_usd(self.estimate_upper_usd)} at most; billed "
                f"{_usd(self.cost_usd)}")

    @property
    def succeeded(self) -> int:
        """Rows that got a valid answer from the provider in this run."""
        return self.counts.get("succeeded", 0)

    @property
    def cached(self) -> int:
        """Rows answered from the result cache (nothing sent for them)."""
        return self.counts.get("cached", 0)

    @property
    def window(self) -> str | None:
        """The date window as text (`2026-11-29` or `2026-11-01..2026-11-07`)."""
        if not self.window_start:
            return None
        if self.window_end in (None, self.window_start):
            return self.window_start
        return f"{self.window_start}..{self.window_end}"

    def empty_note(self) -> str | None:
        """Why the run had nothing to do, when it had no rows (a warning), else None."""
        if self.rows:
            return None
        where = f"in window {self.window} of {self.input_url}" if self.window \
            else f"in {self.input_url}"
        return f"no rows {where}: nothing was sent and nothing was paid"

    def outcome_line(self) -> str:
        """The outcome in one line: rows, succeeded, failed, cost, saving (a flow run's
        final state message)."""
        label = f"{self.task} {self.window}" if self.window else self.run_key
        note = self.empty_note()
        if note is not None:
            return f"WARNING: {label}: {note}"
        failed = self.rows - self.succeeded - self.cached
        kinds = [f"{n:,} {status.replace('_', ' ')}" for status, n in sorted(self.counts.items())
                 if status not in ANSWERED_STATES and n]
        detail = f" ({', '.join(kinds)})" if failed and len(kinds) > 1 else ""
        attempt = "" if self.attempt_cost_usd is None else \
            f" (this attempt {_usd(self.attempt_cost_usd)})"
        share = f" ({self.saving_usd / self.live_cost_usd:.0%})" if self.live_cost_usd else ""
        rows = f"{self.rows:,} row{'s' if self.rows != 1 else ''}"
        cached = f", {self.cached:,} from the cache" if self.cached else ""
        cache_saving = f", the cache saved {_usd(self.cache_saving_usd)}" if self.cached else ""
        return (f"{label}: {rows}, {self.succeeded:,} succeeded{cached}, {failed:,} failed"
                f"{detail}, cost {_usd(self.cost_usd)}{attempt}, saving "
                f"{_usd(self.saving_usd)}{share} vs live{cache_saving}")

    def brief(self) -> dict[str, Any]:
        """A small JSON-able digest (a flow's return value)."""
        return {"run_key": self.run_key, "rows": self.rows, "counts": self.counts,
                "cost_usd": str(self.cost_usd), "live_cost_usd": str(self.live_cost_usd),
                "attempt_cost_usd": None if self.attempt_cost_usd is None
                else str(self.attempt_cost_usd),
                "cached": self.cached, "cache_saving_usd": str(self.cache_saving_usd),
                "estimate_expected_usd": _text(self.estimate_expected_usd),
                "estimate_upper_usd": _text(self.estimate_upper_usd),
                "estimate_error_pct": None if self.estimate_error_pct is None
                else f"{self.estimate_error_pct:.2f}",
                "results_url": self.results_url, "outcome": self.outcome_line()}

    def cost_rows(self) -> list[dict[str, Any]]:
        """The summary as table rows (for Prefect table artifacts and the CLI)."""
        attempt = [] if self.attempt_cost_usd is None else [
            {"metric": "cost this attempt USD", "value": f"{self.attempt_cost_usd:.6f}"}]
        estimate = []
        if self.estimate_expected_usd is not None and self.estimate_upper_usd is not None:
            error = self.estimate_error_pct
            estimate = [
                {"metric": "estimate USD (expected)",
                 "value": f"{self.estimate_expected_usd:.6f}"},
                {"metric": "estimate USD (upper bound)",
                 "value": f"{self.estimate_upper_usd:.6f}"},
                {"metric": "expected estimate vs billed",
                 "value": "n/a (nothing billed)" if error is None else f"{error:+.1f}%"}]
        return [
            {"metric": "run", "value": self.run_key},
            {"metric": "window", "value": self.window or "every row"},
            *attempt,
            {"metric": "cost of the run in all USD", "value": f"{self.cost_usd:.6f}"},
            *estimate,
            {"metric": "rows", "value": self.rows},
            *({"metric": status, "value": n} for status, n in sorted(self.counts.items())),
            {"metric": "input tokens", "value": self.input_tokens},
            {"metric": "cached input tokens", "value": self.cached_input_tokens},
            {"metric": "cache write tokens (5 min)", "value": self.cache_write_tokens},
            {"metric": "cache write tokens (1 hour)", "value": self.cache_write_1h_tokens},
            {"metric": "output tokens", "value": self.output_tokens},
            {"metric": "of which reasoning", "value": self.reasoning_tokens},
            {"metric": "same work live USD", "value": f"{self.live_cost_usd:.6f}"},
            {"metric": "saving USD", "value": f"{self.saving_usd:.6f}"},
            {"metric": "cache saving USD (cached rows at batch price)",
             "value": f"{self.cache_saving_usd:.6f}"},
        ]

    def markdown(self) -> str:
        """A readable markdown summary of the run."""
        title = f"{self.task} {self.window}" if self.window else f"{self.task}: {self.run_key}"
        lines = [f"# {title}", "", f"**{self.outcome_line()}**", ""]
        note = self.empty_note()
        if note is not None:
            lines += [f"> **Warning**: {note}. Check the input and the dates.", ""]
        if self.cached:
            lines += [f"{self.cached:,} row(s) were answered from the result cache: nothing "
                      f"was sent for them. Sent again at batch price they would have cost "
                      f"{_usd(self.cache_saving_usd)}.", ""]
        estimated = self.estimate_line()
        if estimated is not None:
            lines += [f"{estimated[0].upper()}{estimated[1:]}.", ""]
        if self.attempt_cost_usd is not None:
            lines += [f"This attempt spent {_usd(self.attempt_cost_usd)}; the run has spent "
                      f"{_usd(self.cost_usd)} in all.", ""]
        lines += [f"- run key: `{self.run_key}`", f"- input: `{self.input_url}`",
                  f"- {self.provider} / {self.model}, {self.shards} shard(s)" + _batches(
                      self.batch_ids),
                  f"- results: `{self.results_url}`", "",
                  "| metric | value |", "|---|---:|"]
        lines += [f"| {r['metric']} | {r['value']} |" for r in self.cost_rows()]
        if self.reasons:
            lines += ["", "## Not succeeded, by reason", "", "| status | reason | rows |",
                      "|---|---|---:|"]
            lines += [f"| {s} | {r.replace('|', '/')} | {n} |" for s, r, n in self.reasons[:30]]
        return "\n".join(lines) + "\n"


def summarize(ledger: Ledger, run_id: int) -> RunSummary:
    """Roll the run's items up into a summary (costs from the ledger, exact)."""
    run = ledger.run(run_id)
    totals = ledger.totals(run_id)
    counts = ledger.count_items(run_id)
    shard_rows = ledger.shards(run_id)
    return RunSummary(
        run_key=run["run_key"], task=run["task"], provider=run["provider"], model=run["model"],
        rows=sum(counts.values()), counts=counts, reasons=ledger.reasons(run_id),
        input_tokens=totals["input_tokens"], cached_input_tokens=totals["cached_input_tokens"],
        cache_write_tokens=totals["cache_write_tokens"], output_tokens=totals["output_tokens"],
        cache_write_1h_tokens=totals["cache_write_1h_tokens"],
        reasoning_tokens=totals["reasoning_tokens"],
        cost_usd=from_picodollars(totals["cost_picodollars"]),
        live_cost_usd=from_picodollars(totals["live_cost_picodollars"]),
        cache_saving_usd=from_picodollars(totals["cache_saving_picodollars"]),
        shards=len(shard_rows),
        batch_ids=[s["provider_batch_id"] for s in shard_rows if s["provider_batch_id"]],
        results_url=run["results_url"], input_url=run["input_url"],
        window_start=run.get("window_start"), window_end=run.get("window_end"),
        lane=run.get("lane") or "batch", prefect_flow_run_id=run.get("prefect_flow_run_id"),
        estimate_expected_usd=_usd_of(run.get("estimate_expected_picodollars")),
        estimate_upper_usd=_usd_of(run.get("estimate_upper_picodollars")))


def _usd_of(picodollars: int | None) -> Decimal | None:
    return None if picodollars is None else from_picodollars(picodollars)


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)


def _batches(batch_ids: list[str], shown: int = 10) -> str:
    """The provider batch ids, the first few of a long list."""
    if not batch_ids:
        return ""
    more = f" and {len(batch_ids) - shown:,} more" if len(batch_ids) > shown else ""
    return ", batches: " + ", ".join(f"`{b}`" for b in batch_ids[:shown]) + more


def _usd(amount: Decimal) -> str:
    """Dollars with enough places to see sub-cent batch costs."""
    return f"${amount:,.6f}"


def _schema(fields: list[str]) -> pa.Schema:
    import pyarrow as pa

    columns = [("row_number", pa.int64()), ("input_key", pa.string()), ("status", pa.string()),
               ("error_field", pa.string()), ("error_reason", pa.string()),
               ("excerpted", pa.bool_()), ("attempt", pa.int64()), ("raw_text", pa.string())]
    columns += [(f"output_{name}", pa.string()) for name in fields]
    columns += [("input_tokens", pa.int64()), ("cached_input_tokens", pa.int64()),
                ("cache_write_tokens", pa.int64()), ("cache_write_1h_tokens", pa.int64()),
                ("output_tokens", pa.int64()), ("reasoning_tokens", pa.int64()),
                ("cost_usd", pa.decimal128(24, 12)), ("cached_from", pa.string())]
    return pa.schema(columns)


def _parsed(text: str | None, status: str, fields: list[str]) -> tuple[Any, ...]:
    """The answer's value of each output field (as text; JSON for other values), in
    `fields` order; all None for an item without a JSON object answer."""
    if status not in ANSWERED_STATES or not text or not fields:
        return (None,) * len(fields)
    try:
        parsed = json.loads(text)
    except ValueError:  # a cached answer is checked by the lane that stored it; be safe
        return (None,) * len(fields)
    if not isinstance(parsed, dict):
        return (None,) * len(fields)
    values = [parsed.get(name) for name in fields]
    return tuple(value if isinstance(value, str) or value is None else json.dumps(value)
                 for value in values)


def _usd_column(picodollars: Sequence[int]) -> pa.Array:
    """Whole picodollars as the results file's `cost_usd` (decimal128(24, 12), whose
    unscaled value is exactly the picodollars): built from the integers' bytes, not
    from a Decimal a row (a second for 100,000 rows)."""
    import pyarrow as pa

    if sys.byteorder != "little":  # Arrow's decimal bytes are the machine's order
        return pa.array([from_picodollars(p) for p in picodollars], pa.decimal128(24, 12))
    import numpy as np

    low = np.fromiter(picodollars, dtype=np.int64, count=len(picodollars))
    words = np.empty((len(picodollars), 2), dtype=np.int64)
    words[:, 0] = low
    words[:, 1] = low >> 63  # the high word: the sign, extended
    return pa.Array.from_buffers(pa.decimal128(24, 12), len(picodollars),
                                 [None, pa.py_buffer(words)])


_warmed = False


def warm_results_imports() -> float:
    """Import what writing the results file needs, once per process: pyarrow's
    Parquet writer, and pandas, which pyarrow imports on the first array it builds
    from Python objects (about 0.3 s that otherwise came after the last batch).
    Called while waiting for batches (`steps.await_any`), in that thread: two threads
    importing at once can each find a module the other is making half made. Returns
    the seconds it took (0 once done)."""
    global _warmed
    if _warmed:
        return 0.0
    _warmed = True
    started = time.monotonic()
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401 - imported for what the results step needs

        pa.array([0])  # makes pyarrow import pandas now, if it is installed
    except Exception:  # noqa: BLE001 - only a head start; write_results imports again
        pass
    return time.monotonic() - started


def write_results(ctx: LaneContext, run_id: int) -> str:
    """Stream the run's items into one results Parquet file; returns its URL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lanewise.batch.context import storage_prefix

    run = ctx.ledger.run(run_id)
    fields = ctx.task.output.fields()
    schema = _schema(fields)
    url = ctx.storage.url(f"{storage_prefix(run['run_key'])}/results.parquet")
    # Written aside, then moved over: a kill while rewriting a finished run's results
    # never leaves a truncated file behind its results_url.
    partial = url + ".partial"
    with ctx.storage.open(partial, "wb") as handle, \
            pq.ParquetWriter(handle, schema) as writer:
        # Column by column, a ledger page at a time (RESULT_COLUMNS order).
        for page in ctx.ledger.iter_item_pages(run_id, columns=RESULT_COLUMNS):
            (row_number, input_key, status, error_field, error_reason, excerpted, attempt,
             output_text, input_tokens, cached_input_tokens, cache_write_tokens,
             cache_write_1h_tokens, output_tokens, reasoning_tokens, cost_picodollars,
             cached_from) = zip(*page, strict=True)
            answers = [_parsed(text, state, fields)
                       for text, state in zip(output_text, status, strict=True)]
            outputs = list(zip(*answers, strict=True)) if fields else []
            writer.write_table(pa.Table.from_arrays([
                pa.array(row_number, pa.int64()), pa.array(input_key, pa.string()),
                pa.array(status, pa.string()), pa.array(error_field, pa.string()),
                pa.array(error_reason, pa.string()),
                pa.array([bool(flag) for flag in excerpted], pa.bool_()),
                pa.array(attempt, pa.int64()), pa.array(output_text, pa.string()),
                *(pa.array(column, pa.string()) for column in outputs),
                pa.array(input_tokens, pa.int64()), pa.array(cached_input_tokens, pa.int64()),
                pa.array(cache_write_tokens, pa.int64()),
                pa.array(cache_write_1h_tokens, pa.int64()),
                pa.array(output_tokens, pa.int64()), pa.array(reasoning_tokens, pa.int64()),
                _usd_column(cost_picodollars), pa.array(cached_from, pa.string()),
            ], schema=schema))
    ctx.storage.replace(partial, url)
    return url


def summarize_recent(limit: int = 20) -> list[RunSummary]:
    """Summaries of the newest runs in the configured ledger (no provider needed); never
    creates a ledger."""
    from lanewise.ledger import existing_ledger
    from lanewise.settings import get_settings

    ledger = existing_ledger(get_settings())
    return [summarize(ledger, run_id) for run_id in ledger.recent_run_ids(limit)]
