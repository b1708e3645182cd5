"""The stack's state: where a home's stack lives, and what `lanewise up` recorded.

`<LANEWISE_HOME>/stack/stack.json` names every process `up` started (pid with its start
time, port, URL, log) and what it set up; `stack_api_url` reads it (cheaply, without
Prefect) for the commands that need a Prefect API (lanewise/ops/prefect_server.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanewise.errors import ConfigurationError
from lanewise.ops.processes import ProcessRecord, boot_id, is_alive

STATE_VERSION = 1


@dataclass(frozen=True)
class StackPaths:
    """Where a home's stack keeps its state, logs and Prefect files."""

    home: Path

    @property
    def root(self) -> Path:
        """`<home>/stack`: the state file, the lock, logs and Prefect's files."""
        return self.home / "stack"

    @property
    def state_file(self) -> Path:
        """What `up` started and set up (JSON)."""
        return self.root / "stack.json"

    @property
    def logs(self) -> Path:
        """The stack processes' output, one file each."""
        return self.root / "logs"

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME of the stack's processes, with the server's SQLite file."""
        return self.root / "prefect"

    @property
    def emulator_dir(self) -> Path:
        """The emulator's state folder, shared by every lanewise process of the home."""
        return self.home / "emulator"


@dataclass
class StackState:
    """What `up` started and set up (the JSON state file)."""

    home: str
    api_url: str | None = None
    emulator_url: str | None = None
    emulator_note: str = ""
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    pools: list[str] = field(default_factory=list)
    block_types: list[str] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)
    boot_id: str = field(default_factory=boot_id)  # the processes ran in this boot
    up_at: str | None = None
    up_seconds: float | None = None
    phases: dict[str, float] = field(default_factory=dict)  # when each step of `up` ended
    already_up: bool = False  # set by `up` when it found everything running

    @property
    def ui_url(self) -> str | None:
        """The Prefect UI's address."""
        return self.api_url.removesuffix("/api") if self.api_url else None

    def to_json(self) -> dict[str, Any]:
        """The state as JSON-able data, with whether each process is alive now."""
        return {"version": STATE_VERSION, "home": self.home, "api_url": self.api_url,
                "ui_url": self.ui_url, "emulator_url": self.emulator_url,
                "emulator_note": self.emulator_note, "pools": self.pools,
                "block_types": self.block_types, "deployments": self.deployments,
                "boot_id": self.boot_id, "up_at": self.up_at, "up_seconds": self.up_seconds,
                "phases": self.phases,
                "processes": {name: {**record.to_json(), "alive": is_alive(record.identity)}
                              for name, record in self.processes.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackState:
        """A state read back from the state file."""
        processes = {name: ProcessRecord.from_json(record)
                     for name, record in (data.get("processes") or {}).items()}
        return cls(home=data["home"], api_url=data.get("api_url"),
                   emulator_url=data.get("emulator_url"),
                   emulator_note=data.get("emulator_note") or "", processes=processes,
                   pools=list(data.get("pools") or []),
                   block_types=list(data.get("block_types") or []),
                   deployments=list(data.get("deployments") or []),
                   boot_id=data.get("boot_id") or "", up_at=data.get("up_at"),
                   up_seconds=data.get("up_seconds"), phases=dict(data.get("phases") or {}))

    def alive(self) -> dict[str, bool]:
        """Whether each recorded process runs now."""
        return {name: is_alive(record.identity) for name, record in self.processes.items()}


def load_state(paths: StackPaths) -> StackState | None:
    """The recorded stack of a home, or None when nothing is recorded."""
    try:
        state = StackState.from_json(json.loads(paths.state_file.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"cannot read the stack's state {paths.state_file}: {exc}; "
                                 "stop its processes by hand and remove the file") from exc
    if state.boot_id != boot_id():
        # Recorded before the machine restarted: those processes are gone, and their
        # pids may name others now.
        state.processes, state.boot_id = {}, boot_id()
    return state


def save_state(paths: StackPaths, state: StackState) -> None:
    """Write the state file atomically."""
    paths.root.mkdir(parents=True, exist_ok=True)
    partial = paths.state_file.with_suffix(".json.partial")
    partial.write_text(json.dumps(state.to_json(), indent=2))
    os.replace(partial, paths.state_file)


@contextlib.contextmanager
def stack_lock(paths: StackPaths, say: Callable[[str], None]) -> Iterator[None]:
    """One `up` or `down` of a home at a time."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another `lanewise up` or `down` of this home to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def server_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers `/health`."""
    import httpx

    try:
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            return client.get(f"{api_url}/health").status_code == 200
    except httpx.HTTPError:
        return False


def stack_api_url(home: Path) -> str | None:
    """The API URL of the stack `lanewise up` started for `home`, if its server runs
    and answers; None otherwise. Cheap, and imports no Prefect."""
    paths = StackPaths(Path(home).resolve())
    if not paths.state_file.exists():
        return None
    try:
        state = load_state(paths)
    except ConfigurationError:
        return None
    server = state.processes.get("server") if state else None
    if state is None or server is None or not state.api_url or not is_alive(server.identity):
        return None
    return state.api_url if server_healthy(state.api_url) else None
