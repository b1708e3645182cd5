"""Cutting a stream of batch lines into shards that fit one provider batch.

A shard closes before a line would push it past the provider's request count, byte
size or the estimated enqueued-token budget. Lines go straight to the shard's JSONL
file under the storage root; only the current shard's item references stay in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _json_string  # the C escaper
from typing import IO, Any

from lanewise.json_slots import split_at_marks
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
    refs: list[Any] = field(default_factory=list)  # what the caller needs per line


def encode_line(line: dict[str, Any]) -> bytes:
    """One JSONL line, compact, UTF-8, newline-terminated."""
    return (json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class LineEncoder:
    """Encodes a task's batch lines from a template serialized once.

    Every line of a task shares its structure (model, limits, output schema, URL):
    only the custom_id, the system text and the message texts change. The adapter
    builds one line with placeholder strings; it is dumped once and split at the
    placeholders, and each row's line is the fixed pieces joined with its own
    JSON-escaped strings. The bytes equal `encode_line` of the full dict.
    """

    def __init__(self, adapter: Any, task: Any) -> None:
        from lanewise.requests import PreparedRequest

        self.has_system = bool(task.prompt.system)
        marks = [f"\u0000lanewise-slot-{i}\u0000" for i in range(3)]
        sample = PreparedRequest(0, "", marks[1] if self.has_system else None,
                                 [{"role": "user", "content": marks[2]}], 0, False)
        template = encode_line(adapter.batch_line(marks[0],
                                                  adapter.request_body(task, sample))).decode()
        self.pieces, self.order = split_at_marks(template, marks)

    def encode(self, custom_id: str, request: Any) -> bytes:
        """The JSONL line of one request."""
        values = (custom_id, request.system, request.messages[0]["content"])
        out = [self.pieces[0]]
        for index, piece in zip(self.order, self.pieces[1:], strict=True):
            out.append(_json_string(values[index]))
            out.append(piece)
        return "".join(out).encode()


class ShardWriter:
    """Writes lines into successive shard files, closing each at the provider's limits."""

    def __init__(self, storage: Storage, prefix: str, limits: BatchLimits,
                 token_budget: int | None = None, first_index: int = 0,
                 ramp_from: int | None = None) -> None:
        self.storage = storage
        self.prefix = prefix
        self.max_requests = limits.max_requests
        # With `ramp_from`, this writer's first shard closes at that many requests and
        # each next one at twice the last, up to the limits: shards sent while the rest
        # is still planned get the provider working at once, then keep it fed.
        self._ramp = ramp_from
        self._request_cap = self._cap_now()
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

    def add(self, ref: Any, line: bytes, estimated_tokens: int) -> ClosedShard | None:
        """Append a line (remembering `ref` for it); returns the shard that had to close."""
        closed = None
        current = self._current
        if current is not None and current.request_count and (
            current.request_count + 1 > self._request_cap
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
        current.refs.append(ref)
        return closed

    def _cap_now(self) -> int:
        return self.max_requests if self._ramp is None else min(self.max_requests, self._ramp)

    def close(self) -> ClosedShard | None:
        """Close the current shard, if any, and return it."""
        if self._current is None:
            return None
        assert self._handle is not None
        self._handle.close()
        closed, self._current, self._handle = self._current, None, None
        if self._ramp is not None:
            self._ramp = None if self._ramp >= self.max_requests else self._ramp * 2
            self._request_cap = self._cap_now()
        return closed
