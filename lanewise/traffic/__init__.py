"""Sample traffic: a month of the support team's AI work (`month.py`), replayed through
both lanes against the emulator with time compressed (`replay.py`, `retime.py`), so the
routing audit has something real to show on a fresh clone."""
