"""The `lanewise` command line; turns lanewise errors into one-line messages."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click
from pydantic import BaseModel
from rich.console import Console

from lanewise.errors import LanewiseError

console = Console()
error_console = Console(stderr=True)


def _model_options(model: type[BaseModel], group: str) -> Callable[[Callable], Callable]:
    """Click options for every field of a settings model, described by the field."""

    def decorate(func: Callable) -> Callable:
        for name, field in reversed(list(model.model_fields.items())):
            if name == "seed":
                kind: Any = int
            else:
                kind = float
            func = click.option(
                f"--{name.replace('_', '-')}", f"{group}__{name}", type=kind, default=None,
                help=f"{field.description} [default: {field.default}]",
            )(func)
        return func

    return decorate


@click.group()
@click.version_option(package_name="lanewise")
def cli() -> None:
    """lanewise: give every AI task a lane (live or batch), run as Prefect flows."""


def _emulator_options(func: Callable) -> Callable:
    from lanewise.emulator.config import Faults, Timing

    return _model_options(Timing, "timing")(_model_options(Faults, "faults")(func))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0 = any free).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Where files and the billing record live [default: LANEWISE_HOME/emulator].")
@click.option("--api-key", default=None, help="Accept only this key (default: any key).")
@_emulator_options
def emulator(host: str, port: int, state_dir: Path | None, api_key: str | None,
             **overrides: Any) -> None:
    """Run the provider emulator (OpenAI and Anthropic APIs) in the foreground."""
    from lanewise.emulator.config import EmulatorConfig
    from lanewise.emulator.server import serve_forever
    from lanewise.settings import get_settings

    sections: dict[str, dict[str, Any]] = {"timing": {}, "faults": {}}
    for key, value in overrides.items():
        if value is not None:
            section, name = key.split("__", 1)
            sections[section][name] = value
    config = EmulatorConfig.model_validate({**sections, "api_key": api_key})
    state_dir = state_dir or get_settings().home / "emulator"
    console.print(f"[bold]lanewise emulator[/] on http://{host}:{port} "
                  f"(OpenAI base_url http://{host}:{port}/v1, Anthropic base_url "
                  f"http://{host}:{port}); control at /_emulator; state in {state_dir}")
    serve_forever(config, host, port, state_dir)


@cli.command()
def demo() -> None:
    """Run the main job end to end on the embedded defaults (emulator, no API key)."""
    from lanewise.demo import run_demo

    run_demo(console)


def main() -> None:
    """Entry point of the `lanewise` script: lanewise errors become one-line messages."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        error_console.print("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except LanewiseError as exc:
        error_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
