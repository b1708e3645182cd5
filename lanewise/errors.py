"""Every error lanewise raises on purpose.

The hierarchy::

    LanewiseError                     base of everything below
    ├── ConfigurationError            settings, catalog or price table are wrong
    │   └── MissingCredentialsError   no API key where one is needed (says how to set one)
    ├── InputError                    an input row or file is unusable (names row and field)
    ├── ProviderError                 a provider call failed (adapters translate SDK errors)
    │   ├── TransientProviderError    worth retrying: 429, 5xx, 529, timeouts, connection drops
    │   ├── PermanentProviderError    not worth retrying: 4xx other than 408/409/429
    │   └── QuotaExhaustedError       the account is out of credit (OpenAI 429
    │                                 `insufficient_quota`, Anthropic "credit balance is
    │                                 too low"): never retried, stops the run, fails no item
    ├── BatchError                    a provider batch ended badly as a whole (failed, vanished)
    ├── BudgetExceededError           a batch run's cost estimate is over the task's per-run
    │                                 ceiling or what is left of its daily or monthly budget:
    │                                 refused before anything is sent (the message gives the
    │                                 figures and how to split the run)
    ├── LedgerError                   the ledger cannot be read or written as expected
    ├── RunBusyError                  another process drives this run key now (names it)
    └── ReconciliationError           the ledger disagrees with the provider's cost report
                                      by more than the tolerance (`lanewise reconcile`)

Adapters raise only these; the CLI turns them into one-line messages at its boundary.
"""

from __future__ import annotations

from decimal import Decimal


class LanewiseError(Exception):
    """Base class of every error lanewise raises on purpose."""


class ConfigurationError(LanewiseError):
    """Settings, the task catalog or the price table are wrong or incomplete."""


class MissingCredentialsError(ConfigurationError):
    """A provider needs an API key and none is configured."""

    def __init__(self, provider: str, env_var: str, block_type: str) -> None:
        super().__init__(
            f"No API key for {provider}. Set the environment variable {env_var}, "
            f"or save a {block_type!r} Prefect block and point LANEWISE_{provider.upper()}"
            "_CREDENTIALS_BLOCK at it. Without a key lanewise uses its local emulator."
        )
        self.provider = provider


class InputError(LanewiseError):
    """An input row or file cannot be used; the message names the row and the field."""

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None):
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.row = row
        self.field = field
        self.reason = message


class ProviderError(LanewiseError):
    """A call to a provider failed."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class TransientProviderError(ProviderError):
    """A provider failure worth retrying (rate limit, overload, server error, network)."""


class PermanentProviderError(ProviderError):
    """A provider failure that retrying will not fix (bad request, auth, not found)."""


class BatchError(LanewiseError):
    """A provider batch ended badly as a whole."""


class BudgetExceededError(LanewiseError):
    """A batch run would cost more than its task's budget allows; nothing was sent.

    Raised before the run's first batch is created, with the estimate, the limit it
    passes, what was spent and what is left, and how to split the run. The run keeps
    its plan: rerunning its run key once the budget allows (the next UTC day or month,
    or a raised limit) checks it again and sends it.
    """

    def __init__(self, message: str, *, run_key: str | None = None,
                 upper_usd: Decimal | None = None, expected_usd: Decimal | None = None) -> None:
        super().__init__(message)
        self.run_key = run_key
        self.upper_usd = upper_usd
        self.expected_usd = expected_usd

    def __reduce__(self) -> tuple:
        # Prefect hands a flow's exception back to its caller, possibly pickled.
        return (_rebuild_budget_error, (str(self), self.run_key, self.upper_usd,
                                        self.expected_usd))


def _rebuild_budget_error(message: str, run_key: str | None, upper_usd: Decimal | None,
                          expected_usd: Decimal | None) -> BudgetExceededError:
    return BudgetExceededError(message, run_key=run_key, upper_usd=upper_usd,
                               expected_usd=expected_usd)


class LedgerError(LanewiseError):
    """The ledger cannot be read or written as expected."""


class RunBusyError(LanewiseError):
    """Another live process holds the run key's lease; this one created nothing."""


class QuotaExhaustedError(ProviderError):
    """The provider account is out of credit: no retry helps until someone tops it up.

    Not a TransientProviderError (neither the SDK, nor Prefect, nor the runner retries
    it) and not an item failure: the run stops where it is, and rerunning its run key
    after topping up resumes it. `run_key` is filled in by the step that knows it.
    """

    def __init__(self, provider: str, run_key: str | None = None, *,
                 detail: str | None = None, status_code: int | None = None) -> None:
        rerun = f"rerun {run_key}" if run_key else "rerun the run"
        super().__init__(
            f"the {provider} account is out of credit (insufficient_quota): top up, then "
            f"{rerun} to resume; nothing was marked failed", status_code=status_code)
        self.provider = provider
        self.run_key = run_key
        self.detail = detail

    def for_run(self, run_key: str) -> QuotaExhaustedError:
        """The same error, naming the run key to rerun."""
        if self.run_key == run_key:
            return self
        return QuotaExhaustedError(self.provider, run_key, detail=self.detail,
                                   status_code=self.status_code)

    def __reduce__(self) -> tuple:
        # Prefect hands a task's exception back to the flow, possibly pickled.
        return (_rebuild_quota_error, (self.provider, self.run_key, self.detail,
                                       self.status_code))


def _rebuild_quota_error(provider: str, run_key: str | None, detail: str | None,
                         status_code: int | None) -> QuotaExhaustedError:
    return QuotaExhaustedError(provider, run_key, detail=detail, status_code=status_code)


class ReconciliationError(LanewiseError):
    """The ledger's costs differ from the provider's cost report beyond the tolerance."""
