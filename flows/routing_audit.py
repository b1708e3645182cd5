"""The nightly routing audit flow. Thin: it only wires lanewise.audit."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from lanewise.audit import ARTIFACT_KEY, run_audit
from lanewise.audit.render import header, headline, to_markdown
from lanewise.ledger import Ledger
from lanewise.settings import get_settings


@flow(name="routing-audit", log_prints=True)
def routing_audit(days: int = 30) -> dict[str, Any]:
    """Audit every catalog task's routing over the `days` complete UTC days ending
    yesterday and
    publish it as the markdown artifact `routing-audit` (one version a night: its
    history shows how routing and spend moved).

    Args:
        days: Complete UTC days in the audit's window, ending yesterday.
    """
    settings = get_settings().with_blocks()
    ledger = Ledger(settings.resolved_database_url)
    try:
        found = run_audit(settings, days=days, ledger=ledger)
    finally:
        ledger.engine.dispose()
    create_markdown_artifact(to_markdown(found), key=ARTIFACT_KEY,
                             description=header(found))
    print(f"{header(found)}: {headline(found)}")
    for flag in found.flags:
        print(f"{flag.kind}: {flag.sentence}")
    return {"window": found.window.describe(found.today), "tasks": len(found.rows),
            "flags": [flag.kind for flag in found.flags],
            **{name: float(value) for name, value in found.totals().items()}}
