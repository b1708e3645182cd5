"""The Prefect blocks that hold each provider's settings (models, rate limits, base URL).

Keys are not here: they live in `lanewise-provider-credentials` blocks.
"""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field

BASE_URL_NOTE = ("A `lanewise-provider-credentials` block's own base URL wins over this one; "
                 "not used when lanewise runs on its emulator (no key configured).")


def overrides(block: Block, targets: dict[str, str]) -> dict[str, Any]:
    """The settings a block sets: its fields that hold a value, by settings field name."""
    values = {target: getattr(block, name) for name, target in targets.items()}
    return {target: value for target, value in values.items() if value is not None}


class OpenAISettings(Block):
    """Settings of lanewise's OpenAI lanes, kept in Prefect.

    Used when `LANEWISE_OPENAI_SETTINGS_BLOCK` names a saved block of this type.
    Precedence, field by field: a value set in this block wins; a field left empty
    falls back to its environment variable (`LANEWISE_OPENAI_DEFAULT_MODEL`,
    `LANEWISE_OPENAI_REQUESTS_PER_MINUTE`, `LANEWISE_OPENAI_TOKENS_PER_MINUTE`,
    `LANEWISE_OPENAI_MAX_CONCURRENCY`, `LANEWISE_OPENAI_ENQUEUED_TOKEN_BUDGET`,
    `LANEWISE_ENQUEUED_TOKEN_BUDGETS`, `LANEWISE_OPENAI_BASE_URL`), then to lanewise's
    default. The base URL of a `lanewise-provider-credentials` block wins over this
    block's. The API key is not here: save it in a `lanewise-provider-credentials` block.
    """

    _block_type_name = "lanewise OpenAI settings"
    _block_type_slug = "lanewise-openai-settings"
    _description = ("Default model, rate limits, enqueued-token budget and base URL of "
                    "lanewise's OpenAI lanes (no key: see lanewise provider credentials). "
                    "Empty fields fall back to the LANEWISE_OPENAI_* environment variables.")

    default_model: str | None = Field(
        default=None, description="Model used when a request names none, e.g. gpt-4o-mini "
        "(the catalog's tasks name their own).")
    requests_per_minute: int | None = Field(
        default=None, gt=0, description="Requests per minute the live lane allows itself "
        "(your tier's RPM). Empty: no limit on lanewise's side.")
    tokens_per_minute: int | None = Field(
        default=None, gt=0, description="Tokens per minute, input plus output, the live lane "
        "allows itself (your tier's TPM). Empty: no limit on lanewise's side.")
    max_concurrency: int | None = Field(
        default=None, gt=0, description="Most live calls in flight at once (default 8).")
    enqueued_token_budget: int | None = Field(
        default=None, gt=0, description="Estimated input tokens the batch lane may have "
        "enqueued per model at once: your tier's batch queue limit (default 2,000,000). "
        "A lower limit the provider states when it refuses a batch is learned and used.")
    enqueued_token_budgets: dict[str, int] | None = Field(
        default=None, description="Per-model overrides of the enqueued-token budget, e.g. "
        '{"gpt-4o": 90000}.')
    base_url: str | None = Field(
        default=None, title="Base URL",
        description="API base URL ending in /v1 (a proxy or gateway). Empty: "
        "api.openai.com. " + BASE_URL_NOTE)

    SETTINGS: ClassVar[dict[str, str]] = {
        "default_model": "openai_default_model",
        "requests_per_minute": "openai_requests_per_minute",
        "tokens_per_minute": "openai_tokens_per_minute",
        "max_concurrency": "openai_max_concurrency",
        "enqueued_token_budget": "openai_enqueued_token_budget",
        "enqueued_token_budgets": "enqueued_token_budgets",
        "base_url": "openai_base_url",
    }

    def settings_overrides(self) -> dict[str, Any]:
        """The lanewise settings this block sets (its non-empty fields)."""
        return overrides(self, self.SETTINGS)


class AnthropicSettings(Block):
    """Settings of lanewise's Anthropic lanes, kept in Prefect.

    Used when `LANEWISE_ANTHROPIC_SETTINGS_BLOCK` names a saved block of this type.
    Precedence, field by field: a value set in this block wins; a field left empty
    falls back to its environment variable (`LANEWISE_ANTHROPIC_DEFAULT_MODEL`,
    `LANEWISE_ANTHROPIC_REQUESTS_PER_MINUTE`, `LANEWISE_ANTHROPIC_TOKENS_PER_MINUTE`,
    `LANEWISE_ANTHROPIC_OUTPUT_TOKENS_PER_MINUTE`, `LANEWISE_ANTHROPIC_MAX_CONCURRENCY`,
    `LANEWISE_ANTHROPIC_BASE_URL`), then to lanewise's default. The base URL of a
    `lanewise-provider-credentials` block wins over this block's. The API key is not
    here: save it in a `lanewise-provider-credentials` block.
    """

    _block_type_name = "lanewise Anthropic settings"
    _block_type_slug = "lanewise-anthropic-settings"
    _description = ("Default model, rate limits and base URL of lanewise's Anthropic lanes "
                    "(no key: see lanewise provider credentials). Empty fields fall back to "
                    "the LANEWISE_ANTHROPIC_* environment variables.")

    default_model: str | None = Field(
        default=None, description="Model used when a request names none, e.g. "
        "claude-haiku-4-5 (the catalog's tasks name their own).")
    requests_per_minute: int | None = Field(
        default=None, gt=0, description="Requests per minute the live lane allows itself "
        "(your tier's RPM). Empty: no limit on lanewise's side.")
    tokens_per_minute: int | None = Field(
        default=None, gt=0, description="Input tokens per minute the live lane allows itself "
        "(your tier's ITPM). Empty: no limit on lanewise's side.")
    output_tokens_per_minute: int | None = Field(
        default=None, gt=0, description="Output tokens per minute the live lane allows "
        "itself (your tier's OTPM). Empty: no limit on lanewise's side.")
    max_concurrency: int | None = Field(
        default=None, gt=0, description="Most live calls in flight at once (default 8).")
    base_url: str | None = Field(
        default=None, title="Base URL",
        description="API base URL (a proxy or gateway). Empty: "
        "api.anthropic.com. " + BASE_URL_NOTE)

    SETTINGS: ClassVar[dict[str, str]] = {
        "default_model": "anthropic_default_model",
        "requests_per_minute": "anthropic_requests_per_minute",
        "tokens_per_minute": "anthropic_tokens_per_minute",
        "output_tokens_per_minute": "anthropic_output_tokens_per_minute",
        "max_concurrency": "anthropic_max_concurrency",
        "base_url": "anthropic_base_url",
    }

    def settings_overrides(self) -> dict[str, Any]:
        """The lanewise settings this block sets (its non-empty fields)."""
        return overrides(self, self.SETTINGS)
