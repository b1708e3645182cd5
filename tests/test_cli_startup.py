"""Commands start cheap: `lanewise --help` and `lanewise runs` import neither the
provider SDKs, nor pandas, nor Prefect (and so not Prefect's server), nor the
emulator's web stack.

Each command runs in a fresh interpreter under `-X importtime`, whose report names
every module the command imported, nested under the module that imported it; a
failure names the chain that pulled the module in.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

HEAVY = ("openai", "anthropic", "pandas", "prefect", "fastapi", "uvicorn")
_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|( *)(\S+)$")


def _imports(args: list[str], home) -> tuple[subprocess.CompletedProcess, list[tuple[int, str]]]:
    """Run `python -m lanewise ARGS` under -X importtime; its result and every module
    it imported as (depth, name), in the report's order (a module after its imports)."""
    env = {**os.environ, "LANEWISE_HOME": str(home), "COLUMNS": "200"}
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "lanewise", *args],
                          env=env, capture_output=True, text=True, timeout=120)
    modules = []
    for line in done.stderr.splitlines():
        match = _LINE.match(line)
        if match:
            modules.append((len(match.group(1)) // 2, match.group(2)))
    return done, modules


def _chain(modules: list[tuple[int, str]], index: int) -> str:
    """`a <- b <- c`: the module at `index` and the modules that imported it."""
    depth, name = modules[index]
    names = [name]
    for outer_depth, outer in modules[index + 1:]:
        if outer_depth < depth:
            names.append(outer)
            depth = outer_depth
    return " <- ".join(names)


@pytest.mark.parametrize("args", [["--help"], ["runs"]], ids=["help", "runs"])
def test_cli_startup_imports_no_sdk_pandas_prefect_or_web_stack(args, tmp_path):
    from lanewise.ledger import Ledger

    # A ledger to read (read commands never create one), empty: no run to summarize.
    Ledger(f"sqlite:///{tmp_path / 'home' / 'ledger.sqlite3'}").engine.dispose()
    done, modules = _imports(args, tmp_path / "home")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert modules, "no -X importtime report"
    assert "lanewise" in done.stdout or "runs" in done.stdout.lower()
    heavy = [i for i, (_, name) in enumerate(modules) if name.split(".")[0] in HEAVY]
    # A package's own entry names the chain that pulled it in; its submodules add noise.
    roots = [i for i in heavy if "." not in modules[i][1]] or heavy[:1]
    assert not heavy, f"`lanewise {' '.join(args)}` imported:\n" + "\n".join(
        _chain(modules, i) for i in roots)

def test_cli_startup_emulator_help_still_lists_its_settings(tmp_path):
    """The emulator's options are built on first use; its help still has them all."""
    done, modules = _imports(["emulator", "--help"], tmp_path / "home")
    assert done.returncode == 0, done.stderr[-3000:]
    for option in ("--host", "--batch-seconds", "--seed", "--rate-limit-rate"):
        assert option in done.stdout
    assert not [name for _, name in modules if name.split(".")[0] in ("fastapi", "uvicorn")]


@pytest.mark.parametrize(("args", "code", "said"), [
    (["--help"], 0, "Usage"),
    (["no-such-command"], 2, "No such command"),
    (["run", "no-such-task", "--input", "x.parquet"], 1, "error: no task 'no-such-task'"),
], ids=["help", "usage", "lanewise-error"])
def test_the_command_keeps_its_exit_code_without_the_interpreters_teardown(
        args, code, said, tmp_path):
    """`python -m lanewise` (the script's `cli.entry`) ends with os._exit after the exit
    handlers: the exit code and everything printed survive it."""
    env = {**os.environ, "LANEWISE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "lanewise", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stdout + done.stderr[-3000:]
    assert said in done.stdout + done.stderr
