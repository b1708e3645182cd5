"""`python -m lanewise.emulator`: the shared background emulator of a state folder."""

import sys

from lanewise.emulator.background import main

sys.exit(main())
