"""A local server that speaks the OpenAI and Anthropic live and batch APIs.

Start one in-process with `running_emulator()`; see docs/emulator.md.

The names below are imported on first use (PEP 562), so importing a submodule such as
`lanewise.emulator.config` (the `lanewise` command does, to build its options) does not
import the server and its web stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lanewise.emulator.config import (
        EMULATOR_API_KEY,
        BudgetRule,
        EmulatorConfig,
        Faults,
        Limits,
        RateLimits,
        Timing,
    )
    from lanewise.emulator.server import RunningEmulator, running_emulator

_HOMES = {
    "EmulatorConfig": "lanewise.emulator.config", "Faults": "lanewise.emulator.config",
    "Limits": "lanewise.emulator.config", "Timing": "lanewise.emulator.config",
    "RateLimits": "lanewise.emulator.config", "BudgetRule": "lanewise.emulator.config",
    "EMULATOR_API_KEY": "lanewise.emulator.config",
    "RunningEmulator": "lanewise.emulator.server",
    "running_emulator": "lanewise.emulator.server",
}

__all__ = [
    "EMULATOR_API_KEY", "BudgetRule", "EmulatorConfig", "Faults", "Limits", "RateLimits",
    "RunningEmulator", "Timing", "running_emulator",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
