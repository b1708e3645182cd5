"""The emulator keeps its files and batches in its state folder: a new emulator process on
the same folder goes on with them; one emulator per folder; the shared background one."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from lanewise.emulator import EmulatorConfig, Timing, running_emulator
from lanewise.emulator.background import shared_emulator_url
from lanewise.emulator.folder import read_server_info
from lanewise.errors import ConfigurationError
from tests.conftest import FAST, OPENAI_TERMINAL, chat_line, wait_for

KEY = "sk-test"
BIG = 50_000  # requests: the most an OpenAI batch takes, a second or two of work
REPO = Path(__file__).resolve().parent.parent


def clients(url: str) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    return (openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0),
            anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0))


def upload(oai: openai.OpenAI, count: int, prefix: str = "r") -> str:
    payload = "".join(json.dumps(chat_line(f"{prefix}{i}", f"Summarize:\n\nTicket {i} fails.",
                                           max_tokens=20)) + "\n" for i in range(count))
    return oai.files.create(file=("in.jsonl", io.BytesIO(payload.encode())),
                            purpose="batch").id


def message_requests(count: int, prefix: str = "m") -> list[dict]:
    return [{"custom_id": f"{prefix}{i}", "params": {
        "model": "claude-haiku-4-5", "max_tokens": 20,
        "messages": [{"role": "user", "content": f"Summarize:\n\nLogin {i} fails."}]}}
        for i in range(count)]


def openai_done(oai: openai.OpenAI, batch_id: str, timeout: float = 30):
    return wait_for(lambda: oai.batches.retrieve(batch_id),
                    lambda b: b.status in OPENAI_TERMINAL, timeout=timeout)


def anthropic_done(claude: anthropic.Anthropic, batch_id: str, timeout: float = 30):
    return wait_for(lambda: claude.messages.batches.retrieve(batch_id),
                    lambda b: b.processing_status == "ended", timeout=timeout)


def output_ids(oai: openai.OpenAI, file_id: str) -> list[str]:
    text = oai.files.content(file_id).text
    return [json.loads(line)["custom_id"] for line in text.splitlines() if line]


def billed(url: str, **filters: str) -> int:
    return httpx.get(f"{url}/_emulator/billing", params=filters).json()["total"]["requests"]


def batch_row(state_dir: Path, batch_id: str) -> dict:
    with sqlite3.connect(state_dir / "billing.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone())


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1]
                           for line in status)
    except FileNotFoundError:
        return False


def emulator_pids(state_dir: Path) -> list[int]:
    """Running `python -m lanewise.emulator` processes serving `state_dir`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lanewise.emulator" in argv and str(state_dir.resolve()).encode() in argv:
            if alive(int(proc.name)):
                pids.append(int(proc.name))
    return pids


def wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.05)


@pytest.fixture()
def background(tmp_path, monkeypatch):
    """A state folder for background emulators; any left running are stopped after."""
    monkeypatch.setenv("LANEWISE_EMULATOR_IDLE_SECONDS", "120")
    state_dir = tmp_path / "emulator"
    started: list[int] = []
    yield state_dir, started
    info = read_server_info(state_dir) if state_dir.exists() else None
    for pid in {*started, *([info["pid"]] if info else [])}:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid)


def test_killed_emulator_process_resumes_its_batches_and_bills_once(background):
    state_dir, started = background
    url = shared_emulator_url(state_dir)
    started.append(read_server_info(state_dir)["pid"])
    oai, claude = clients(url)
    # A small batch that finishes (and is finalized, so billed) before the kill.
    small = oai.batches.create(input_file_id=upload(oai, 5, "s"),
                               endpoint="/v1/chat/completions", completion_window="24h")
    httpx.patch(f"{url}/_emulator/timing", json={"batch_seconds": 0.1})
    small = openai_done(oai, small.id)
    assert small.status == "completed"
    small_output = oai.files.content(small.output_file_id).text
    # An Anthropic batch the worker gets through (it is still in_progress by the clock),
    # then a big OpenAI batch the worker is part way through: SIGKILL.
    httpx.patch(f"{url}/_emulator/timing", json={"batch_seconds": 3.0})
    messages = claude.messages.batches.create(requests=message_requests(300))
    wait_for(lambda: batch_row(state_dir, messages.id)["worker_finished"], bool)
    big_input = upload(oai, BIG)
    staged = state_dir / "files" / f"{big_input}.staged.jsonl"
    big = oai.batches.create(input_file_id=big_input, endpoint="/v1/chat/completions",
                             completion_window="24h")
    wait_for(lambda: staged.exists() and staged.stat().st_size, bool, timeout=20)
    os.kill(started[0], signal.SIGKILL)
    wait_gone(started[0])
    assert batch_row(state_dir, big.id)["worker_finished"] == 0  # to be run again
    assert batch_row(state_dir, messages.id)["finalized"] == 0  # to be finalized

    new_url = shared_emulator_url(state_dir)
    started.append(read_server_info(state_dir)["pid"])
    assert started[1] != started[0]
    assert new_url == url  # it took its predecessor's port again: old clients go on
    oai, claude = clients(new_url)
    big = openai_done(oai, big.id)
    assert big.status == "completed"
    assert big.request_counts.completed == BIG and big.request_counts.failed == 0
    assert sorted(output_ids(oai, big.output_file_id)) == sorted(f"r{i}" for i in range(BIG))
    ended = anthropic_done(claude, messages.id)
    assert ended.request_counts.succeeded == 300
    results = list(claude.messages.batches.results(messages.id))
    assert sorted(r.custom_id for r in results) == sorted(f"m{i}" for i in range(300))
    assert all(r.result.type == "succeeded" for r in results)
    # The finished batch serves the same results; each request is billed exactly once.
    assert oai.batches.retrieve(small.id).output_file_id == small.output_file_id
    assert oai.files.content(small.output_file_id).text == small_output
    assert billed(new_url, lane="batch") == 5 + BIG + 300
    assert billed(new_url, batch_id=big.id) == BIG
    # Lists hold the reloaded items, newest first; new ids sort after the old ones.
    newer = oai.batches.create(input_file_id=upload(oai, 2, "n"),
                               endpoint="/v1/chat/completions", completion_window="24h")
    assert [b.id for b in oai.batches.list()] == [newer.id, big.id, small.id]
    assert [b.id for b in claude.messages.batches.list()] == [messages.id]
    assert big_input in [f.id for f in oai.files.list()]


def test_finished_batches_files_and_deletes_survive_a_restart(tmp_path):
    state_dir = tmp_path / "state"
    config = EmulatorConfig(timing=FAST.model_copy())
    with running_emulator(config, state_dir=state_dir) as emu:
        oai, claude = clients(emu.url)
        first = oai.batches.create(input_file_id=upload(oai, 4), endpoint="/v1/chat/completions",
                                   completion_window="24h", metadata={"run": "a"})
        openai_done(oai, first.id)
        first = oai.batches.retrieve(first.id)
        kept = anthropic_done(claude, claude.messages.batches.create(
            requests=message_requests(3)).id)
        kept = claude.messages.batches.retrieve(kept.id)
        gone = anthropic_done(claude, claude.messages.batches.create(
            requests=message_requests(2)).id)
        claude.messages.batches.delete(gone.id)
        results = [r.model_dump() for r in claude.messages.batches.results(kept.id)]
        files = [f.id for f in oai.files.list()]
        output = oai.files.content(first.output_file_id).text
        bill = httpx.get(f"{emu.url}/_emulator/billing").json()
    with running_emulator(EmulatorConfig(timing=FAST.model_copy()), state_dir=state_dir) as emu:
        oai, claude = clients(emu.url)
        again = oai.batches.retrieve(first.id)
        assert again.model_dump() == first.model_dump()
        assert oai.files.content(first.output_file_id).text == output
        assert [f.id for f in oai.files.list()] == files
        reloaded = claude.messages.batches.retrieve(kept.id)
        # results_url is absolute and names the emulator serving it now (a new port).
        assert reloaded.results_url == f"{emu.url}/v1/messages/batches/{kept.id}/results"
        assert reloaded.model_dump(exclude={"results_url"}) == kept.model_dump(
            exclude={"results_url"})
        assert [r.model_dump() for r in claude.messages.batches.results(kept.id)] == results
        with pytest.raises(anthropic.NotFoundError):
            claude.messages.batches.retrieve(gone.id)
        assert httpx.get(f"{emu.url}/_emulator/billing").json() == bill
        assert bill["total"]["requests"] == 4 + 3 + 2
        newer = claude.messages.batches.create(requests=message_requests(1))
        assert newer.id > kept.id
        assert [b.id for b in claude.messages.batches.list()] == [newer.id, kept.id]


def slow_processing(monkeypatch, seconds: float = 0.002) -> None:
    from lanewise.emulator import batch_process

    real = batch_process.process_request

    def slow(state, job, line):
        time.sleep(seconds)
        return real(state, job, line)

    monkeypatch.setattr(batch_process, "process_request", slow)


def test_unfinished_and_cancelled_jobs_go_on_after_a_restart(tmp_path, monkeypatch):
    state_dir = tmp_path / "state"
    slow_processing(monkeypatch)
    slow = Timing(batch_seconds=0, validating_seconds=0, finalizing_seconds=0.05,
                  cancel_seconds=60, expiry_seconds=60)
    with running_emulator(EmulatorConfig(timing=slow), state_dir=state_dir) as emu:
        oai, claude = clients(emu.url)
        cancelled = oai.batches.create(input_file_id=upload(oai, 2000, "c"),
                                       endpoint="/v1/chat/completions", completion_window="24h")
        wait_for(lambda: oai.batches.retrieve(cancelled.id),
                 lambda b: b.request_counts.completed >= 300)
        cancelled = oai.batches.cancel(cancelled.id)
        cut = cancelled.request_counts.completed
        assert cancelled.status == "cancelling" and 300 <= cut < 2000
        unfinished = claude.messages.batches.create(requests=message_requests(500))
    # The process ended with one job cancelling and one never run (not finalized).
    assert batch_row(state_dir, cancelled.id)["finalized"] == 0
    assert batch_row(state_dir, unfinished.id)["worker_finished"] == 0
    monkeypatch.undo()
    fast = slow.model_copy(update={"cancel_seconds": 0})
    with running_emulator(EmulatorConfig(timing=fast), state_dir=state_dir) as emu:
        oai, claude = clients(emu.url)
        done = openai_done(oai, cancelled.id)
        assert done.status == "cancelled"
        assert done.request_counts.completed == cut
        assert done.request_counts.failed == 2000 - cut
        assert sorted(output_ids(oai, done.output_file_id)) == sorted(
            f"c{i}" for i in range(cut))
        errors = oai.files.content(done.error_file_id).text.splitlines()
        assert {json.loads(line)["error"]["code"] for line in errors} == {"batch_cancelled"}
        ended = anthropic_done(claude, unfinished.id)
        assert ended.request_counts.succeeded == 500
        assert billed(emu.url, lane="batch") == cut + 500


def test_finalize_cut_short_bills_nothing_and_the_next_process_bills_once(tmp_path,
                                                                         monkeypatch):
    from lanewise.emulator.store import JobStore

    state_dir = tmp_path / "state"
    config = EmulatorConfig(timing=FAST.model_copy())
    real = JobStore.save_final

    def killed(*args, **kwargs):
        raise RuntimeError("killed between the billing rows and the finalized mark")

    monkeypatch.setattr(JobStore, "save_final", staticmethod(killed))
    with running_emulator(config, state_dir=state_dir) as emu:
        oai, _ = clients(emu.url)
        batch = oai.batches.create(input_file_id=upload(oai, 50),
                                   endpoint="/v1/chat/completions", completion_window="24h")
        time.sleep(FAST.validating_seconds + FAST.batch_seconds + FAST.finalizing_seconds + 0.3)
        for _ in range(2):
            with pytest.raises(openai.APIError):  # a 500, or the connection dropped
                oai.batches.retrieve(batch.id)
        assert billed(emu.url) == 0
        assert [f.purpose for f in oai.files.list()] == ["batch"]  # no output registered
    assert len(stored_file_names(state_dir)) > 1  # the cut-short finalizes' output files
    monkeypatch.setattr(JobStore, "save_final", staticmethod(real))
    with running_emulator(config, state_dir=state_dir) as emu:
        oai, _ = clients(emu.url)
        done = openai_done(oai, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 50
        assert len(output_ids(oai, done.output_file_id)) == 50
        assert billed(emu.url) == 50
        registered = sorted(f.id for f in oai.files.list())
    assert stored_file_names(state_dir) == registered  # strays were removed
    with running_emulator(config, state_dir=state_dir) as emu:
        oai, _ = clients(emu.url)
        assert oai.batches.retrieve(batch.id).status == "completed"
        assert billed(emu.url) == 50


def stored_file_names(state_dir: Path) -> list[str]:
    return sorted(p.name for p in (state_dir / "files").iterdir()
                  if p.name.startswith("file-") and "." not in p.name)


def test_a_second_server_on_a_served_folder_fails_clearly(tmp_path):
    state_dir = tmp_path / "state"
    with running_emulator(state_dir=state_dir) as emu:
        with pytest.raises(ConfigurationError) as in_process:
            with running_emulator(state_dir=state_dir):
                pass
        message = str(in_process.value)
        assert str(state_dir) in message and f"pid {os.getpid()}" in message
        assert emu.url in message
        second = subprocess.run(
            [sys.executable, "-m", "lanewise.emulator", "--state-dir", str(state_dir)],
            capture_output=True, text=True, timeout=60, cwd=REPO)
        assert second.returncode == 1
        assert "already served by another emulator" in second.stderr
        assert emu.url in second.stderr
        assert httpx.get(f"{emu.url}/_emulator/health").json()["status"] == "ok"
    with running_emulator(state_dir=state_dir):  # free again once the first one closed
        pass


LAUNCH = """
import sys
from pathlib import Path
from lanewise.providers import embedded_emulator_url
from lanewise.settings import Settings
print(embedded_emulator_url(Settings(home=Path(sys.argv[1]))))
"""


def test_three_processes_at_once_share_one_background_emulator(background):
    state_dir, started = background
    home = state_dir.parent
    launchers = [subprocess.Popen([sys.executable, "-c", LAUNCH, str(home)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    outputs = [p.communicate(timeout=60) for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0, 0], outputs
    urls = {out.strip() for out, _ in outputs}
    info = read_server_info(state_dir)
    started.append(info["pid"])
    assert urls == {info["url"]}
    log = (state_dir / "emulator.log").read_text()
    assert log.count("serving") == 1, log
    assert emulator_pids(state_dir) == [info["pid"]]
    assert httpx.get(f"{info['url']}/_emulator/health").json()["pid"] == info["pid"]
    # It outlived the processes that started it; SIGTERM stops it cleanly.
    assert alive(info["pid"])
    os.kill(info["pid"], signal.SIGTERM)
    wait_gone(info["pid"])
    assert read_server_info(state_dir) is None
    assert "stopped" in (state_dir / "emulator.log").read_text()


def test_background_emulator_exits_when_idle(background, monkeypatch):
    state_dir, started = background
    monkeypatch.setenv("LANEWISE_EMULATOR_IDLE_SECONDS", "1")
    monkeypatch.setenv("LANEWISE_EMULATOR_BATCH_SECONDS", "0.5")
    url = shared_emulator_url(state_dir)
    pid = read_server_info(state_dir)["pid"]
    started.append(pid)
    assert httpx.get(f"{url}/_emulator/timing").json()["batch_seconds"] == 0.5
    begun = time.monotonic()
    wait_gone(pid, timeout=15)
    assert time.monotonic() - begun >= 0.5
    assert read_server_info(state_dir) is None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/_emulator/health", timeout=2)
    assert "no request for 1 s" in (state_dir / "emulator.log").read_text()
