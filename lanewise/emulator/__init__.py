"""A local server that speaks the OpenAI and Anthropic live and batch APIs.

Start one in-process with `running_emulator()`; see docs/emulator.md.
"""

from lanewise.emulator.config import EmulatorConfig, Faults, Limits, Timing
from lanewise.emulator.server import EMULATOR_API_KEY, RunningEmulator, running_emulator

__all__ = [
    "EMULATOR_API_KEY", "EmulatorConfig", "Faults", "Limits", "RunningEmulator", "Timing",
    "running_emulator",
]
