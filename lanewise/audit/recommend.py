"""Which lane a task should run in, and the one plain reason, by three rules in order:

1. A person waits for the answer: **live**, whatever it costs ("a person waits: keep
   live").
2. Nobody waits, and the task tolerates the batch window (`max_delay_hours` of at
   least `BATCH_WINDOW_HOURS`, the 24 h within which both providers' batch APIs
   answer): **batch**, at the batch price; the reason gives the volume and what batch
   saves per month against running the same traffic live ("nobody waits and 2,000 a
   day: batch saves $41/month").
3. Nobody waits, but the answer is due sooner than the batch window: **live** ("due
   within 2 h, the batch window is 24 h: keep live").

The reason says "keep" when the task runs in the recommended lane now (by its measured
traffic, or its catalog lane when it has none) and "move to" when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from lanewise.audit.units import usd_text, volume_words
from lanewise.catalog import TaskSpec

#: The batch APIs' completion window (OpenAI's `24h`; Anthropic answers within 24 h).
BATCH_WINDOW_HOURS = 24.0


@dataclass(frozen=True)
class Recommendation:
    """The recommended lane and why, in one sentence."""

    lane: str  # live | batch
    reason: str


def recommend(spec: TaskSpec, *, runs_in: str | None, per_day: float,
              batch_saves_per_month: Decimal | None) -> Recommendation:
    """The lane for `spec` by the rules above. `runs_in`: the lane most of its measured
    traffic ran in (None: no traffic); `batch_saves_per_month`: its traffic all-live
    minus all-batch, per month (None when it cannot be priced)."""
    now = runs_in or (spec.lane.value if spec.lane.value in ("live", "batch") else None)
    if spec.person_waits:
        return Recommendation("live", f"a person waits: {_verb(now, 'live')} live")
    if spec.max_delay_hours >= BATCH_WINDOW_HOURS:
        if runs_in is None:
            return Recommendation("batch", f"nobody waits and up to "
                                  f"{spec.max_delay_hours:g} h is fine: {_verb(now, 'batch')} "
                                  "batch, at the batch price")
        saving = (f"batch saves {usd_text(batch_saves_per_month)}/month"
                  if batch_saves_per_month is not None and batch_saves_per_month > 0
                  else f"{_verb(now, 'batch')} batch")
        return Recommendation("batch", f"nobody waits and {volume_words(per_day)}: {saving}")
    due = ("due at once" if spec.max_delay_hours == 0
           else f"due within {spec.max_delay_hours:g} h")
    return Recommendation("live", f"{due}, the batch window is {BATCH_WINDOW_HOURS:g} h: "
                          f"{_verb(now, 'live')} live")


def _verb(now: str | None, lane: str) -> str:
    if now is None:
        return "run"
    return "keep" if now == lane else "move to"
