"""The Prefect API a command runs its flows against.

With `PREFECT_API_URL` set, that server. Without it, Prefect would start a temporary
server of its own, and a `lanewise run` killed with SIGKILL would leave it running,
reparented, for good (~230 MB each). So lanewise starts the temporary server itself,
with the same command Prefect uses, as a child that the kernel kills when its parent
dies (PR_SET_PDEATHSIG), and stops it when the command ends.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from lanewise.errors import ConfigurationError

# Run before exec in a fresh interpreter (not in a forked copy of a process that may
# have threads): ask the kernel for SIGKILL when the parent dies, then become uvicorn.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)\n"
    "except OSError:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_temporary_server(log_path: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start a local Prefect API server bound to this process's life; returns it and
    its API URL once it answers."""
    import prefect
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
    )

    port = _free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1",
           **get_current_settings().to_environment_variables(exclude_unset=True)}
    parent = os.getpid()
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-c", _DIE_WITH_PARENT, str(parent),
         "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
         "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "error", "--lifespan", "on"],
        env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    with httpx.Client() as client:
        while True:
            if process.poll() is not None:
                raise ConfigurationError(
                    f"the temporary Prefect server exited with code {process.returncode}"
                    + (f"; see {log_path}" if log_path else ""))
            try:
                if client.get(f"{api_url}/health", timeout=2).status_code == 200:
                    return process, api_url
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                stop_server(process)
                raise ConfigurationError(
                    "the temporary Prefect server did not answer in time; raise "
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start a server "
                    "(`prefect server start`) and set PREFECT_API_URL")
            time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    """Stop a server process: SIGTERM, then SIGKILL if it lingers (it often does)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def prefect_api(log_path: Path | None = None) -> Iterator[str]:
    """The Prefect API for this command: the configured one, or a temporary server
    that lives exactly as long as this process (see the module docstring)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    process, api_url = start_temporary_server(log_path)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            try:
                yield api_url
            finally:
                _drain_prefect_workers()
    finally:
        stop_server(process)


def _drain_prefect_workers() -> None:
    """Send the buffered logs and events before the server goes away (otherwise the
    log worker prints "Error logging to API" at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=5)
