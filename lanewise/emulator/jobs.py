"""Batch jobs: a clock-driven lifecycle, a worker thread, and finalization.

A job's visible state is derived from the wall clock (compressed by `Timing`) and
from how far the worker has got, so retrieving a batch never blocks. The worker
streams the job's input file and appends one staged line per request; when the job
reaches a terminal state, `finalize` splits the staged lines into the provider's
result files, marks the requests that never ran, and bills only what finished.

Jobs are stored (see `store.JobStore`); a job the worker had not finished when its
emulator process died is processed again from its first line by the next process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from lanewise.emulator.config import EmulatorConfig

TERMINAL_PHASES = {"completed", "failed", "expired", "cancelled"}
OK, ERRORED = 1, 2


def unit_draw(seed: int, *parts: str) -> float:
    """A seeded, repeatable draw in [0, 1) keyed by `parts`."""
    digest = hashlib.blake2b("\x1f".join((str(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class JobView:
    """A job's state at one instant."""

    phase: str  # validating|in_progress|finalizing|completed|failed|expired|cancelling|cancelled
    done: int
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    ended_at: float | None = None


@dataclass
class BatchJob:
    """One provider batch, OpenAI or Anthropic."""

    id: str
    provider: str
    input_path: Path
    total: int
    created_at: float
    model: str | None = None
    endpoint: str = ""
    input_file_id: str = ""
    metadata: dict[str, str] | None = None
    enqueued_tokens: int = 0
    failure: dict[str, Any] | None = None  # validation failure -> batch fails
    fate: str = "complete"  # complete | expire | fail
    processed: int = 0
    worker_done_at: float | None = None
    worker_finished: bool = False  # the worker's pass ended (its staged file is final)
    cancel_requested_at: float | None = None
    cancel_cut: int | None = None
    finalized: bool = False
    deleted: bool = False
    final_phase: str | None = None
    final_ended_at: float | None = None
    outcomes: bytearray = field(default_factory=bytearray)
    results: dict[str, Any] = field(default_factory=dict)  # filled by finalize
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def staged_path(self) -> Path:
        """Where the worker writes one staged line per processed request."""
        return self.input_path.with_suffix(".staged.jsonl")

    @property
    def results_path(self) -> Path:
        """Where an Anthropic job's results JSONL is written when it ends."""
        return self.input_path.with_suffix(".results.jsonl")

    def restart(self) -> None:
        """Forget the worker's progress (after a restart) so it runs the job again."""
        self.processed = 0
        self.outcomes = bytearray()
        self.worker_done_at = None
        self.worker_finished = False
        self.staged_path.unlink(missing_ok=True)

    def process_limit(self, config: EmulatorConfig) -> int:
        """How many requests the worker handles (an expiring job stalls part way)."""
        if self.fate == "expire":
            return math.floor(self.total * config.faults.expire_finished_fraction)
        return self.total

    def view(self, now: float, config: EmulatorConfig) -> JobView:
        """The job's state at `now`.

        A cancel shows `cancelling` at once (even while validating, and even with
        `cancel_seconds=0` at the instant of the cancel), then `cancelled`; a job
        cancelled before it left `validating` never reports `in_progress_at`.
        """
        timing = config.timing
        if self.final_phase is not None:
            return JobView(self.final_phase, self.cancel_cut or 0,
                           self.results.get("in_progress_at"),
                           self.results.get("finalizing_at"), ended_at=self.final_ended_at)
        start = self.created_at + timing.validating_seconds
        if self.cancel_requested_at is not None:
            ends = self.cancel_requested_at + timing.cancel_seconds
            # After a restart the worker first redoes the requests finished before the
            # cancel; the job stays cancelling until they are staged again.
            caught_up = self.processed >= (self.cancel_cut or 0)
            over = now >= ends and now > self.cancel_requested_at
            phase = "cancelled" if over and caught_up else "cancelling"
            started = start if self.cancel_requested_at >= start and self.failure is None \
                else None
            return JobView(phase, self.cancel_cut or 0, started,
                           ended_at=ends if phase == "cancelled" else None)
        if now < start:
            return JobView("validating", 0)
        if self.failure is not None:
            return JobView("failed", 0, ended_at=start)
        expires_at = self.created_at + timing.expiry_seconds
        done = self._visible(min(now, expires_at), start, timing.batch_seconds)
        all_done_at = self._all_done_at(start, timing.batch_seconds)
        if all_done_at is not None and all_done_at < expires_at:
            if now < all_done_at:
                return JobView("in_progress", done, start)
            final_at = all_done_at + timing.finalizing_seconds
            if now < final_at:
                return JobView("finalizing", self.total, start, all_done_at)
            return JobView("completed", self.total, start, all_done_at, final_at)
        if now < expires_at:
            return JobView("in_progress", done, start)
        return JobView("expired", done, start, ended_at=expires_at)

    def _visible(self, now: float, start: float, batch_seconds: float) -> int:
        if now < start:
            return 0
        by_clock = self.total if batch_seconds <= 0 else math.floor(
            self.total * min((now - start) / batch_seconds, 1.0))
        return min(self.processed, by_clock)

    def _all_done_at(self, start: float, batch_seconds: float) -> float | None:
        if self.fate == "expire" or self.worker_done_at is None:
            return None
        return max(start + batch_seconds, self.worker_done_at)

    def counts(self, done: int) -> tuple[int, int]:
        """(succeeded, errored) among the first `done` requests."""
        window = self.outcomes[:done]
        return window.count(OK), window.count(ERRORED)


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Stream a JSONL file's objects (blank lines skipped)."""
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                yield json.loads(raw)


def iter_custom_ids(path: Path) -> Iterator[str]:
    """Stream the `custom_id` of each parseable line of an input file (a batch that
    failed validation may hold lines that are not)."""
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                yield line["custom_id"]


class BatchWorker:
    """One background thread that processes jobs in creation order.

    `on_stopped(job)` runs when the worker is through with a job (done, stopped by a
    cancel or an expiring fate, or failed), to store where it left the job.
    """

    def __init__(self, process: Callable[[BatchJob, dict[str, Any]], dict[str, Any]],
                 config: EmulatorConfig,
                 on_stopped: Callable[[BatchJob], None] | None = None) -> None:
        self._process = process
        self._config = config
        self._on_stopped = on_stopped
        self._queue: queue.Queue[BatchJob | None] = queue.Queue()
        self._stopping = threading.Event()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="emulator-batches", daemon=True)
        self._thread.start()

    def submit(self, job: BatchJob) -> None:
        """Queue a valid job for processing."""
        self._queue.put(job)

    @property
    def idle(self) -> bool:
        """No job is being processed or waiting."""
        return not self._busy and self._queue.empty()

    def stop(self) -> None:
        """End the thread, leaving the current job unfinished (a new process redoes it)."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            self._busy = True
            try:
                if not job.finalized and self._work(job):
                    self._stopped(job)
            except Exception as exc:  # noqa: BLE001 - a bad job must not kill the worker
                job.failure = {"code": "server_error", "message": f"emulator error: {exc}"}
                job.worker_done_at = time.time()
                self._stopped(job)
            finally:
                self._busy = False

    def _stopped(self, job: BatchJob) -> None:
        if self._on_stopped is not None:
            try:
                self._on_stopped(job)
            except Exception:  # noqa: BLE001 - best effort: the next look redoes it
                logging.getLogger(__name__).warning(
                    "storing or finalizing batch %s after its worker failed; the next look "
                    "at it finalizes it again", job.id, exc_info=True)

    def _work(self, job: BatchJob) -> bool:
        """Process the job; False when the worker was stopped part way."""
        limit = job.process_limit(self._config)
        with job.input_path.open("rb") as source, job.staged_path.open("w") as staged:
            for index, raw in enumerate(source):
                if self._stopping.is_set():
                    return False
                if index >= limit or job.finalized:
                    break
                if job.cancel_requested_at is not None and len(job.outcomes) >= (
                        job.cancel_cut or 0):
                    break
                if not raw.strip():
                    continue
                result = self._process(job, json.loads(raw))
                staged.write(json.dumps(result, separators=(",", ":")) + "\n")
                job.outcomes.append(OK if result["ok"] else ERRORED)
                if index % 256 == 255:
                    staged.flush()
                    job.processed = index + 1
            staged.flush()
            job.processed = len(job.outcomes)
        if job.processed >= job.total:
            job.worker_done_at = time.time()
        job.worker_finished = True
        return True
