"""Reconciliation against the providers' own books.

`reconcile(start, end)` reads each provider's cost report with an admin key (OpenAI's
organization costs API, Anthropic's cost report; see `reports`), sums what the ledger
recorded over the same UTC days (`ledger_costs`), and compares them per day, model and
lane (`compare`). `lanewise reconcile` prints the result and exits non-zero when a
difference exceeds the tolerance; the `reconcile` flow (flows/reconcile.py) runs it
daily, publishes it as artifacts and fails on a mismatch.
"""

from lanewise.reconcile.compare import (
    ReconcileRow,
    Reconciliation,
    compare,
    period,
    reconcile,
)
from lanewise.reconcile.ledger_costs import ledger_costs
from lanewise.reconcile.reports import (
    AdminCredentials,
    ProviderCost,
    admin_credentials,
    fetch_anthropic_costs,
    fetch_openai_costs,
    parse_openai_line_item,
)

__all__ = [
    "AdminCredentials", "ProviderCost", "ReconcileRow", "Reconciliation", "admin_credentials",
    "compare", "fetch_anthropic_costs", "fetch_openai_costs", "ledger_costs",
    "parse_openai_line_item", "period", "reconcile",
]
