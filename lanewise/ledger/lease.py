"""One run key, one driver: a lease in the ledger, renewed while a process works.

A process takes the run key's lease before it plans or submits anything and renews it
from a heartbeat thread. A second process on the same key is refused with a message
naming the holder (or waits, when asked to). A lease is taken over when it lapses (its
holder stopped renewing: killed, frozen, cut off), or at once when its holder ran on
this host and its process is gone. Every paid step also checks the lease in the same
statement that records its intent (`Ledger.claim_shard`), so even a process that lost
its lease without noticing cannot create a batch.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from datetime import datetime
from typing import Any

from lanewise.errors import RunBusyError
from lanewise.ledger import Ledger

logger = logging.getLogger(__name__)


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' when unknown): a pid that
    was reused by a new process has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return ""


def _namespace() -> str:
    """This boot and PID namespace: pids can only be compared within one. Two
    containers sharing a hostname see different processes under the same pid."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()[:8]  # noqa: SIM115
        return f"{boot}-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def holder_is_dead(lease: dict[str, Any]) -> bool:
    """Whether a lease's holder is known to be gone: it ran on this host, in this boot
    and PID namespace, and its process no longer exists (or is a zombie, or the pid now
    belongs to another process). Any other holder is never judged dead: its lease must
    lapse."""
    parts = str(lease["holder"]).split(":")
    if len(parts) < 5 or lease["host"] != socket.gethostname():
        return False
    namespace, started = parts[3], parts[2]
    if not namespace or namespace != _namespace():
        return False
    pid = int(lease["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    if _process_state(pid) == "Z":
        return True
    return bool(started) and started != _process_start(pid)


def describe(lease: dict[str, Any]) -> str:
    """A lease in words: who holds it and until when."""
    since = datetime.fromtimestamp(lease["acquired_at"]).strftime("%Y-%m-%d %H:%M:%S")
    until = datetime.fromtimestamp(lease["expires_at"]).strftime("%H:%M:%S")
    return f"process {lease['pid']} on {lease['host']} (since {since}, lease renewed until {until})"


class RunLease:
    """The lease of one run key for this process; use as a context manager."""

    def __init__(self, ledger: Ledger, run_key: str, *, ttl: float = 60.0,
                 wait_seconds: float = 0.0, poll_seconds: float = 1.0) -> None:
        self.ledger = ledger
        self.run_key = run_key
        self.ttl = ttl
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        pid = os.getpid()
        self.host = socket.gethostname()
        self.pid = pid
        self.holder = (f"{self.host}:{pid}:{_process_start(pid)}:{_namespace()}:"
                       f"{secrets.token_hex(4)}")
        self.lost = threading.Event()
        self.renewed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> RunLease:
        """Take the lease, waiting up to `wait_seconds`; RunBusyError when it stays taken."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            busy = self.ledger.try_lease(self.run_key, self.holder, self.host, self.pid,
                                         self.ttl, holder_is_dead)
            if busy is None:
                break
            if time.monotonic() >= deadline:
                raise RunBusyError(
                    f"run {self.run_key} is being driven by {describe(busy)}; this process "
                    "created nothing. Wait for that run to finish (or pass --wait), then "
                    "rerun to see its result; if that process is gone, rerun once its "
                    "lease lapses.")
            time.sleep(self.poll_seconds)
        self.renewed_at = time.monotonic()
        self.lost.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name=f"lease-{self.run_key}")
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.ledger.renew_lease(self.run_key, self.holder, self.ttl):
                    self.lost.set()
                    return
                self.renewed_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - a missed renewal is retried next beat
                logger.warning("could not renew the lease of run %s: %s", self.run_key, exc)

    def ensure(self) -> None:
        """Raise RunBusyError unless this process still surely holds the lease: it was
        not taken over, and it was renewed less than a lease length ago (so it cannot
        have lapsed unnoticed). Called before every step."""
        if self.lost.is_set():
            raise RunBusyError(f"this process lost the lease of run {self.run_key} (another "
                               "process took it over); it stops here")
        if time.monotonic() - self.renewed_at > self.ttl * 0.9:
            raise RunBusyError(f"the lease of run {self.run_key} was not renewed for "
                               f"{self.ttl * 0.9:.0f} s (is the ledger reachable?); this "
                               "process stops here rather than risk driving it twice")

    def release(self) -> None:
        """Stop renewing and give the lease back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.ledger.release_lease(self.run_key, self.holder)

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        try:
            self.release()
        except Exception as release_error:  # noqa: BLE001 - keep the original error
            if exc[0] is None:
                raise
            logger.warning("could not release the lease of run %s: %s", self.run_key,
                           release_error)
