"""The routing audit: one row per catalog task from the ledger's measured traffic (who
waits, volume, waits, cost, the other lane's cost, budget and spend, the recommended
lane and why) and the flags a routing review acts on (docs/routing.md).

`measure` reads the ledger (`waits` the two wait distributions, which `lanewise whatif`
reads through the same queries), `recommend` holds the lane rules, `flags` the findings,
`rows` puts them together (`run_audit`, `build_audit`), `render` prints them.
"""

from lanewise.audit.measure import Window, window_for
from lanewise.audit.rows import Audit, TaskRow, build_audit, run_audit

__all__ = ["Audit", "TaskRow", "Window", "build_audit", "run_audit", "window_for"]

#: The key the nightly flow publishes the audit's markdown artifact under.
ARTIFACT_KEY = "routing-audit"
