"""The daily cost reconciliation flow. Thin: it only wires lanewise.reconcile."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from prefect import flow

from lanewise.reconcile.flow import reconcile_in_prefect


@flow(name="reconcile", log_prints=True)
def reconcile_costs(day: date | None = None, since: date | None = None,
                    provider: str | None = None, tolerance_usd: float | None = None) -> dict:
    """Compare the ledger with the providers' cost reports for one UTC day (yesterday by
    default) or every day since `since`; publish the comparison as artifacts
    (`lanewise-reconcile`, `lanewise-reconcile-summary`) and fail on a mismatch.

    Args:
        day: The UTC day to compare; empty for yesterday.
        since: Compare every day from this one to yesterday instead of one day.
        provider: Only this provider (openai or anthropic); empty for both.
        tolerance_usd: The largest difference in USD that passes; empty for
            LANEWISE_RECONCILE_TOLERANCE_USD.
    """
    tolerance = None if tolerance_usd is None else Decimal(str(tolerance_usd))
    return reconcile_in_prefect(day, since, provider, tolerance)
