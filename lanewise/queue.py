"""The deferred-work queue: requests nobody waits for, answered by the next drain.

An application (Python, `lanewise serve`, `lanewise enqueue`) or the live lane's
`defer` fallback puts a row in with `enqueue(ledger, task, key, row)`; the
`drain-queue` flow (`lanewise/batch/drain.py`) sends what is queued through the batch
lane at batch prices; `result(ledger, id)` reads the status and, once done, the output.

States (table `queue_items`)::

    queued -> claimed (attached to one drain run key) -> succeeded | invalid_output | failed

* Idempotent by (task, key): a second `enqueue` of the same key returns the existing
  item and leaves its row, status and result exactly as they were (a unique constraint,
  so callers racing on one key get one item).
* A row is checked as the batch lane will read it before it is stored (the task exists
  and its provider has a batch API; the key is the row's key column; the row makes a
  request), so bad input is refused now, naming the field, not failed tonight.
* Never lost, never paid twice: see `lanewise/batch/drain.py` for the crash rules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from lanewise.catalog import Catalog, TaskSpec, load_catalog
from lanewise.errors import ConfigurationError, InputError
from lanewise.inputs import InputRow
from lanewise.ledger import Ledger
from lanewise.ledger.queue_records import QUEUE_TERMINAL
from lanewise.pricing import from_picodollars
from lanewise.requests import RowRejection, prepare

MAX_KEY_CHARS = 200  # queue_items.key is a String(200)


@dataclass(frozen=True)
class QueueItem:
    """One deferred request as the ledger holds it."""

    id: int
    task: str
    key: str
    status: str  # queued | claimed | succeeded | invalid_output | failed
    output_text: str | None
    error: str | None
    cost_usd: Decimal
    run_key: str | None  # the drain run that carries (or carried) it
    created_at: float
    finished_at: float | None
    #: The answer once succeeded: parsed JSON for a JSON task, the text for a text task.
    output: Any = None

    @property
    def done(self) -> bool:
        """Whether the item reached its final state."""
        return self.status in QUEUE_TERMINAL

    def record(self) -> dict[str, Any]:
        """The item as plain JSON-ready values (times as ISO 8601 UTC, cost as text)."""
        return {"id": self.id, "task": self.task, "key": self.key, "status": self.status,
                "output": self.output, "output_text": self.output_text, "error": self.error,
                "cost_usd": str(self.cost_usd), "run_key": self.run_key,
                "created_at": _iso(self.created_at), "finished_at": _iso(self.finished_at)}


@dataclass(frozen=True)
class EnqueueReport:
    """What `enqueue_many` did: items new to the queue and keys already there."""

    added: int
    existing: int


def enqueue(ledger: Ledger, task: str, key: str, row: dict[str, Any], *,
            catalog: Catalog | None = None) -> QueueItem:
    """Queue `row` for `task` under `key`; the existing item when the key is queued
    already (its row and state unchanged)."""
    return put(ledger, task, key, row, catalog=catalog)[0]


def put(ledger: Ledger, task: str, key: Any, row: dict[str, Any], *,
        catalog: Catalog | None = None) -> tuple[QueueItem, bool]:
    """`enqueue`, also saying whether the item is new (False: the key was queued before,
    and that item is returned unchanged)."""
    spec = _batch_task(task, catalog)
    key, text = checked_row(spec, key, row)
    added = ledger.add_queue_items(spec.name, [(key, text)])
    found = ledger.queue_item_by_key(spec.name, key)
    if found is None:  # cannot happen short of someone deleting it in between
        raise InputError(f"queue item {spec.name}/{key} vanished right after it was added")
    return _item(found, spec), added == 1


def enqueue_many(ledger: Ledger, task: str, rows: Iterable[dict[str, Any]], *,
                 catalog: Catalog | None = None) -> EnqueueReport:
    """Queue many rows of `task`, each under its key column's value. Every row is checked
    first: one bad row (named by its 1-based number) enqueues nothing."""
    spec = _batch_task(task, catalog)
    entries: list[tuple[str, str]] = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise InputError("not a JSON object", row=number)
        try:
            entries.append(checked_row(spec, row.get(spec.input.key), row))
        except InputError as exc:
            raise InputError(exc.reason, row=number, field=exc.field) from None
    added = ledger.add_queue_items(spec.name, entries)
    return EnqueueReport(added=added, existing=len(entries) - added)


def result(ledger: Ledger, item_id: int, *, catalog: Catalog | None = None) -> QueueItem | None:
    """The queue item `item_id` (status, and once succeeded its output), or None."""
    found = ledger.queue_item(item_id)
    if found is None:
        return None
    spec = (catalog or _current_catalog()).tasks.get(found["task"])
    return _item(found, spec)


def checked_row(spec: TaskSpec, key: Any, row: dict[str, Any]) -> tuple[str, str]:
    """(key, row as JSON) once the row is known to make a request for `spec`, the key
    column holding the key; else an InputError naming the field."""
    column = spec.input.key
    if not isinstance(row, dict):
        raise InputError("the row must be a JSON object", field="row")
    text = "" if key is None else str(key).strip()
    if not text:
        raise InputError("missing key", field=column)
    if len(text) > MAX_KEY_CHARS:
        raise InputError(f"key too long ({len(text)} characters; at most {MAX_KEY_CHARS})",
                         field=column)
    given = row.get(column)
    if given is not None and str(given).strip() != text:
        raise InputError(f"the row's {column} is {str(given)!r}, not the key {text!r}",
                         field=column)
    try:
        # Stored as the drain will read it back: JSON, dates as ISO text.
        stored = json.dumps({**row, column: given if given is not None else text},
                            ensure_ascii=False, allow_nan=False, default=_json_value)
        stored.encode("utf-8")  # a lone surrogate would fail in the ledger and the file
    except (TypeError, ValueError) as exc:
        raise InputError(f"the row cannot be stored as JSON: {exc}", field="row") from None
    # Checked as the drain's JSONL input will give it to the batch lane.
    outcome = prepare(spec, InputRow(1, json.loads(stored)))
    if isinstance(outcome, RowRejection):
        raise InputError(outcome.reason, field=outcome.field)
    return outcome.key, stored


def task_for_queue(task: str, catalog: Catalog | None = None) -> TaskSpec:
    """The spec of a task work may be queued for: in the catalog, and its provider has a
    batch API (the live lane's tasks qualify: a deferred live request is drained too)."""
    return _batch_task(task, catalog)


def _batch_task(task: str, catalog: Catalog | None) -> TaskSpec:
    spec = (catalog or _current_catalog()).get(task)
    if "batch" not in _adapter_capabilities(spec.provider):
        raise ConfigurationError(f"task {task!r} runs on {spec.provider}, which has no batch "
                                 "API: its work cannot be queued for a drain")
    return spec


def _adapter_capabilities(provider: str) -> frozenset[str]:
    """What a provider's adapter can do (imports its SDK, once per process)."""
    if provider == "openai":
        from lanewise.providers.openai_adapter import OpenAIAdapter

        return OpenAIAdapter.capabilities
    if provider == "anthropic":
        from lanewise.providers.anthropic_adapter import AnthropicAdapter

        return AnthropicAdapter.capabilities
    return frozenset()


def _current_catalog() -> Catalog:
    """The configured catalog, read again only when its file changes (the service and
    the live lane enqueue many times per process)."""
    from lanewise.settings import get_settings

    path = Path(get_settings().catalog_path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = 0  # load_catalog says what is wrong with it
    return _catalog_at(str(path), stamp)


@lru_cache(maxsize=4)
def _catalog_at(path: str, stamp: int) -> Catalog:
    return load_catalog(Path(path))


def _json_value(value: Any) -> Any:
    """JSON for the few non-JSON values a Python caller may pass in a row."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a JSON number")
    raise TypeError(f"{type(value).__name__} values are not JSON")


def _item(row: dict[str, Any], spec: TaskSpec | None) -> QueueItem:
    return QueueItem(
        id=int(row["id"]), task=row["task"], key=row["key"], status=row["status"],
        output_text=row["output_text"], error=row["error"],
        cost_usd=from_picodollars(int(row["cost_picodollars"] or 0)),
        run_key=row["run_key"], created_at=row["created_at"], finished_at=row["finished_at"],
        output=_output(row, spec))


def _output(row: dict[str, Any], spec: TaskSpec | None) -> Any:
    """The answer of a succeeded item: parsed for a JSON task (the batch lane checked it
    against the schema), the text otherwise; None before it succeeded."""
    text = row["output_text"]
    if row["status"] != "succeeded" or text is None:
        return None
    if spec is not None and spec.output.type == "json":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


def read_jsonl_rows(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """The objects of a JSONL stream (blank lines skipped); a bad line is an InputError
    naming its 1-based number."""
    number = 0
    for raw in lines:
        text = raw.decode("utf-8-sig") if isinstance(raw, bytes) else raw.lstrip("\ufeff")
        if not text.strip():
            continue
        number += 1
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InputError(f"not valid JSON: {exc}", row=number, field="line") from None
        if not isinstance(value, dict):
            raise InputError("not a JSON object", row=number, field="line")
        yield value
