"""The drain-queue flow: what the deferred-work queue holds goes through the batch lane.
Thin: the drain (resume, claim, carry, settle, and its crash rules) is
lanewise/batch/drain.py."""

from __future__ import annotations

from typing import Any

from prefect import flow

from lanewise.batch import drain
from lanewise.batch.drain import DrainParams, drain_run_name


@flow(name="drain-queue", flow_run_name=drain_run_name, validate_parameters=False)
def drain_queue(params: DrainParams = DrainParams()) -> Any:  # noqa: B008 - immutable
    """Send the queued work of every task (or one) through the batch lane as normal runs,
    resuming first any drain that died after claiming, and copy each result back to its
    queue item."""
    return drain.drain_in_prefect(params)
