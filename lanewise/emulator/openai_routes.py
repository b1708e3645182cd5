"""The OpenAI surface: files, batches and chat completions."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from lanewise.emulator.config import ORGANIZATION_ID
from lanewise.emulator.http_errors import openai_error, openai_quota_error
from lanewise.emulator.jobs import TERMINAL_PHASES, BatchJob
from lanewise.emulator.live_calls import serve_live_call
from lanewise.emulator.paging import page_after
from lanewise.emulator.state import EmulatorState
from lanewise.tokens import count_prompt_tokens

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions",
             "/v1/moderations")
PHASE_STAMPS = {"failed": "failed_at", "completed": "completed_at", "expired": "expired_at",
                "cancelled": "cancelled_at"}


def validate_input(state: EmulatorState, path, endpoint: str) -> tuple[dict | None, int, str | None,
                                                                        int]:
    """Stream-check a batch input file: (failure, lines, model, estimated input tokens)."""
    limits = state.config.limits
    seen: set[str] = set()
    model: str | None = None
    tokens = 0
    count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            count += 1
            if count > limits.openai_max_requests:
                return ({"code": "too_many_tasks", "line": None, "param": None,
                         "message": f"The batch input file has more than "
                         f"{limits.openai_max_requests} requests."}, count, model, tokens)
            try:
                line = json.loads(raw)
                if not isinstance(line, dict):
                    raise ValueError("not an object")
            except ValueError:
                return ({"code": "invalid_json_line", "line": number, "param": None,
                         "message": f"This line is not parseable as valid JSON (line {number})."},
                        count, model, tokens)
            custom_id = line.get("custom_id")
            body = line.get("body")
            if not isinstance(custom_id, str) or not isinstance(body, dict) or line.get(
                    "method") != "POST":
                return ({"code": "invalid_request", "line": number, "param": None,
                         "message": "Each line needs custom_id, method POST, url and body."},
                        count, model, tokens)
            if custom_id in seen:
                return ({"code": "duplicate_custom_id", "line": number, "param": "custom_id",
                         "message": f"The custom_id {custom_id!r} is not unique."},
                        count, model, tokens)
            seen.add(custom_id)
            if line.get("url") != endpoint:
                return ({"code": "url_mismatch", "line": number, "param": "url",
                         "message": f"The url {line.get('url')!r} does not match the batch "
                         f"endpoint {endpoint!r}."}, count, model, tokens)
            line_model = body.get("model")
            if model is None:
                model = line_model
            elif line_model != model:
                return ({"code": "model_mismatch", "line": number, "param": "body.model",
                         "message": f"The model {line_model!r} differs from the batch's model "
                         f"{model!r}; a batch may use one model only."}, count, model, tokens)
            messages = body.get("messages") if isinstance(body.get("messages"), list) else []
            rf = body.get("response_format") or {}
            schema = (rf.get("json_schema") or {}).get("schema") if isinstance(rf, dict) else None
            tokens += count_prompt_tokens([m for m in messages if isinstance(m, dict)],
                                          schema=schema)
    if count == 0:
        return ({"code": "empty_file", "line": None, "param": None,
                 "message": "The batch input file is empty."}, 0, model, 0)
    return None, count, model, tokens


def batch_object(state: EmulatorState, job: BatchJob, now: float | None = None) -> dict[str, Any]:
    """The OpenAI Batch object of `job` as it is now (or at `now`)."""
    view = state.view(job, now)
    obj: dict[str, Any] = {
        "id": job.id, "object": "batch", "endpoint": job.endpoint, "model": job.model,
        "errors": None, "input_file_id": job.input_file_id, "completion_window": "24h",
        "status": view.phase, "output_file_id": None, "error_file_id": None,
        "created_at": int(job.created_at),
        "in_progress_at": int(view.in_progress_at) if view.in_progress_at else None,
        "expires_at": int(job.created_at + state.config.timing.expiry_seconds),
        "finalizing_at": int(view.finalizing_at) if view.finalizing_at else None,
        "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": job.total, "completed": 0, "failed": 0},
        "usage": None, "metadata": job.metadata,
    }
    if job.cancel_requested_at is not None:
        obj["cancelling_at"] = int(job.cancel_requested_at)
    if view.phase in PHASE_STAMPS and view.ended_at:
        obj[PHASE_STAMPS[view.phase]] = int(view.ended_at)
    if view.phase == "failed":
        obj["errors"] = {"object": "list", "data": [job.failure]}
        obj["request_counts"] = {"total": job.total if job.failure.get("code") not in (
            "invalid_json_line",) else 0, "completed": 0, "failed": 0}
    elif job.finalized:
        results = job.results
        obj.update(output_file_id=results["output_file_id"],
                   error_file_id=results["error_file_id"], usage=results["usage"])
        obj["request_counts"] = {"total": job.total, "completed": results["completed"],
                                 "failed": results["failed"]}
    else:
        ok, errored = job.counts(view.done)
        obj["request_counts"] = {"total": job.total, "completed": ok, "failed": errored}
    return obj


def build_router(state: EmulatorState) -> APIRouter:
    """Routes of the OpenAI surface, bound to `state`."""
    router = APIRouter()

    @router.post("/v1/files")
    def upload_file(file: Annotated[UploadFile, File()],
                    purpose: Annotated[str, Form()]) -> Any:
        if state.out_of_credit("openai"):
            return openai_quota_error()
        if purpose not in ("batch", "batch_output", "user_data", "fine-tune", "assistants",
                           "vision", "evals"):
            return openai_error(400, f"Invalid purpose {purpose!r}.", param="purpose")
        stored = state.files.save_stream(file.file, file.filename or "upload.jsonl", purpose)
        return stored.to_api()

    @router.get("/v1/files")
    def list_files(after: str | None = None, limit: int = 10_000, order: str = "desc",
                   purpose: str | None = None) -> Any:
        files = [f for f in state.files.all() if purpose in (None, f.purpose)]
        if order == "desc":
            files.reverse()
        page = page_after(files, lambda f: f.id, after, max(1, min(limit, 10_000)),
                          lambda f: f.to_api())
        return {"object": "list", **page}

    @router.get("/v1/files/{file_id}")
    def retrieve_file(file_id: str) -> Any:
        stored = state.files.get(file_id)
        if stored is None:
            return openai_error(404, f"No such File object: {file_id}", param="id")
        return stored.to_api()

    @router.get("/v1/files/{file_id}/content")
    def file_content(file_id: str) -> Any:
        stored = state.files.get(file_id)
        if stored is None:
            return openai_error(404, f"No such File object: {file_id}", param="id")
        return FileResponse(stored.path, media_type="application/octet-stream")

    @router.delete("/v1/files/{file_id}")
    def delete_file(file_id: str) -> Any:
        if not state.files.delete(file_id):
            return openai_error(404, f"No such File object: {file_id}", param="id")
        return {"id": file_id, "object": "file", "deleted": True}

    @router.post("/v1/batches")
    async def create_batch(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return openai_error(400, "The request body is not valid JSON.")
        return await asyncio.to_thread(_create_batch, body)

    def _create_batch(body: dict[str, Any]) -> Any:
        if state.out_of_credit("openai"):
            return openai_quota_error()
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            return openai_error(400, f"Invalid endpoint {endpoint!r}.", param="endpoint")
        if body.get("completion_window") != "24h":
            return openai_error(400, "completion_window must be '24h'.",
                                param="completion_window")
        metadata = body.get("metadata") or None
        if metadata is not None:
            bad = len(metadata) > 16 or any(
                len(str(k)) > 64 or not isinstance(v, str) or len(v) > 512
                for k, v in metadata.items())
            if bad:
                return openai_error(400, "metadata: at most 16 pairs, keys <= 64 chars, "
                                    "string values <= 512 chars.", param="metadata")
        stored = state.files.get(body.get("input_file_id", ""))
        if stored is None:
            return openai_error(400, f"No such File object: {body.get('input_file_id')}",
                                param="input_file_id")
        if stored.purpose != "batch":
            return openai_error(400, "The input file must have purpose 'batch'.",
                                param="input_file_id")
        now = time.time()
        job_id = state.next_id("batch_emu")
        if stored.bytes > state.config.limits.openai_max_file_bytes:
            failure, count, model, tokens = ({
                "code": "file_too_large", "line": None, "param": None,
                "message": f"The input file is larger than the "
                f"{state.config.limits.openai_max_file_bytes} byte limit."}, 0, None, 0)
        else:
            failure, count, model, tokens = validate_input(state, stored.path, endpoint)
        job = BatchJob(id=job_id, provider="openai", input_path=stored.path, total=count,
                       created_at=now, model=model, endpoint=endpoint,
                       input_file_id=stored.id, metadata=metadata, enqueued_tokens=tokens,
                       failure=failure, fate=state.batch_fate(job_id))
        with state.lock:
            if failure is None and model is not None:
                limit = state.config.limits.enqueued_limit(model)
                enqueued = state.active_enqueued_tokens(model, now)
                if enqueued + tokens > limit:
                    job.failure = {
                        "code": "token_limit_exceeded", "line": None, "param": None,
                        "message": f"Enqueued token limit reached for {model} in "
                        f"organization {ORGANIZATION_ID}. Limit: {limit:,} enqueued tokens. "
                        "Please try submitting your batch again later."}
            if job.failure is None and job.fate == "fail":
                job.failure = {"code": "batch_failed", "line": None, "param": None,
                               "message": "The batch failed (emulated whole-batch fault)."}
            state.register(job)
        return batch_object(state, job)

    @router.get("/v1/batches")
    def list_batches(after: str | None = None, limit: int = 20) -> Any:
        if not 1 <= limit <= 100:
            return openai_error(400, "limit must be between 1 and 100.", param="limit")
        jobs = sorted((j for j in state.jobs.values() if j.provider == "openai"),
                      key=lambda j: j.id, reverse=True)
        page = page_after(jobs, lambda j: j.id, after, limit, lambda j: batch_object(state, j))
        return {"object": "list", **page}

    def _job(batch_id: str) -> BatchJob | None:
        job = state.jobs.get(batch_id)
        return job if job is not None and job.provider == "openai" else None

    @router.get("/v1/batches/{batch_id}")
    def retrieve_batch(batch_id: str) -> Any:
        job = _job(batch_id)
        if job is None:
            return openai_error(404, f"No batch found with id '{batch_id}'.")
        return batch_object(state, job)

    @router.post("/v1/batches/{batch_id}/cancel")
    def cancel_batch(batch_id: str) -> Any:
        job = _job(batch_id)
        if job is None:
            return openai_error(404, f"No batch found with id '{batch_id}'.")
        with job.lock:
            now = time.time()
            view = job.view(now, state.config)
            if view.phase in TERMINAL_PHASES or view.phase == "cancelling":
                # What the real API answers (a 409 Conflict, which the SDKs retry twice
                # before raising ConflictError): the batch is left as it is.
                return openai_error(409, f"Cannot cancel a batch with status '{view.phase}'.")
            job.cancel_cut = view.done
            job.cancel_requested_at = now
            state.job_store.save_cancel(job)
        return batch_object(state, job, now)  # reads `cancelling` at the cancel's instant

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await serve_live_call(state, request, "openai")

    return router
