"""Per-request processing and finalization of batch jobs, for both providers."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from lanewise.emulator.engine import InvalidRequest
from lanewise.emulator.jobs import BatchJob, JobView, iter_custom_ids, iter_jsonl, unit_draw
from lanewise.emulator.store import StoredFile
from lanewise.pricing import Lane, Usage

if TYPE_CHECKING:
    from lanewise.emulator.state import EmulatorState

NEVER_RAN = {
    "expired": ("batch_expired",
                "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch "
                  "was cancelled."),
}


def _fault_for(state: EmulatorState, job: BatchJob, custom_id: str) -> InvalidRequest | None:
    """A seeded per-item fault (400 or 500), or a whole-batch failure for Anthropic."""
    faults = state.config.faults
    if job.fate == "fail":
        return InvalidRequest(500, "Internal server error (emulated batch failure)",
                              kind="api_error")
    draw = unit_draw(faults.seed, "item", state.draw_key(job.id), custom_id)
    if draw < faults.item_4xx_rate:
        return InvalidRequest(400, "Invalid request (emulated item fault)")
    if draw < faults.item_4xx_rate + faults.item_5xx_rate:
        kind = "server_error" if job.provider == "openai" else "api_error"
        return InvalidRequest(500, "The server had an error processing your request "
                              "(emulated item fault)", kind=kind)
    return None


def process_request(state: EmulatorState, job: BatchJob, line: dict[str, Any]) -> dict[str, Any]:
    """Answer one batch line; returns a staged record (provider-neutral)."""
    custom_id = line["custom_id"]
    fault = _fault_for(state, job, custom_id)
    try:
        if fault is not None:
            raise fault
        if job.provider == "openai":
            answer = state.engine.openai_chat(line["body"], Lane.BATCH)
        else:
            answer = state.engine.anthropic_message(line["params"], Lane.BATCH)
    except InvalidRequest as error:
        return {"custom_id": custom_id, "ok": False, "status": error.status,
                "kind": error.kind, "message": error.message, "param": error.param,
                "code": error.code}
    return {"custom_id": custom_id, "ok": True, "status": 200, "body": answer.body,
            "model": answer.model, "usage": list(answer.usage.as_tuple())}


def finalize(state: EmulatorState, job: BatchJob, view: JobView) -> None:
    """Write the result files of a terminal job and bill what finished, exactly once.

    The billing rows are staged while the files are written, then committed in one
    transaction with the job's `finalized` mark and its output files' registry rows:
    a process killed part way leaves no bill, and the next process finalizes again.
    Every row of the batch is billed at the batch's end (`billed_at` = its ended time).
    """
    with job.lock:
        if job.finalized:
            return
        cut = view.done
        writer = _OpenAIWriter(state, job) if job.provider == "openai" else _AnthropicWriter(
            state, job)
        state.billing.discard_staged(job.id)
        ended_at = view.ended_at or time.time()
        bills: list[tuple[Any, ...]] = []
        finished: set[str] = set()
        staged_lines = iter_jsonl(job.staged_path) if job.staged_path.exists() else iter(())
        for index, record in enumerate(staged_lines):
            if index >= cut:
                break
            finished.add(record["custom_id"])
            writer.write_done(record)
            if record["ok"]:
                usage = Usage(*record["usage"])
                writer.add_usage(usage)
                bills.append(state.billing.row(
                    job.provider, Lane.BATCH, record["model"], usage, batch_id=job.id,
                    custom_id=record["custom_id"], request_id=record["body"]["id"],
                    billed_at=ended_at))
                if len(bills) >= 5000:
                    state.billing.stage(bills)
                    bills = []
        state.billing.stage(bills)
        if cut < job.total:
            for custom_id in iter_custom_ids(job.input_path):
                if custom_id not in finished:
                    writer.write_never_ran(custom_id, view.phase)
        new_files = writer.close()
        results = {**writer.summary(), "in_progress_at": view.in_progress_at,
                   "finalizing_at": view.finalizing_at}
        with state.db.transaction() as conn:
            state.billing.commit_staged(conn, job.id)
            for stored in new_files:
                state.files.insert_row(conn, stored)
            state.job_store.save_final(conn, job.id, view.phase, ended_at, cut, results)
        for stored in new_files:
            state.files.remember(stored)
        job.results = results
        job.cancel_cut = cut
        job.final_phase = view.phase
        job.final_ended_at = ended_at
        job.finalized = True


class _OpenAIWriter:
    """Splits finished requests into the output file and the error file."""

    def __init__(self, state: EmulatorState, job: BatchJob) -> None:
        self.state, self.job = state, job
        self.output_id = state.files.new_id()
        self.error_id = state.files.new_id()
        self.output = state.files.path_for(self.output_id).open("w")
        self.errors = state.files.path_for(self.error_id).open("w")
        self.ok = self.failed = 0
        self.usage = Usage()
        self.sequence = 0

    def _line_id(self) -> str:
        self.sequence += 1
        return f"batch_req_{self.job.id[-10:]}{self.sequence:08d}"

    def write_done(self, record: dict[str, Any]) -> None:
        request_id = f"req_emu{self.job.id[-10:]}{self.sequence:08d}"
        if record["ok"]:
            self.ok += 1
            response = {"status_code": 200, "request_id": request_id, "body": record["body"]}
            line = {"id": self._line_id(), "custom_id": record["custom_id"],
                    "response": response, "error": None}
            self.output.write(json.dumps(line, separators=(",", ":")) + "\n")
            return
        self.failed += 1
        kind = record["kind"] if record["kind"] != "api_error" else "server_error"
        body = {"error": {"message": record["message"], "type": kind,
                          "param": record["param"], "code": record["code"]}}
        line = {"id": self._line_id(), "custom_id": record["custom_id"],
                "response": {"status_code": record["status"], "request_id": request_id,
                             "body": body}, "error": None}
        self.errors.write(json.dumps(line, separators=(",", ":")) + "\n")

    def write_never_ran(self, custom_id: str, phase: str) -> None:
        self.failed += 1
        code, message = NEVER_RAN[phase]
        line = {"id": self._line_id(), "custom_id": custom_id, "response": None,
                "error": {"code": code, "message": message}}
        self.errors.write(json.dumps(line, separators=(",", ":")) + "\n")

    def add_usage(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def close(self) -> list[StoredFile]:
        """Close the files; the non-empty ones are to be registered."""
        self.output.close()
        self.errors.close()
        files = self.state.files
        kept = []
        for file_id, keep, kind in ((self.output_id, self.ok, "output"),
                                    (self.error_id, self.failed, "error")):
            path = files.path_for(file_id)
            if keep:
                kept.append(files.describe(file_id, f"{self.job.id}_{kind}.jsonl",
                                           "batch_output", path.stat().st_size))
            else:
                path.unlink(missing_ok=True)
        return kept

    def summary(self) -> dict[str, Any]:
        u = self.usage
        return {
            "output_file_id": self.output_id if self.ok else None,
            "error_file_id": self.error_id if self.failed else None,
            "completed": self.ok, "failed": self.failed,
            "usage": {
                "input_tokens": u.input_tokens + u.cached_input_tokens,
                "input_tokens_details": {"cached_tokens": u.cached_input_tokens},
                "output_tokens": u.output_tokens,
                "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
                "total_tokens": u.input_tokens + u.cached_input_tokens + u.output_tokens,
            },
        }


class _AnthropicWriter:
    """Writes the one results JSONL of a Message Batch (no blank lines)."""

    def __init__(self, state: EmulatorState, job: BatchJob) -> None:
        self.job = job
        self.path = job.results_path
        self.handle = self.path.open("w")
        self.counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0,
                       "expired": 0}

    def _write(self, custom_id: str, result: dict[str, Any]) -> None:
        line = {"custom_id": custom_id, "result": result}
        self.handle.write(json.dumps(line, separators=(",", ":")) + "\n")

    def write_done(self, record: dict[str, Any]) -> None:
        if record["ok"]:
            self.counts["succeeded"] += 1
            self._write(record["custom_id"], {"type": "succeeded", "message": record["body"]})
            return
        self.counts["errored"] += 1
        error = {"type": "error", "error": {"type": record["kind"], "message": record["message"]}}
        self._write(record["custom_id"], {"type": "errored", "error": error})

    def write_never_ran(self, custom_id: str, phase: str) -> None:
        kind = "expired" if phase == "expired" else "canceled"
        self.counts[kind] += 1
        self._write(custom_id, {"type": kind})

    def add_usage(self, usage: Usage) -> None:
        """Anthropic batches report no usage roll-up; per-result usage is in messages."""

    def close(self) -> list[StoredFile]:
        self.handle.close()
        return []

    def summary(self) -> dict[str, Any]:
        return {"request_counts": dict(self.counts)}
