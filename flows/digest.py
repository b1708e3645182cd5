"""The weekly digest flow. Thin: the digest's input is built in lanewise/batch/digest.py."""

from __future__ import annotations

from typing import Any

from prefect import flow

from lanewise.batch import flow_runs
from lanewise.batch.flow_params import DigestParams, digest_run_name


@flow(name="weekly-digest", flow_run_name=digest_run_name, validate_parameters=False)
def weekly_digest(params: DigestParams = DigestParams()) -> Any:  # noqa: B008 - immutable
    """Group one week's tickets into recurring themes from their ticket-summary results
    (the last full week before the scheduled time by default) in the batch lane."""
    return flow_runs.weekly_digest(params)
