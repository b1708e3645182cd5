"""Who serves a state folder: its exclusive lock, and the `server.json` it publishes.

One emulator process at a time may serve a state folder. While it does, it holds an
exclusive `flock` on `<folder>/emulator.lock` (the kernel drops the lock when the
process dies, however it dies) with its pid written in the file, and once it listens
it writes `<folder>/server.json` (`{"url", "pid", "state_dir"}`) atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from lanewise.errors import ConfigurationError

LOCK_FILE = "emulator.lock"
SERVER_FILE = "server.json"


def read_server_info(state_dir: Path) -> dict[str, Any] | None:
    """The folder's `server.json`, or None when it is missing or unreadable."""
    try:
        info = json.loads((state_dir / SERVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def write_server_info(state_dir: Path, url: str) -> None:
    """Publish this process as the folder's server (write to a temp file, then rename)."""
    info = {"url": url, "pid": os.getpid(), "state_dir": str(state_dir.resolve())}
    temporary = state_dir / f".{SERVER_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(info))
    os.replace(temporary, state_dir / SERVER_FILE)


def remove_server_info(state_dir: Path, url: str) -> None:
    """Remove `server.json` if it still names this process at `url`."""
    info = read_server_info(state_dir)
    if info is not None and info.get("pid") == os.getpid() and info.get("url") == url:
        (state_dir / SERVER_FILE).unlink(missing_ok=True)


class FolderLock:
    """The exclusive right to serve `state_dir`, held from construction to `release()`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        path = state_dir / LOCK_FILE
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self._fd)
            self._fd = None
            raise ConfigurationError(
                f"the emulator state folder {state_dir} is already served by another "
                f"emulator ({holder}); only one emulator may serve a folder at a time: use "
                "that one (LANEWISE_EMULATOR_URL), stop it, or give this one another "
                "state folder") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({"pid": os.getpid()}).encode(), 0)

    def _holder(self) -> str:
        try:
            pid = json.loads(os.pread(self._fd, 4096, 0) or b"{}").get("pid")
        except (OSError, ValueError, AttributeError):
            pid = None
        info = read_server_info(self.state_dir) or {}
        url = info.get("url") if pid is not None and info.get("pid") == pid else None
        return (f"pid {pid if pid is not None else 'unknown'}, "
                f"{f'serving {url}' if url else 'url not published yet'}")

    def release(self) -> None:
        """Give the folder up (closing the file drops the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def waiting_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive `flock` on `path`, waiting for it at most `timeout` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigurationError(
                        f"timed out after {timeout:g} s waiting for the lock {path}") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
