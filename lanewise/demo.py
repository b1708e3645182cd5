"""The README's main job: a real round trip of both SDKs through the emulator."""

from __future__ import annotations

import io
import json
import time

import anthropic
import httpx
import openai
from rich.console import Console
from rich.table import Table

from lanewise.emulator import EmulatorConfig, Timing, running_emulator

TICKETS = [
    "I was charged twice for my subscription this month. Please refund the extra charge.",
    "I cannot log in: the 2FA code never arrives and I am locked out.",
    "The CSV export fails with a blank page since yesterday.",
    "Would be nice to have dark mode. Just a suggestion, no rush.",
]
TAG_SCHEMA = {
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


def _wait(retrieve, is_done, interval: float = 0.2, timeout: float = 60):
    deadline = time.monotonic() + timeout
    batch = retrieve()
    while not is_done(batch) and time.monotonic() < deadline:
        time.sleep(interval)
        batch = retrieve()
    return batch


def run_demo(console: Console) -> None:
    """Tag sample tickets through OpenAI Batch and Anthropic Message Batches, then bill."""
    config = EmulatorConfig(timing=Timing(batch_seconds=1.0, finalizing_seconds=0.2))
    with running_emulator(config) as emu:
        console.print(f"emulator on {emu.url}")
        oai = openai.OpenAI(base_url=emu.openai_base_url, api_key=emu.api_key)
        lines = [
            {"custom_id": f"ticket-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": [
                 {"role": "system", "content": "Tag the support ticket."},
                 {"role": "user", "content": f"Ticket:\n\n{text}"}],
                 "response_format": {"type": "json_schema", "json_schema": {
                     "name": "tags", "schema": TAG_SCHEMA, "strict": True}}}}
            for i, text in enumerate(TICKETS)]
        payload = "".join(json.dumps(line) + "\n" for line in lines).encode()
        upload = oai.files.create(file=("tickets.jsonl", io.BytesIO(payload)), purpose="batch")
        batch = oai.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")
        batch = _wait(lambda: oai.batches.retrieve(batch.id),
                      lambda b: b.status in ("completed", "failed", "expired", "cancelled"))
        table = Table(title=f"OpenAI batch {batch.id}: {batch.status}")
        table.add_column("ticket")
        table.add_column("tags")
        for raw in oai.files.content(batch.output_file_id).text.splitlines():
            line = json.loads(raw)
            table.add_row(line["custom_id"],
                          line["response"]["body"]["choices"][0]["message"]["content"])
        console.print(table)

        claude = anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key=emu.api_key)
        created = claude.messages.batches.create(requests=[
            {"custom_id": f"ticket-{i}", "params": {
                "model": "claude-haiku-4-5", "max_tokens": 200,
                "messages": [{"role": "user", "content": f"Summarize:\n\n{text}"}]}}
            for i, text in enumerate(TICKETS)])
        _wait(lambda: claude.messages.batches.retrieve(created.id),
              lambda b: b.processing_status == "ended")
        table = Table(title=f"Anthropic message batch {created.id}")
        table.add_column("ticket")
        table.add_column("summary")
        for result in claude.messages.batches.results(created.id):
            table.add_row(result.custom_id, result.result.message.content[0].text)
        console.print(table)

        billing = httpx.get(f"{emu.url}/_emulator/billing").json()
        table = Table(title="What the providers would bill")
        for column in ("provider", "lane", "model", "requests", "input", "output", "USD"):
            table.add_column(column, justify="right" if column not in (
                "provider", "lane", "model") else "left")
        for row in billing["by_model"]:
            table.add_row(row["provider"], row["lane"], row["model"], str(row["requests"]),
                          str(row["input_tokens"]), str(row["output_tokens"]), row["cost_usd"])
        console.print(table)
