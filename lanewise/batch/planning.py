"""Planning: input rows become ledger items and shard files (first round and retries)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any, Protocol

from lanewise.batch.context import DateWindow, LaneContext, storage_prefix
from lanewise.cache import RequestHasher, batch_savings, lookup_many
from lanewise.errors import ConfigurationError, InputError, LedgerError
from lanewise.inputs import InputRow, read_rows
from lanewise.requests import (
    PreparedRequest,
    RowRejection,
    custom_id_for,
    estimate_tokens,
    prepare,
)
from lanewise.sharding import ClosedShard, LineEncoder, ShardWriter, encode_line

PLAN_CHUNK = 5000
#: Requests in the first shard of a plan whose shards are sent as they are recorded
#: (each next shard twice the last, up to the provider's limits): the provider starts
#: on it after two chunks are planned, not after a whole 50,000-request shard. (From
#: 2,500, a 20,000-row run sent four batches whose uploads slowed its own planning:
#: 100,000 rows gained 0.6 s more, 20,000 rows lost 0.4 s.)
FIRST_SENT_SHARD_REQUESTS = PLAN_CHUNK * 2


class ShardOutlet(Protocol):
    """Where first-round shards go as planning records them, while the rest of the
    input is still planned (the head start's `ShardSender` sends each at once)."""

    def shard_recorded(self, run_id: int, shard_id: int) -> None:
        """Planning recorded this shard."""

    def abort(self) -> None:
        """Send nothing more, and return once nothing is being sent."""


def _chunks(rows: Iterator[InputRow], size: int) -> Iterator[list[InputRow]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def _rejection(rejection: RowRejection) -> dict[str, Any]:
    return {"row_number": rejection.row, "input_key": rejection.key, "status": "rejected",
            "error_field": rejection.field,
            "error_reason": f"row {rejection.row}, field {rejection.field!r}: {rejection.reason}"}


def open_run(ctx: LaneContext, run_key: str, input_url: str,
             window: DateWindow | None = None) -> int:
    """Open (or resume) the run for `run_key`; plan it unless planning already finished
    (or a head start in this process planned it: `plan_ahead`)."""
    from lanewise.batch import plan_ahead

    planned = plan_ahead.planned_run(run_key, input_url, window, log=ctx.log)
    return planned if planned is not None else plan_run_now(ctx, run_key, input_url, window)


def plan_run_now(ctx: LaneContext, run_key: str, input_url: str,
                 window: DateWindow | None = None,
                 outlet: ShardOutlet | None = None) -> int:
    """Open (or resume) the run for `run_key` here; plan it unless planning finished.

    A run that has sent nothing may be pointed at another input (a mistyped path is
    fixed by rerunning with the right one); once a batch was sent, the input is fixed.
    A file-level input problem leaves the run with no items, so a corrected rerun is
    never blocked by it. With an `outlet`, each shard is handed over as it is recorded,
    so its batch may be created before planning ends (`plan_ahead`); a run that crashed
    then resumes planning around the shards it sent (`_resume_planning`).
    """
    task = ctx.task
    run, created = ctx.ledger.open_run(
        run_key, task.name, task.provider, task.model, input_url,
        window.start.isoformat() if window else None, window.end.isoformat() if window else None)
    if run["task"] != task.name:
        raise ConfigurationError(f"run key {run_key!r} belongs to task {run['task']!r}, "
                                 f"not {task.name!r}")
    if not _same_input(run["input_url"], input_url):
        sent = ctx.ledger.sent_shards(run["id"])
        if sent:
            raise ConfigurationError(
                f"run {run_key!r} already sent {sent} batch(es) over {run['input_url']!r}, "
                f"so its input is fixed. Rerun it over that input to resume it, or run "
                f"{input_url!r} under a new run key (--run-key {run_key}-2).")
        ctx.ledger.reset_planning(run["id"], input_url=input_url)
        run = ctx.ledger.run(run["id"])
    if run["status"] == "planning":
        first_index, kept_rows = (0, {}) if created else _resume_planning(ctx, run)
        try:
            plan_first_round(ctx, run["id"], run_key, input_url, window,
                             first_index=first_index, outlet=outlet, kept_rows=kept_rows)
        except InputError:
            # Unreadable or unusable as a whole: keep nothing that a rerun would trip on,
            # unless a batch was sent already (a file failing part way): that plan stays,
            # and the rerun over the same input resumes it. Nothing may be sending
            # while that is decided: a shard claimed after the check would lose its
            # ledger rows to the reset while its batch is created.
            if outlet is not None:
                outlet.abort()
            if not ctx.ledger.sent_shards(run["id"]):
                ctx.ledger.reset_planning(run["id"])
            raise
        ctx.ledger.set_run(run["id"], status="running")
    else:
        _log_resumed(ctx, run)
    return run["id"]


_SHARD_INDEX = re.compile(r"/r0/s(\d+)$")


def _resume_planning(ctx: LaneContext, run: dict[str, Any]) -> tuple[int, dict[int, str]]:
    """After a crash mid-planning: forget what nothing sent, keep the shards whose batch
    was (or may have been) created with their items. Returns the index the next
    first-round shard takes and {row number: key} of the rows those shards hold, which
    planning then skips as it reads the input again (`plan_first_round`)."""
    kept = ctx.ledger.forget_unsent_plan(run["id"])
    if not kept:
        return 0, {}
    ctx.log.info("resuming the planning of run %s: %d shard(s) sent while it planned are "
                 "kept (their batches are reattached, not sent again); the rest of its "
                 "input is planned again", run["run_key"], len(kept))
    indexes = []
    for shard in kept:
        found = _SHARD_INDEX.search(shard["shard_key"])
        if found is None:  # every first-round key is made by `_record_shard`
            raise LedgerError(f"shard {shard['shard_key']!r} of run {run['run_key']!r} is "
                              "not a first-round shard key")
        indexes.append(int(found.group(1)))
    kept_rows = {item["row_number"]: item["dedup_key"] for item in ctx.ledger.iter_items(
        run["id"], columns=("row_number", "dedup_key"))}
    return max(indexes) + 1, kept_rows


def _log_resumed(ctx: LaneContext, run: dict[str, Any]) -> None:
    """Say what a resumed run finds: its batches already created are reattached, not sent
    again."""
    shards = ctx.ledger.shards(run["id"])
    sent = [s for s in shards if s["provider_batch_id"]]
    ctx.log.info("resuming run %s (%s): %d shard(s), %d with a batch already created",
                 run["run_key"], run["status"], len(shards), len(sent))
    for shard in sent:
        if shard["status"] != "collected":
            ctx.log.info("reattached to batch %s of shard %s (%s)", shard["provider_batch_id"],
                         shard["shard_key"], shard["status"])


def _same_input(recorded: str, given: str) -> bool:
    """Whether two input URLs name one input (a local path relative or absolute)."""
    if recorded == given:
        return True
    if "://" in recorded or "://" in given:
        return False
    return os.path.abspath(recorded) == os.path.abspath(given)


def plan_first_round(ctx: LaneContext, run_id: int, run_key: str, input_url: str,
                     window: DateWindow | None, *, first_index: int = 0,
                     outlet: ShardOutlet | None = None,
                     kept_rows: dict[int, str] | None = None) -> None:
    """Read the input in chunks, record every row, and write round-0 shard files
    (numbered from `first_index`; with an `outlet`, each is handed to it as it is
    recorded, and the shards start small and double: `FIRST_SENT_SHARD_REQUESTS`).

    Every accepted row records its request's content hash. For a task whose cache is
    enabled, a row the result cache answers is recorded `cached` (terminal, zero cost,
    its answer copied, `cached_from` naming the original) and never written to a shard.
    The rows of `kept_rows` (row number -> key) are in shards kept from an interrupted
    planning (`_resume_planning`): skipped, once their key is checked unchanged (an
    input that changed under batches already sent stops the run: ConfigurationError).
    """
    kept_rows = kept_rows or {}
    writer = ShardWriter(ctx.storage, f"{storage_prefix(run_key)}/r0/shard",
                         ctx.shard_limits, ctx.shard_token_cap, first_index=first_index,
                         ramp_from=FIRST_SENT_SHARD_REQUESTS if outlet else None)
    token = ctx.ledger.run(run_id)["token"]
    date_column = ctx.task.input.date_column
    encoder = LineEncoder(ctx.adapter, ctx.task)
    hasher = RequestHasher(ctx.adapter, ctx.task)
    rows = read_rows(input_url, _needed_columns(ctx, window))
    read = outside = 0
    for chunk in _chunks(rows, PLAN_CHUNK):
        read += len(chunk)
        accepted: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        requests: dict[int, PreparedRequest] = {}
        first_row_of_key: dict[str, int] = {}
        for row in chunk:
            if window is not None and date_column:
                inside = window.contains(row.values.get(date_column))
                if inside is False:
                    outside += 1
                    continue
                if inside is None and row.problem is None:
                    row.problem = (date_column, "missing or unreadable date")
            outcome = prepare(ctx.task, row)
            if row.number in kept_rows:
                _check_kept_row(row.number, kept_rows[row.number], outcome, input_url)
                continue  # recorded, and in a shard whose batch was created
            if isinstance(outcome, RowRejection):
                rejected.append(_rejection(outcome))
                continue
            if outcome.key in first_row_of_key:
                rejected.append(_rejection(RowRejection(
                    row.number, outcome.key, ctx.task.input.key,
                    f"duplicate key (first at row {first_row_of_key[outcome.key]})")))
                continue
            first_row_of_key[outcome.key] = row.number
            requests[row.number] = outcome
            accepted.append({"row_number": row.number, "input_key": outcome.key,
                             "dedup_key": outcome.key,
                             "custom_id": custom_id_for(outcome.key, 0, token),
                             "status": "pending", "excerpted": outcome.excerpted,
                             "content_hash": hasher.hash(outcome)})
        if ctx.task.cache.enabled:
            _answer_from_cache(ctx, accepted)
        inserted = ctx.ledger.add_items(run_id, accepted, rejected)  # row number -> item id
        again = [a for a in accepted if a["row_number"] not in inserted]
        first_rows = ctx.ledger.rows_of_keys(run_id, [a["dedup_key"] for a in again])
        duplicates = [_rejection(RowRejection(
            a["row_number"], a["input_key"], ctx.task.input.key,
            f"duplicate key (first at row {first_rows[a['dedup_key']]})"
            if a["dedup_key"] in first_rows else "duplicate key (seen in an earlier row)"))
            for a in again]
        if duplicates:
            ctx.ledger.add_items(run_id, [], duplicates)
        for item in accepted:
            if item["row_number"] not in inserted or item["status"] == "cached":
                continue
            request = requests[item["row_number"]]
            line = encoder.encode(item["custom_id"], request)
            ref = (inserted[item["row_number"]], item["custom_id"], 0)
            closed = writer.add(ref, line, request.estimated_tokens)
            if closed is not None:
                shard_id = _record_shard(ctx, run_id, run_key, 0, closed)
                if outlet is not None:
                    outlet.shard_recorded(run_id, shard_id)
                ctx.crash_hook("mid_plan")
    closed = writer.close()
    if closed is not None:
        shard_id = _record_shard(ctx, run_id, run_key, 0, closed)
        if outlet is not None:
            outlet.shard_recorded(run_id, shard_id)
    _log_planned(ctx, run_id, input_url, window, read, outside)


def _check_kept_row(number: int, key: str, outcome: PreparedRequest | RowRejection,
                    input_url: str) -> None:
    """A row of a kept shard must still be the row that was sent."""
    now = outcome.key if isinstance(outcome, PreparedRequest) else None
    if now != key:
        found = f"key {now!r}" if now is not None else "a row it now rejects"
        raise ConfigurationError(
            f"{input_url} changed since batches were sent from it: row {number} held key "
            f"{key!r} and now holds {found}. A run's input is fixed once a batch is sent: "
            "put the file back as it was to resume the run, or run the new file under a "
            "new run key.")


def _answer_from_cache(ctx: LaneContext, accepted: list[dict[str, Any]]) -> int:
    """Turn the accepted rows whose request the result cache answers into `cached` items
    (in place); returns how many. An entry answers while it is unexpired and younger
    than the task's TTL; the row keeps no custom_id, as it is never sent."""
    hits = lookup_many(ctx.ledger, [item["content_hash"] for item in accepted],
                       max_age_hours=ctx.task.cache.ttl_hours)
    if not hits:
        return 0
    savings = batch_savings(ctx.ledger, ctx.prices, hits.values())
    for item in accepted:
        answer = hits.get(item["content_hash"])
        if answer is not None:
            item.update(status="cached", custom_id=None, output_text=answer.output_text,
                        cached_from=answer.source,
                        cache_saving_picodollars=savings[answer.source])
    return sum(1 for item in accepted if item["status"] == "cached")


def _log_planned(ctx: LaneContext, run_id: int, input_url: str, window: DateWindow | None,
                 read: int, outside: int) -> None:
    """Rows read, taken, rejected, and the shards planned (a warning when none was taken)."""
    counts = ctx.ledger.count_items(run_id)
    taken = sum(counts.values())
    picked = f"{taken} dated {window.start}..{window.end} ({outside} outside)" \
        if window is not None else f"{taken} taken"
    cached = f", {counts['cached']} answered from the result cache (not sent)" \
        if counts.get("cached") else ""
    ctx.log.log(logging.INFO if taken else logging.WARNING,
                "read %d row(s) of %s: %s, %d rejected as bad input%s; %d shard(s) planned",
                read, input_url, picked, counts.get("rejected", 0), cached,
                len(ctx.ledger.shards(run_id)))


def _needed_columns(ctx: LaneContext, window: DateWindow | None) -> list[str]:
    """Columns without which no row of the input could be used: a file lacking one
    fails as a whole. Prompt columns not listed as required may be absent (they read
    as empty); the date column is needed only when rows are picked by date."""
    spec = ctx.task.input
    needed = [spec.key, *spec.required]
    if window is not None and spec.date_column:
        needed.append(spec.date_column)
    return needed


def _record_shard(ctx: LaneContext, run_id: int, run_key: str, round_number: int,
                  closed: ClosedShard) -> int:
    """Ledger the shard; its refs are (item id, custom_id in this shard, attempt)."""
    shard = {"shard_key": f"{run_key}/r{round_number}/s{closed.index}",
             "attempt": round_number, "jsonl_url": closed.url,
             "request_count": closed.request_count, "bytes": closed.bytes,
             "estimated_tokens": closed.estimated_tokens}
    if round_number == 0:
        # First-round items were recorded with this custom_id and attempt 0: only
        # their shard and state change (fewer columns and index entries written).
        assignments = [{"b_id": item_id} for item_id, _, _ in closed.refs]
    else:
        assignments = [{"b_id": item_id, "custom_id": custom_id, "attempt": attempt}
                       for item_id, custom_id, attempt in closed.refs]
    return ctx.ledger.add_shard(run_id, shard, assignments)


def plan_retries(ctx: LaneContext, run_id: int, run_key: str) -> None:
    """Put every item waiting for a retry into follow-up shards, copying its request line."""
    shard_rows = ctx.ledger.shards(run_id)
    run = ctx.ledger.run(run_id)
    round_number = max((s["attempt"] for s in shard_rows), default=-1) + 1
    waiting: dict[int, dict[str, dict[str, Any]]] = {}
    for item in ctx.ledger.iter_items(run_id, status="retry",
                                      columns=("row_number", "id", "custom_id", "shard_id",
                                               "input_key", "attempt")):
        waiting.setdefault(item["shard_id"], {})[item["custom_id"]] = item
    if not waiting:
        return
    existing = sum(1 for s in shard_rows if s["attempt"] == round_number)
    writer = ShardWriter(ctx.storage, f"{storage_prefix(run_key)}/r{round_number}/shard",
                         ctx.shard_limits, ctx.shard_token_cap, first_index=existing)
    found: set[int] = set()
    for shard in shard_rows:
        wanted = waiting.get(shard["id"])
        if not wanted:
            continue
        with ctx.storage.open(shard["jsonl_url"], "rb") as source:
            for raw in source:
                line = json.loads(raw)
                item = wanted.get(line["custom_id"])
                if item is None:
                    continue
                attempt = item["attempt"] + 1
                line["custom_id"] = custom_id_for(item["input_key"], attempt, run["token"])
                found.add(item["id"])
                body = line.get("body") or line.get("params") or {}
                tokens = estimate_tokens(ctx.task, body.get("system"), body.get("messages", []))
                closed = writer.add((item["id"], line["custom_id"], attempt), encode_line(line),
                                    tokens)
                if closed is not None:
                    _record_shard(ctx, run_id, run_key, round_number, closed)
    closed = writer.close()
    if closed is not None:
        _record_shard(ctx, run_id, run_key, round_number, closed)
    lost = [{"b_id": item["id"], "status": "failed",
             "error_reason": "retry impossible: the request line is missing from its shard file"}
            for wanted in waiting.values() for item in wanted.values() if item["id"] not in found]
    ctx.ledger.update_items(lost, where_status="retry")
    planned = sum(1 for s in ctx.ledger.shards(run_id) if s["attempt"] == round_number)
    ctx.log.info("retries planned in round r%d: %d request(s) in %d shard(s)", round_number,
                 len(found), planned - existing)
    if lost:
        ctx.log.warning("%d request(s) cannot be retried (their line is missing from the "
                        "shard file): marked failed", len(lost))

