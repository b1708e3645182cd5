"""`lanewise up`, `down` and `status`: the local stack (lanewise/ops/stack.py).

Kept apart from cli.py, which registers them; like every command they import what they
need when they run, so `lanewise --help` stays cheap.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

if TYPE_CHECKING:
    from lanewise.ops.stack_state import StackState

console = Console()


def _say(message: str) -> None:
    console.print(f"[dim]{message}[/]")


def _without_password(url: str) -> str:
    """A database URL fit to print: its password, if any, masked."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _print_state(state: StackState, title: str) -> None:
    """The stack's addresses and processes, as `up` and `status` show them."""
    from rich import box
    from rich.table import Table

    from lanewise.ops.processes import is_alive
    from lanewise.ops.stack_state import StackPaths
    from lanewise.settings import get_settings

    console.print(f"[bold]{title}[/] (LANEWISE_HOME={state.home})")
    if state.ui_url:
        console.print(f"Prefect UI:  [bold cyan]{state.ui_url}[/]   "
                      f"(API {state.api_url})")
    table = Table(title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("process", "pid", "state", "address", "log"):
        table.add_column(column, no_wrap=True)
    for name, record in state.processes.items():
        alive = is_alive(record.identity)
        table.add_row(name, str(record.pid), "[green]alive[/]" if alive else "[red]dead[/]",
                      (record.url or "").removeprefix("http://") or
                      (f"port {record.port}" if record.port else ""),
                      Path(record.log).name)
    console.print(table)
    console.print(f"Emulator:    {state.emulator_url or 'none'} ({state.emulator_note})")
    if state.pools:
        console.print(f"Work pools:  {', '.join(state.pools)}")
    if state.deployments:
        console.print(f"Deployments: {', '.join(state.deployments)}")
    if state.block_types:
        console.print(f"Block types: {', '.join(state.block_types)}")
    settings = get_settings()
    console.print(f"Ledger:      {_without_password(settings.resolved_database_url)}")
    console.print(f"Storage:     {settings.resolved_storage_root}")
    paths = StackPaths(Path(state.home))
    console.print(f"Logs:        {paths.logs}")
    console.print(f"State:       {paths.state_file}")


@click.command()
@click.option("--port", type=int, default=None,
              help="Port of the Prefect server and UI [default: LANEWISE_STACK_PREFECT_PORT, "
              "4200, or the port of a recorded server being restarted; a free one if "
              "taken; 0 = any free].")
@click.option("--emulator-port", type=int, default=None,
              help="Port of the emulator [default: LANEWISE_STACK_EMULATOR_PORT, 8765; a "
              "free one if taken; 0 = any free].")
@click.option("--deploy", "redeploy", is_flag=True,
              help="If already up: register the block types and deploy prefect.yaml again.")
def up(port: int | None, emulator_port: int | None, redeploy: bool) -> None:
    """Bring the local stack up: Prefect server and UI, emulator, work pool and worker,
    block types and every deployment of prefect.yaml; then return.

    What it starts is recorded under LANEWISE_HOME/stack (state file and logs);
    `lanewise down` stops exactly that.
    """
    from lanewise.ops.stack import up as stack_up
    from lanewise.settings import get_settings

    state = stack_up(get_settings(), port=port, emulator_port=emulator_port,
                     redeploy=redeploy, say=_say)
    if state.already_up:
        _print_state(state, "The stack is already up")
        console.print("Nothing started. `lanewise up --deploy` deploys prefect.yaml again; "
                      "`lanewise down` stops it.")
        return
    _print_state(state, f"The stack is up ({state.up_seconds:.1f} s)")
    console.print("`lanewise run` now uses this Prefect server. Stop it all with "
                  "`lanewise down`.")


@click.command()
def down() -> None:
    """Stop what `lanewise up` started (by process id, with the workers' flow runs)."""
    from lanewise.ops.stack import down as stack_down
    from lanewise.ops.stack_state import StackPaths
    from lanewise.settings import get_settings

    settings = get_settings()
    results = stack_down(settings, say=_say)
    if not results:
        console.print(f"The stack of {StackPaths(settings.home.resolve()).home} is not up: "
                      "nothing to stop.")
        return
    for result in results:
        if not result.was_running and not result.others:
            console.print(f"{result.name} (pid {result.pid}) was not running")
            continue
        more = (f", with {len(result.others)} more: {', '.join(map(str, result.others))}"
                if result.others else "")
        how = " (killed: it did not stop when asked)" if result.killed else ""
        console.print(f"stopped {result.name} (pid {result.pid}{more}){how}")
    console.print("The stack is down.")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The state as JSON.")
def status(as_json: bool) -> None:
    """What `lanewise up` runs for this LANEWISE_HOME, and the UI's address; exits 1
    when the stack is not (all) up."""
    from lanewise.ops.stack_state import StackPaths, load_state, server_healthy
    from lanewise.settings import get_settings

    paths = StackPaths(get_settings().home.resolve())
    state = load_state(paths)
    if state is None:
        if as_json:
            print(json.dumps({"up": False, "home": str(paths.home), "processes": {}}))
        else:
            console.print(f"The stack of {paths.home} is not up (no {paths.state_file}); "
                          "start it with `lanewise up`.")
        sys.exit(1)
    alive = state.alive()
    is_up = bool(alive) and all(alive.values()) and bool(state.api_url) and \
        server_healthy(state.api_url)
    if as_json:
        print(json.dumps({"up": is_up, **state.to_json()}, indent=2))
    else:
        _print_state(state, "The stack is up" if is_up else
                     "[red]The stack is not (all) up[/]: `lanewise up` starts what is missing")
    if not is_up:
        sys.exit(1)
