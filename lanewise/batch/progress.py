"""Progress and logs of a run: a Prefect progress artifact, the run's Prefect logs, and
listeners in this process (CLI)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any
from uuid import UUID

Listener = Callable[[str, int, int, str], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> Callable[[], None]:
    """Register `listener(run_key, done, total, message)`; returns a remover."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def notify(run_key: str, done: int, total: int, message: str) -> None:
    """Tell every listener in this process how a run is going."""
    for listener in list(_listeners):
        listener(run_key, done, total, message)


class PrefectProgress:
    """Advances one Prefect progress artifact as shards finish."""

    def __init__(self, run_key: str, key: str, label: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.run_key = run_key
        self.artifact_id: UUID = create_progress_artifact(
            0.0, key=key, description=f"Rows finished in {label} (run {run_key})")

    def __call__(self, done: int, total: int, message: str) -> None:
        from prefect.artifacts import update_progress_artifact

        percent = 100.0 * done / total if total else 100.0
        update_progress_artifact(self.artifact_id, percent, description=message)
        notify(self.run_key, done, total, message)


def artifact_key(task: str, lane: str, kind: str) -> str:
    """A stable artifact key per task, lane and kind (`ticket-tagging-batch-cost`): every
    run of the task adds a version, so the Prefect UI shows its history across nights.
    Keys allow lowercase letters, digits and dashes only."""
    raw = f"{task}-{lane}-{kind}".lower()
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", raw)).strip("-")[:100]


class RunLog(logging.LoggerAdapter):
    """ctx.log inside a flow: each record goes to the current Prefect run's logs (the
    task run's, else the flow run's), which the UI shows on the flow run's page; outside
    a run, to the `lanewise.batch` logger. Resolved per record, so one cached lane
    context serves flow runs one after another and steps run as tasks."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("lanewise.batch"), {})

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Send one record to the run's logs."""
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            target: logging.Logger | logging.LoggerAdapter = get_run_logger()
        except MissingContextError:
            target = self.logger
        target.log(level, msg, *args, **kwargs)
