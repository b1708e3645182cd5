"""The providers' cost reports, served from the emulator's billing record.

Two admin endpoints, in the shapes the real APIs answer with:

* OpenAI `GET /v1/organization/costs?start_time=&end_time=&bucket_width=1d&group_by[]=
  line_item&group_by[]=project_id&limit=&page=` (reference: "Costs" under Administration,
  https://platform.openai.com/docs/api-reference/usage/costs; the openai SDK's
  `admin.organization.usage.costs` and its `UsageCostsResponse` type):
  `{object:"page", data:[{object:"bucket", start_time, end_time, results:[
  {object:"organization.costs.result", amount:{value, currency:"usd"}, line_item,
  project_id, quantity, quantity_unit}]}], has_more, next_page}`. Line items read
  `"<model>, input"`, `", cached input"`, `", cache writes"`, `", output"`; the batch
  lane's carry the word batch (`"<model>, batch input"`). `amount.value` is a decimal
  string of USD (the live API has been seen sending strings; the SDK types a number).
* Anthropic `GET /v1/organizations/cost_report?starting_at=&ending_at=&bucket_width=1d&
  group_by[]=description&group_by[]=workspace_id&limit=&page=` (reference: "Get Cost
  Report", https://docs.claude.com/en/api/admin-api/usage-cost/get-cost-report):
  `{data:[{starting_at, ending_at, results:[{currency:"USD", amount, workspace_id,
  description, cost_type:"tokens", context_window, model, service_tier, token_type}]}],
  has_more, next_page}`, where `amount` is a decimal string in cents ("123.45" is
  $1.2345) and `service_tier` is `standard` or `batch`.

Buckets are UTC days of each billing row's `billed_at`; amounts are the rows' exact
`cost_picodollars`, split by token type at the emulator's own rates (the split adds up
to the row totals exactly; any remainder goes to the largest part). The endpoints sit
under `/v1/`, so they need a key like every other emulated endpoint.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lanewise.emulator.http_errors import anthropic_error, openai_error
from lanewise.emulator.state import EmulatorState
from lanewise.errors import LanewiseError
from lanewise.pricing import Lane, Usage, to_picodollars

DAY_SECONDS = 86_400
OPENAI_PROJECT_ID = "proj_lanewise_emulator"
# (Usage field and billing column, OpenAI line-item part, Anthropic token_type, label)
TOKEN_TYPES = (
    ("input_tokens", "input", "uncached_input_tokens", "Input Tokens"),
    ("cached_input_tokens", "cached input", "cache_read_input_tokens",
     "Cache Read Input Tokens"),
    ("cache_write_tokens", "cache writes", "cache_creation.ephemeral_5m_input_tokens",
     "5m Cache Write Input Tokens"),
    ("cache_write_1h_tokens", "cache writes (1h)", "cache_creation.ephemeral_1h_input_tokens",
     "1h Cache Write Input Tokens"),
    ("output_tokens", "output", "output_tokens", "Output Tokens"),
)
PICODOLLARS_PER_CENT = Decimal(10) ** 10
PICODOLLARS_PER_DOLLAR = Decimal(10) ** 12


@dataclass
class Part:
    """One token type of one (day, model, lane) group: tokens and exact picodollars."""

    field: str
    tokens: int
    picodollars: int


@dataclass
class Group:
    """What the billing record holds for one provider, UTC day, model and lane."""

    day: int  # days since the epoch
    model: str
    lane: str
    parts: list[Part]

    @property
    def picodollars(self) -> int:
        """The group's exact total."""
        return sum(p.picodollars for p in self.parts)


def billing_groups(state: EmulatorState, provider: str, start: int, end: int) -> list[Group]:
    """The provider's billing rows billed in [start, end) (Unix seconds), grouped by UTC
    day, model and lane, each split into token types."""
    with state.db.lock:
        columns = {row[1] for row in state.db.conn.execute("PRAGMA table_info(billing)")}
        # Rows written before the record carried a time count as billed now.
        stamp = "COALESCE(billed_at, :now)" if "billed_at" in columns else ":now"
        sums = ", ".join(f"SUM({f})" if f in columns else "0" for f, *_ in TOKEN_TYPES)
        rows = state.db.conn.execute(
            f"SELECT CAST({stamp} / {DAY_SECONDS} AS INTEGER) AS day, model, lane, {sums}, "
            f"SUM(cost_picodollars) FROM billing WHERE provider = :provider "
            f"AND {stamp} >= :start AND {stamp} < :end GROUP BY day, model, lane "
            "ORDER BY day, model, lane",
            {"now": int(time.time()), "provider": provider, "start": start, "end": end},
        ).fetchall()
    groups = []
    for day, model, lane, *counts, total in rows:
        groups.append(Group(int(day), model, lane, _split(
            state, model, lane, [int(c or 0) for c in counts], int(total or 0))))
    return groups


def _split(state: EmulatorState, model: str, lane: str, counts: list[int],
           total: int) -> list[Part]:
    """Token-type parts whose picodollars add up to `total` exactly."""
    parts = []
    for (field, *_), tokens in zip(TOKEN_TYPES, counts, strict=True):
        if not tokens:
            continue
        try:  # the per-token rate, times the tokens (prices are linear)
            rate = state.billing.prices.cost_usd(model, Usage(**{field: 1}), Lane(lane))
            picodollars = to_picodollars(rate * tokens)
        except (LanewiseError, ValueError):
            picodollars = 0
        parts.append(Part(field, tokens, picodollars))
    remainder = total - sum(p.picodollars for p in parts)
    if remainder:
        if not parts:
            parts.append(Part("input_tokens", 0, 0))
        max(parts, key=lambda p: p.picodollars).picodollars += remainder
    return parts


def _plain(value: Decimal) -> str:
    """A decimal as a plain string (no exponent, no trailing zeros)."""
    return format(value.normalize(), "f")


def _day_start(seconds: float) -> int:
    return int(seconds // DAY_SECONDS) * DAY_SECONDS


def _cursor(start: int) -> str:
    return "page_" + base64.urlsafe_b64encode(str(start).encode()).decode()


def _from_cursor(page: str) -> int:
    return int(base64.urlsafe_b64decode(page.removeprefix("page_").encode()).decode())


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(text: str) -> int:
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _list_param(request: Request, name: str) -> list[str]:
    """A list query parameter, sent as `name[]=` (the SDKs) or `name=` (curl examples)."""
    return request.query_params.getlist(f"{name}[]") + request.query_params.getlist(name)


class BadParameter(ValueError):
    """A query parameter the real endpoint would refuse (400)."""


def _window(start: int, end: int | None, limit: int, page: str | None,
            max_limit: int) -> tuple[list[int], int | None]:
    """The bucket starts of this page (UTC days from `start` to `end`) and the next one."""
    if not 1 <= limit <= max_limit:
        raise BadParameter(f"limit must be between 1 and {max_limit}")
    first = _day_start(start)
    stop = end if end is not None else _day_start(time.time()) + DAY_SECONDS
    if stop <= first:
        raise BadParameter("the end of the range must be after its start")
    if page:
        try:
            first = _from_cursor(page)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadParameter(f"invalid page cursor {page!r}") from exc
    starts = list(range(first, stop, DAY_SECONDS))
    following = starts[limit] if len(starts) > limit else None
    return starts[:limit], following


def _display_name(model: str) -> str:
    """`claude-haiku-4-5` -> `Claude Haiku 4.5` (the cost report's descriptions)."""
    words, version = [], []
    for part in model.split("-"):
        (version if part.isdigit() and len(part) <= 2 else words).append(part)
    return " ".join(w.capitalize() for w in words) + (f" {'.'.join(version)}" if version
                                                       else "")


def build_router(state: EmulatorState) -> APIRouter:
    """The cost-report endpoints of both providers, reading `state.billing`."""
    router = APIRouter()

    @router.get("/v1/organization/costs")
    def openai_costs(request: Request) -> Any:
        query = request.query_params
        try:
            if "start_time" not in query:
                raise BadParameter("start_time is required")
            if query.get("bucket_width", "1d") != "1d":
                raise BadParameter("bucket_width: only 1d is supported")
            start = int(query["start_time"])
            end = int(query["end_time"]) if query.get("end_time") else None
            starts, following = _window(start, end, int(query.get("limit", 7)),
                                        query.get("page"), 180)
        except (BadParameter, ValueError) as exc:
            return openai_error(400, f"Invalid query: {exc}", param="start_time")
        group_by = set(_list_param(request, "group_by"))
        projects = _list_param(request, "project_ids")
        stop = following if following is not None else (end or starts[-1] + DAY_SECONDS)
        groups = ([] if projects and OPENAI_PROJECT_ID not in projects
                  else billing_groups(state, "openai", starts[0], stop))
        by_day: dict[int, list[Group]] = {}
        for group in groups:
            by_day.setdefault(group.day * DAY_SECONDS, []).append(group)
        data = []
        for bucket in starts:
            results = _openai_results(by_day.get(bucket, []), group_by)
            data.append({"object": "bucket", "start_time": bucket,
                         "end_time": min(bucket + DAY_SECONDS, stop), "results": results})
        return {"object": "page", "data": data, "has_more": following is not None,
                "next_page": _cursor(following) if following is not None else None}

    @router.get("/v1/organizations/cost_report")
    def anthropic_cost_report(request: Request) -> Any:
        query = request.query_params
        try:
            if "starting_at" not in query:
                raise BadParameter("starting_at: Field required")
            if query.get("bucket_width", "1d") != "1d":
                raise BadParameter("bucket_width: only 1d is supported")
            start = _parse_rfc3339(query["starting_at"])
            end = _parse_rfc3339(query["ending_at"]) if query.get("ending_at") else None
            starts, following = _window(start, end, int(query.get("limit", 7)),
                                        query.get("page"), 31)
        except (BadParameter, ValueError) as exc:
            return anthropic_error(400, f"Invalid query: {exc}", kind="invalid_request_error")
        group_by = set(_list_param(request, "group_by"))
        unknown = group_by - {"workspace_id", "description"}
        if unknown:
            return anthropic_error(400, f"group_by: unsupported {sorted(unknown)}",
                                   kind="invalid_request_error")
        stop = following if following is not None else (end or starts[-1] + DAY_SECONDS)
        by_day: dict[int, list[Group]] = {}
        for group in billing_groups(state, "anthropic", starts[0], stop):
            by_day.setdefault(group.day * DAY_SECONDS, []).append(group)
        data = []
        for bucket in starts:
            data.append({"starting_at": _rfc3339(bucket),
                         "ending_at": _rfc3339(min(bucket + DAY_SECONDS, stop)),
                         "results": _anthropic_results(by_day.get(bucket, []), group_by)})
        return JSONResponse({"data": data, "has_more": following is not None,
                             "next_page": _cursor(following) if following is not None
                             else None})

    return router


def _openai_results(groups: list[Group], group_by: set[str]) -> list[dict[str, Any]]:
    project = OPENAI_PROJECT_ID if "project_id" in group_by else None
    if not groups:
        return []
    if "line_item" not in group_by:
        total = sum(g.picodollars for g in groups)
        return [_openai_result(total, None, project, None)]
    results = []
    for group in groups:
        for part in group.parts:
            name = next(n for f, n, *_ in TOKEN_TYPES if f == part.field)
            lane = "batch " if group.lane == Lane.BATCH.value else ""
            results.append(_openai_result(part.picodollars, f"{group.model}, {lane}{name}",
                                          project, part.tokens))
    return results


def _openai_result(picodollars: int, line_item: str | None, project: str | None,
                   quantity: int | None) -> dict[str, Any]:
    return {"object": "organization.costs.result",
            "amount": {"value": _plain(Decimal(picodollars) / PICODOLLARS_PER_DOLLAR),
                       "currency": "usd"},
            "line_item": line_item, "project_id": project,
            "quantity": quantity, "quantity_unit": "tokens" if quantity is not None else None}


def _anthropic_results(groups: list[Group], group_by: set[str]) -> list[dict[str, Any]]:
    if not groups:
        return []
    if "description" not in group_by:
        total = sum(g.picodollars for g in groups)
        return [_anthropic_result(total, {})]
    results = []
    for group in groups:
        tier = "batch" if group.lane == Lane.BATCH.value else "standard"
        name = _display_name(group.model)
        for part in group.parts:
            token_type, label = next((t, lab) for f, _, t, lab in TOKEN_TYPES
                                     if f == part.field)
            usage = "Batch Usage" if tier == "batch" else "Usage"
            results.append(_anthropic_result(part.picodollars, {
                "description": f"{name} {usage} - {label}", "cost_type": "tokens",
                "context_window": "0-200k", "model": group.model, "service_tier": tier,
                "token_type": token_type}))
    return results


def _anthropic_result(picodollars: int, described: dict[str, Any]) -> dict[str, Any]:
    return {"currency": "USD", "amount": _plain(Decimal(picodollars) / PICODOLLARS_PER_CENT),
            "workspace_id": None, "description": None, "cost_type": None,
            "context_window": None, "model": None, "service_tier": None, "token_type": None,
            **described}
