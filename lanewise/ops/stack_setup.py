"""What `lanewise up` sets up on its Prefect server once it answers: the work pools
prefect.yaml names, lanewise's block types, and every deployment of prefect.yaml.

The pools and block types are made in this process through Prefect's client (one
import of Prefect, ~1.5 s, instead of a `prefect` command each); the deployments by
`prefect deploy --all` itself, run from the repository root as a user would.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from lanewise.errors import ConfigurationError

DEPLOY_TIMEOUT = 300.0
RETRIES_503 = 6


def tail(path: Path | str, lines: int = 15) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def prefect_yaml_deployments(repo_root: Path) -> list[dict[str, Any]]:
    """The deployments prefect.yaml declares (name, work pool, schedules ...)."""
    path = repo_root / "prefect.yaml"
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    deployments = document.get("deployments") or []
    if not isinstance(deployments, list):
        raise ConfigurationError(f"{path}: `deployments` is not a list")
    return [d for d in deployments if isinstance(d, dict) and d.get("name")]


def pool_names(deployments: list[dict[str, Any]]) -> list[str]:
    """The work pools the deployments run on, in order of first use."""
    names: list[str] = []
    for deployment in deployments:
        pool = (deployment.get("work_pool") or {}).get("name")
        if pool and pool not in names:
            names.append(pool)
    return names


def wait_healthy(api_url: str, timeout: float, still_running: Callable[[], bool],
                 log: str) -> float:
    """Wait until the Prefect API answers `/health`; returns the seconds waited."""
    started = time.monotonic()
    with httpx.Client(trust_env=False, timeout=2) as client:
        while True:
            try:
                if client.get(f"{api_url}/health").status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if not still_running():
                raise ConfigurationError(f"the Prefect server exited before it answered; "
                                         f"the end of {log}:\n{tail(log)}")
            if time.monotonic() - started > timeout:
                raise ConfigurationError(f"the Prefect server did not answer within "
                                         f"{timeout:g} s; the end of {log}:\n{tail(log)}")
            time.sleep(0.1)


def ensure_pools(api_url: str, names: list[str]) -> list[str]:
    """Create each missing work pool as a `process` pool; returns those created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    created = []
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            for name in names:
                try:
                    client.read_work_pool(name)
                    continue
                except ObjectNotFound:
                    pass
                client.create_work_pool(WorkPoolCreate(
                    name=name, type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="lanewise's flows, run by the worker `lanewise up` starts"))
                created.append(name)
    return created


def block_classes() -> list[type]:
    """Every Prefect block class defined in the modules of the `blocks` package
    (exported from `blocks/__init__.py` or not)."""
    from prefect.blocks.core import Block

    import blocks

    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(blocks.__path__, f"{blocks.__name__}."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Block) and value is not Block
                    and value.__module__ == module.__name__):
                found[value.get_block_type_slug()] = value
    return [found[slug] for slug in sorted(found)]


def register_block_types(api_url: str) -> list[str]:
    """Register (or update) every lanewise block type and schema: those the `blocks`
    package registers itself, and any other block class defined in its modules;
    returns their slugs."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import blocks

    own = getattr(blocks, "register_block_types", None)
    slugs = list(own(api_url)) if own is not None else []
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        for block_class in block_classes():
            if block_class.get_block_type_slug() not in slugs:
                block_class.register_type_and_schema(_sync=True)
                slugs.append(block_class.get_block_type_slug())
    return sorted(slugs)


@contextlib.contextmanager
def deploying(repo_root: Path, env: dict[str, str], log_path: Path,
              timeout: float = DEPLOY_TIMEOUT) -> Iterator[None]:
    """`prefect deploy --all` from the repository root, run while the block runs (its
    output in `log_path`); the block's end waits for it and raises if it failed."""
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, cwd=repo_root, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
        returncode = process.wait(timeout=max(1.0, timeout - (time.monotonic() - began)))
    except subprocess.TimeoutExpired:
        raise ConfigurationError(f"`prefect deploy --all` did not finish within "
                                 f"{timeout:g} s; see {log_path}") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if returncode != 0:
        raise ConfigurationError(f"`prefect deploy --all` failed (exit {returncode}); "
                                 f"the end of {log_path}:\n{tail(log_path)}")


def preload() -> None:
    """Import the Prefect modules the set-up uses (while the server starts)."""
    import prefect.client.orchestration  # noqa: F401
    import prefect.workers.process  # noqa: F401


def deployment_names(api_url: str) -> list[str]:
    """The deployments on the server, as `flow/deployment`."""
    with httpx.Client(base_url=api_url, trust_env=False, timeout=30) as client:
        flows = {flow["id"]: flow["name"] for flow in _post(client, "/flows/filter")}
        return sorted(f"{flows.get(d['flow_id'], '?')}/{d['name']}"
                      for d in _post(client, "/deployments/filter"))


def wait_workers_online(api_url: str, workers: dict[str, tuple[str, float]], timeout: float,
                        still_running: Callable[[str], bool], logs: dict[str, str]) -> None:
    """Wait until each pool's worker (pool -> (worker name, start as a Unix time))
    reports ONLINE with a heartbeat sent after its start (not a record left by an
    earlier worker of that name)."""
    from datetime import datetime

    def fresh(worker: dict[str, Any], since: float) -> bool:
        """Online, with a heartbeat from after `since`."""
        beat = worker.get("last_heartbeat_time")
        return (worker["status"] == "ONLINE" and bool(beat)
                and datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp() >= since)

    deadline = time.monotonic() + timeout
    waiting = dict(workers)
    with httpx.Client(base_url=api_url, trust_env=False, timeout=10) as client:
        while waiting:
            for pool, (name, since) in list(waiting.items()):
                listed = _post(client, f"/work_pools/{pool}/workers/filter")
                if any(w["name"] == name and fresh(w, since) for w in listed):
                    del waiting[pool]
                elif not still_running(pool):
                    raise ConfigurationError(
                        f"the worker of pool {pool!r} exited; the end of {logs[pool]}:\n"
                        f"{tail(logs[pool])}")
            if waiting and time.monotonic() > deadline:
                pool = next(iter(waiting))
                raise ConfigurationError(
                    f"the worker of pool {pool!r} did not come online within {timeout:g} s; "
                    f"the end of {logs[pool]}:\n{tail(logs[pool])}")
            if waiting:
                time.sleep(0.2)


def _post(client: httpx.Client, path: str) -> Any:
    """POST an empty filter to the Prefect API; a 503 (its SQLite database locked by another writer
    for a moment) is retried, as Prefect's own client does."""
    for attempt in range(RETRIES_503):
        response = client.post(path, json={})
        if response.status_code != 503:
            break
        time.sleep(0.5 * (attempt + 1))
    return _ok(response)


def _ok(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise ConfigurationError(f"the Prefect API answered {response.status_code} to "
                                 f"{response.request.method} {response.request.url}: "
                                 f"{response.text[:300]}")
    return response.json()
