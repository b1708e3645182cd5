"""Anthropic: Messages live, and Message Batches for the batch lane."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

import anthropic

from lanewise.catalog import TaskSpec
from lanewise.errors import BatchError, ConfigurationError
from lanewise.pricing import Usage
from lanewise.providers.base import (
    BatchLimits,
    BatchState,
    ItemOutcome,
    LiveReply,
    ProviderAdapter,
)
from lanewise.providers.sdk_errors import is_quota_error, translated
from lanewise.requests import PreparedRequest

OUTPUT_TOOL = "record_output"
RETRYABLE_ERRORS = {"api_error", "overloaded_error", "rate_limit_error", "timeout_error"}
# Message Batches carry no metadata: a batch whose id was lost is recognised by its
# request count and its creation time just after the recorded intent.
FIND_WINDOW_SECONDS = 120


class AnthropicAdapter(ProviderAdapter):
    """Anthropic behind lanewise's adapter interface."""

    name = "anthropic"
    limits = BatchLimits(max_requests=100_000, max_bytes=256 * 1024 * 1024,
                         enqueued_token_budget=None)
    capabilities = frozenset({"live", "batch", "json_schema", "prompt_cache"})

    def __init__(self, client: anthropic.Anthropic,
                 async_client: anthropic.AsyncAnthropic | None = None) -> None:
        self.client = client
        self.async_client = async_client

    def request_body(self, task: TaskSpec, request: PreparedRequest) -> dict[str, Any]:
        """Messages params; JSON tasks force a tool whose input schema is the output schema."""
        params: dict[str, Any] = {"model": task.model, "max_tokens": task.max_output_tokens,
                                  "messages": request.messages}
        if request.system:
            params["system"] = request.system
        if task.output.type == "json":
            params["tools"] = [{"name": OUTPUT_TOOL, "description": "Record the answer.",
                                "input_schema": task.output.json_schema}]
            params["tool_choice"] = {"type": "tool", "name": OUTPUT_TOOL}
        return params

    def batch_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """One Message Batch request."""
        return {"custom_id": custom_id, "params": body}

    def submit(self, jsonl_handle: Any, shard_key: str, model: str) -> str:
        """Create the Message Batch from the shard's JSONL lines."""
        requests = [json.loads(raw) for raw in jsonl_handle if raw.strip()]
        with translated(self.name, "create message batch"):
            # No SDK retry: a retried create after a lost response would be a second
            # paid batch. A failure goes back to the step, whose rerun looks for the
            # batch first (find_batch) and only then creates again.
            batch = self.client.with_options(max_retries=0).messages.batches.create(
                requests=requests)
        return batch.id

    def find_batch(self, shard_key: str, custom_ids: set[str], created_after: float,
                   claimed: set[str]) -> str | None:
        """Recognise the batch by size and creation time, confirmed by its results' ids.

        Message Batches carry no metadata. Candidates are unclaimed batches with the
        shard's request count created within FIND_WINDOW_SECONDS after the intent. An
        ended candidate is confirmed or ruled out by a custom_id of its results; a lone
        unconfirmed candidate is taken; several unconfirmed ones stop the run for a
        person to decide (`lanewise attach`).
        """
        confirmed, unconfirmed = [], []
        with translated(self.name, "list message batches"):
            for batch in self.client.messages.batches.list(limit=100):
                created = batch.created_at.timestamp()
                if created < created_after - 5:
                    break
                counts = batch.request_counts
                total = (counts.processing + counts.succeeded + counts.errored
                         + counts.canceled + counts.expired)
                if (created > created_after + FIND_WINDOW_SECONDS or total != len(custom_ids)
                        or batch.id in claimed):
                    continue
                if batch.processing_status != "ended":
                    unconfirmed.append(batch.id)
                    continue
                first = next(iter(self.client.messages.batches.results(batch.id)), None)
                if first is not None and first.custom_id in custom_ids:
                    confirmed.append(batch.id)
        if len(confirmed) == 1:
            return confirmed[0]
        if not confirmed and len(unconfirmed) <= 1:
            return unconfirmed[0] if unconfirmed else None
        raise BatchError(
            f"shard {shard_key}: several Anthropic batches could be the one created before "
            f"a crash ({', '.join(confirmed or unconfirmed)}); wait for them to end and "
            f"rerun, or record the right one with `lanewise attach {shard_key} BATCH_ID`")

    def poll(self, batch_id: str) -> BatchState:
        """Map the MessageBatch onto running / ended."""
        with translated(self.name, "retrieve message batch"):
            return self._state(self.client.messages.batches.retrieve(batch_id))

    def poll_many(self, batch_ids: Iterable[str]) -> dict[str, BatchState]:
        """Several batches' states from the list endpoint (see `_poll_listed`)."""
        with translated(self.name, "list message batches"):
            return self._poll_listed(
                batch_ids, lambda: self.client.messages.batches.list(limit=100), self._state)

    @staticmethod
    def _state(batch: Any) -> BatchState:
        counts = batch.request_counts
        total = (counts.processing + counts.succeeded + counts.errored + counts.canceled
                 + counts.expired)
        phase = "ended" if batch.processing_status == "ended" else "running"
        return BatchState(batch.id, phase, batch.processing_status, total - counts.processing,
                          total, ended_at=batch.ended_at.timestamp() if batch.ended_at else None)

    def results(self, batch_id: str, raw_sink: IO[bytes] | None = None
                ) -> Iterator[ItemOutcome]:
        """Outcomes from the results JSONL."""
        with translated(self.name, "download message batch results"):
            for line in self.client.messages.batches.results(batch_id):
                if raw_sink is not None:
                    raw_sink.write(line.to_json(indent=None).encode() + b"\n")
                yield self._outcome(line.custom_id, line.result.model_dump())

    @staticmethod
    def _outcome(custom_id: str, result: dict[str, Any]) -> ItemOutcome:
        kind = result.get("type")
        if kind == "succeeded":
            return AnthropicAdapter._answer(custom_id, result["message"])
        if kind == "errored":
            error = (result.get("error") or {}).get("error") or {}
            error_type = error.get("type") or "error"
            # Out of credit is worth a rerun once topped up, not a bad request.
            out_of_credit = is_quota_error("anthropic", None, error)
            return ItemOutcome(custom_id, False, error_kind=error_type,
                               error_message=error.get("message"),
                               retryable=error_type in RETRYABLE_ERRORS or out_of_credit,
                               out_of_credit=out_of_credit)
        return ItemOutcome(custom_id, False, error_kind=f"batch_{kind}",
                           error_message=f"request {kind} before it ran", retryable=True)

    @staticmethod
    def _answer(custom_id: str, message: dict[str, Any]) -> ItemOutcome:
        parts = []
        for block in message.get("content") or []:
            if block.get("type") == "tool_use":
                parts.append(json.dumps(block.get("input"), separators=(",", ":")))
            elif block.get("type") == "text":
                parts.append(block.get("text") or "")
        usage = Usage.from_anthropic(message.get("usage") or {})
        return ItemOutcome(custom_id, True, text="".join(parts), usage=usage)

    def cancel(self, batch_id: str) -> None:
        """Cancel the Message Batch."""
        with translated(self.name, "cancel message batch"):
            self.client.messages.batches.cancel(batch_id)

    def live(self, body: dict[str, Any]) -> ItemOutcome:
        """One Messages call."""
        with translated(self.name, "create message"):
            message = self.client.messages.create(**body)
        return self._answer("live", message.model_dump())

    def live_reply(self, body: dict[str, Any], *, timeout: float | None = None) -> LiveReply:
        """One Messages call with its rate-limit headers (the JSON read as it came)."""
        with translated(self.name, "create message"):
            raw = self.client.with_raw_response.messages.create(**body, timeout=timeout)
            return self._reply(raw.http_response)

    async def live_reply_async(self, body: dict[str, Any], *,
                               timeout: float | None = None) -> LiveReply:
        """`live_reply` through the async client."""
        if self.async_client is None:
            raise ConfigurationError("this Anthropic adapter was built without an async "
                                     "client")
        with translated(self.name, "create message"):
            raw = await self.async_client.with_raw_response.messages.create(
                **body, timeout=timeout)
            return self._reply(raw.http_response)

    @staticmethod
    def _reply(response: Any) -> LiveReply:
        return LiveReply(AnthropicAdapter._answer("live", response.json()), response.headers)
