"""The local stack's parts without a Prefect server (lanewise/ops/stack*.py and
processes.py): process identity and stopping by group and descendants, ports, when an
emulator is needed, the state file, `down` and `status` with fake processes, `up`'s
rollback, and the choice of Prefect API (configured, then the stack's, then a
temporary server). The whole stack for real: tests/test_operations_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lanewise.errors import ConfigurationError
from lanewise.ops import stack as stack_module
from lanewise.ops.processes import (
    ProcessRecord,
    choose_port,
    family,
    is_alive,
    spawn,
    start_time,
    stop,
)
from lanewise.ops.stack import emulator_plan
from lanewise.ops.stack_state import StackPaths, StackState, load_state, save_state, stack_api_url
from lanewise.settings import Settings

KEY_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "LANEWISE_OPENAI_API_KEY",
           "LANEWISE_ANTHROPIC_API_KEY", "LANEWISE_EMULATOR_URL", "PREFECT_API_URL")


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    """No provider keys, emulator URL or Prefect API in the environment."""
    for name in KEY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANEWISE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _sleeper(tmp_path: Path, name: str = "sleeper", script: str = "sleep 300"
             ) -> ProcessRecord:
    log = tmp_path / f"{name.replace(':', '-')}.log"
    return spawn(name, ["bash", "-c", script], log, dict(os.environ))


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_process_is_known_by_pid_and_start_time(tmp_path):
    record = _sleeper(tmp_path)
    try:
        assert is_alive(record.identity)
        assert record.started == start_time(record.pid)
        # The same pid with another start time is another process: never "alive".
        assert not is_alive((record.pid, record.started + 1))
        assert family((record.pid, record.started + 1)) == []
    finally:
        os.killpg(record.pid, signal.SIGKILL)
    _wait(lambda: not is_alive(record.identity))
    assert ProcessRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_stop_takes_the_group_and_descendants_in_other_sessions_and_nothing_else(tmp_path):
    # Like a worker: a child in its group, and one in a session of its own (a flow run).
    pids = tmp_path / "pids"
    record = _sleeper(tmp_path, "worker", f"sleep 300 & echo $! >> {pids}; "
                      f"setsid sleep 301 & echo $! >> {pids}; wait")
    bystander = _sleeper(tmp_path, "bystander")
    try:
        _wait(lambda: pids.exists() and len(pids.read_text().split()) == 2)
        children = [int(pid) for pid in pids.read_text().split()]
        # `setsid` makes its session a moment after its pid is known: wait for it.
        _wait(lambda: os.getsid(children[1]) == children[1])
        identities = [(pid, start_time(pid)) for pid in children]
        assert os.getsid(children[1]) == children[1] != record.pid  # its own session
        assert set(family(record.identity)) == {record.identity, *identities}
        result = stop(record, signal.SIGTERM, grace=5)
        assert result.was_running and sorted(result.others) == sorted(children)
        assert not result.left
        assert not any(is_alive(identity) for identity in [record.identity, *identities])
        assert is_alive(bystander.identity)
        again = stop(record)
        assert not again.was_running and again.others == []
    finally:
        os.killpg(bystander.pid, signal.SIGKILL)


def test_a_process_deaf_to_the_signal_is_killed_after_the_grace(tmp_path):
    record = spawn("deaf", [sys.executable, "-c", "import signal, time; "
                            "signal.signal(signal.SIGINT, signal.SIG_IGN); "
                            "print('ready', flush=True); time.sleep(300)"],
                   tmp_path / "deaf.log", dict(os.environ))
    _wait(lambda: "ready" in Path(record.log).read_text().splitlines())
    began = time.monotonic()
    result = stop(record, signal.SIGINT, grace=0.5)
    assert result.killed and not result.left and time.monotonic() - began < 5
    assert not is_alive(record.identity)


def test_a_reused_pid_is_never_signalled(tmp_path):
    stranger = _sleeper(tmp_path, "stranger")
    try:
        stale = ProcessRecord("server", stranger.pid, stranger.started - 1, [], "")
        result = stop(stale)
        assert not result.was_running and result.others == []
        assert is_alive(stranger.identity)
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)


def test_a_taken_port_is_replaced_by_a_free_one():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chosen, note = choose_port(port, fallback=4200)
        assert chosen != port and str(port) in note
    assert choose_port(port, fallback=4200) == (port, None)
    assert choose_port(None, fallback=port) == (port, None)
    any_port, note = choose_port(0, fallback=4200)
    assert any_port > 0 and note is None


def test_the_emulator_is_started_only_when_some_provider_has_no_key(clean_env, monkeypatch):
    assert emulator_plan(Settings())[0] == "start"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real")
    kind, why = emulator_plan(Settings())
    assert kind == "start" and "anthropic" in why and "openai" not in why
    monkeypatch.setenv("LANEWISE_ANTHROPIC_CREDENTIALS_BLOCK", "prod-anthropic")
    assert emulator_plan(Settings())[0] == "none"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert emulator_plan(Settings(use_emulator=False))[0] == "none"
    assert emulator_plan(Settings(emulator_url="http://127.0.0.1:9")) == \
        ("configured", "http://127.0.0.1:9")


HEALTH_SERVER = textwrap.dedent("""
    import http.server, sys

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    print(server.server_address[1], flush=True)
    server.serve_forever()
""")


@pytest.fixture()
def fake_stack(clean_env, tmp_path):
    """A state file whose `server` is a tiny process answering /api/health."""
    log = tmp_path / "health.log"
    record = spawn("server", [sys.executable, "-u", "-c", HEALTH_SERVER], log,
                   dict(os.environ))
    _wait(lambda: log.read_text().strip().splitlines()[-1:] != [] and
          log.read_text().strip().splitlines()[-1].isdigit())
    port = int(log.read_text().strip().splitlines()[-1])
    record.port, record.url = port, f"http://127.0.0.1:{port}"
    paths = StackPaths(clean_env.resolve())
    state = StackState(home=str(paths.home), api_url=f"{record.url}/api",
                       processes={"server": record})
    save_state(paths, state)
    yield paths, state
    if is_alive(record.identity):
        os.killpg(record.pid, signal.SIGKILL)


def test_the_stack_url_is_known_while_its_server_runs_and_answers(fake_stack):
    paths, state = fake_stack
    assert load_state(paths).processes["server"] == state.processes["server"]
    assert stack_api_url(paths.home) == state.api_url
    record = state.processes["server"]
    os.killpg(record.pid, signal.SIGKILL)
    _wait(lambda: not is_alive(record.identity))
    assert stack_api_url(paths.home) is None
    paths.state_file.unlink()
    assert stack_api_url(paths.home) is None


def test_a_state_recorded_before_a_reboot_names_no_process(fake_stack):
    paths, state = fake_stack
    data = json.loads(paths.state_file.read_text())
    data["boot_id"] = "an-earlier-boot"
    paths.state_file.write_text(json.dumps(data))
    assert load_state(paths).processes == {}  # its pids may name other processes now
    assert stack_api_url(paths.home) is None


CHOOSE_API = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lanewise.ops.prefect_server import early_temporary_server, prefect_api

    home = Path(sys.argv[1])
    with early_temporary_server(home) as early:
        print("EARLY", "none" if early is None else "launched")
        if early is not None:
            early.stop()
            sys.exit(0)
        with prefect_api(home, launched=early, notice=lambda m: print("NOTE", m)) as api:
            print("API", api)
""")


def _choose(home: Path, **env: str) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if k not in KEY_ENV}
    environment["PREFECT_HOME"] = str(home.parent / "prefect-home")  # no profile's API
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", CHOOSE_API, str(home)], env=environment,
                          capture_output=True, text=True, timeout=120, cwd=home.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_prefect_api_is_the_configured_one_then_the_stacks_then_a_temporary_one(
        fake_stack):
    paths, state = fake_stack
    configured = _choose(paths.home, PREFECT_API_URL="http://127.0.0.1:9/api")
    assert configured[configured.index("API") + 1] == "http://127.0.0.1:9/api"
    stacked = _choose(paths.home)
    assert stacked[:2] == ["EARLY", "none"]  # no temporary server while the stack is up
    assert stacked[stacked.index("API") + 1] == state.api_url
    assert "NOTE" in stacked and "up`" in stacked
    os.killpg(state.processes["server"].pid, signal.SIGKILL)
    _wait(lambda: not is_alive(state.processes["server"].identity))
    assert _choose(paths.home)[:2] == ["EARLY", "launched"]  # the stack is down


def test_down_stops_the_recorded_processes_workers_first_and_forgets_them(clean_env,
                                                                          tmp_path):
    paths = StackPaths(clean_env.resolve())
    state = StackState(home=str(paths.home), processes={
        name: _sleeper(tmp_path, name)
        for name in ("server", "emulator", "worker:lanewise")})
    save_state(paths, state)
    results = stack_module.down(Settings(), say=lambda _: None)
    assert [r.name for r in results] == ["worker:lanewise", "server", "emulator"]
    assert all(r.was_running and not r.left for r in results)
    assert not any(is_alive(r.identity) for r in state.processes.values())
    assert not paths.state_file.exists()
    assert stack_module.down(Settings(), say=lambda _: None) == []


def test_status_and_down_say_when_nothing_is_up(clean_env):
    from lanewise.cli import cli
    from lanewise.settings import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        status = runner.invoke(cli, ["status"])
        assert status.exit_code == 1 and "not up" in status.output
        as_json = runner.invoke(cli, ["status", "--json"])
        assert json.loads(as_json.output)["up"] is False
        down = runner.invoke(cli, ["down"])
        assert down.exit_code == 0 and "nothing to stop" in down.output
    finally:
        get_settings.cache_clear()


def test_up_stops_what_it_started_when_a_later_step_fails(clean_env, monkeypatch):
    def server_never_answers(*args, **kwargs):
        raise ConfigurationError("the Prefect server did not answer (test)")

    monkeypatch.setattr(stack_module.stack_setup, "wait_healthy", server_never_answers)
    monkeypatch.setattr(stack_module.stack_setup, "preload", lambda: None)
    started: list[ProcessRecord] = []
    real_spawn = stack_module.spawn

    def recording_spawn(*args, **kwargs):
        started.append(real_spawn(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(stack_module, "spawn", recording_spawn)
    with pytest.raises(ConfigurationError, match="did not answer"):
        stack_module.up(Settings(), port=0, emulator_port=0, say=lambda _: None)
    assert [record.name for record in started] == ["server", "emulator"]
    assert not any(is_alive(record.identity) for record in started)
    assert load_state(StackPaths(clean_env.resolve())).processes == {}


def _stack_emulator(home: Path) -> stack_module._Up:
    paths = StackPaths(home.resolve())
    return stack_module._Up(Settings(), paths, StackState(home=str(paths.home)),
                            say=lambda _: None)


def test_the_stack_replaces_the_on_demand_emulator_of_its_home_on_its_port(clean_env):
    from lanewise.emulator.background import healthy_url, shared_emulator_url
    from lanewise.emulator.folder import read_server_info

    folder = clean_env.resolve() / "emulator"
    on_demand_url = shared_emulator_url(folder)  # as a `lanewise run` would start it
    on_demand = read_server_info(folder)["pid"]
    run = _stack_emulator(clean_env)
    try:
        assert run.emulator(None) is True
        run.wait_emulator()
        record = run.state.processes["emulator"]
        assert record.url == on_demand_url == healthy_url(folder)  # same port, now ours
        assert start_time(on_demand) is None  # the on-demand one was stopped
        assert "--idle-seconds" in record.command  # and ours never idles out
    finally:
        for record in run.state.processes.values():
            stop(record)


def test_an_emulator_run_by_hand_on_the_home_is_used_not_owned(clean_env, tmp_path):
    from lanewise.emulator.background import healthy_url

    folder = clean_env.resolve() / "emulator"
    by_hand = spawn("by-hand", [sys.executable, "-m", "lanewise", "emulator", "--port", "0",
                                "--state-dir", str(folder)], tmp_path / "by-hand.log",
                    dict(os.environ))
    try:
        _wait(lambda: healthy_url(folder) is not None, timeout=30)
        run = _stack_emulator(clean_env)
        assert run.emulator(None) is False
        assert run.state.emulator_url == healthy_url(folder)
        assert "emulator" not in run.state.processes  # `down` will leave it alone
        assert "not started by up" in run.state.emulator_note
    finally:
        stop(by_hand)
