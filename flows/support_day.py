"""The support-day example flow: a reply draft for each incoming ticket on the live lane
now, the same tickets enqueued for tonight's tagging and summary. Thin: the logic is
lanewise/live/support_day.py."""

from __future__ import annotations

from typing import Any

from prefect import flow

from lanewise.live.support_day import SupportDayParams, run_support_day


@flow(name="support-day", validate_parameters=False)
def support_day(params: SupportDayParams) -> Any:
    """Draft replies live for the tickets that came in, and queue them for the night."""
    return run_support_day(params)
