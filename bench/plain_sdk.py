"""The baseline of bench/vs_sdk.py: ticket tagging through OpenAI Batch by hand, with the
official `openai` SDK only (no lanewise), the way a careful user would write it.

    python bench/plain_sdk.py --input tickets.parquet --out results.parquet
                              [--base-url URL] [--enqueued-token-limit N]
                              [--batch-requests 50000] [--poll-seconds 1]

1. Read the tickets Parquet in record batches (`ticket_id`, `subject`, `body`) and write
   JSONL batch files of chat.completions requests: the same body as lanewise's
   `ticket-tagging` task (data/catalog.yaml: gpt-4o-mini, the same system and user
   prompt, `response_format` json_schema strict, `max_completion_tokens` 100). A file
   is closed at `--batch-requests` lines (the provider's maximum, 50,000), at 200 MB,
   or, with `--enqueued-token-limit`, when its estimated input tokens would pass the
   limit.
2. Upload each file (`files.create(purpose="batch")`) and create its batch. With a
   limit, a batch is created only while the estimated tokens of the batches still
   running plus its own fit the limit (batches filled to the limit: the next one is
   created when the previous one has ended); without one, every batch at once. A batch
   that fails with `token_limit_exceeded` is created again (same file) once one of ours
   has ended, or a poll later if none is running (other work may fill the queue; after
   a minute of refusals it gives up).
3. Poll every running batch with `batches.retrieve` every `--poll-seconds`; when one
   ends, create what now fits, then stream its output and error files
   (`files.content`), parse every line (the answer's JSON too) and append the rows to
   the results Parquet (`--out`, or JSONL if it ends in .jsonl).

Prints one JSON line of figures at the end (rows, batches, seconds).

Token estimate: the rule the emulator counts by (lanewise/tokens.py), four characters a
token rounded up, 3 tokens a message, 3 a request, plus the schema's compact sorted
JSON. The real API counts with its tokenizer; a real user would keep a margin.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
import pyarrow as pa
import pyarrow.parquet as pq

MODEL = "gpt-4o-mini"
ENDPOINT = "/v1/chat/completions"
MAX_OUTPUT_TOKENS = 100
MAX_FILE_BYTES = 200 * 1024 * 1024
SYSTEM = ("You tag customer support tickets. Answer with the topic, the customer's "
          "sentiment and the urgency, as JSON matching the schema.")
USER = "Tag this support ticket.\n\nSubject: {subject}\n{body}"
FIELDS = ["topic", "sentiment", "urgency"]
SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "enum": ["billing", "login", "export", "bug",
                                             "feature_request", "account", "other"]},
        "sentiment": {"type": "string", "enum": ["negative", "neutral", "positive"]},
        "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
    },
    "required": ["topic", "sentiment", "urgency"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema",
                   "json_schema": {"name": "ticket_tagging", "schema": SCHEMA, "strict": True}}
RUNNING = {"validating", "in_progress", "finalizing", "cancelling"}
MAX_REFUSALS = 60  # token_limit_exceeded with nothing of ours running: give up after ~1 min
RESULT_SCHEMA = pa.schema(
    [("ticket_id", pa.string()), ("status", pa.string()), ("error", pa.string()),
     ("raw_text", pa.string())]
    + [(name, pa.string()) for name in FIELDS]
    + [("input_tokens", pa.int64()), ("output_tokens", pa.int64())])


def tokens_of_text(text: str) -> int:
    """Four characters a token, rounded up."""
    return -(-len(text) // 4)


SCHEMA_TOKENS = tokens_of_text(json.dumps(SCHEMA, sort_keys=True, separators=(",", ":")))


def request_body(subject: str | None, body: str | None) -> dict[str, Any]:
    """The chat.completions body of one ticket."""
    user = USER.format(subject=subject or "", body=body or "")
    return {"model": MODEL,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": user}],
            "max_completion_tokens": MAX_OUTPUT_TOKENS,
            "response_format": RESPONSE_FORMAT}


def estimated_tokens(body: dict[str, Any]) -> int:
    """Estimated input tokens of one request (see the module docstring)."""
    return 3 + sum(3 + tokens_of_text(m["content"]) for m in body["messages"]) + SCHEMA_TOKENS


class BatchFile:
    """One JSONL batch file being written, and what it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("wb")
        self.requests = 0
        self.bytes = 0
        self.tokens = 0

    def add(self, line: bytes, tokens: int) -> None:
        self.handle.write(line)
        self.requests += 1
        self.bytes += len(line)
        self.tokens += tokens


def write_batch_files(input_path: str, folder: Path, max_requests: int,
                      token_limit: int | None) -> tuple[list[BatchFile], int]:
    """Split the input into JSONL batch files; returns them and the rows read."""
    files: list[BatchFile] = []
    current: BatchFile | None = None
    rows = 0
    source = pq.ParquetFile(input_path)
    for record_batch in source.iter_batches(batch_size=10_000,
                                            columns=["ticket_id", "subject", "body"]):
        for ticket_id, subject, text in zip(*(c.to_pylist() for c in record_batch.columns),
                                            strict=True):
            rows += 1
            body = request_body(subject, text)
            tokens = estimated_tokens(body)
            if token_limit is not None and tokens > token_limit:
                raise SystemExit(f"ticket {ticket_id}: ~{tokens} tokens, over the limit")
            line = (json.dumps({"custom_id": ticket_id, "method": "POST", "url": ENDPOINT,
                                "body": body}, separators=(",", ":")) + "\n").encode()
            if current is None or current.requests >= max_requests \
                    or current.bytes + len(line) > MAX_FILE_BYTES \
                    or (token_limit is not None and current.tokens + tokens > token_limit):
                if current is not None:
                    current.handle.close()
                current = BatchFile(folder / f"batch-{len(files):04d}.jsonl")
                files.append(current)
            current.add(line, tokens)
    if current is not None:
        current.handle.close()
    return files, rows


def result_row(line: dict[str, Any]) -> dict[str, Any]:
    """One output or error line as a results row."""
    row: dict[str, Any] = {"ticket_id": line["custom_id"], "status": "failed", "error": None,
                           "raw_text": None, "input_tokens": None, "output_tokens": None,
                           **{name: None for name in FIELDS}}
    response = line.get("response")
    if response is None or response.get("status_code") != 200:
        error = (line.get("error") or ((response or {}).get("body") or {}).get("error")
                 or {})
        row["error"] = f"{error.get('code')}: {error.get('message')}"
        return row
    body = response["body"]
    usage = body.get("usage") or {}
    row["input_tokens"] = usage.get("prompt_tokens")
    row["output_tokens"] = usage.get("completion_tokens")
    text = body["choices"][0]["message"].get("content")
    row["raw_text"] = text
    try:
        answer = json.loads(text or "")
    except ValueError:
        row["error"] = "invalid_output: not JSON"
        return row
    row.update({name: answer.get(name) for name in FIELDS})
    row["status"] = "succeeded"
    return row


class ResultsWriter:
    """Results rows into a Parquet file, or a JSONL file if the name ends in .jsonl."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.jsonl = path.suffix == ".jsonl"
        self.writer = path.open("w") if self.jsonl else pq.ParquetWriter(path, RESULT_SCHEMA)
        self.rows = 0
        self.succeeded = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.jsonl:
            self.writer.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            self.writer.write_table(pa.Table.from_pylist(rows, RESULT_SCHEMA))
        self.rows += len(rows)
        self.succeeded += sum(row["status"] == "succeeded" for row in rows)

    def close(self) -> None:
        self.writer.close()


def collect(client: openai.OpenAI, batch: Any, out: ResultsWriter) -> None:
    """Stream the batch's output and error files into the results."""
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        rows: list[dict[str, Any]] = []
        with client.files.with_streaming_response.content(file_id) as response:
            for raw in response.iter_lines():
                if raw.strip():
                    rows.append(result_row(json.loads(raw)))
                    if len(rows) >= 10_000:
                        out.write(rows)
                        rows = []
        out.write(rows)


def run(client: openai.OpenAI, files: list[BatchFile], out: ResultsWriter,
        token_limit: int | None, poll_seconds: float) -> int:
    """Upload, create, poll and collect every batch; returns the batches created."""
    pending = list(files)
    running: dict[str, BatchFile] = {}  # batch id -> its file
    uploaded: dict[Path, str] = {}
    created = 0

    def create_what_fits() -> None:
        nonlocal created
        while pending:
            enqueued = sum(f.tokens for f in running.values())
            if token_limit is not None and running and enqueued + pending[0].tokens \
                    > token_limit:
                return
            batch_file = pending.pop(0)
            if batch_file.path not in uploaded:
                with batch_file.path.open("rb") as handle:
                    uploaded[batch_file.path] = client.files.create(
                        file=(batch_file.path.name, handle), purpose="batch").id
            batch = client.batches.create(input_file_id=uploaded[batch_file.path],
                                          endpoint=ENDPOINT, completion_window="24h")
            created += 1
            running[batch.id] = batch_file

    refusals = 0  # in a row, with none of ours running: other work fills the queue
    create_what_fits()
    while running:
        time.sleep(poll_seconds)
        for batch_id in list(running):
            batch = client.batches.retrieve(batch_id)
            if batch.status in RUNNING:
                continue
            batch_file = running.pop(batch_id)
            if batch.status == "failed":
                error = batch.errors.data[0] if batch.errors and batch.errors.data else None
                if error is not None and error.code == "token_limit_exceeded":
                    pending.insert(0, batch_file)  # again once something has ended
                    refusals = 0 if running else refusals + 1
                    if refusals > MAX_REFUSALS:
                        raise SystemExit(f"batch refused {refusals} times: {error.message}")
                    continue
                raise SystemExit(f"batch {batch_id} failed: {error}")
            refusals = 0
            create_what_fits()
            collect(client, batch, out)
        if pending and not running:
            create_what_fits()
    return created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="Tickets Parquet file.")
    parser.add_argument("--out", required=True, type=Path,
                        help="Results file: Parquet, or JSONL if it ends in .jsonl.")
    parser.add_argument("--base-url", default=None, help="OpenAI base URL (ends in /v1).")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "sk-plain"))
    parser.add_argument("--enqueued-token-limit", type=int, default=None,
                        help="The organization's enqueued-token limit for the model.")
    parser.add_argument("--batch-requests", type=int, default=50_000,
                        help="Requests per batch (the provider's maximum).")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Where the JSONL batch files go (default: a temporary folder).")
    args = parser.parse_args()

    started = time.perf_counter()
    client = openai.OpenAI(api_key=args.api_key, base_url=args.base_url)
    with tempfile.TemporaryDirectory(prefix="plain-sdk-") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files, rows = write_batch_files(args.input, folder, args.batch_requests,
                                        args.enqueued_token_limit)
        out = ResultsWriter(args.out)
        try:
            created = run(client, files, out, args.enqueued_token_limit, args.poll_seconds)
        finally:
            out.close()
    print(json.dumps({"rows": rows, "results": out.rows, "succeeded": out.succeeded,
                      "batch_files": len(files), "batches_created": created,
                      "seconds": round(time.perf_counter() - started, 3)}))


if __name__ == "__main__":
    main()
