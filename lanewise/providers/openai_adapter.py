"""OpenAI: chat completions live, and the Batch API (files + batches) for the batch lane."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

import openai

from lanewise.catalog import TaskSpec
from lanewise.errors import ConfigurationError, ProviderError
from lanewise.pricing import Usage
from lanewise.providers.base import (
    RESULTS_CHUNK_BYTES,
    BatchLimits,
    BatchState,
    ItemOutcome,
    LiveReply,
    ProviderAdapter,
    jsonl_lines,
)
from lanewise.providers.sdk_errors import (
    OPENAI_QUOTA_CODE,
    is_quota_error,
    is_retryable_status,
    translated,
)
from lanewise.requests import PreparedRequest
from lanewise.tokens import reasoning_budget_tokens

ENDPOINT = "/v1/chat/completions"
SHARD_METADATA_KEY = "lanewise_shard"
RUNNING = {"validating", "in_progress", "finalizing", "cancelling"}
NEVER_RAN_RETRYABLE = {"batch_expired", "batch_cancelled"}


class OpenAIAdapter(ProviderAdapter):
    """OpenAI behind lanewise's adapter interface."""

    name = "openai"
    limits = BatchLimits(max_requests=50_000, max_bytes=200 * 1024 * 1024,
                         enqueued_token_budget=2_000_000)
    capabilities = frozenset({"live", "batch", "json_schema", "prompt_cache",
                              "batch_metadata"})

    def __init__(self, client: openai.OpenAI,
                 async_client: openai.AsyncOpenAI | None = None) -> None:
        self.client = client
        self.async_client = async_client

    def request_body(self, task: TaskSpec, request: PreparedRequest) -> dict[str, Any]:
        """A chat.completions body; JSON tasks use a strict `json_schema` response format."""
        messages = ([{"role": "system", "content": request.system}] if request.system else [])
        body: dict[str, Any] = {"model": task.model, "messages": messages + request.messages,
                                # A reasoning model spends its reasoning tokens from
                                # this cap too: budget them on top of the answer, or
                                # the visible answer comes back empty ("length").
                                "max_completion_tokens": task.max_output_tokens
                                + reasoning_budget_tokens(task.model,
                                                          task.max_output_tokens)}
        if task.output.type == "json":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": task.name.replace("-", "_"), "schema": task.output.json_schema,
                "strict": True}}
        return body

    def batch_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """One Batch API input line."""
        return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}

    def submit(self, jsonl_handle: Any, shard_key: str, model: str) -> str:
        """Upload the shard's JSONL and create the batch, tagged with the shard key."""
        with translated(self.name, "upload batch file"):
            upload = self.client.files.create(file=(f"{shard_key}.jsonl", jsonl_handle),
                                              purpose="batch")
        with translated(self.name, "create batch"):
            # No SDK retry: a retried create after a lost response would be a second
            # paid batch. A failure goes back to the step, whose rerun finds the batch
            # by its shard metadata before it creates again.
            batch = self.client.with_options(max_retries=0).batches.create(
                input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h",
                metadata={SHARD_METADATA_KEY: shard_key})
        return batch.id

    def find_batch(self, shard_key: str, custom_ids: set[str], created_after: float,
                   claimed: set[str]) -> str | None:
        """Find the batch by its `lanewise_shard` metadata (newest first, stop when older)."""
        with translated(self.name, "list batches"):
            for batch in self.client.batches.list(limit=100):
                if batch.created_at < created_after - 300:
                    break
                if batch.status == "failed":
                    # Refused at validation (e.g. token_limit_exceeded): it never ran
                    # and nothing was billed, so it is not the shard's live batch.
                    continue
                if (batch.metadata or {}).get(SHARD_METADATA_KEY) == shard_key:
                    return batch.id
        return None

    def poll(self, batch_id: str) -> BatchState:
        """Map the Batch object onto running / ended / failed."""
        with translated(self.name, "retrieve batch"):
            return self._state(self.client.batches.retrieve(batch_id))

    def poll_many(self, batch_ids: Iterable[str]) -> dict[str, BatchState]:
        """Several batches' states from the list endpoint (see `_poll_listed`)."""
        with translated(self.name, "list batches"):
            return self._poll_listed(batch_ids, lambda: self.client.batches.list(limit=100),
                                     self._state)

    @staticmethod
    def _state(batch: Any) -> BatchState:
        counts = batch.request_counts
        done = (counts.completed + counts.failed) if counts else 0
        total = counts.total if counts else 0
        if batch.status == "failed":
            error = (batch.errors.data or [None])[0] if batch.errors else None
            return BatchState(batch.id, "failed", batch.status, done, total,
                              getattr(error, "code", None) or "failed",
                              getattr(error, "message", None) or "batch failed",
                              ended_at=batch.failed_at)
        phase = "running" if batch.status in RUNNING else "ended"
        ended = batch.completed_at or batch.expired_at or batch.cancelled_at
        return BatchState(batch.id, phase, batch.status, done, total,
                          ended_at=float(ended) if ended and phase == "ended" else None)

    def results(self, batch_id: str, raw_sink: IO[bytes] | None = None
                ) -> Iterator[ItemOutcome]:
        """Outcomes from the output file, then the error file."""
        with translated(self.name, "retrieve batch"):
            batch = self.client.batches.retrieve(batch_id)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                yield from self._file_outcomes(file_id, raw_sink)

    def _file_outcomes(self, file_id: str, raw_sink: IO[bytes] | None
                       ) -> Iterator[ItemOutcome]:
        with translated(self.name, "download batch results"):
            with self.client.files.with_streaming_response.content(file_id) as response:
                # Lines split from the raw bytes: httpx's text line decoder took a third
                # of the time of reading a large results file.
                copied: list[bytes] = []  # written to raw_sink a thousand lines at a time
                try:
                    for raw in jsonl_lines(response.iter_bytes(RESULTS_CHUNK_BYTES)):
                        if raw_sink is not None:
                            copied.append(raw)
                            if len(copied) >= 1000:
                                raw_sink.write(b"\n".join(copied) + b"\n")
                                copied.clear()
                        yield self._outcome(json.loads(raw))
                finally:  # the lines read so far, also when the reader stops early
                    if copied and not getattr(raw_sink, "closed", False):
                        raw_sink.write(b"\n".join(copied) + b"\n")

    @staticmethod
    def _outcome(line: dict[str, Any]) -> ItemOutcome:
        custom_id = line["custom_id"]
        response = line.get("response")
        if response is None:
            error = line.get("error") or {}
            code = error.get("code") or "not_run"
            return ItemOutcome(custom_id, False, error_kind=code,
                               error_message=error.get("message"),
                               retryable=code in NEVER_RAN_RETRYABLE)
        status = response.get("status_code")
        body = response.get("body") or {}
        if status != 200:
            error = body.get("error") or {}
            if is_quota_error("openai", status, error):  # out of credit: worth a rerun
                return ItemOutcome(custom_id, False, error_kind=OPENAI_QUOTA_CODE,
                                   error_message=error.get("message"), retryable=True,
                                   out_of_credit=True)
            return ItemOutcome(custom_id, False, error_kind=f"http_{status}",
                               error_message=error.get("message"),
                               retryable=is_retryable_status(status))
        return OpenAIAdapter._answer(custom_id, body)

    @staticmethod
    def _answer(custom_id: str, body: dict[str, Any]) -> ItemOutcome:
        usage = Usage.from_openai(body.get("usage") or {},
                                  service_tier=body.get("service_tier"))
        choice = (body.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content")
        return ItemOutcome(custom_id, True, text=text, usage=usage)

    def cancel(self, batch_id: str) -> None:
        """Cancel the batch; a batch that already ended (409) is left as it is."""
        try:
            with translated(self.name, "cancel batch"):
                # 409 "Cannot cancel a batch with status 'completed'" is final: the SDK
                # would retry it, so no SDK retries here.
                self.client.with_options(max_retries=0).batches.cancel(batch_id)
        except ProviderError as exc:
            if exc.status_code != 409:
                raise

    def live(self, body: dict[str, Any]) -> ItemOutcome:
        """One chat completion."""
        with translated(self.name, "chat completion"):
            response = self.client.chat.completions.create(**body)
        return self._answer("live", response.model_dump())

    def live_reply(self, body: dict[str, Any], *, timeout: float | None = None) -> LiveReply:
        """One chat completion with its rate-limit headers (the JSON read as it came:
        no SDK model built and dumped again on the live lane's hot path)."""
        with translated(self.name, "chat completion"):
            raw = self.client.with_raw_response.chat.completions.create(**body,
                                                                         timeout=timeout)
            return self._reply(raw.http_response)

    async def live_reply_async(self, body: dict[str, Any], *,
                               timeout: float | None = None) -> LiveReply:
        """`live_reply` through the async client."""
        if self.async_client is None:
            raise ConfigurationError("this OpenAI adapter was built without an async client")
        with translated(self.name, "chat completion"):
            raw = await self.async_client.with_raw_response.chat.completions.create(
                **body, timeout=timeout)
            return self._reply(raw.http_response)

    @staticmethod
    def _reply(response: Any) -> LiveReply:
        return LiveReply(OpenAIAdapter._answer("live", response.json()), response.headers)
