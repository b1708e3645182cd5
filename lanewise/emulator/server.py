"""Running the emulator: in-process on a free port, or in the foreground."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import uvicorn

from lanewise.emulator.app import create_app
from lanewise.emulator.config import EMULATOR_API_KEY, EmulatorConfig
from lanewise.emulator.state import EmulatorState
from lanewise.errors import ConfigurationError
from lanewise.pricing import load_price_table

log = logging.getLogger("lanewise.emulator")


@dataclass
class RunningEmulator:
    """An emulator serving on `url`; hand its base URLs to the SDKs."""

    url: str
    state: EmulatorState
    api_key: str = EMULATOR_API_KEY

    @property
    def openai_base_url(self) -> str:
        """Base URL for `openai.OpenAI(base_url=...)` (it ends in /v1)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for `anthropic.Anthropic(base_url=...)` (no /v1)."""
        return self.url


def build_state(config: EmulatorConfig, state_dir: Path) -> EmulatorState:
    """An emulator state over `state_dir`, billing by its own price table file
    (`config.prices_path`, `$LANEWISE_EMULATOR_PRICES`, else lanewise's)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    prices_path = config.resolved_prices_path().resolve()
    state = EmulatorState(config, state_dir, load_price_table(prices_path))
    state.prices_path = prices_path
    return state


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        """Signals belong to the host process when serving from a thread."""


@contextlib.contextmanager
def running_emulator(config: EmulatorConfig | None = None, *, host: str = "127.0.0.1",
                     port: int = 0, state_dir: Path | None = None, log_level: str = "warning",
                     access_log: bool = False) -> Iterator[RunningEmulator]:
    """Serve an emulator in a background thread for the duration of the block.

    With `state_dir` it goes on from what an earlier emulator stored there; a folder
    another emulator is serving raises `ConfigurationError`. Uvicorn's own logging
    setup is skipped (`log_config=None`): its `dictConfig` would reconfigure, and can
    deadlock with, the host process's logging (Prefect's API log handler).
    """
    config = config or EmulatorConfig()
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="lanewise-emulator-")))
        state = build_state(config, state_dir)
        stack.callback(state.close)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it. Without it uvicorn's separate writes of a
        # response's head and body meet the client's delayed ACK (Nagle): ~40 ms a call.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        server = _ThreadServer(uvicorn.Config(create_app(state), log_config=None,
                                              log_level=log_level, access_log=access_log,
                                              lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                  name="emulator-http", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ConfigurationError("the emulator did not start")
            time.sleep(0.01)
        try:
            url = f"http://{host}:{bound_port}"
            state.publish(url)
            yield RunningEmulator(url, state)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()


def serve_forever(config: EmulatorConfig, host: str, port: int, state_dir: Path, *,
                  idle_seconds: float | None = None, log_level: str = "info",
                  access_log: bool = True) -> None:
    """Serve `state_dir` in the foreground until SIGINT or SIGTERM, or until no request
    came for `idle_seconds` (and no batch is being processed), then shut down cleanly.

    Used by the `lanewise emulator` command and by the background emulator
    (`python -m lanewise.emulator`). Call it from the main thread.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with running_emulator(config, host=host, port=port, state_dir=state_dir,
                              log_level=log_level, access_log=access_log) as emu:
            log.info("emulator pid %d serving %s at %s", os.getpid(), state_dir, emu.url)
            tick = 0.5 if not idle_seconds else min(0.5, idle_seconds / 4)
            while not stop.wait(tick):
                if idle_seconds and emu.state.idle_seconds() >= idle_seconds:
                    log.info("no request for %g s; shutting down", idle_seconds)
                    break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
