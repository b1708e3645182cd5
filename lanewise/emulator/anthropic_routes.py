"""The Anthropic surface: Messages and Message Batches."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from lanewise.emulator.http_errors import anthropic_credit_error, anthropic_error
from lanewise.emulator.jobs import BatchJob
from lanewise.emulator.live_calls import serve_live_call
from lanewise.emulator.paging import page_after
from lanewise.emulator.state import EmulatorState

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
PROCESSING_STATUS = {"validating": "in_progress", "in_progress": "in_progress",
                     "finalizing": "in_progress", "cancelling": "canceling",
                     "completed": "ended", "expired": "ended", "cancelled": "ended",
                     "failed": "ended"}


def _rfc3339(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, tz=UTC).isoformat().replace("+00:00", "Z")


def results_url(base_url: str, batch_id: str) -> str:
    """The absolute URL of a batch's results on this emulator, from the request's base
    URL (`http://HOST:PORT/`), as the real API gives one on its own host."""
    return f"{base_url.rstrip('/')}/v1/messages/batches/{batch_id}/results"


def batch_object(state: EmulatorState, job: BatchJob, base_url: str,
                 now: float | None = None) -> dict[str, Any]:
    """The MessageBatch object of `job` as it is now (or at `now`)."""
    view = state.view(job, now)
    status = PROCESSING_STATUS[view.phase]
    counts = {"processing": job.total, "succeeded": 0, "errored": 0, "canceled": 0,
              "expired": 0}
    if status == "ended":
        # A job the worker failed on (its input vanished, say) ends without results.
        counts = job.results.get("request_counts") or {**counts, "processing": 0,
                                                        "errored": job.total}
    return {
        "id": job.id, "type": "message_batch", "processing_status": status,
        "request_counts": counts,
        "created_at": _rfc3339(job.created_at),
        "expires_at": _rfc3339(job.created_at + state.config.timing.expiry_seconds),
        "ended_at": _rfc3339(view.ended_at) if status == "ended" else None,
        "cancel_initiated_at": _rfc3339(job.cancel_requested_at),
        "archived_at": None,
        "results_url": results_url(base_url, job.id) if status == "ended" else None,
    }


def build_router(state: EmulatorState) -> APIRouter:
    """Routes of the Anthropic surface, bound to `state`."""
    router = APIRouter()

    @router.post("/v1/messages")
    async def create_message(request: Request) -> Any:
        return await serve_live_call(state, request, "anthropic")

    @router.post("/v1/messages/batches")
    async def create_batch(request: Request) -> Any:
        if state.out_of_credit("anthropic"):
            return anthropic_credit_error()
        limits = state.config.limits
        declared = int(request.headers.get("content-length") or 0)
        if declared > limits.anthropic_max_bytes:
            return anthropic_error(413, f"Request exceeds the {limits.anthropic_max_bytes} "
                                   "byte limit for a Message Batch.")
        raw = await request.body()
        if len(raw) > limits.anthropic_max_bytes:
            return anthropic_error(413, f"Request exceeds the {limits.anthropic_max_bytes} "
                                   "byte limit for a Message Batch.")
        return await asyncio.to_thread(_create_batch, raw, str(request.base_url))

    def _create_batch(raw: bytes, base_url: str) -> Any:
        limits = state.config.limits
        try:
            body = json.loads(raw)
        except ValueError:
            return anthropic_error(400, "The request body is not valid JSON.")
        del raw
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return anthropic_error(400, "requests: must be a non-empty list")
        if len(requests) > limits.anthropic_max_requests:
            return anthropic_error(413, f"A Message Batch holds at most "
                                   f"{limits.anthropic_max_requests} requests; got "
                                   f"{len(requests)}.")
        seen: set[str] = set()
        for index, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                return anthropic_error(400, f"requests.{index}.custom_id: must match "
                                       "^[a-zA-Z0-9_-]{1,64}$")
            if custom_id in seen:
                return anthropic_error(400, f"requests.{index}.custom_id: {custom_id!r} is "
                                       "not unique within the batch")
            seen.add(custom_id)
            if not isinstance(item.get("params"), dict):
                return anthropic_error(400, f"requests.{index}.params: Field required")
        job_id = state.next_id("msgbatch_emu")
        path = state.jobs_dir / f"{job_id}.jsonl"
        with path.open("w") as out:
            for item in requests:
                line = {"custom_id": item["custom_id"], "params": item["params"]}
                out.write(json.dumps(line, separators=(",", ":")) + "\n")
        job = BatchJob(id=job_id, provider="anthropic", input_path=path, total=len(requests),
                       created_at=time.time(), fate=state.batch_fate(job_id))
        state.register(job)
        return batch_object(state, job, base_url)

    @router.get("/v1/messages/batches")
    def list_batches(request: Request, after_id: str | None = None,
                     before_id: str | None = None, limit: int = 20) -> Any:
        if not 1 <= limit <= 1000:
            return anthropic_error(400, "limit: must be between 1 and 1000")
        jobs = sorted((j for j in state.jobs.values()
                       if j.provider == "anthropic" and not j.deleted),
                      key=lambda j: j.id, reverse=True)
        base_url = str(request.base_url)

        def render(job: BatchJob) -> dict[str, Any]:
            return batch_object(state, job, base_url)

        if not before_id:
            return page_after(jobs, lambda j: j.id, after_id, limit, render)
        ids = [j.id for j in jobs]
        end = ids.index(before_id) if before_id in ids else 0
        start = max(end - limit, 0)
        window = jobs[start:end]
        return {"data": [render(j) for j in window], "has_more": start > 0,
                "first_id": window[0].id if window else None,
                "last_id": window[-1].id if window else None}

    def _job(batch_id: str) -> BatchJob | None:
        job = state.jobs.get(batch_id)
        if job is None or job.provider != "anthropic" or job.deleted:
            return None
        return job

    def _missing(batch_id: str) -> JSONResponse:
        return anthropic_error(404, f"No message batch found with id '{batch_id}'.")

    @router.get("/v1/messages/batches/{batch_id}")
    def retrieve_batch(request: Request, batch_id: str) -> Any:
        job = _job(batch_id)
        if job is None:
            return _missing(batch_id)
        return batch_object(state, job, str(request.base_url))

    @router.post("/v1/messages/batches/{batch_id}/cancel")
    def cancel_batch(request: Request, batch_id: str) -> Any:
        """Cancel an in-progress batch: it reads `canceling` (with
        `cancel_initiated_at`) and then `ended`. The docs allow a cancel "any time
        before processing ends"; a batch already canceling or ended comes back as it
        is."""
        job = _job(batch_id)
        if job is None:
            return _missing(batch_id)
        with job.lock:
            now = time.time()
            view = job.view(now, state.config)
            if PROCESSING_STATUS[view.phase] == "in_progress":
                job.cancel_cut = view.done
                job.cancel_requested_at = now
                state.job_store.save_cancel(job)
        return batch_object(state, job, str(request.base_url), now)

    @router.delete("/v1/messages/batches/{batch_id}")
    def delete_batch(batch_id: str) -> Any:
        job = _job(batch_id)
        if job is None:
            return _missing(batch_id)
        if PROCESSING_STATUS[state.view(job).phase] != "ended":
            return anthropic_error(400, f"Message batch {batch_id} is still processing; "
                                   "cancel it and wait for it to end before deleting.")
        job.deleted = True
        state.job_store.save_deleted(job)
        return {"id": batch_id, "type": "message_batch_deleted"}

    @router.get("/v1/messages/batches/{batch_id}/results")
    def batch_results(batch_id: str) -> Any:
        job = _job(batch_id)
        if job is None:
            return _missing(batch_id)
        if PROCESSING_STATUS[state.view(job).phase] != "ended":
            return anthropic_error(400, f"Message batch {batch_id} has not ended yet.")
        if not job.finalized:
            return anthropic_error(500, f"Message batch {batch_id} failed in the emulator: "
                                   f"{(job.failure or {}).get('message')}", kind="api_error")
        return FileResponse(job.results_path, media_type="application/x-jsonl")

    return router
