"""The `lanewise emulator` command serves the APIs in the foreground."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import openai


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_emulator_command_serves_both_sdks(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lanewise", "emulator", "--port", str(port), "--state-dir",
         str(tmp_path), "--batch-seconds", "0", "--rate-limit-rate", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_emulator/health").json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.2)
        assert health["status"] == "ok"
        timing = httpx.get(f"http://127.0.0.1:{port}/_emulator/timing").json()
        assert timing["batch_seconds"] == 0
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there."}])
        assert answer.choices[0].message.content == "Hello there."
        assert (tmp_path / "billing.sqlite3").exists()
    finally:
        process.terminate()
        process.wait(timeout=10)
