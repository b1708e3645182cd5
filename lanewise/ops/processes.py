"""The processes `lanewise up` starts, known by pid and start time, stopped by group.

Each is spawned in a session (and so a process group) of its own, so that it outlives
the `lanewise up` that started it and a signal to its group reaches the children it
made in that group. A pid is recorded with the process's start time (clock ticks since
boot, from `/proc/<pid>/stat`): a pid the kernel has since given to another process is
then seen as gone, never signalled. Stopping a process also stops its descendants,
collected before the first signal: a Prefect process worker starts each flow run in a
session of its own (outside the worker's group), and those must go with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOG_ROTATE_BYTES = 20_000_000

#: A process identity: (pid, start time in clock ticks since boot).
Identity = tuple[int, int]


@dataclass
class ProcessRecord:
    """One process the stack started: what it runs, where it logs, how to reach it."""

    name: str
    pid: int
    started: int  # start time in clock ticks since boot: tells a reused pid apart
    command: list[str]
    log: str
    port: int | None = None
    url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-able data (the stack's state file)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        """A record read back from the state file."""
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})

    @property
    def identity(self) -> Identity:
        """The (pid, start time) pair that names exactly this process."""
        return (self.pid, self.started)


def _stat(pid: int) -> list[str] | None:
    """Fields 3 and on of `/proc/<pid>/stat` (state, ppid, pgrp, ...), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ")".
    return raw[raw.rindex(")") + 2:].split()


def boot_id() -> str:
    """This boot of the machine (a pid and start time name a process only within one)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if there is none."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def is_alive(identity: Identity) -> bool:
    """Whether exactly this process (same pid, same start) still runs (zombies do not)."""
    fields = _stat(identity[0])
    return fields is not None and int(fields[19]) == identity[1] and fields[0] not in "ZX"


def command_line(pid: int) -> list[str]:
    """The arguments process `pid` was started with (empty if unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _all_processes() -> dict[int, list[str]]:
    """Every process's stat fields, by pid."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                table[int(entry)] = fields
    return table


def family(identity: Identity) -> list[Identity]:
    """A process, its descendants and the other members of the process group it leads,
    each with its start time: everything stopping it must stop. When it is gone, the
    members left in its group (a pid is never reused while a group of that id exists);
    when its pid now names another process, nothing."""
    pid = identity[0]
    table = _all_processes()
    if pid in table and int(table[pid][19]) != identity[1]:
        return []  # the pid was reused: its group, if any, is not ours
    children: dict[int, list[int]] = {}
    for child, fields in table.items():
        children.setdefault(int(fields[1]), []).append(child)
    found: set[int] = set()
    todo = [pid] + [other for other, fields in table.items() if int(fields[2]) == pid]
    while todo:
        current = todo.pop()
        if current in found or current not in table:
            continue
        found.add(current)
        todo.extend(children.get(current, []))
    return [(member, int(table[member][19])) for member in sorted(found)
            if table[member][0] not in "ZX"]


def spawn(name: str, command: list[str], log_path: Path, env: dict[str, str],
          cwd: Path | None = None, **extra: Any) -> ProcessRecord:
    """Start `command` in a session of its own, appending its output to `log_path`
    (moved to `<log>.1` first when it has grown past LOG_ROTATE_BYTES)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.exists() and log_path.stat().st_size > LOG_ROTATE_BYTES:
        os.replace(log_path, log_path.with_name(log_path.name + ".1"))  # one old log kept
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    started = start_time(process.pid)
    if started is None:  # it died at once; the caller sees it as not alive
        started = -1
    return ProcessRecord(name=name, pid=process.pid, started=started, command=command,
                         log=str(log_path), **extra)


def _signal(identities: Iterable[Identity], signum: int) -> None:
    for identity in identities:
        if is_alive(identity):
            try:
                os.kill(identity[0], signum)
            except ProcessLookupError:
                pass


def _wait_gone(identities: list[Identity], timeout: float) -> list[Identity]:
    """Wait until none of them runs or `timeout` passes; returns those still running."""
    deadline = time.monotonic() + timeout
    while True:
        left = [identity for identity in identities if is_alive(identity)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


@dataclass
class Stopped:
    """What stopping one recorded process did."""

    name: str
    pid: int
    others: list[int]  # its descendants and group members that were stopped with it
    killed: bool  # it (or one of them) needed SIGKILL
    was_running: bool
    left: list[int] = field(default_factory=list)  # still running after SIGKILL (never seen)


def stop(record: ProcessRecord, first_signal: int = signal.SIGTERM,
         grace: float = 10.0) -> Stopped:
    """Stop a recorded process with its group and descendants: `first_signal` to it,
    SIGTERM to the others once it is gone, SIGKILL to whatever lingers after `grace`."""
    leader = record.identity
    members = family(leader)
    if not members:
        return Stopped(record.name, record.pid, [], killed=False, was_running=False)
    was_running = is_alive(leader)
    others = [identity for identity in members if identity != leader]
    _signal([leader], first_signal)
    remaining = _wait_gone([leader], grace)
    # The worker's flow runs (own sessions) and anything of the group that outlived
    # the leader: asked once, then killed.
    _signal(others, signal.SIGTERM)
    remaining += _wait_gone(others, 3.0 if not remaining else 0.0)
    killed = bool(remaining)
    _signal(remaining, signal.SIGKILL)
    left = _wait_gone(remaining, 5.0)
    return Stopped(record.name, record.pid, [pid for pid, _ in others], killed=killed,
                   was_running=was_running, left=[pid for pid, _ in left])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `host:port` now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def choose_port(wanted: int | None, *, fallback: int, host: str = "127.0.0.1"
                ) -> tuple[int, str | None]:
    """The port to serve on: `wanted` (or `fallback`) if free, else any free one (0
    asks for any); returns it and a note when it is not the one asked for."""
    port = fallback if wanted is None else wanted
    if port == 0:
        return free_port(host), None
    if port_is_free(port, host):
        return port, None
    chosen = free_port(host)
    return chosen, f"port {port} is taken; using {chosen}"
