"""Cutting a stream of batch lines into shards that fit one provider batch.

A shard closes before a line would push it past the provider's request count, byte
size or the estimated enqueued-token budget. Lines go straight to the shard's JSONL
file under the storage root; only the current shard's custom_ids stay in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Any

from lanewise.providers.base import BatchLimits
from lanewise.storage import Storage


@dataclass
class ClosedShard:
    """A finished shard file and what it holds."""

    index: int
    url: str
    request_count: int
    bytes: int
    estimated_tokens: int
    custom_ids: list[str] = field(default_factory=list)


def encode_line(line: dict[str, Any]) -> bytes:
    """One JSONL line, compact, UTF-8, newline-terminated."""
    return (json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class ShardWriter:
    """Writes lines into successive shard files, closing each at the provider's limits."""

    def __init__(self, storage: Storage, prefix: str, limits: BatchLimits,
                 token_budget: int | None = None, first_index: int = 0) -> None:
        self.storage = storage
        self.prefix = prefix
        self.max_requests = limits.max_requests
        # Leave headroom under the byte limit for multipart framing on upload.
        self.max_bytes = int(limits.max_bytes * 0.98)
        self.token_budget = token_budget
        self.index = first_index
        self._handle: IO[bytes] | None = None
        self._current: ClosedShard | None = None

    def _open(self) -> ClosedShard:
        url = self.storage.url(f"{self.prefix}-{self.index:05d}.jsonl")
        self._handle = self.storage.open(url, "wb")
        self._current = ClosedShard(self.index, url, 0, 0, 0)
        self.index += 1
        return self._current

    def add(self, custom_id: str, line: bytes, estimated_tokens: int) -> ClosedShard | None:
        """Append a line; returns the shard that had to close to make room, if any."""
        closed = None
        current = self._current
        if current is not None and current.request_count and (
            current.request_count + 1 > self.max_requests
            or current.bytes + len(line) > self.max_bytes
            or (self.token_budget is not None
                and current.estimated_tokens + estimated_tokens > self.token_budget)
        ):
            closed = self.close()
            current = None
        if current is None:
            current = self._open()
        assert self._handle is not None
        self._handle.write(line)
        current.request_count += 1
        current.bytes += len(line)
        current.estimated_tokens += estimated_tokens
        current.custom_ids.append(custom_id)
        return closed

    def close(self) -> ClosedShard | None:
        """Close the current shard, if any, and return it."""
        if self._current is None:
            return None
        assert self._handle is not None
        self._handle.close()
        closed, self._current, self._handle = self._current, None, None
        return closed
