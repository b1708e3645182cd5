"""The providers' own books: their cost reports, read with an admin key over httpx.

* OpenAI: the organization costs API, `GET /v1/organization/costs` (reference:
  https://platform.openai.com/docs/api-reference/usage/costs). Grouped by `line_item`,
  each result names a model and a token type (`"gpt-4o-mini-2024-07-18, input"`,
  `", cached input"`, `", output"`); `amount.value` is USD (a number, or a decimal
  string in the live API). Batch lines are told by the word batch in the line item;
  where a day's lines for a model never say batch, the report is taken not to tell the
  lanes apart and the comparison is made over both lanes together.
* Anthropic: the Admin API cost report, `GET /v1/organizations/cost_report` (reference:
  https://docs.claude.com/en/api/admin-api/usage-cost/get-cost-report). Grouped by
  `description`, each result carries `model`, `service_tier` (`standard`, `batch`) and
  `token_type`; `amount` is a decimal string in cents ("123.45" is $1.2345).

The openai SDK has `admin.organization.usage.costs`, but types the amount as a float;
the anthropic SDK has no client for this report. Both are read here with httpx, keeping
amounts exact. Admin keys stay `SecretStr` until the request header is built and are
never logged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from pydantic import SecretStr

from lanewise.errors import (
    ConfigurationError,
    PermanentProviderError,
    TransientProviderError,
)
from lanewise.settings import Settings


def _exact_json(response: httpx.Response) -> Any:
    """A response body with every JSON number as an exact Decimal (money, never float)."""
    return json.loads(response.content, parse_float=Decimal)

OPENAI_API = "https://api.openai.com/v1"
ANTHROPIC_API = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
ADMIN_ENV = {"openai": "OPENAI_ADMIN_KEY", "anthropic": "ANTHROPIC_ADMIN_KEY"}
ADMIN_KEY_SHAPE = {"openai": "sk-admin-...", "anthropic": "sk-ant-admin..."}
ADMIN_BLOCK_TYPE = "lanewise-provider-admin-key"
REPORT_NAME = {"openai": "organization costs API", "anthropic": "cost report"}
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
LIVE, BATCH = "live", "batch"


@dataclass(frozen=True)
class AdminCredentials:
    """Where to read a provider's cost report, and the admin key to read it with."""

    provider: str
    admin_key: SecretStr
    base_url: str
    source: str  # block | environment | emulator


def missing_admin_key(provider: str) -> ConfigurationError:
    """The error for a provider whose cost report cannot be read: how to give a key."""
    upper = provider.upper()
    return ConfigurationError(
        f"no admin key for {provider}: `lanewise reconcile` reads its "
        f"{REPORT_NAME[provider]}, which needs an admin key ({ADMIN_KEY_SHAPE[provider]}). "
        f"Set LANEWISE_{upper}_ADMIN_KEY (or {ADMIN_ENV[provider]}), or save a "
        f"{ADMIN_BLOCK_TYPE!r} Prefect block and point LANEWISE_{upper}_ADMIN_KEY_BLOCK at it")


def admin_credentials(provider: str, settings: Settings) -> AdminCredentials:
    """The admin credentials for `provider`: a saved block named by
    `LANEWISE_<PROVIDER>_ADMIN_KEY_BLOCK`; `LANEWISE_<PROVIDER>_ADMIN_KEY` or
    `<PROVIDER>_ADMIN_KEY`; otherwise, when the provider's lane runs on the emulator,
    the emulator (it serves both reports from its billing record). Raises a
    ConfigurationError saying how to set a key when there is none."""
    block_name = getattr(settings, f"{provider}_admin_key_block")
    default_base = OPENAI_API if provider == "openai" else ANTHROPIC_API
    if block_name:
        from blocks.loading import load_block
        from blocks.provider_admin_key import ProviderAdminKey

        # load_block: a block failing validation must not print its key in the error.
        block = load_block(ProviderAdminKey, block_name, f"{provider}_admin_key_block")
        return AdminCredentials(provider, block.admin_key, block.base_url or default_base,
                                "block")
    key = getattr(settings, f"{provider}_admin_key") or (
        SecretStr(os.environ[ADMIN_ENV[provider]]) if os.environ.get(ADMIN_ENV[provider])
        else None)
    if key is not None:
        return AdminCredentials(provider, key, default_base, "environment")
    from lanewise.providers import resolve_credentials

    if settings.use_emulator and not _has_api_key(provider, settings):
        lane = resolve_credentials(provider, settings)  # the emulator the lane uses
        return AdminCredentials(provider, lane.api_key, lane.base_url or default_base,
                                "emulator")
    raise missing_admin_key(provider)


def _has_api_key(provider: str, settings: Settings) -> bool:
    """Whether the provider's lane calls the real API (a block or a key is configured)."""
    from lanewise.providers import SDK_ENV

    return bool(getattr(settings, f"{provider}_credentials_block")
                or getattr(settings, f"{provider}_api_key") or os.environ.get(SDK_ENV[provider]))


@dataclass(frozen=True)
class ProviderCost:
    """One line of a provider's cost report.

    `model` is the model name without a dated snapshot suffix, or None when the line is
    not a model's tokens (tools, other products); `lane` is `batch`, `live`, another
    tier's name, or None when the report does not say.
    """

    provider: str
    day: date
    model: str | None
    lane: str | None
    token_type: str | None
    amount_usd: Decimal
    label: str


SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
MODALITY = re.compile(r"\s+(text|audio|image)$")


def base_model(name: str) -> str:
    """`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`, `claude-haiku-4-5-20251001` ->
    `claude-haiku-4-5`: the model a dated snapshot belongs to."""
    return SNAPSHOT.sub("", name.strip())


def parse_openai_line_item(line_item: str | None) -> tuple[str | None, str | None, str | None]:
    """(model, lane, token type) of an OpenAI costs line item.

    `"gpt-4o-mini-2024-07-18, input"` -> (`gpt-4o-mini`, None, `input`); a line item
    with the word batch is the batch lane's; lines prefixed by another product
    (`"evals | ..."`) or naming no model (`"web search tool calls"`) give no model.
    """
    if not line_item or "|" in line_item or "," not in line_item:
        return None, None, None
    head, tail = line_item.rsplit(",", 1)
    lane = BATCH if "batch" in line_item.lower() else None
    token_type = re.sub(r"\bbatch\b", "", tail, flags=re.IGNORECASE).strip(" ()") or None
    head = re.sub(r"\bbatch\b", "", head, flags=re.IGNORECASE).strip(" ()")
    model = base_model(MODALITY.sub("", head)) if head else None
    return model or None, lane, token_type


def _decimal(value: Any, what: str) -> Decimal:
    if value is None:
        return Decimal(0)
    try:
        return Decimal(str(value))
    except InvalidOperation as exc:
        raise PermanentProviderError(f"{what}: amount {value!r} is not a number") from exc


def _client(credentials: AdminCredentials) -> httpx.Client:
    secret = credentials.admin_key.get_secret_value()
    if credentials.provider == "openai":
        headers = {"Authorization": f"Bearer {secret}"}
    else:
        headers = {"x-api-key": secret, "anthropic-version": ANTHROPIC_VERSION}
    return httpx.Client(base_url=credentials.base_url.rstrip("/"), headers=headers,
                        timeout=TIMEOUT, transport=httpx.HTTPTransport(retries=2),
                        trust_env=credentials.source != "emulator")


def _get_pages(credentials: AdminCredentials, path: str,
               params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every page of a cost report (`has_more` / `next_page` -> `page`)."""
    provider = credentials.provider
    with _client(credentials) as client:
        page: str | None = None
        while True:
            query = {**params, **({"page": page} if page else {})}
            try:
                response = client.get(path, params=query)
            except httpx.HTTPError as exc:
                raise TransientProviderError(
                    f"{provider} {REPORT_NAME[provider]}: connection failed: {exc}") from exc
            _check(provider, response)
            body = _exact_json(response)
            yield body
            page = body.get("next_page")
            if not body.get("has_more") or not page:
                return


def _check(provider: str, response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = _exact_json(response)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # {"error": {"message", ...}} in both providers' formats
        detail = error.get("message")
    else:
        detail = str(error) if error else response.text[:300]
    message = (f"{provider} {REPORT_NAME[provider]}: HTTP {response.status_code}: "
               f"{detail or response.reason_phrase}")
    if response.status_code in (401, 403):
        raise ConfigurationError(
            f"{message} (the cost report needs an admin key, {ADMIN_KEY_SHAPE[provider]}, "
            f"with read access to usage and costs)")
    if response.status_code in (408, 409, 429) or response.status_code >= 500:
        raise TransientProviderError(message, status_code=response.status_code)
    raise PermanentProviderError(message, status_code=response.status_code)


def _epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _utc_day(seconds: float) -> date:
    return datetime.fromtimestamp(seconds, UTC).date()


def fetch_openai_costs(credentials: AdminCredentials, start: date, end: date,
                       project_id: str | None = None) -> list[ProviderCost]:
    """OpenAI's costs for the UTC days `start`..`end` (inclusive), by line item."""
    params: dict[str, Any] = {
        "start_time": _epoch(start), "end_time": _epoch(end + timedelta(days=1)),
        "bucket_width": "1d", "group_by[]": ["line_item", "project_id"], "limit": 180}
    if project_id:
        params["project_ids[]"] = [project_id]
    costs = []
    for page in _get_pages(credentials, "/organization/costs", params):
        for bucket in page.get("data") or []:
            day = _utc_day(bucket["start_time"])
            for result in bucket.get("results") or []:
                if project_id and result.get("project_id") not in (None, project_id):
                    continue
                amount = result.get("amount") or {}
                currency = str(amount.get("currency") or "usd").lower()
                if currency != "usd":
                    raise PermanentProviderError(
                        f"openai organization costs API: amount in {currency}, not usd")
                line_item = result.get("line_item")
                model, lane, token_type = parse_openai_line_item(line_item)
                costs.append(ProviderCost(
                    "openai", day, model, lane, token_type,
                    _decimal(amount.get("value"), "openai organization costs API"),
                    line_item or "(no line item)"))
    return costs


ANTHROPIC_TIERS = {"standard": LIVE, "batch": BATCH}


def fetch_anthropic_costs(credentials: AdminCredentials, start: date, end: date,
                          workspace_id: str | None = None) -> list[ProviderCost]:
    """Anthropic's costs for the UTC days `start`..`end` (inclusive), by description.

    `workspace_id` keeps one workspace's costs (`default`: the default workspace, whose
    results carry a null workspace id)."""
    group_by = ["description"] + (["workspace_id"] if workspace_id else [])
    params: dict[str, Any] = {
        "starting_at": f"{start.isoformat()}T00:00:00Z",
        "ending_at": f"{(end + timedelta(days=1)).isoformat()}T00:00:00Z",
        "bucket_width": "1d", "group_by[]": group_by, "limit": 31}
    wanted = None if workspace_id in (None, "default") else workspace_id
    costs = []
    for page in _get_pages(credentials, "/v1/organizations/cost_report", params):
        for bucket in page.get("data") or []:
            day = datetime.fromisoformat(
                str(bucket["starting_at"]).replace("Z", "+00:00")).astimezone(UTC).date()
            for result in bucket.get("results") or []:
                if workspace_id and result.get("workspace_id") != wanted:
                    continue
                currency = str(result.get("currency") or "USD").upper()
                if currency != "USD":
                    raise PermanentProviderError(
                        f"anthropic cost report: amount in {currency}, not USD")
                cents = _decimal(result.get("amount"), "anthropic cost report")
                tier = result.get("service_tier")
                model = result.get("model")
                costs.append(ProviderCost(
                    "anthropic", day, base_model(model) if model else None,
                    ANTHROPIC_TIERS.get(tier, tier) if tier else None,
                    result.get("token_type"), cents / 100,
                    result.get("description") or "(no description)"))
    return costs


def fetch_costs(credentials: AdminCredentials, start: date, end: date,
                settings: Settings) -> list[ProviderCost]:
    """The provider's cost report for the UTC days `start`..`end` (inclusive)."""
    if credentials.provider == "openai":
        return fetch_openai_costs(credentials, start, end, settings.openai_cost_project_id)
    return fetch_anthropic_costs(credentials, start, end, settings.anthropic_cost_workspace_id)
