"""The one small interface every provider adapter implements.

Limits and capabilities are data on the adapter, so the router and the shard planner
read them instead of branching on provider names.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, ClassVar

from lanewise.catalog import TaskSpec
from lanewise.pricing import Usage
from lanewise.requests import PreparedRequest

# Failure codes of a whole batch that no retry will fix (the input itself is wrong).
PERMANENT_BATCH_FAILURES = frozenset({
    "invalid_json_line", "duplicate_custom_id", "model_mismatch", "url_mismatch",
    "empty_file", "too_many_tasks", "file_too_large", "invalid_request",
})
# A batch refused because the model's enqueued-token limit was full: it never ran and
# nothing was billed; it is resubmitted once room frees, at no cost to its items.
TOKEN_LIMIT_FAILURE = "token_limit_exceeded"
# Pages of a provider's batch list (100 each, newest first) read by poll_many before
# the batches not found there are retrieved one by one.
LIST_PAGES = 2
_STATED_LIMIT = re.compile(r"Limit:\s*([\d,]+)\s*enqueued tokens", re.IGNORECASE)


def stated_token_limit(message: str | None) -> int | None:
    """The enqueued-token limit a `token_limit_exceeded` message states, if it does.

    OpenAI says e.g. "Enqueued token limit reached for gpt-4o-mini in organization
    org-... Limit: 2,000,000 enqueued tokens. Please try again once some in_progress
    batches have been completed."
    """
    found = _STATED_LIMIT.search(message or "")
    return int(found.group(1).replace(",", "")) if found else None


#: Bytes read at a time from a results file (lines are split from them by `jsonl_lines`).
RESULTS_CHUNK_BYTES = 1 << 20


def jsonl_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-blank lines of a JSONL byte stream given in chunks of any size, without
    their line ends (`\\n` or `\\r\\n`)."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
        rest = lines.pop()
        for line in lines:
            line = line.rstrip(b"\r")
            if line.strip():
                yield line
    rest = rest.rstrip(b"\r")
    if rest.strip():
        yield rest


@dataclass(frozen=True)
class BatchLimits:
    """What one provider batch may hold."""

    max_requests: int
    max_bytes: int
    enqueued_token_budget: int | None  # per model, over active batches; None = no limit


@dataclass(frozen=True)
class BatchState:
    """A provider batch as last seen: `phase` is running, ended or failed."""

    batch_id: str
    phase: str
    provider_status: str
    done: int = 0
    total: int = 0
    failure_code: str | None = None
    failure_message: str | None = None
    # When the provider says the batch ended (Unix seconds): what its bill is dated by.
    ended_at: float | None = None

    @property
    def terminal(self) -> bool:
        """True once the batch will not change any more."""
        return self.phase in ("ended", "failed")


@dataclass(frozen=True)
class ItemOutcome:
    """One request's result from a batch (or a live call)."""

    custom_id: str
    ok: bool
    text: str | None = None
    usage: Usage | None = None
    error_kind: str | None = None
    error_message: str | None = None
    retryable: bool = False
    # Refused because the account is out of credit: never a failure of the item.
    out_of_credit: bool = False


@dataclass(frozen=True)
class LiveReply:
    """One live call's answer with the HTTP headers it came with (rate-limit state)."""

    outcome: ItemOutcome
    headers: Mapping[str, str]


class ProviderAdapter(ABC):
    """A provider behind lanewise: live calls and the batch API, on the official SDK."""

    name: ClassVar[str]
    limits: ClassVar[BatchLimits]
    capabilities: ClassVar[frozenset[str]]

    @abstractmethod
    def request_body(self, task: TaskSpec, request: PreparedRequest) -> dict[str, Any]:
        """The provider's request body (OpenAI chat body, Anthropic Messages params)."""

    @abstractmethod
    def batch_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """One line of the provider's batch JSONL."""

    @abstractmethod
    def submit(self, jsonl_handle: Any, shard_key: str, model: str) -> str:
        """Create a batch from a JSONL file handle; returns the provider batch id."""

    @abstractmethod
    def find_batch(self, shard_key: str, custom_ids: set[str], created_after: float,
                   claimed: set[str]) -> str | None:
        """Find a batch created for `shard_key` before a crash lost its id, if possible.

        `custom_ids` are the shard's requests, `created_after` when the intent was
        recorded, `claimed` the batch ids other shards already own.
        """

    @abstractmethod
    def poll(self, batch_id: str) -> BatchState:
        """The batch's current state."""

    def poll_many(self, batch_ids: Iterable[str]) -> dict[str, BatchState]:
        """The current state of several batches (adapters may use a list endpoint)."""
        return {batch_id: self.poll(batch_id) for batch_id in batch_ids}

    def _poll_listed(self, batch_ids: Iterable[str], first_page: Callable[[], Any],
                     state: Callable[[Any], BatchState]) -> dict[str, BatchState]:
        """poll_many through a list endpoint: the newest LIST_PAGES pages (an SDK page
        with `data`, `has_next_page`, `get_next_page`), then one poll for each batch
        not among them. A single batch is polled directly."""
        wanted = set(batch_ids)
        states: dict[str, BatchState] = {}
        if len(wanted) >= 2:
            page = first_page()
            for _ in range(LIST_PAGES):
                states.update((b.id, state(b)) for b in page.data if b.id in wanted)
                if len(states) == len(wanted) or not page.has_next_page():
                    break
                page = page.get_next_page()
        for batch_id in wanted - states.keys():
            states[batch_id] = self.poll(batch_id)
        return states

    @abstractmethod
    def results(self, batch_id: str, raw_sink: IO[bytes] | None = None
                ) -> Iterator[ItemOutcome]:
        """Stream every request outcome of an ended batch; raw lines go to `raw_sink`."""

    @abstractmethod
    def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel a batch."""

    @abstractmethod
    def live(self, body: dict[str, Any]) -> ItemOutcome:
        """One live call; raises ProviderError subclasses on failure."""

    @abstractmethod
    def live_reply(self, body: dict[str, Any], *, timeout: float | None = None) -> LiveReply:
        """One live call through the sync client, with its response headers; raises
        ProviderError subclasses (their `error_headers` hold the failed response's)."""

    @abstractmethod
    async def live_reply_async(self, body: dict[str, Any], *,
                               timeout: float | None = None) -> LiveReply:
        """`live_reply` through the async client the adapter was built with."""
