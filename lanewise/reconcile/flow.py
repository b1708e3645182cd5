"""The `reconcile` flow's steps: read the books as a Prefect task, publish artifacts,
fail the flow on a mismatch (so a Prefect automation on failed flow runs can alert)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lanewise.errors import ReconciliationError, TransientProviderError
from lanewise.reconcile.compare import Reconciliation, period, reconcile

ARTIFACT_KEY = "lanewise-reconcile"
SUMMARY_ARTIFACT_KEY = "lanewise-reconcile-summary"


def _transient(task_obj: Any, task_run: Any, state: Any) -> bool:
    """Retry reading the reports only when the provider was briefly unavailable."""
    try:
        state.result()
    except (TransientProviderError, ConnectionError, TimeoutError):
        return True
    except Exception:  # noqa: BLE001 - a refused key or a mismatch is not worth a retry
        return False
    return False


@task(name="reconcile-costs", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[30, 300], retry_condition_fn=_transient)
def reconcile_task(start: date, end: date, provider: str | None,
                   tolerance_usd: Decimal | None) -> Reconciliation:
    """Read the providers' cost reports and compare them with the ledger."""
    return reconcile(start, end, provider=provider, tolerance_usd=tolerance_usd)


def publish(report: Reconciliation) -> None:
    """The comparison as a table and a markdown artifact, under stable keys (each run
    adds a version of the same two artifacts)."""
    rows = report.table_rows() or [{"day": report.period, "provider": "", "model": "",
                                    "lane": "", "ledger_usd": "0", "provider_usd": "0",
                                    "difference_usd": "0", "status": "no costs"}]
    create_table_artifact(rows, key=ARTIFACT_KEY,
                          description=f"Ledger vs provider cost reports, {report.period}")
    create_markdown_artifact(report.markdown(), key=SUMMARY_ARTIFACT_KEY,
                             description=f"Cost reconciliation {report.period}")


def reconcile_in_prefect(day: date | None = None, since: date | None = None,
                         provider: str | None = None,
                         tolerance_usd: Decimal | None = None) -> dict[str, Any]:
    """Reconcile (yesterday by default), publish the artifacts, and raise
    ReconciliationError when a difference exceeds the tolerance."""
    start, end = period(day, since)
    report = reconcile_task(start, end, provider, tolerance_usd)
    publish(report)
    print(report.message())
    for note in report.notes():
        print(note)
    if report.mismatches:
        raise ReconciliationError(report.message())
    return report.brief()
