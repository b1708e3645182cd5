"""Running the emulator: in-process on a free port, or in the foreground."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import uvicorn

from lanewise.emulator.app import create_app
from lanewise.emulator.config import EmulatorConfig
from lanewise.emulator.state import EmulatorState
from lanewise.errors import ConfigurationError
from lanewise.pricing import load_price_table
from lanewise.settings import get_settings

EMULATOR_API_KEY = "sk-lanewise-emulator"


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
    """An emulator state over `state_dir`, priced by the configured price table."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return EmulatorState(config, state_dir, load_price_table(get_settings().prices_path))


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        """Signals belong to the host process when serving from a thread."""


@contextlib.contextmanager
def running_emulator(config: EmulatorConfig | None = None, *, host: str = "127.0.0.1",
                     port: int = 0, state_dir: Path | None = None) -> Iterator[RunningEmulator]:
    """Serve an emulator in a background thread for the duration of the block."""
    config = config or EmulatorConfig()
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="lanewise-emulator-")))
        state = build_state(config, state_dir)
        stack.callback(state.close)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        server = _ThreadServer(uvicorn.Config(create_app(state), log_level="warning",
                                              access_log=False, lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                  name="emulator-http", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ConfigurationError("the emulator did not start")
            time.sleep(0.01)
        try:
            yield RunningEmulator(f"http://{host}:{bound_port}", state)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()


def serve_forever(config: EmulatorConfig, host: str, port: int, state_dir: Path) -> None:
    """Serve in the foreground until interrupted (the `lanewise emulator` command)."""
    state = build_state(config, state_dir)
    try:
        uvicorn.run(create_app(state), host=host, port=port, log_level="info", lifespan="off")
    finally:
        state.close()
