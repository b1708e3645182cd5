"""Planted fake keys, and a scan for them in everything a run wrote (tests/test_key_leaks.py)."""

from __future__ import annotations

import json
import logging
import pickle
import random
import string
import traceback
from pathlib import Path
from typing import Any

from lanewise.settings import get_settings


def _planted(prefix: str, seed: int) -> str:
    """A fake secret: a readable prefix, then 48 random letters and digits."""
    chars = string.ascii_letters + string.digits
    draw = random.Random(seed)
    body = "".join(draw.choice(chars) for _ in range(48))
    return f"{prefix}-PLANTED-{body}"


KEYS = {
    "openai_block": _planted("sk-lanewise", 1),
    "openai_env": _planted("sk-lanewise", 2),
    "anthropic_block": _planted("sk-ant-lanewise", 3),
    "anthropic_env": _planted("sk-ant-lanewise", 4),
    "openai_admin_env": _planted("sk-admin-lanewise", 5),
    "storage_block": _planted("s3secret", 6),
    "storage_env": _planted("s3secret", 7),
    "corrupt_block": _planted("sk-lanewise", 8),
}
# A key may leak in part (pydantic shortens a long value to its start and end): any 16
# characters in a row of a key's random body contain one of these 8-character windows.
WINDOW = 8
NEEDLES = sorted({key.rsplit("-", 1)[1][i:i + WINDOW] for key in KEYS.values()
                  for i in range(0, 48 - WINDOW + 1, WINDOW)})
WATCHED_LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "lanewise",
                   "openai", "anthropic", "httpx", "httpcore", "uvicorn", "uvicorn.error")


def leaks(text: str | bytes) -> list[str]:
    """The fragments of planted secrets found in `text`."""
    if isinstance(text, bytes):
        return [n for n in NEEDLES if n.encode() in text]
    return [n for n in NEEDLES if n in text]


class Findings:
    """Where a planted key was found, and how much was scanned."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.scanned: dict[str, int] = {}
        self.places: set[str] = set()
        self.logs: list[Any] = []  # the flow runs' Prefect logs, once read

    def scan(self, where: str, text: str | bytes) -> None:
        """Record a leak of `text` under `where`; count what was scanned."""
        kind = where.split(":", 1)[0]
        self.places.add(where)
        self.scanned[kind] = self.scanned.get(kind, 0) + 1
        hits = leaks(text)
        if hits:
            self.found.append(f"{where}: {hits}")


class Capture(logging.Handler):
    """Every log record of the watched loggers, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
            self.lines.append(repr(record.__dict__))
        except Exception as exc:  # noqa: BLE001 - a record we cannot format is a finding
            self.lines.append(f"unformattable record: {exc!r}")


def exception_texts(exc: BaseException) -> list[str]:
    """What an error shows: message, repr, the whole chained traceback, pickled form."""
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc)),
            repr(pickle.dumps(exc))]


def save_corrupt_credentials(name: str) -> None:
    """A credentials block whose stored data lacks `provider` (as a block saved by an
    older lanewise, or edited through the API, can): loading it fails validation."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate

    from blocks import ProviderCredentials

    ProviderCredentials.register_type_and_schema(_sync=True)
    with get_client(sync_client=True) as client:
        client.create_block_document(BlockDocumentCreate(
            name=name, data={"api_key": KEYS["corrupt_block"]},
            block_schema_id=ProviderCredentials._block_schema_id,
            block_type_id=ProviderCredentials._block_type_id))


def scan_files(findings: Findings, root: Path) -> None:
    """Every file under `root` as bytes, and Parquet files decoded too."""
    import pyarrow.parquet as pq

    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        findings.scan(f"file:{path}", path.read_bytes())
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            findings.scan(f"parquet:{path}", json.dumps(table.to_pylist(), default=str))
            findings.scan(f"parquet-meta:{path}", str(table.schema.metadata))


def scan_ledger(findings: Findings, url: str) -> None:
    """Every row of every table of the ledger."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
                findings.scan(f"ledger:{table}", "\n".join(repr(tuple(r)) for r in rows))
    finally:
        engine.dispose()


def scan_prefect(findings: Findings, flow_run_ids: list) -> None:
    """The flow runs, their states, task runs, logs and artifacts, read from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs still queued in this process reach the API first
    with get_client(sync_client=True) as client:
        for flow_run_id in flow_run_ids:
            findings.scan(f"prefect-flow-run:{flow_run_id}",
                          client.read_flow_run(flow_run_id).model_dump_json())
            for state in client.read_flow_run_states(flow_run_id):
                findings.scan(f"prefect-state:{flow_run_id}", state.model_dump_json())
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=flow_run_ids)), limit=200)
        for task_run in task_runs:
            findings.scan(f"prefect-task-run:{task_run.name}", task_run.model_dump_json())
        logs, offset = [], 0
        while True:
            page = client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)), limit=200, offset=offset)
            logs.extend(page)
            offset += len(page)
            if len(page) < 200:
                break
        for log in logs:
            findings.scan("prefect-log:", log.model_dump_json())
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids)), limit=200)
        for artifact in artifacts:
            findings.scan(f"prefect-artifact:{artifact.key}", artifact.model_dump_json())
    findings.logs = logs


def scan_prefect_database(findings: Findings) -> None:
    """The Prefect server's own database files: events, logs, states, everything it kept
    (block data is stored encrypted, so a planted key here came through something else)."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value() or ""
    if url.startswith("sqlite"):
        database = Path(url.split(":///", 1)[1])
        for path in database.parent.glob(database.name + "*"):
            findings.scan(f"prefect-db:{path.name}", path.read_bytes())


def scan_everything(planted: dict, states: list, errors: list[BaseException],
                    started: float) -> Findings:
    """Scan all the runs wrote: files, ledger, Prefect records and database, Prefect's
    result files written since `started`, final states, and the errors raised."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    findings = Findings()
    scan_files(findings, planted["home"])
    scan_files(findings, planted["store"])
    scan_ledger(findings, get_settings().resolved_database_url)
    scan_prefect(findings, [s.state_details.flow_run_id for s in states])
    scan_prefect_database(findings)
    result_dir = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    if result_dir.exists():
        for path in result_dir.rglob("*"):
            if path.is_file() and path.stat().st_mtime >= started:
                findings.scan(f"prefect-result:{path.name}", path.read_bytes())
    for state in states:
        findings.scan("flow-state", repr(state) + str(state.message))
    for error in errors:
        for text in exception_texts(error):
            findings.scan(f"error:{type(error).__name__}", text)
    return findings
