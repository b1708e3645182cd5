"""`lanewise whatif`: what moving one task to another lane or model would change.

* `proposal.py`: the move (current and proposed lane, provider and model) and where
  it conflicts with the catalog;
* `traffic.py`: the ledger reads it stands on (billed usage, measured waits, the
  requests that can be sent again);
* `estimate.py`: the estimate from recorded traffic, no call made;
* `sample.py` and `arms.py`: the sample, N recent requests run through both lanes
  against the emulator in a scratch home; `agreement.py` compares the answers;
* `report.py`: the rich tables and the JSON document.
"""

from __future__ import annotations
