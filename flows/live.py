"""The live-on-demand flow: a handful of rows of one task answered now in the live lane
("draft replies for these 20 tickets now"). Thin: the logic is lanewise/live/flow.py."""

from __future__ import annotations

from typing import Any

from prefect import flow

from lanewise.live.flow import LiveParams, live_run_name, run_live


@flow(name="live-on-demand", flow_run_name=live_run_name, validate_parameters=False)
def live_on_demand(params: LiveParams) -> Any:
    """Answer the given rows (or the rows of an input picked by their keys) with live
    calls, a few at once, and publish what they cost; done in seconds."""
    return run_live(params)
