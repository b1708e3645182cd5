"""Progress reporting: a Prefect progress artifact, plus listeners in this process (CLI)."""

from __future__ import annotations

from collections.abc import Callable
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

    def __init__(self, run_key: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.run_key = run_key
        self.artifact_id: UUID = create_progress_artifact(
            0.0, key=artifact_key("progress", run_key),
            description=f"Rows finished in run {run_key}")

    def __call__(self, done: int, total: int, message: str) -> None:
        from prefect.artifacts import update_progress_artifact

        percent = 100.0 * done / total if total else 100.0
        update_progress_artifact(self.artifact_id, percent, description=message)
        notify(self.run_key, done, total, message)


def artifact_key(kind: str, run_key: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    cleaned = "".join(c if c.isalnum() else "-" for c in run_key.lower())
    return f"lanewise-{kind}-{cleaned}".replace("--", "-")[:120].strip("-")
