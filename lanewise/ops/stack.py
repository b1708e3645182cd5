"""The local stack: `lanewise up`, `lanewise down`, `lanewise status`.

`up` starts, each in a session of its own so it outlives the command:

- a Prefect server (API and UI) whose SQLite database and `PREFECT_HOME` are under
  `<LANEWISE_HOME>/stack/prefect`, on port 4200 (LANEWISE_STACK_PREFECT_PORT) or a
  free one when that is taken;
- one emulator serving `<LANEWISE_HOME>/emulator`, the folder every lanewise process of
  this home already shares (so a `lanewise run` typed in a shell and the deployments'
  runs use the same one), never idle-stopping, unless real provider keys are set for
  every provider, or LANEWISE_EMULATOR_URL names one already;
- a process worker for each work pool prefect.yaml names, whose flow runs get
  PREFECT_API_URL, LANEWISE_HOME and LANEWISE_EMULATOR_URL;

and on the server: the work pools, lanewise's block types, and every deployment of
prefect.yaml (`prefect deploy --all`). What it started (pids with their start times,
ports, URLs, logs) is in `<LANEWISE_HOME>/stack/stack.json`; the processes' output in
`<LANEWISE_HOME>/stack/logs`. `down` stops exactly those processes, with their groups
and descendants (a worker's flow runs), and nothing else.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lanewise.errors import ConfigurationError
from lanewise.ops import stack_setup
from lanewise.ops.processes import (
    ProcessRecord,
    Stopped,
    choose_port,
    command_line,
    is_alive,
    spawn,
    start_time,
    stop,
)
from lanewise.ops.stack_state import (
    StackPaths,
    StackState,
    load_state,
    save_state,
    server_healthy,
    stack_lock,
)

HOST = "127.0.0.1"
SERVER_START_TIMEOUT = 180.0
EMULATOR_START_TIMEOUT = 30.0
WORKER_ONLINE_TIMEOUT = 90.0
#: Signals that stop each kind of process cleanly (a Prefect worker ignores SIGTERM
#: for a long while; it stops on SIGINT), and how long each may take before SIGKILL.
STOP_SIGNALS = {"worker": (signal.SIGINT, 15.0), "server": (signal.SIGINT, 15.0),
                "emulator": (signal.SIGTERM, 10.0)}
_DATABASE_ENV = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
                 "PREFECT_SERVER_DATABASE_HOST", "PREFECT_API_DATABASE_HOST")


def emulator_plan(settings: Any) -> tuple[str, str]:
    """Whether the stack needs its own emulator: ("start", why), ("configured", url)
    or ("none", why)."""
    from lanewise.providers import ADAPTERS, SDK_ENV

    if settings.emulator_url:
        return "configured", settings.emulator_url
    if not settings.use_emulator:
        return "none", "LANEWISE_USE_EMULATOR is false: providers are called for real"
    keyless = [provider for provider in ADAPTERS
               if not (getattr(settings, f"{provider}_credentials_block")
                       or getattr(settings, f"{provider}_api_key")
                       or os.environ.get(SDK_ENV[provider]))]
    if not keyless:
        return "none", "provider keys are configured: providers are called for real"
    return "start", f"no key configured for {' and '.join(keyless)}"


def _base_env(paths: StackPaths, api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PREFECT_API_URL": api_url, "PREFECT_HOME": str(paths.prefect_home),
                "LANEWISE_HOME": str(paths.home)})
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


class _Up:
    """One `lanewise up`: starts what is not running, rolls back what it started if a
    later step fails."""

    def __init__(self, settings: Any, paths: StackPaths, state: StackState,
                 say: Callable[[str], None]) -> None:
        from lanewise.settings import REPO_ROOT

        self.settings, self.paths, self.state, self.say = settings, paths, state, say
        self.repo_root = REPO_ROOT
        self.started: list[str] = []

    def _spawn(self, name: str, command: list[str], env: dict[str, str], **extra: Any
               ) -> ProcessRecord:
        log = self.paths.logs / f"{name.replace(':', '-')}.log"
        record = spawn(name, command, log, env, cwd=self.repo_root, **extra)
        self.state.processes[name] = record
        self.started.append(name)
        save_state(self.paths, self.state)  # recorded at once: `down` can stop it
        return record

    def _running(self, name: str) -> bool:
        record = self.state.processes.get(name)
        return record is not None and is_alive(record.identity)

    def server(self, port: int | None) -> bool:
        """Start the Prefect server unless it runs; True if started."""
        if self._running("server"):
            return False
        previous = self.state.processes.get("server")
        wanted = port if port is not None else (
            previous.port if previous and previous.port else self.settings.stack_prefect_port)
        chosen, note = choose_port(wanted, fallback=self.settings.stack_prefect_port)
        if note:
            self.say(f"Prefect server: {note}")
        api_url = f"http://{HOST}:{chosen}/api"
        env = _base_env(self.paths, api_url)
        self.paths.prefect_home.mkdir(parents=True, exist_ok=True)
        if not any(env.get(name) for name in _DATABASE_ENV):
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = \
                f"sqlite+aiosqlite:///{self.paths.prefect_home / 'prefect.db'}"
        self._spawn("server", [sys.executable, "-m", "prefect", "server", "start",
                               "--host", HOST, "--port", str(chosen)],
                    env, port=chosen, url=api_url.removesuffix("/api"))
        self.state.api_url = api_url
        return True

    def emulator(self, port: int | None) -> bool:
        """Start the stack's emulator if one is needed and none of ours runs."""
        from lanewise.emulator.background import healthy_url
        from lanewise.emulator.folder import read_server_info

        kind, detail = emulator_plan(self.settings)
        if kind != "start":
            if self._running("emulator"):  # started by an earlier `up`, not needed now
                self.say(f"stopping the stack's emulator: {detail}")
                stop(self.state.processes["emulator"], *STOP_SIGNALS["emulator"])
            self.state.processes.pop("emulator", None)
            self.state.emulator_url = detail if kind == "configured" else None
            self.state.emulator_note = ("LANEWISE_EMULATOR_URL is set: using it"
                                        if kind == "configured" else detail)
            return False
        if self._running("emulator"):
            return False
        folder = self.paths.emulator_dir
        prefer = None
        serving = healthy_url(folder)
        if serving is not None:
            info = read_server_info(folder) or {}
            pid = int(info.get("pid", 0))
            prefer = int(serving.rsplit(":", 1)[1])
            if "lanewise.emulator" not in " ".join(command_line(pid)):
                # Someone runs `lanewise emulator` on this folder by hand: use it.
                self.state.emulator_url = serving
                self.state.emulator_note = (f"using the emulator pid {pid} already serving "
                                            f"{folder} (not started by up; down leaves it)")
                return False
            # The on-demand emulator of this home (it stops when idle): replaced by one
            # that stays up, on its port, over the same state folder.
            self.say(f"replacing the on-demand emulator pid {pid} with the stack's own")
            stop(ProcessRecord("on-demand emulator", pid, start_time(pid) or -1, [], ""),
                 signal.SIGTERM, 10.0)
        wanted = port if port is not None else (prefer or self.settings.stack_emulator_port)
        chosen, note = choose_port(wanted, fallback=self.settings.stack_emulator_port)
        if note:
            self.say(f"emulator: {note}")
        env = dict(os.environ, LANEWISE_HOME=str(self.paths.home))
        record = self._spawn("emulator", [sys.executable, "-m", "lanewise.emulator",
                                          "--state-dir", str(folder), "--port", str(chosen),
                                          "--idle-seconds", "0"], env, port=chosen)
        record.url = f"http://{HOST}:{chosen}"
        self.state.emulator_url = record.url
        self.state.emulator_note = f"{detail}: the stack's emulator serves {folder}"
        return True

    def wait_emulator(self) -> None:
        """Wait until the stack's emulator answers as the folder's server."""
        from lanewise.emulator.background import healthy_url

        record = self.state.processes.get("emulator")
        if record is None:
            return
        deadline = time.monotonic() + EMULATOR_START_TIMEOUT
        while healthy_url(self.paths.emulator_dir) != record.url:
            if not is_alive(record.identity) or time.monotonic() > deadline:
                raise ConfigurationError(f"the emulator did not start; the end of "
                                         f"{record.log}:\n{stack_setup.tail(record.log)}")
            time.sleep(0.05)

    def workers(self, pools: list[str]) -> dict[str, tuple[str, float]]:
        """Start a process worker per pool unless one runs with the same server and
        emulator URLs (one with others is restarted); returns pool -> (worker name,
        when it was started: 0 for one that was running already)."""
        env = _base_env(self.paths, self.state.api_url)
        if self.state.emulator_url:
            env["LANEWISE_EMULATOR_URL"] = self.state.emulator_url
        urls = {"api_url": self.state.api_url, "emulator_url": self.state.emulator_url}
        names = {}
        for pool in pools:
            key, name = f"worker:{pool}", f"{pool}-worker"
            names[pool] = (name, 0.0)
            if self._running(key):
                if all(self.state.processes[key].extra.get(k) == v for k, v in urls.items()):
                    continue
                self.say(f"restarting the worker of pool {pool}: the stack's URLs changed")
                stop(self.state.processes[key], *STOP_SIGNALS["worker"])
            names[pool] = (name, time.time() - 1)  # its first heartbeat comes after this
            self._spawn(key, [sys.executable, "-m", "prefect", "worker", "start", "--pool",
                              pool, "--type", "process", "--name", name],
                        env, extra={"pool": pool, "worker_name": name, **urls})
        for key in [k for k in self.state.processes if k.startswith("worker:")]:
            if key.split(":", 1)[1] not in pools:  # a pool prefect.yaml no longer names
                stop(self.state.processes.pop(key), *STOP_SIGNALS["worker"])
        return names

    def rollback(self) -> None:
        """Stop what this `up` started (a later step failed)."""
        for name in reversed(self.started):
            record = self.state.processes.pop(name, None)
            if record is not None:
                stop(record, *STOP_SIGNALS[_kind(name)])
        save_state(self.paths, self.state)


def _kind(name: str) -> str:
    return name.split(":", 1)[0]


def up(settings: Any, *, port: int | None = None, emulator_port: int | None = None,
       redeploy: bool = False, say: Callable[[str], None] = print) -> StackState:
    """Bring the stack of `settings.home` up (see the module docstring); returns its
    state (`already_up` when everything ran already and nothing was asked again)."""
    began = time.monotonic()
    paths = StackPaths(Path(settings.home).resolve())
    with stack_lock(paths, say):
        state = load_state(paths) or StackState(home=str(paths.home))
        alive = state.alive()
        if (alive and all(alive.values()) and state.api_url and server_healthy(state.api_url)
                and not redeploy):
            state.already_up = True
            return state
        run = _Up(settings, paths, state, say)
        if os.environ.get("PREFECT_API_URL"):
            say(f"PREFECT_API_URL is set here ({os.environ['PREFECT_API_URL']}): commands in "
                "this shell use that server, not the stack's; unset it to use the stack's")
        state.phases = {}

        def mark(phase: str) -> None:
            """Note when a step ended (seconds from the start), for `status --json`."""
            state.phases[phase] = round(time.monotonic() - began, 2)

        try:
            new_server = run.server(port)
            run.emulator(emulator_port)
            mark("spawned")
            stack_setup.preload()
            mark("prefect imported")
            stack_setup.wait_healthy(state.api_url, SERVER_START_TIMEOUT,
                                     lambda: run._running("server"),
                                     state.processes["server"].log)
            mark("server healthy")
            run.wait_emulator()
            mark("emulator healthy")
            deployments = stack_setup.prefect_yaml_deployments(run.repo_root)
            state.pools = stack_setup.pool_names(deployments)
            stack_setup.ensure_pools(state.api_url, state.pools)
            mark("pools")
            workers = run.workers(state.pools)
            if new_server or redeploy or not state.deployments:
                # A server that kept running keeps its block types and deployments.
                with stack_setup.deploying(run.repo_root, _base_env(paths, state.api_url),
                                           paths.logs / "deploy.log"):
                    state.block_types = stack_setup.register_block_types(state.api_url)
                    mark("block types")
                state.deployments = stack_setup.deployment_names(state.api_url)
                mark("deployed")
            stack_setup.wait_workers_online(
                state.api_url, workers, WORKER_ONLINE_TIMEOUT,
                lambda pool: run._running(f"worker:{pool}"),
                {pool: state.processes[f"worker:{pool}"].log for pool in workers})
            mark("workers online")
        except BaseException:
            run.rollback()
            raise
        state.up_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        state.up_seconds = round(time.monotonic() - began, 2)
        save_state(paths, state)
        return state


def down(settings: Any, say: Callable[[str], None] = print) -> list[Stopped]:
    """Stop what `up` started for `settings.home` (workers first, while the server can
    still hear them leave), with their groups and descendants; returns what it did."""
    paths = StackPaths(Path(settings.home).resolve())
    with stack_lock(paths, say):
        state = load_state(paths)
        if state is None:
            return []
        order = sorted(state.processes, key=lambda n: ("worker", "server", "emulator")
                       .index(_kind(n)) if _kind(n) in STOP_SIGNALS else 9)
        results = []
        for name in order:
            result = stop(state.processes[name], *STOP_SIGNALS.get(_kind(name),
                                                                   (signal.SIGTERM, 10.0)))
            results.append(result)
            if not result.left:
                del state.processes[name]
        if state.processes:
            save_state(paths, state)
            raise ConfigurationError(
                "could not stop " + ", ".join(f"{r.name} (pids {r.left})" for r in results
                                              if r.left) + f"; still recorded in "
                f"{paths.state_file}")
        paths.state_file.unlink(missing_ok=True)
        return results
