"""The shard steps: submit, await, collect. Each is idempotent and safe to rerun.

Nobody pays twice: the intent is committed before the provider call that creates a
batch, the batch id right after it; a shard found in `submitting` is first looked for
at the provider (`find_batch`) before anything is created again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema

from lanewise.batch.context import LaneContext
from lanewise.errors import BatchError, TransientProviderError
from lanewise.pricing import Lane, to_picodollars
from lanewise.providers.base import PERMANENT_BATCH_FAILURES, BatchState, ItemOutcome

MAX_CONSECUTIVE_POLL_ERRORS = 10


def submit_shard(ctx: LaneContext, shard_id: int) -> str | None:
    """Create the shard's provider batch unless it exists; returns the batch id."""
    shard = ctx.ledger.shard(shard_id)
    if shard["status"] not in ("planned", "submitting"):
        return shard["provider_batch_id"]
    if shard["status"] == "submitting":
        found = ctx.adapter.find_batch(shard["shard_key"], _shard_custom_ids(ctx, shard),
                                       shard["intent_at"], ctx.ledger.claimed_batch_ids())
        if found is not None:
            _record_submitted(ctx, shard_id, found)
            return found
    ctx.ledger.set_shard(shard_id, status="submitting", intent_at=time.time())
    with ctx.storage.open(shard["jsonl_url"], "rb") as handle:
        batch_id = ctx.adapter.submit(handle, shard["shard_key"], ctx.task.model)
    ctx.crash_hook("after_create")
    _record_submitted(ctx, shard_id, batch_id)
    ctx.crash_hook("after_record")
    return batch_id


def _shard_custom_ids(ctx: LaneContext, shard: dict[str, Any]) -> set[str]:
    """The custom_ids in a shard's JSONL file."""
    with ctx.storage.open(shard["jsonl_url"], "rb") as handle:
        return {json.loads(raw)["custom_id"] for raw in handle if raw.strip()}


def attach_batch(ctx: LaneContext, shard_key: str, batch_id: str) -> None:
    """Record by hand the provider batch of a shard stuck in `submitting`."""
    shard = ctx.ledger.shard_by_key(shard_key)
    if shard is None:
        raise BatchError(f"no shard {shard_key!r} in the ledger")
    if shard["status"] != "submitting":
        raise BatchError(f"shard {shard_key} is {shard['status']}, not submitting; "
                         "only a shard whose batch id was lost can be attached")
    _record_submitted(ctx, shard["id"], batch_id)


def _record_submitted(ctx: LaneContext, shard_id: int, batch_id: str) -> None:
    ctx.ledger.set_shard(shard_id, status="submitted", provider_batch_id=batch_id,
                         submitted_at=time.time())
    ctx.ledger.mark_shard_items(shard_id, "queued", "submitted")


def await_shard(ctx: LaneContext, shard_id: int) -> BatchState | None:
    """Poll with capped doubling waits until the batch is terminal; record how it ended."""
    shard = ctx.ledger.shard(shard_id)
    if shard["status"] != "submitted":
        return None
    batch_id = shard["provider_batch_id"]
    delay = ctx.settings.poll_initial_seconds
    deadline = (shard["submitted_at"] or time.time()) + ctx.settings.batch_timeout_hours * 3600
    errors = 0
    while True:
        try:
            state = ctx.adapter.poll(batch_id)
            errors = 0
        except TransientProviderError:
            errors += 1
            if errors >= MAX_CONSECUTIVE_POLL_ERRORS:
                raise
            state = None
        ctx.crash_hook("mid_poll")
        if state is not None and state.terminal:
            ctx.ledger.set_shard(
                shard_id, status="ended" if state.phase == "ended" else "failed",
                provider_status=state.provider_status, ended_at=time.time(),
                failure=f"{state.failure_code}: {state.failure_message}"
                if state.phase == "failed" else None)
            return state
        if time.time() > deadline:
            raise BatchError(f"batch {batch_id} of shard {shard['shard_key']} is still "
                             f"{state.provider_status if state else 'unknown'} after "
                             f"{ctx.settings.batch_timeout_hours} h")
        ctx.sleep(delay)
        delay = min(delay * 2, ctx.settings.poll_max_seconds)


def _attempt_of(custom_id: str) -> int:
    return int(custom_id.rsplit("--a", 1)[1]) if "--a" in custom_id else 0


def _failure(ctx: LaneContext, custom_id: str, reason: str, retryable: bool) -> dict[str, Any]:
    if retryable and _attempt_of(custom_id) < ctx.task.retry_budget:
        return {"b_custom_id": custom_id, "status": "retry", "error_reason": reason}
    suffix = " (retry budget exhausted)" if retryable else ""
    return {"b_custom_id": custom_id, "status": "failed", "error_reason": reason + suffix}


def _check_output(ctx: LaneContext, text: str | None) -> str | None:
    """Why the output does not match the task's output spec, or None when it does."""
    if text is None or not text.strip():
        return "invalid_output: empty answer"
    if ctx.task.output.type != "json":
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"invalid_output: not JSON ({exc.msg})"
    try:
        jsonschema.validate(value, ctx.task.output.json_schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return f"invalid_output: {where}: {exc.message}"
    return None


def outcome_update(ctx: LaneContext, outcome: ItemOutcome) -> dict[str, Any]:
    """The ledger update for one request's outcome (costs priced from billed usage)."""
    if not outcome.ok:
        reason = f"{outcome.error_kind}: {outcome.error_message or ''}".strip()
        return {**_failure(ctx, outcome.custom_id, reason, outcome.retryable),
                **_zero_usage()}
    usage = outcome.usage
    assert usage is not None
    problem = _check_output(ctx, outcome.text)
    return {
        "b_custom_id": outcome.custom_id,
        "status": "invalid_output" if problem else "succeeded",
        "error_reason": problem,
        "output_text": outcome.text,
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "cost_picodollars": to_picodollars(
            ctx.prices.cost_usd(ctx.task.model, usage, Lane.BATCH)),
        "live_cost_picodollars": to_picodollars(
            ctx.prices.cost_usd(ctx.task.model, usage, Lane.LIVE)),
    }


def _zero_usage() -> dict[str, Any]:
    return {"output_text": None, "input_tokens": 0, "cached_input_tokens": 0,
            "cache_write_tokens": 0, "output_tokens": 0, "cost_picodollars": 0,
            "live_cost_picodollars": 0}


def collect_shard(ctx: LaneContext, shard_id: int) -> None:
    """Turn an ended (or failed) batch's results into item states; idempotent."""
    shard = ctx.ledger.shard(shard_id)
    run_id = shard["run_id"]
    if shard["status"] == "failed":
        code = (shard["failure"] or "failed").split(":", 1)[0]
        retryable = code not in PERMANENT_BATCH_FAILURES
        _fail_remaining(ctx, run_id, shard_id, f"batch failed: {shard['failure']}", retryable)
        ctx.ledger.set_shard(shard_id, status="collected")
        return
    if shard["status"] != "ended":
        return
    raw_url = shard["jsonl_url"].removesuffix(".jsonl") + ".results.jsonl"
    pending: list[dict[str, Any]] = []
    with ctx.storage.open(raw_url, "wb") as raw_sink:
        for outcome in ctx.adapter.results(shard["provider_batch_id"], raw_sink):
            pending.append(outcome_update(ctx, outcome))
            if len(pending) >= ctx.collect_chunk:
                _apply(ctx, run_id, shard_id, pending)
                pending = []
                ctx.crash_hook("mid_collect")
    _apply(ctx, run_id, shard_id, pending)
    _fail_remaining(ctx, run_id, shard_id, "missing from the provider's results", True)
    ctx.ledger.set_shard(shard_id, status="collected")


def _apply(ctx: LaneContext, run_id: int, shard_id: int, updates: list[dict[str, Any]]) -> None:
    # Only items still `submitted` in this shard change: re-collecting is harmless.
    by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for update in updates:
        by_shape.setdefault(tuple(update), []).append(update)
    for group in by_shape.values():
        ctx.ledger.update_items(run_id, group, where_status="submitted", where_shard=shard_id)


def _fail_remaining(ctx: LaneContext, run_id: int, shard_id: int, reason: str,
                    retryable: bool) -> None:
    remaining = [item["custom_id"] for item in ctx.ledger.iter_items(
        run_id, status="submitted", shard_id=shard_id, columns=("row_number", "custom_id"))]
    _apply(ctx, run_id, shard_id, [_failure(ctx, c, reason, retryable) for c in remaining])
