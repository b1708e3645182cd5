"""The shard steps: submit, await, collect. Each is idempotent and safe to rerun.

Nobody pays twice: the intent is committed before the provider call that creates a
batch, the batch id right after it; a shard found in `submitting` is first looked for
at the provider (`find_batch`) before anything is created again.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import jsonschema

from lanewise import cache
from lanewise.batch.context import LaneContext
from lanewise.batch.results import warm_results_imports
from lanewise.errors import (
    BatchError,
    QuotaExhaustedError,
    RunBusyError,
    TransientProviderError,
)
from lanewise.ledger.lease import RunLease
from lanewise.memo import per_object
from lanewise.pricing import Lane
from lanewise.providers.base import (
    PERMANENT_BATCH_FAILURES,
    TOKEN_LIMIT_FAILURE,
    BatchState,
    ItemOutcome,
    stated_token_limit,
)
from lanewise.schema_check import quick_check

MAX_CONSECUTIVE_POLL_ERRORS = 10
OUT_OF_CREDIT = "out of credit (insufficient_quota), waiting for a rerun after a top-up"


def submit_shard(ctx: LaneContext, shard_id: int) -> str | None:
    """Create the shard's provider batch unless it exists; returns the batch id.

    An account out of credit (QuotaExhaustedError) stops here and leaves the shard
    `planned`, so that the rerun creates its batch.
    """
    shard = ctx.ledger.shard(shard_id)
    if shard["status"] not in ("planned", "submitting"):
        return shard["provider_batch_id"]
    run_key = ctx.ledger.run(shard["run_id"])["run_key"]
    with _driving(ctx, run_key) as lease:
        shard = ctx.ledger.shard(shard_id)  # again, now that this process drives the run
        if shard["status"] not in ("planned", "submitting"):
            return shard["provider_batch_id"]
        if shard["status"] == "submitting":
            found = ctx.adapter.find_batch(shard["shard_key"], _shard_custom_ids(ctx, shard),
                                           shard["intent_at"], ctx.ledger.claimed_batch_ids())
            if found is not None:
                ctx.ledger.record_submitted(shard_id, found)
                ctx.log.info("reattached shard %s to batch %s, found at the provider (its "
                             "create was interrupted); nothing sent again",
                             shard["shard_key"], found)
                return ctx.ledger.shard(shard_id)["provider_batch_id"]
        # Nobody pays twice: the intent is a compare-and-set under the run's lease, so
        # no second process can create this shard's batch in parallel.
        if not ctx.ledger.claim_shard(shard_id, shard["status"], run_key, lease.holder):
            raise RunBusyError(f"shard {shard['shard_key']} was claimed by another process, "
                               f"or this process lost the lease of run {run_key}; "
                               "it created nothing")
        ctx.crash_hook("after_intent")
        try:
            with ctx.storage.open(shard["jsonl_url"], "rb") as handle:
                batch_id = ctx.adapter.submit(handle, shard["shard_key"], ctx.task.model)
        except QuotaExhaustedError as exc:
            # The provider refused the create (out of credit): no batch exists, so the
            # shard goes back to `planned` and a rerun creates it without searching.
            ctx.ledger.set_shard(shard_id, status="planned", intent_at=None)
            raise exc.for_run(run_key) from exc.__cause__  # named; same cause
        ctx.crash_hook("after_create")
        if not ctx.ledger.record_submitted(shard_id, batch_id):
            # Another process recorded a batch for this shard while this one was
            # creating (its lease lapsed in between): cancel ours, so only one is paid.
            ctx.adapter.cancel(batch_id)
            raise RunBusyError(f"shard {shard['shard_key']} got a batch from another "
                               f"process while this one created {batch_id}; cancelled "
                               f"{batch_id} and stopped")
        ctx.crash_hook("after_record")
        ctx.log.info("created batch %s for shard %s (%d requests)", batch_id,
                     shard["shard_key"], shard["request_count"])
        return batch_id


@contextlib.contextmanager
def _driving(ctx: LaneContext, run_key: str) -> Iterator[RunLease]:
    """The run's lease: the one this process holds, or one taken for this step."""
    if ctx.lease is not None and ctx.lease.run_key == run_key:
        ctx.lease.ensure()  # fence: a lapsed or taken-over lease stops the step here
        yield ctx.lease
        return
    with RunLease(ctx.ledger, run_key, ttl=ctx.settings.lease_seconds,
                  wait_seconds=ctx.settings.lease_wait_seconds) as lease:
        yield lease


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
    run_key = ctx.ledger.run(shard["run_id"])["run_key"]
    with _driving(ctx, run_key):
        ctx.ledger.record_submitted(shard["id"], batch_id)


def await_any(ctx: LaneContext, shard_ids: list[int]) -> list[int]:
    """Poll every in-flight batch of `shard_ids` in one loop until at least one has
    ended; record how each ended, and return those shards (already ended ones at once).

    One poll covers them all (the adapter may use the provider's list endpoint). The
    wait between polls follows the youngest batch's age (`poll_lateness` of it, within
    `poll_initial_seconds` and `poll_max_seconds`): quick while batches are young, and
    no batch is noticed much later than it ended, relative to how long it ran.
    """
    shards = {shard_id: ctx.ledger.shard(shard_id) for shard_id in shard_ids}
    running = {sid: s for sid, s in shards.items() if s["status"] == "submitted"}
    done = [sid for sid, s in shards.items() if s["status"] in ("ended", "failed")]
    if done or not running:
        return done
    errors = 0
    while True:
        try:
            states = ctx.adapter.poll_many(s["provider_batch_id"] for s in running.values())
            errors = 0
        except TransientProviderError:
            errors += 1
            if errors >= MAX_CONSECUTIVE_POLL_ERRORS:
                raise
            states = {}
        ctx.crash_hook("mid_poll")
        now = time.time()
        ended = []
        for shard_id, shard in running.items():
            state = states.get(shard["provider_batch_id"])
            if state is not None and state.terminal:
                _record_end(ctx, shard_id, state)
                ended.append(shard_id)
            elif now > _deadline(ctx, shard):
                raise BatchError(f"batch {shard['provider_batch_id']} of shard "
                                 f"{shard['shard_key']} is still "
                                 f"{state.provider_status if state else 'unknown'} after "
                                 f"{ctx.settings.batch_timeout_hours} h")
        if ended:
            return ended
        youngest = min(now - (s["submitted_at"] or now) for s in running.values())
        # Once per process, the results step's imports, in time spent waiting anyway.
        warming = warm_results_imports()
        ctx.sleep(max(poll_delay(ctx, youngest) - warming, 0.0))


def poll_delay(ctx: LaneContext, age_seconds: float) -> float:
    """The wait before the next poll of batches whose youngest is `age_seconds` old."""
    settings = ctx.settings
    return min(settings.poll_max_seconds,
               max(settings.poll_initial_seconds, age_seconds * settings.poll_lateness))


def _deadline(ctx: LaneContext, shard: dict[str, Any]) -> float:
    return (shard["submitted_at"] or time.time()) + ctx.settings.batch_timeout_hours * 3600


def _record_end(ctx: LaneContext, shard_id: int, state: BatchState) -> None:
    shard = ctx.ledger.shard(shard_id)
    if state.phase == "ended":
        ctx.log.info("batch %s of shard %s ended: %s", shard["provider_batch_id"],
                     shard["shard_key"], state.provider_status)
    else:
        ctx.log.warning("batch %s of shard %s failed: %s: %s", shard["provider_batch_id"],
                        shard["shard_key"], state.failure_code, state.failure_message)
    ctx.ledger.set_shard(
        shard_id, status="ended" if state.phase == "ended" else "failed",
        provider_status=state.provider_status,
        # The provider's end time, not when this poll saw it: the provider's bill is
        # dated by it, and reconcile compares per day.
        ended_at=state.ended_at or time.time(),
        failure=f"{state.failure_code}: {state.failure_message}"
        if state.phase == "failed" else None)


def await_shard(ctx: LaneContext, shard_id: int) -> None:
    """Poll one shard's batch until it has ended, and record how it ended."""
    while shard_id not in await_any(ctx, [shard_id]):
        pass


def _failure(ctx: LaneContext, attempt: int, reason: str, retryable: bool) -> dict[str, Any]:
    if retryable and attempt < ctx.task.retry_budget:
        return {"status": "retry", "error_reason": reason}
    suffix = " (retry budget exhausted)" if retryable else ""
    return {"status": "failed", "error_reason": reason + suffix}


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
    quick = quick_check(ctx.task.output.json_schema)
    if quick is not None and quick(value):
        return None  # surely valid: jsonschema would find nothing (lanewise/schema_check.py)
    error = jsonschema.exceptions.best_match(
        _validator(ctx.task.output.json_schema).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"invalid_output: {where}: {error.message}"
    return None


@per_object
def _validator(schema: dict[str, Any]) -> Any:
    """A checked validator per schema, built once: validating each answer with a fresh
    `jsonschema.validate` re-checks the schema itself every time (90% of collect time)."""
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def outcome_update(ctx: LaneContext, outcome: ItemOutcome, attempt: int) -> dict[str, Any]:
    """The ledger update for one request's outcome (costs priced from billed usage)."""
    if not outcome.ok and outcome.out_of_credit:
        # Not the item's fault: it waits for a rerun after a top-up, whatever its budget
        # (collect_shard then stops the run).
        return {"status": "retry", "error_reason": f"{OUT_OF_CREDIT}: "
                f"{outcome.error_message or ''}".strip(), **_zero_usage()}
    if not outcome.ok:
        reason = f"{outcome.error_kind}: {outcome.error_message or ''}".strip()
        return {**_failure(ctx, attempt, reason, outcome.retryable),
                **_zero_usage()}
    usage = outcome.usage
    assert usage is not None
    problem = _check_output(ctx, outcome.text)
    return {
        "status": "invalid_output" if problem else "succeeded",
        "error_reason": problem,
        "output_text": outcome.text,
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_picodollars": ctx.prices.cost_picodollars(ctx.task.model, usage, Lane.BATCH),
        "live_cost_picodollars": ctx.prices.cost_picodollars(ctx.task.model, usage, Lane.LIVE),
    }


def _zero_usage() -> dict[str, Any]:
    return {"output_text": None, "input_tokens": 0, "cached_input_tokens": 0,
            "cache_write_tokens": 0, "cache_write_1h_tokens": 0, "output_tokens": 0,
            "reasoning_tokens": 0, "cost_picodollars": 0, "live_cost_picodollars": 0}


def collect_shard(ctx: LaneContext, shard_id: int) -> str:
    """Turn an ended (or failed) batch's results into item states; idempotent. Returns
    the shard's status after: `collected`, or `planned` for a batch the provider
    refused for its enqueued-token limit (sent again once room frees).

    Item updates are committed in chunks; the last chunk and the shard's `collected`
    go in one transaction, so a collected shard never has an unfinished item. For a
    task whose cache is enabled, each chunk's succeeded answers are stored in the
    result cache in the transaction that records them (source `item:<id>`), so a
    crash never leaves an answer recorded but not cached, or cached but not recorded.
    """
    shard = ctx.ledger.shard(shard_id)
    if shard["status"] == "failed":
        code, _, message = (shard["failure"] or "failed").partition(": ")
        if code == TOKEN_LIMIT_FAILURE and _requeue_refused(ctx, shard, message):
            return "planned"
        retryable = code not in PERMANENT_BATCH_FAILURES
        ctx.ledger.repair_shard_items(shard_id)
        ctx.ledger.finish_collect(shard_id, _remaining(
            ctx, shard_id, f"batch failed: {shard['failure']}", retryable, set()))
        return "collected"
    if shard["status"] != "ended":
        return shard["status"]
    # Items still `queued` in a shard with a batch id come from a ledger written before
    # the submit record was one transaction; the provider's results settle them.
    ctx.ledger.repair_shard_items(shard_id)
    # Only items still `submitted` in this shard change, so collecting again after a
    # crash skips what was already recorded.
    waiting = ctx.ledger.shard_item_ids(shard_id, "submitted")
    hashes = ctx.ledger.shard_item_hashes(shard_id, "submitted") \
        if ctx.task.cache.enabled else None
    raw_url = shard["jsonl_url"].removesuffix(".jsonl") + ".results.jsonl"
    pending: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    settled: set[int] = set()
    out_of_credit = 0
    with ctx.storage.open(raw_url, "wb") as raw_sink:
        for outcome in ctx.adapter.results(shard["provider_batch_id"], raw_sink):
            item = waiting.pop(outcome.custom_id, None)
            if item is None:
                continue  # recorded before a crash, or not this shard's
            item_id, attempt = item
            settled.add(item_id)
            out_of_credit += outcome.out_of_credit
            update = outcome_update(ctx, outcome, attempt)
            pending.append({"b_id": item_id, **update})
            if hashes is not None and update["status"] == "succeeded" and hashes.get(item_id):
                answers.append(_cache_entry(ctx, hashes[item_id], item_id, update))
            if len(pending) >= ctx.collect_chunk:
                ctx.ledger.update_items(pending, where_status="submitted", answers=answers)
                pending, answers = [], []
                ctx.crash_hook("mid_collect")
    missing = _remaining(ctx, shard_id, "missing from the provider's results", True, settled)
    ctx.ledger.finish_collect(shard_id, pending + missing, answers)
    ctx.log.info("collected shard %s (batch %s): %d result(s)", shard["shard_key"],
                 shard["provider_batch_id"], len(settled))
    if out_of_credit:
        # Collected and committed first: the rerun after a top-up plans these again.
        run_key = ctx.ledger.run(shard["run_id"])["run_key"]
        raise QuotaExhaustedError(ctx.task.provider, run_key,
                                  detail=f"{out_of_credit} request(s) of shard "
                                  f"{shard['shard_key']} refused for credit")
    return "collected"


def _cache_entry(ctx: LaneContext, content_hash: str, item_id: int,
                 update: dict[str, Any]) -> dict[str, Any]:
    """The result-cache entry of one succeeded batch answer (what it cost, both lanes)."""
    task = ctx.task
    return cache.entry(content_hash, task, task.provider, task.model, update["output_text"],
                       f"item:{item_id}", update["cost_picodollars"],
                       update["live_cost_picodollars"], task.cache.ttl_hours)


def _requeue_refused(ctx: LaneContext, shard: dict[str, Any], message: str) -> bool:
    """A batch refused for the enqueued-token limit never ran and cost nothing: learn
    the limit it states, and put the shard back to `planned` with its items' retry
    budget untouched. False when the shard alone is over the stated limit (it could
    never be sent as it is: its items are retried in smaller shards instead)."""
    stated = stated_token_limit(message)
    if stated is not None:
        ctx.learn_token_limit(stated)
        if shard["estimated_tokens"] > stated:
            return False
    # One transaction, compare-and-set on this batch id: the shard and its items go
    # back together, so a rerun sees either the refused batch or a planned shard.
    ctx.ledger.requeue_shard(shard["id"], shard["provider_batch_id"])
    ctx.log.info("batch %s of shard %s was refused for the enqueued-token limit (%s); "
                 "it is sent again once room frees", shard["provider_batch_id"],
                 shard["shard_key"], f"limit {stated:,}" if stated else "limit not stated")
    return True


def _remaining(ctx: LaneContext, shard_id: int, reason: str, retryable: bool,
               settled: set[int]) -> list[dict[str, Any]]:
    """Failure updates for the shard's items still `submitted` and not in `settled`."""
    remaining = ctx.ledger.shard_item_ids(shard_id, "submitted")
    return [{"b_id": item_id, **_failure(ctx, attempt, reason, retryable)}
            for item_id, attempt in remaining.values() if item_id not in settled]
