"""The shared background emulator: one detached process per state folder.

`shared_emulator_url(state_dir)` returns the URL of the emulator serving `state_dir`,
starting one if none answers. Under the folder's `launch.lock` it reads
`server.json`; if that server answers `GET /_emulator/health` (as the same pid, for
the same folder) it is reused; otherwise `python -m lanewise.emulator` is started in
its own session (so it outlives its starter, and a killed `lanewise run` resumes
against it), with its output appended to `emulator.log` in the folder. The lock makes
check-and-start atomic: any number of processes at once end up with one emulator.

The process (`main`, below) serves the folder (on the port its predecessor used when
that is free, so a client holding the old URL goes on working; else on any free port),
publishes `server.json` once it listens, and exits on SIGTERM or SIGINT, or after
`LANEWISE_EMULATOR_IDLE_SECONDS` (default 1800) with no HTTP request. Its timing and
faults are the defaults, or `LANEWISE_EMULATOR_<FIELD>` (e.g.
`LANEWISE_EMULATOR_BATCH_SECONDS`) from the environment of the process that starts it;
it bills by `LANEWISE_EMULATOR_PRICES` (a price table file) if set, else by the table
lanewise prices by.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import subprocess
import sys
import time
import typing
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from lanewise.emulator.config import EmulatorConfig, Faults, RateLimits, Timing
from lanewise.emulator.folder import read_server_info, waiting_lock
from lanewise.errors import ConfigurationError, LanewiseError

IDLE_ENV = "LANEWISE_EMULATOR_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 30 * 60
LOG_FILE = "emulator.log"
LAUNCH_LOCK = "launch.lock"
START_TIMEOUT = 20.0
LOG_ROTATE_BYTES = 1_000_000

log = logging.getLogger("lanewise.emulator")


def healthy_url(state_dir: Path) -> str | None:
    """The URL in `server.json` if that emulator answers for this folder, else None."""
    info = read_server_info(state_dir)
    if info is None or not isinstance(info.get("url"), str):
        return None
    try:
        with httpx.Client(trust_env=False, timeout=3) as client:
            response = client.get(f"{info['url']}/_emulator/health")
        health = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return None
    if health.get("pid") != info.get("pid") or health.get("state_dir") != str(
            state_dir.resolve()):
        return None  # a stale file, and the port now belongs to someone else
    return info["url"]


def shared_emulator_url(state_dir: Path, *, prices_path: Path | None = None,
                        start_timeout: float = START_TIMEOUT) -> str:
    """URL of the background emulator serving `state_dir`, started if none answers."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    url = healthy_url(state_dir)
    if url is not None:
        return url
    with waiting_lock(state_dir / LAUNCH_LOCK, timeout=start_timeout + 30):
        url = healthy_url(state_dir)  # another process may have started it meanwhile
        if url is not None:
            return url
        return _start(state_dir, prices_path, start_timeout)


def _start(state_dir: Path, prices_path: Path | None, timeout: float) -> str:
    log_path = state_dir / LOG_FILE
    if log_path.exists() and log_path.stat().st_size > LOG_ROTATE_BYTES:
        os.replace(log_path, log_path.with_suffix(".log.1"))
    env = dict(os.environ)
    if prices_path is not None:
        env["LANEWISE_PRICES_PATH"] = str(prices_path)
    command = [sys.executable, "-m", "lanewise.emulator", "--state-dir", str(state_dir)]
    previous = read_server_info(state_dir)
    if previous is not None and isinstance(previous.get("url"), str):
        command += ["--prefer-port", str(urlsplit(previous["url"]).port or 0)]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        info = read_server_info(state_dir)
        if info is not None and info.get("pid") == process.pid:
            url = healthy_url(state_dir)
            if url is not None:
                return url
        code = process.poll()
        if code is not None:
            raise ConfigurationError(
                f"the background emulator for {state_dir} exited (code {code}) before it "
                f"answered; the end of {log_path}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=10)
            raise ConfigurationError(
                f"the background emulator for {state_dir} did not answer within "
                f"{timeout:g} s; the end of {log_path}:\n{_tail(log_path)}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def idle_seconds_from_env() -> float:
    """The idle time after which the background emulator exits (0 = never)."""
    raw = os.environ.get(IDLE_ENV)
    if not raw:
        return DEFAULT_IDLE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{IDLE_ENV} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{IDLE_ENV} must not be negative (got {raw!r})")
    return value


def config_from_env() -> EmulatorConfig:
    """Default config, with any `LANEWISE_EMULATOR_<FIELD>` of `Timing`, `Faults` or
    `RateLimits` (a list field as comma-separated values; `rules` as JSON)."""
    sections: dict[str, dict[str, object]] = {"timing": {}, "faults": {}, "rate_limits": {}}
    for section, model in (("timing", Timing), ("faults", Faults),
                           ("rate_limits", RateLimits)):
        for name, field in model.model_fields.items():
            raw = os.environ.get(f"LANEWISE_EMULATOR_{name.upper()}")
            if raw is None:
                continue
            if name == "rules":
                try:
                    sections[section][name] = json.loads(raw)
                except ValueError:
                    raise ConfigurationError(
                        f"LANEWISE_EMULATOR_RULES must be a JSON list: {raw!r}") from None
            elif typing.get_origin(field.annotation) is list:
                sections[section][name] = [v.strip() for v in raw.split(",") if v.strip()]
            else:
                sections[section][name] = raw
    try:
        return EmulatorConfig.model_validate(sections)
    except ValidationError as exc:
        raise ConfigurationError(f"bad LANEWISE_EMULATOR_* setting: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m lanewise.emulator`: serve a state folder in the background."""
    parser = argparse.ArgumentParser(
        prog="python -m lanewise.emulator",
        description="Serve the provider emulator over a state folder on a free port, "
        "publish <state-dir>/server.json, exit when idle or on SIGTERM/SIGINT.")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="State folder [default: LANEWISE_HOME/emulator].")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port.")
    parser.add_argument("--prefer-port", type=int, default=0,
                        help="Try this port first; if it is taken, use --port.")
    parser.add_argument("--prices", type=Path, default=None,
                        help="The price table the emulator bills by [default: "
                        "LANEWISE_EMULATOR_PRICES, else lanewise's prices_path].")
    parser.add_argument("--idle-seconds", type=float, default=None,
                        help=f"Exit after this long with no request (0 = never) "
                        f"[default: {IDLE_ENV} or {DEFAULT_IDLE_SECONDS}].")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lanewise.emulator.server import serve_forever
    from lanewise.settings import get_settings

    try:
        idle = args.idle_seconds if args.idle_seconds is not None else idle_seconds_from_env()
        config = config_from_env()
        if args.prices is not None:
            config.prices_path = args.prices
        state_dir = args.state_dir or get_settings().home / "emulator"
        ports = [args.prefer_port, args.port] if args.prefer_port else [args.port]
        for number, port in enumerate(ports, 1):
            try:
                serve_forever(config, args.host, port, state_dir, idle_seconds=idle or None,
                              log_level="warning", access_log=False)
                break
            except OSError as exc:
                if number == len(ports) or exc.errno != errno.EADDRINUSE:
                    raise ConfigurationError(f"cannot serve on {args.host}:{port}: {exc}") from exc
                log.info("port %d is taken; using another", port)
    except LanewiseError as exc:
        log.error("%s", exc)
        return 1
    log.info("emulator pid %d stopped", os.getpid())
    return 0
