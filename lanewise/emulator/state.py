"""The emulator's shared state: config, engine, files, billing, jobs and live faults.

An `EmulatorState` owns its state folder while it is open: it holds the folder's lock
(a second state on the same folder fails), reloads the files and batch jobs an earlier
process stored there, and goes on with the jobs that process left unfinished.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanewise.emulator.config import EmulatorConfig, Faults, RateLimits
from lanewise.emulator.engine import ModelEngine
from lanewise.emulator.folder import FolderLock, remove_server_info, write_server_info
from lanewise.emulator.jobs import TERMINAL_PHASES, BatchJob, BatchWorker, JobView, unit_draw
from lanewise.emulator.rate_limits import RateLimiter
from lanewise.emulator.store import BillingRecord, FileStore, JobStore, StateDB, id_instance
from lanewise.pricing import PriceTable

INSUFFICIENT_QUOTA = "insufficient_quota"
# The status each provider answers an exhausted account with.
QUOTA_STATUS = {"openai": 429, "anthropic": 400}


@dataclass
class ScriptedFault:
    """Answer the next `count` live calls (of `provider` and `model`, or any) with
    `status`, or with the fault `kind` names (`insufficient_quota`: the provider's own
    status)."""

    status: int | None = None
    count: int = 1
    provider: str | None = None
    retry_after: float | None = None
    kind: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class LiveFault:
    """The fault one live call gets: an HTTP status, its retry-after, and its kind."""

    status: int
    retry_after: float | None = None
    kind: str | None = None


class EmulatorState:
    """Everything the HTTP layer reads and changes."""

    def __init__(self, config: EmulatorConfig, state_dir: Path, prices: PriceTable) -> None:
        self.config = config
        self.state_dir = state_dir
        self.folder_lock = FolderLock(state_dir)  # raises if another emulator serves it
        self.url: str | None = None
        try:
            self.db = StateDB(state_dir)
            try:
                self._reload(prices)
            except BaseException:
                self.db.close()
                raise
        except BaseException:
            self.folder_lock.release()
            raise
        self.engine = ModelEngine(prices)
        self.prices_path: Path | None = None  # the price table file, when built from one
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self.last_request = time.monotonic()
        self._live_rng = random.Random(config.faults.seed)
        self.scripted: list[ScriptedFault] = []
        self.stats: dict[str, int] = {
            "openai_batches_created": 0, "anthropic_batches_created": 0,
            "openai_live_calls": 0, "anthropic_live_calls": 0, "live_faults": 0,
            "quota_refusals": 0, "rate_limited": 0,
        }
        # Budgets are read at every call, so a PATCH applies to the next one.
        self.rate_limiter = RateLimiter(lambda: self.config.rate_limits)
        # Imported here to avoid a cycle: the processors need the state's engine.
        from lanewise.emulator.batch_process import process_request
        self.worker = BatchWorker(lambda job, line: process_request(self, job, line), config,
                                  on_stopped=self._worker_stopped)
        self._resume_unfinished()

    def _reload(self, prices: PriceTable) -> None:
        """Open the stores over the folder, with what an earlier process left there."""
        self.files = FileStore(self.state_dir, self.db)
        self.billing = BillingRecord(self.db, prices)
        self.job_store = JobStore(self.db, self.state_dir)
        self.jobs: dict[str, BatchJob] = {job.id: job for job in self.job_store.load()}
        self.jobs_dir = self.state_dir / "batches"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        # Ids carry the start time so a ledger kept across emulator restarts never sees
        # the same batch id twice (real providers' ids are unique too); never below an
        # id already stored, so they stay unique and ordered if the clock steps back.
        stored = [id_instance(i) for i in itertools.chain(
            self.jobs, (f.id for f in self.files.all()))]
        instance = max([time.time_ns() // 1_000_000, *(i + 1 for i in stored)])
        self._instance = f"{instance:011x}"
        self.files.start_ids_at(self._instance)
        self.files.remove_strays()

    def _resume_unfinished(self) -> None:
        """Run again, from their first line, the reloaded jobs no worker finished.

        Their lifecycle goes on from `created_at`: one already past its completion
        window is not run (it expires with nothing done), except a cancelled one,
        which first redoes the requests it had finished before the cancel.
        """
        now = time.time()
        for job in self.jobs.values():
            if job.finalized or job.failure is not None or job.worker_finished:
                continue
            job.restart()
            expired = now >= job.created_at + self.config.timing.expiry_seconds
            if job.cancel_requested_at is not None or not expired:
                self.worker.submit(job)

    def next_id(self, prefix: str) -> str:
        """A fresh id, unique across emulator restarts; ids sort in creation order."""
        return f"{prefix}{self._instance}{next(self._ids):08d}"

    def set_faults(self, faults: Faults) -> None:
        """Swap fault settings at run time; reseeds the live-call draws."""
        with self.lock:
            self.config.faults = faults
            self._live_rng = random.Random(faults.seed)

    def set_rate_limits(self, limits: RateLimits | None = None, *,
                        reset_usage: bool = True) -> None:
        """Swap the live calls' rate-limit budgets at run time (the defaults, no budget,
        when None); what was counted is forgotten unless `reset_usage` is False."""
        with self.lock:
            self.config.rate_limits = limits if limits is not None else RateLimits()
        if reset_usage:
            self.rate_limiter.reset()

    @staticmethod
    def draw_key(batch_id: str) -> str:
        """The part of a batch id that seeds its draws: its sequence, not the start time,
        so the same seed gives the same faults in every emulator run."""
        return batch_id[-8:]

    def batch_fate(self, batch_id: str) -> str:
        """Whether a new batch completes, expires or fails (a seeded draw)."""
        faults = self.config.faults
        draw = unit_draw(faults.seed, "batch", self.draw_key(batch_id))
        if draw < faults.batch_fail_rate:
            return "fail"
        if draw < faults.batch_fail_rate + faults.batch_expire_rate:
            return "expire"
        return "complete"

    def out_of_credit(self, provider: str) -> bool:
        """True (and counted) when `provider`'s account is switched to no credit: every
        live call and batch create (and OpenAI upload) is refused."""
        faults = self.config.faults
        refused = (faults.openai_insufficient_quota if provider == "openai"
                   else faults.anthropic_insufficient_quota)
        if refused:
            with self.lock:
                self.stats["quota_refusals"] += 1
        return refused

    def live_fault(self, provider: str, model: str | None = None) -> LiveFault | None:
        """The fault this live call gets, if any: the no-credit switch, a scripted
        fault, or a seeded draw (one per call, applied only within the faults' scope)."""
        if self.out_of_credit(provider):
            return LiveFault(QUOTA_STATUS[provider], kind=INSUFFICIENT_QUOTA)
        with self.lock:
            for scripted in self.scripted:
                if (scripted.provider in (None, provider) and scripted.model in (None, model)
                        and scripted.count > 0):
                    scripted.count -= 1
                    self.scripted = [s for s in self.scripted if s.count > 0]
                    self.stats["live_faults"] += 1
                    if scripted.kind == INSUFFICIENT_QUOTA:
                        return LiveFault(QUOTA_STATUS[provider], kind=INSUFFICIENT_QUOTA)
                    return LiveFault(scripted.status or 500, scripted.retry_after)
            faults = self.config.faults
            draw = self._live_rng.random()
            table = [(faults.rate_limit_rate, 429), (faults.server_error_rate, 500),
                     (faults.unavailable_rate, 503)]
            if provider == "anthropic":
                table.append((faults.overloaded_rate, 529))
            threshold = 0.0
            in_scope = faults.live_scope_holds(provider, model)
            for rate, status in table:
                threshold += rate
                if in_scope and draw < threshold:
                    self.stats["live_faults"] += 1
                    return LiveFault(status)
        return None

    def live_latency(self, provider: str = "", model: str | None = None) -> float:
        """Seconds to wait before answering a live call (0 outside the faults' scope; the
        jitter is drawn all the same, so the sequence does not depend on the scope)."""
        faults = self.config.faults
        if faults.latency_ms <= 0 and faults.latency_jitter_ms <= 0:
            return 0.0
        with self.lock:
            jitter = self._live_rng.uniform(-faults.latency_jitter_ms, faults.latency_jitter_ms)
        if provider and not faults.live_scope_holds(provider, model):
            return 0.0
        return max(faults.latency_ms + jitter, 0.0) / 1000

    def active_enqueued_tokens(self, model: str, now: float) -> int:
        """Input tokens of OpenAI batches for `model` that are not yet terminal."""
        total = 0
        for job in list(self.jobs.values()):
            if job.provider == "openai" and job.model == model and job.failure is None:
                if self.view(job, now).phase not in TERMINAL_PHASES:
                    total += job.enqueued_tokens
        return total

    def view(self, job: BatchJob, now: float | None = None) -> JobView:
        """The job's state now, finalizing its files the first time it is terminal."""
        from lanewise.emulator.batch_process import finalize

        now = time.time() if now is None else now
        view = job.view(now, self.config)
        if view.phase in ("completed", "expired", "cancelled") and not job.finalized:
            finalize(self, job, view)
        return view

    def _worker_stopped(self, job: BatchJob) -> None:
        """Store where the worker left `job`; and a job whose clock has run out by now
        ends now (its files written, its bill committed), as a provider's batch does on
        its own, rather than inside the next poll, which then waited seconds for it.
        A job due later still ends at the first look after its time (`view`)."""
        self.job_store.save_worker(job)
        self.view(job)

    def register(self, job: BatchJob) -> None:
        """Store and track a new job and hand it to the worker unless it already failed."""
        self.job_store.insert(job)
        with self.lock:
            self.jobs[job.id] = job
            self.stats[f"{job.provider}_batches_created"] += 1
        if job.failure is None:
            self.worker.submit(job)

    def touch(self) -> None:
        """Note that a request came in (the background emulator exits when idle)."""
        self.last_request = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds since the last request, or 0 while the worker still has jobs."""
        if not self.worker.idle:
            return 0.0
        return time.monotonic() - self.last_request

    def publish(self, url: str) -> None:
        """Announce that this state is served at `url` (`server.json` in the folder)."""
        self.url = url
        write_server_info(self.state_dir, url)

    def close(self) -> None:
        """Stop the worker, close the database and give the folder up."""
        try:
            self.worker.stop()
            if self.url is not None:
                remove_server_info(self.state_dir, self.url)
            self.db.close()
        finally:
            self.folder_lock.release()

    def snapshot(self) -> dict[str, Any]:
        """Counters for tests and operators."""
        with self.lock:
            return dict(self.stats, batches=len(self.jobs),
                        prices_path=str(self.prices_path) if self.prices_path else None)
