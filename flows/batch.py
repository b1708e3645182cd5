"""Batch-lane flows: nightly runs and ad-hoc backfills. Thin: they only wire lanewise.

Each takes one `params` model (lanewise/batch/flow_params.py), so the Prefect UI's
custom-run form lists the fields with their descriptions and a choice of tasks. Prefect
does not validate the parameters itself (validate_parameters=False): lanewise does, as
the run starts, so a bad one fails the run with one line instead of Prefect's dump.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from lanewise.batch import flow_runs
from lanewise.batch.flow_params import (
    BackfillParams,
    NightlyParams,
    backfill_run_name,
    nightly_run_name,
)


@flow(name="nightly-batch", flow_run_name=nightly_run_name, validate_parameters=False)
def nightly_batch(params: NightlyParams) -> Any:
    """Run one task over one night's rows (the day before the scheduled time by default)
    in the batch lane."""
    return flow_runs.nightly(params)


@flow(name="backfill", flow_run_name=backfill_run_name, validate_parameters=False)
def backfill(params: BackfillParams) -> Any:
    """Run one task over every row dated from start to end (inclusive) in the batch lane;
    running the same range again resumes it and never pays twice."""
    return flow_runs.backfill(params)
