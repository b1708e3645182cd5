"""The emulator's timing, limits and fault switches (all changeable while it runs)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
        20_000_000, description="Per-model enqueued input tokens over active OpenAI batches."
    )
    anthropic_max_requests: int = Field(100_000, description="Requests per Anthropic batch.")
    anthropic_max_bytes: int = Field(256 * 1024 * 1024, description="Anthropic batch body.")


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


class EmulatorConfig(BaseModel):
    """Everything that shapes the emulator's behaviour."""

    timing: Timing = Field(default_factory=Timing)
    limits: Limits = Field(default_factory=Limits)
    faults: Faults = Field(default_factory=Faults)
    api_key: str | None = Field(
        None, description="If set, the only key accepted; otherwise any non-empty key is."
    )
