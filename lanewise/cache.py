"""The result cache shared by both lanes: succeeded answers by request content hash.

A request's content hash is the SHA-256 of one canonical JSON text (keys sorted, no
whitespace, UTF-8 unescaped) of its provider, its model and the provider request body
(`adapter.request_body(task, request)`: parameters, messages and output schema). Both
lanes build the body with the same code from the same row, so a request answered live
during the day has the hash the night's batch planner computes, and the reverse.

* The live lane asks `lookup` before it calls (when the task's `cache.enabled`) and
  `store`s what it got; the batch planner looks up every request of a cache-enabled
  task and never sends the ones the cache answers (item state `cached`, zero cost);
  collect stores each succeeded batch answer, in the transaction that records it.
* The first answer to a request wins and keeps its source (`live:<id>`, `item:<id>`);
  an entry stops answering when its TTL (`cache.ttl_hours` of the task that stored it)
  runs out, or once it is older than the asking task's TTL, and a new answer may then
  replace it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from decimal import Decimal
from json.encoder import encode_basestring as _json_string  # the C escaper
from typing import TYPE_CHECKING, Any

from lanewise.json_slots import split_at_marks
from lanewise.pricing import from_picodollars

if TYPE_CHECKING:
    from collections.abc import Iterable

    from lanewise.catalog import TaskSpec
    from lanewise.ledger import Ledger
    from lanewise.pricing import PriceTable
    from lanewise.providers.base import ProviderAdapter
    from lanewise.requests import PreparedRequest


@dataclass(frozen=True)
class CachedAnswer:
    """A cached answer: its request hash, text, where it came from and what it cost."""

    content_hash: str
    output_text: str
    source: str  # "live:<live_calls id>" or "item:<items id>": the original answer
    cost_usd: Decimal  # what the original paid
    live_cost_usd: Decimal  # the original's usage at live prices
    created_at: float
    expires_at: float | None = None
    model: str = ""


def canonical_json(value: Any) -> str:
    """The one JSON text of `value` that is hashed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(text: str) -> str:
    # surrogatepass: text the input reader let through hashes instead of failing.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def content_hash(provider: str, model: str, body: dict[str, Any]) -> str:
    """The request's cache key: SHA-256 hex of the canonical JSON of its provider, model
    and provider request body."""
    return _digest(canonical_json({"body": body, "model": model, "provider": provider}))


def request_hash(adapter: ProviderAdapter, task: TaskSpec, request: PreparedRequest) -> str:
    """The content hash of one prepared request of `task`, as `adapter` sends it."""
    return content_hash(task.provider, task.model, adapter.request_body(task, request))


class RequestHasher:
    """Content hashes of a task's requests, from a canonical text serialized once.

    Every request of a task shares its body's structure; only the system text and the
    user message change. Like `sharding.LineEncoder`, a body with placeholder strings
    is dumped once (canonically) and split at them; each request's text is the fixed
    pieces joined with its own JSON-escaped strings, equal to `canonical_json` of the
    full body. A request of another shape (no system text where the template has one,
    several messages) is hashed the plain way, and so is every request when a probe
    at construction finds the two ways disagree (an adapter whose body depends on more
    than the texts).
    """

    def __init__(self, adapter: ProviderAdapter, task: TaskSpec) -> None:
        from lanewise.requests import PreparedRequest

        self.adapter, self.task = adapter, task
        self.has_system = bool(task.prompt.system)
        marks = [f"\u0000lanewise-hash-{i}\u0000" for i in range(2)]
        sample = PreparedRequest(0, "", marks[0] if self.has_system else None,
                                 [{"role": "user", "content": marks[1]}], 0, False)
        template = canonical_json({"body": adapter.request_body(task, sample),
                                   "model": task.model, "provider": task.provider})
        self.pieces, self.order = split_at_marks(template, marks)
        # Each placeholder once: (system, user) in either order, or the user text alone.
        self.fast = sorted(self.order) == ([0, 1] if self.has_system else [1])
        self.system_first = self.order[0] == 0
        probe = PreparedRequest(
            1, "probe", "Probe \"system\"\n\u00e9" if self.has_system else None,
            [{"role": "user", "content": "probe\t\\ \u2028 \U0001f600 \x7f"}], 7, True)
        self.fast = self.fast and self._joined(probe) == request_hash(adapter, task, probe)

    def _joined(self, request: PreparedRequest) -> str:
        # Spelled out for the two shapes (a loop over the pieces costs a third more).
        pieces, content = self.pieces, request.messages[0]["content"]
        if not self.has_system:
            return _digest(pieces[0] + _json_string(content) + pieces[1])
        first, second = (request.system, content) if self.system_first \
            else (content, request.system)
        return _digest(pieces[0] + _json_string(first) + pieces[1] + _json_string(second)
                       + pieces[2])

    def hash(self, request: PreparedRequest) -> str:
        """The request's content hash (equal to `request_hash`)."""
        messages = request.messages
        if self.fast and len(messages) == 1 and bool(request.system) == self.has_system:
            message = messages[0]
            if len(message) == 2 and message.get("role") == "user" \
                    and type(message.get("content")) is str:
                return self._joined(request)
        return request_hash(self.adapter, self.task, request)


def expiry(created_at: float, ttl_hours: float | None) -> float | None:
    """When an answer stored at `created_at` stops answering (None: never)."""
    return None if ttl_hours is None else created_at + ttl_hours * 3600


def _answer(row: dict[str, Any]) -> CachedAnswer:
    return CachedAnswer(content_hash=row["content_hash"], output_text=row["output_text"],
                        source=row["source"], cost_usd=from_picodollars(row["cost_picodollars"]),
                        live_cost_usd=from_picodollars(row["live_cost_picodollars"]),
                        created_at=row["created_at"], expires_at=row["expires_at"],
                        model=row["model"])


def _max_age(max_age_hours: float | None) -> float | None:
    return None if max_age_hours is None else max_age_hours * 3600


def lookup(ledger: Ledger, content_hash: str, *, now: float | None = None,
           max_age_hours: float | None = None) -> CachedAnswer | None:
    """The cached answer to a request if one is valid at `now`: not expired, and (with
    `max_age_hours`, the asking task's `cache.ttl_hours`) not older than that."""
    row = ledger.cached_answer(content_hash, now=time.time() if now is None else now,
                               max_age_seconds=_max_age(max_age_hours))
    return None if row is None else _answer(row)


def lookup_many(ledger: Ledger, hashes: list[str], *, now: float | None = None,
                max_age_hours: float | None = None) -> dict[str, CachedAnswer]:
    """{hash: answer} of the requests among `hashes` the cache answers (see `lookup`)."""
    rows = ledger.cached_answers(hashes, now=time.time() if now is None else now,
                                 max_age_seconds=_max_age(max_age_hours))
    return {h: _answer(row) for h, row in rows.items()}


def batch_savings(ledger: Ledger, prices: PriceTable,
                  answers: Iterable[CachedAnswer]) -> dict[str, int]:
    """{source: picodollars}: what sending each answered request again would cost at
    batch price (the batch lane's honest saving): the original answer's billed usage
    (its item or live call) at its model's batch rates.

    An original no longer in the ledger falls back on what the entry recorded: an
    item's cost (a batch price already), or a live answer's live cost at the model's
    batch-to-live rate ratio (its live cost itself when the price table cannot price
    the model).
    """
    from lanewise.errors import ConfigurationError
    from lanewise.pricing import Lane, UnpricedUsageError, Usage, to_picodollars

    by_source = {answer.source: answer for answer in answers}
    usage = ledger.answer_usage(by_source)
    savings: dict[str, int] = {}
    for source, answer in by_source.items():
        try:
            if source in usage:
                saved = prices.cost_usd(answer.model, Usage(**usage[source]), Lane.BATCH)
            elif source.startswith("item:"):
                saved = answer.cost_usd
            else:
                rates = prices.price(answer.model)
                saved = answer.live_cost_usd * (rates.batch.input + rates.batch.output) \
                    / (rates.live.input + rates.live.output)
        except (ConfigurationError, UnpricedUsageError):
            saved = answer.cost_usd if source.startswith("item:") else answer.live_cost_usd
        savings[source] = to_picodollars(saved)
    return savings


def entry(content_hash: str, task: TaskSpec | str, provider: str, model: str,
          output_text: str, source: str, cost_picodollars: int, live_cost_picodollars: int,
          ttl_hours: float | None, *, now: float | None = None) -> dict[str, Any]:
    """One cache entry as the ledger stores it (for `store`, or many at once)."""
    created = time.time() if now is None else now
    return {"content_hash": content_hash, "task": task if isinstance(task, str) else task.name,
            "provider": provider, "model": model, "output_text": output_text,
            "source": source, "cost_picodollars": int(cost_picodollars),
            "live_cost_picodollars": int(live_cost_picodollars), "created_at": created,
            "expires_at": expiry(created, ttl_hours)}


def store(ledger: Ledger, content_hash: str, task: TaskSpec | str, provider: str, model: str,
          output_text: str, source: str, cost_picodollars: int, live_cost_picodollars: int,
          ttl_hours: float | None, *, now: float | None = None) -> bool:
    """Store a succeeded answer; True when it was written. The first answer to a request
    wins (it keeps its source); an entry is replaced only once it has expired."""
    row = entry(content_hash, task, provider, model, output_text, source, cost_picodollars,
                live_cost_picodollars, ttl_hours, now=now)
    return ledger.store_answers([row], now=row["created_at"]) > 0
