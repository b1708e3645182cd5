"""The emulator's timing, limits and fault switches (all changeable while it runs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

PRICES_ENV = "LANEWISE_EMULATOR_PRICES"
ORGANIZATION_ID = "org-lanewise-emulator"
#: The organization Anthropic's rate-limit messages name (Anthropic's are UUIDs).
ANTHROPIC_ORGANIZATION_ID = "0e1a7c55-5e6d-4f1b-9c3a-1a2e3b4c5d6e"
#: The key the emulator accepts by default (any key, unless configured otherwise).
EMULATOR_API_KEY = "sk-lanewise-emulator"


class Timing(BaseModel):
    """How long (compressed) batch work takes; seconds of wall time."""

    batch_seconds: float = Field(3.0, ge=0, description="Time from in_progress to done.")
    validating_seconds: float = Field(0.2, ge=0, description="Time a batch shows validating.")
    finalizing_seconds: float = Field(0.3, ge=0, description="Time in finalizing (OpenAI).")
    cancel_seconds: float = Field(0.3, ge=0, description="Time in cancelling/canceling.")
    expiry_seconds: float = Field(
        60.0, gt=0, description="The compressed 24 h completion window; batches still "
        "unfinished then expire."
    )


class Limits(BaseModel):
    """Provider limits the emulator enforces (real values by default)."""

    openai_max_requests: int = Field(50_000, description="Requests per OpenAI batch.")
    openai_max_file_bytes: int = Field(200 * 1024 * 1024, description="OpenAI batch input.")
    openai_enqueued_tokens: int = Field(
        2_000_000, description="Per-model enqueued input tokens over active OpenAI batches "
        "(Tier 1's batch queue limit for gpt-4o-mini; lanewise's default budget)."
    )
    openai_enqueued_tokens_by_model: dict[str, int] = Field(
        default_factory=dict, description="Per-model overrides of `openai_enqueued_tokens` "
        "(e.g. {'gpt-4o': 90000}, Tier 1's figure for gpt-4o)."
    )
    anthropic_max_requests: int = Field(100_000, description="Requests per Anthropic batch.")
    anthropic_max_bytes: int = Field(256 * 1024 * 1024, description="Anthropic batch body.")

    def enqueued_limit(self, model: str) -> int:
        """The enqueued-token limit of `model`."""
        return self.openai_enqueued_tokens_by_model.get(model, self.openai_enqueued_tokens)


class Faults(BaseModel):
    """Fault injection; every rate is a probability in [0, 1], drawn from `seed`."""

    seed: int = Field(0, description="Seed of every random draw; same seed, same run.")
    latency_ms: float = Field(0.0, ge=0, description="Mean added latency of live calls.")
    latency_jitter_ms: float = Field(0.0, ge=0, description="Uniform +/- jitter on it.")
    rate_limit_rate: float = Field(0.0, ge=0, le=1, description="Live calls answered 429.")
    retry_after_seconds: float = Field(1.0, ge=0, description="retry-after sent with a 429.")
    server_error_rate: float = Field(0.0, ge=0, le=1, description="Live calls answered 500.")
    unavailable_rate: float = Field(0.0, ge=0, le=1, description="Live calls answered 503.")
    overloaded_rate: float = Field(
        0.0, ge=0, le=1, description="Anthropic live calls answered 529 overloaded_error."
    )
    item_4xx_rate: float = Field(0.0, ge=0, le=1, description="Batch items failing with 400.")
    item_5xx_rate: float = Field(0.0, ge=0, le=1, description="Batch items failing with 500.")
    batch_fail_rate: float = Field(0.0, ge=0, le=1, description="Whole batches that fail.")
    batch_expire_rate: float = Field(0.0, ge=0, le=1, description="Batches that expire.")
    expire_finished_fraction: float = Field(
        0.5, ge=0, le=1, description="Share of an expiring batch finished before expiry."
    )
    openai_insufficient_quota: bool = Field(
        False, description="OpenAI is out of credit: live calls, uploads and batch creates "
        "answer 429 insufficient_quota."
    )
    anthropic_insufficient_quota: bool = Field(
        False, description="Anthropic is out of credit: live calls and batch creates answer "
        "400 'Your credit balance is too low'."
    )
    live_scope_providers: list[Literal["openai", "anthropic"]] = Field(
        default_factory=list, description="Only live calls to these providers get the random "
        "live faults and the added latency (empty: both)."
    )
    live_scope_models: list[str] = Field(
        default_factory=list, description="Only live calls for these models get the random "
        "live faults and the added latency (empty: every model)."
    )

    def live_scope_holds(self, provider: str, model: str | None) -> bool:
        """Whether the random live faults and latency apply to a call of `provider`/`model`."""
        return ((not self.live_scope_providers or provider in self.live_scope_providers)
                and (not self.live_scope_models or model in self.live_scope_models))


class Budget(BaseModel):
    """A per-minute budget of one API key for one model; 0 means not metered."""

    requests_per_minute: int = Field(
        0, ge=0, description="Live requests per minute per key and model (0: not metered).")
    tokens_per_minute: int = Field(
        0, ge=0, description="Live tokens (input + output) per minute per key and model: "
        "OpenAI's TPM; on Anthropic an extra combined budget (0: not metered).")
    input_tokens_per_minute: int = Field(
        0, ge=0, description="Anthropic input tokens per minute (ITPM) per key and model "
        "(0: not metered).")
    output_tokens_per_minute: int = Field(
        0, ge=0, description="Anthropic output tokens per minute (OTPM) per key and model "
        "(0: not metered).")


class BudgetRule(BaseModel):
    """A budget for the calls it matches (a key, a provider, a model, or a mix); its unset
    fields are inherited from less specific rules and the defaults."""

    key: str | None = Field(None, description="The API key it applies to (any when unset).")
    provider: Literal["openai", "anthropic"] | None = Field(
        None, description="The provider it applies to (any when unset).")
    model: str | None = Field(None, description="The model it applies to (any when unset).")
    requests_per_minute: int | None = Field(None, ge=0)
    tokens_per_minute: int | None = Field(None, ge=0)
    input_tokens_per_minute: int | None = Field(None, ge=0)
    output_tokens_per_minute: int | None = Field(None, ge=0)

    def matches(self, provider: str, key: str, model: str) -> bool:
        """Whether this rule applies to a call of `key` to `provider`'s `model`."""
        return (self.key in (None, key) and self.provider in (None, provider)
                and self.model in (None, model))

    def specificity(self) -> int:
        """Rank among matching rules: a key outranks a model, which outranks a provider."""
        return (4 if self.key is not None else 0) + (2 if self.model is not None else 0) + (
            1 if self.provider is not None else 0)


class RateLimits(Budget):
    """The live calls' rate-limit budgets: these defaults for every key and model, refined by
    `rules`; counted per (provider, API key, model) over a one-minute window."""

    fixed_window: bool = Field(
        False, description="Count in fixed one-minute windows opened by a key's first "
        "request, instead of the providers' continuously refilled (rolling) minute.")
    rules: list[BudgetRule] = Field(
        default_factory=list, description="Budgets for particular keys, providers or "
        "models; the most specific matching rule wins, field by field.")


class EmulatorConfig(BaseModel):
    """Everything that shapes the emulator's behaviour."""

    timing: Timing = Field(default_factory=Timing)
    limits: Limits = Field(default_factory=Limits)
    faults: Faults = Field(default_factory=Faults)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    api_key: str | None = Field(
        None, description="If set, the only key accepted; otherwise any non-empty key is."
    )
    prices_path: Path | None = Field(
        None, description=f"The price table the emulator bills by; default ${PRICES_ENV}, "
        "else lanewise's own (settings `prices_path`, data/prices.json)."
    )

    def resolved_prices_path(self) -> Path:
        """The price table file to bill by: this config's, `$LANEWISE_EMULATOR_PRICES`,
        else the one lanewise itself prices by."""
        if self.prices_path is not None:
            return Path(self.prices_path)
        from_env = os.environ.get(PRICES_ENV)
        if from_env:
            return Path(from_env)
        from lanewise.settings import get_settings

        return get_settings().prices_path
