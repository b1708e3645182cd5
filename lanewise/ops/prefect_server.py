"""The Prefect API a command runs its flows against.

With `PREFECT_API_URL` set, that server. Else, when `lanewise up` runs the stack of
this `LANEWISE_HOME`, the stack's server (`lanewise.ops.stack.stack_api_url`). Without
either, Prefect would start a temporary server of its own, and a `lanewise run` killed
with SIGKILL would leave it running, reparented, for good (~230 MB each). So lanewise
starts the temporary server itself, with the same command Prefect uses, as a child
that the kernel kills when its parent dies (PR_SET_PDEATHSIG), and stops it when the
command ends.

Starting it is cheap to ask for and slow to finish (the server imports for ~4 s), so
`launch_temporary_server` only spawns it, without importing Prefect here, and a
command launches it first thing (`early_temporary_server`) and waits for its health
only when a flow is about to run (`prefect_api`): the server's start overlaps the
command's own imports.

Where its database lives: in a **slot** under `<LANEWISE_HOME>/prefect-temp/`
(`slot-0`, `slot-1`, ...), each with its SQLite file, the server's log and a lock. A
server holds its slot's lock (an flock on `slot-N/lock`, inherited from the command
that launched it) for as long as it lives, so two commands at once use two slots and
never share a SQLite file (two Prefect servers migrating one fresh SQLite file at once
fail). The files persist: Prefect's migrations run the first time a slot is used, and
after a Prefect upgrade, not on every start. (Two servers started at once on one
fresh SQLite file: in 2 of 3 tries one of them failed its migrations and exited.)
Exceptions, where the server uses the database Prefect itself would use: a database
set in the environment (`PREFECT_SERVER_DATABASE_CONNECTION_URL`, `..._HOST` and so
on) or perhaps in Prefect's profile or files, and runs whose credentials come from
Prefect blocks (the blocks live in that database).

What a temporary single-run server does not need is off (`TEMPORARY_SERVER_SETTINGS`:
analytics, automations, event persistence; the UI and the scheduling services are off
in Prefect's ephemeral mode already); any of them set in the environment wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from importlib.util import find_spec
from pathlib import Path

from lanewise.errors import ConfigurationError

TEMP_DIR = "prefect-temp"
MAX_SLOTS = 64
DEFAULT_STARTUP_TIMEOUT = 120.0

#: Off in the temporary server unless the environment says otherwise: usage analytics
#: (calls home), automations (triggers and their actions: a temporary database has
#: none) and event persistence (events are for the UI; this server's go nowhere).
TEMPORARY_SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_LOGGER_ENABLED": "false",
}

#: Set in slots lanewise owns: nobody saves blocks there (a client that does registers
#: the block type itself), so the server skips registering ~100 block types (~3 s on a
#: fresh database).
SLOT_DATABASE_SETTINGS = {
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}

_DATABASE_SETTINGS = {f"{prefix}_{key}" for prefix in ("PREFECT_SERVER_DATABASE",
                                                        "PREFECT_API_DATABASE")
                      for key in ("CONNECTION_URL", "DRIVER", "HOST", "PORT", "USER", "NAME",
                                  "PASSWORD")}
_URL_HINT = ("start the local stack (`./dev up`: a Prefect server, a worker and the "
             "deployments; lanewise run then uses it), or run a Prefect server of your own "
             "and set PREFECT_API_URL=http://127.0.0.1:4200/api")

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


def _prefect_site_dir() -> str:
    """The folder holding the `prefect` package, found without importing it."""
    spec = find_spec("prefect")
    if spec is None or spec.origin is None:
        raise ConfigurationError("Prefect is not installed in this environment")
    return str(Path(spec.origin).parent.parent)


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def _take_slot(root: Path) -> tuple[Path, int]:
    """The first slot no live server holds, locked; returns it and the lock's fd."""
    for number in range(MAX_SLOTS):
        slot = root / f"slot-{number}"
        slot.mkdir(parents=True, exist_ok=True)
        fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return slot, fd
    raise ConfigurationError(
        f"{MAX_SLOTS} temporary Prefect servers already run from {root}; "
        f"{_URL_HINT} and let the runs share it")


def _alembic_revision(database: Path) -> list[str] | None:
    """The migration revision a Prefect SQLite database is at, or None."""
    if not database.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=5)) as connection:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return None
    return sorted(row[0] for row in rows) or None


class TemporaryServer:
    """A Prefect API server spawned for this process (see the module docstring)."""

    def __init__(self, process: subprocess.Popen, port: int, slot: Path,
                 log_path: Path, launched_at: float, *, owns_database: bool,
                 migrates: bool) -> None:
        self.process = process
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.slot = slot
        self.log_path = log_path
        self.launched_at = launched_at
        self.owns_database = owns_database
        self.migrates = migrates
        self.ready_after: float | None = None  # seconds from launch to healthy

    @property
    def database(self) -> Path:
        return self.slot / "prefect.db"

    def wait_until_healthy(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> str:
        """Block until the server answers `/health` (at most `timeout` s after its
        launch); returns its API URL. Stops it and raises if it died or took too long."""
        import httpx

        if self.ready_after is not None:
            return self.api_url
        deadline = self.launched_at + timeout
        with httpx.Client(trust_env=False) as client:
            while True:
                if self.process.poll() is not None:
                    raise ConfigurationError(
                        f"the temporary Prefect server exited with code "
                        f"{self.process.returncode}; see {self.log_path}")
                try:
                    if client.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConfigurationError(
                        f"the temporary Prefect server did not answer within {timeout:g} s "
                        f"(see {self.log_path}); raise "
                        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or " + _URL_HINT)
                time.sleep(0.05)
        self.ready_after = time.monotonic() - self.launched_at
        if self.owns_database and self.migrates:
            self._record_migrated()
        return self.api_url

    def _record_migrated(self) -> None:
        """Note the revision the database is now at, so later starts skip migrating."""
        revision = _alembic_revision(self.database)
        if revision is None:
            return
        stamp = {"prefect": _prefect_version(), "alembic": revision}
        partial = self.slot / "migrated.json.partial"
        partial.write_text(json.dumps(stamp))
        os.replace(partial, self.slot / "migrated.json")

    def stop(self) -> None:
        stop_server(self.process)


def _migrated(slot: Path) -> bool:
    """Whether the slot's database is at the revision a previous start recorded, with
    the same Prefect: then starting need not run Prefect's migrations."""
    try:
        stamp = json.loads((slot / "migrated.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(stamp, dict) and stamp.get("prefect") == _prefect_version()
            and stamp.get("alembic") == _alembic_revision(slot / "prefect.db"))


def launch_temporary_server(home: Path, *, own_database: bool = True) -> TemporaryServer:
    """Spawn a Prefect API server bound to this process's life and return at once
    (`wait_until_healthy` waits for it), without importing Prefect. The server reads
    its settings as Prefect does (environment, profile, files), not from this
    process's `temporary_settings`."""
    root = Path(home) / TEMP_DIR
    slot, lock_fd = _take_slot(root)
    try:
        env = dict(os.environ)
        env.pop("PREFECT_API_URL", None)
        for name, value in TEMPORARY_SERVER_SETTINGS.items():
            env.setdefault(name, value)
        owns = (own_database and not any(env.get(name) for name in _DATABASE_SETTINGS)
                and not _prefect_config_may_set(_DATABASE_SETTINGS))
        migrates = True
        if owns:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = \
                f"sqlite+aiosqlite:///{(slot / 'prefect.db').resolve()}"
            env["PREFECT_SERVER_MEMO_STORE_PATH"] = str((slot / "memo_store.toml").resolve())
            for name, value in SLOT_DATABASE_SETTINGS.items():
                env.setdefault(name, value)
            told = {"PREFECT_SERVER_DATABASE_MIGRATE_ON_START",
                    "PREFECT_API_DATABASE_MIGRATE_ON_START"} & set(env)
            if not told and _migrated(slot):
                env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] = "false"
                migrates = False
        env.update({"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                    "PREFECT__SERVER_FINAL": "1"})
        port = _free_port()
        log_path = slot / "server.log"
        launched_at = time.monotonic()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()),
                 "-m", "uvicorn", "--app-dir", _prefect_site_dir(),
                 "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                pass_fds=(lock_fd,))
    finally:
        # The server holds the slot through its inherited copy of the lock: the slot
        # is free again when the server is gone, however it ended.
        os.close(lock_fd)
    return TemporaryServer(process, port, slot, log_path, launched_at, owns_database=owns,
                           migrates=migrates)


def start_temporary_server(home: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start a local Prefect API server bound to this process's life (its slot under
    `home`, default LANEWISE_HOME); returns it and its API URL once it answers."""
    if home is None:
        from lanewise.settings import get_settings

        home = get_settings().home
    server = launch_temporary_server(home)
    return server.process, server.wait_until_healthy(_startup_timeout())


def stop_server(process: subprocess.Popen) -> None:
    """Stop a server process: SIGTERM, then SIGKILL if it lingers (it often does)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _prefect_config_may_set(names: Iterable[str]) -> bool:
    """Whether a Prefect setting among `names` may be set outside the environment: in
    the Prefect profiles file or a `.env` here (if they name it), or in a prefect.toml
    or a pyproject.toml with [tool.prefect] here (any setting: they are not parsed). A
    cheap look at the files, without importing Prefect."""
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    names = tuple(names)
    for path, marks in ((profiles.expanduser(), names), (Path(".env"), names),
                        (Path("prefect.toml"), ("",)), (Path("pyproject.toml"), ("tool.prefect",))):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if any(mark in text for mark in marks):
            return True
    return False


def _api_url_may_be_configured() -> bool:
    """Whether PREFECT_API_URL is (or may be) set: Prefect's own answer if this process
    has imported it already (in-process callers, tests), else a look at the environment
    and the files Prefect reads."""
    if "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return bool(PREFECT_API_URL.value())
    return bool(os.environ.get("PREFECT_API_URL")) or _prefect_config_may_set(
        ["PREFECT_API_URL"])


@contextlib.contextmanager
def early_temporary_server(home: Path, *, own_database: bool = True
                           ) -> Iterator[TemporaryServer | None]:
    """Launch the temporary server now if no PREFECT_API_URL is in sight and the stack
    of `home` is not up, before this process imports Prefect; stops it when the block
    ends. Hand it to `prefect_api`, which uses it, or stops it if Prefect's settings
    name an API after all."""
    from lanewise.ops.stack_state import stack_api_url

    if _api_url_may_be_configured() or stack_api_url(home):
        yield None
        return
    server = launch_temporary_server(home, own_database=own_database)
    try:
        yield server
    finally:
        server.stop()


def _startup_timeout() -> float:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
                 or DEFAULT_STARTUP_TIMEOUT)


@contextlib.contextmanager
def prefect_api(home: Path | None = None, *, launched: TemporaryServer | None = None,
                own_database: bool = True,
                notice: Callable[[str], None] | None = None) -> Iterator[str]:
    """The Prefect API for this command: the configured one; else the server of the
    stack `lanewise up` runs for `home`; else a temporary server that lives exactly as
    long as this process (see the module docstring): `launched` if given, else one
    started now under `home`. `notice` is told, once, which server is in use when it
    is not the configured one."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    from lanewise.ops.stack_state import stack_api_url

    configured = PREFECT_API_URL.value()
    if configured:
        if launched is not None:
            launched.stop()  # launched on a guess: a profile or file names the API
        yield configured
        return
    if home is None:
        from lanewise.settings import get_settings

        home = get_settings().home
    stack_url = stack_api_url(home)
    if stack_url:
        if launched is not None:
            launched.stop()  # the stack came up since the launch
        if notice is not None:
            notice(f"using the Prefect server of `lanewise up` "
                   f"(UI {stack_url.removesuffix('/api')})")
        with temporary_settings(updates={PREFECT_API_URL: stack_url}):
            try:
                yield stack_url
            finally:
                _drain_prefect_workers()
        return
    if launched is None:
        launched = launch_temporary_server(home, own_database=own_database)
    try:
        if notice is not None:
            notice("no PREFECT_API_URL: this run starts a temporary Prefect server "
                   f"(log: {launched.log_path}); to skip its start-up, {_URL_HINT}")
        api_url = launched.wait_until_healthy(_startup_timeout())
        # No flow-run heartbeats: they feed a server's detection of crashed runs, and
        # this server stops with the process; the engine also waits up to a second at
        # each flow's end for its heartbeat thread to notice the stop.
        with temporary_settings(updates={PREFECT_API_URL: api_url,
                                         PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            try:
                yield api_url
            finally:
                _drain_prefect_workers()
    finally:
        launched.stop()


def _drain_prefect_workers() -> None:
    """Send the buffered logs and events before the server goes away (otherwise the
    log worker prints "Error logging to API" at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=5)
