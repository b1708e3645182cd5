"""The audit's flags: findings a reviewer should act on, each with the task(s), one plain
sentence and, where it applies, the money.

* `rush-price`: nobody waits and the task tolerates the batch window, but at least
  `MISROUTED_SHARE` of its traffic ran live: what those live calls overpaid per month
  against the same usage at batch rates.
* `waited-in-batch`: a person waits, but at least `MISROUTED_SHARE` of its traffic ran
  in batch (its measured batch wait is named, with what it leaves out: the wait for the
  run itself): what moving that traffic live would add per month.
* `duplicate`: the same request (content hash) paid by two tasks or two lanes: how many
  requests, who paid, and the extra answers (each request's paid answers minus its
  cheapest one) in the window.
* `spike`: a UTC day whose spend is over `SPIKE_FACTOR` times the task's median daily
  spend (over its days with spend) and at least `SPIKE_FLOOR_USD` above it: the day,
  its spend and the usual.
* `stale-catalog`: measured volume below `STALE_LOW` or above `STALE_HIGH` times the
  declared one, or traffic on a task declared at 0.
* `not-in-catalog`: traffic of a task the catalog no longer has: what it costs per month.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from lanewise.audit.measure import Duplicate, Traffic
from lanewise.audit.recommend import BATCH_WINDOW_HOURS
from lanewise.audit.units import count, duration, usd_number, usd_text
from lanewise.catalog import VOLUME_PERIOD_DAYS, TaskSpec
from lanewise.pricing import from_picodollars

#: Share of a task's requests in the wrong lane that raises rush-price / waited-in-batch
#: (a few stray calls, a defer fallback now and then, are not a routing decision).
MISROUTED_SHARE = 0.10
SPIKE_FACTOR = 3
SPIKE_FLOOR_USD = Decimal("0.05")
STALE_LOW = 0.5
STALE_HIGH = 2.0
DAYS_PER_MONTH = 30

#: The order flags are listed in.
KINDS = ("rush-price", "waited-in-batch", "duplicate", "spike", "stale-catalog",
         "not-in-catalog")


@dataclass(frozen=True)
class Flag:
    """One finding: its kind, the task(s), a plain sentence, and money where it applies
    (`usd`, described by `usd_means`)."""

    kind: str
    tasks: tuple[str, ...]
    sentence: str
    usd: Decimal | None = None
    usd_means: str | None = None

    def record(self) -> dict[str, Any]:
        """The flag as JSON carries it (money as a number of USD)."""
        return {"kind": self.kind, "tasks": list(self.tasks), "sentence": self.sentence,
                "usd": usd_number(self.usd), "usd_means": self.usd_means}


def per_month(picodollars: int, days: int) -> Decimal:
    """A window's amount as USD per 30-day month."""
    return from_picodollars(picodollars) / days * DAYS_PER_MONTH


def task_flags(spec: TaskSpec | None, name: str, traffic: Traffic | None,
               days: int) -> list[Flag]:
    """The flags one task raises on its own (all but `duplicate`)."""
    t = traffic or Traffic(name)
    if spec is None:
        return [] if not t.requests else [Flag(
            "not-in-catalog", (name,),
            f"{name} made {t.requests:,} requests in the window but is not in the catalog: "
            f"add it back, or find what still calls it ({usd_text(per_month(t.paid, days))}"
            "/month)", per_month(t.paid, days), "paid per month")]
    return [flag for flag in (_rush(spec, t, days), _waited(spec, t, days), *_spikes(t),
                              _stale(spec, t, days)) if flag is not None]


def _rush(spec: TaskSpec, t: Traffic, days: int) -> Flag | None:
    if spec.person_waits or spec.max_delay_hours < BATCH_WINDOW_HOURS or not t.requests \
            or t.live_requests / t.requests < MISROUTED_SHARE:
        return None
    share = f"{t.live_requests / t.requests:.0%} of its traffic " \
            f"({count(t.live_requests / days)} a day)"
    head = (f"nobody waits for {spec.name} (up to {spec.max_delay_hours:g} h is fine) "
            f"but {share} runs live")
    if t.live_as_batch is None:
        return Flag("rush-price", (spec.name,), f"{head}, paying rush prices")
    over = per_month(t.live_paid - t.live_as_batch, days)
    return Flag("rush-price", (spec.name,), f"{head}: it overpays {usd_text(over)}/month "
                "against batch", over, "overpaid per month")


def _waited(spec: TaskSpec, t: Traffic, days: int) -> Flag | None:
    if not spec.person_waits or not t.requests \
            or t.batch_requests / t.requests < MISROUTED_SHARE:
        return None
    # The measured wait starts at the run (or the enqueue): say what comes before it.
    waited = (f" (p50 {duration(t.batch_wait[0])} from its run's start or enqueue, "
              "after any wait for the run itself: a nightly run answers a morning "
              "request the next night)") if t.batch_wait else ""
    extra = per_month(t.batch_as_live - t.batch_paid, days)
    return Flag("waited-in-batch", (spec.name,),
                f"a person waits for {spec.name}, but {t.batch_requests / t.requests:.0%} of "
                f"its traffic ({count(t.batch_requests / days)} a day) ran in batch{waited}: "
                f"move it live (+{usd_text(extra)}/month)", extra, "added per month live")


def _spikes(t: Traffic) -> list[Flag]:
    spends = [v for v in t.daily_spend.values() if v > 0]
    if len(spends) < 2:
        return []
    usual = from_picodollars(int(statistics.median(spends)))
    found = []
    for day, paid in sorted(t.daily_spend.items()):
        spend = from_picodollars(paid)
        if spend > SPIKE_FACTOR * usual and spend - usual >= SPIKE_FLOOR_USD:
            found.append(Flag("spike", (t.task,), f"{t.task} spent {usd_text(spend)} on "
                              f"{_day(day)}, {spend / usual:.0f}x its usual "
                              f"{usd_text(usual)} a day", spend, "spent that day"))
    return found


def _day(day: date) -> str:
    return f"{day:%a} {day.isoformat()}"


def _stale(spec: TaskSpec, t: Traffic, days: int) -> Flag | None:
    declared = spec.expected_per_day()
    measured = t.requests / days
    if declared == 0 and measured == 0:
        return None
    if declared and STALE_LOW * declared <= measured <= STALE_HIGH * declared:
        return None
    period = spec.expected_volume_period
    scale = VOLUME_PERIOD_DAYS[period]
    return Flag("stale-catalog", (spec.name,),
                f"{spec.name}: declared {count(spec.expected_volume)}/{period}, measured "
                f"{count(measured * scale)}/{period}: the catalog is out of date")


def duplicate_flag(duplicate: Duplicate, days: int) -> Flag:
    """The `duplicate` flag of one group of requests paid by the same tasks and lanes."""
    who = " and ".join(f"{task} ({lane})" for task, lane in duplicate.answerers)
    extra = from_picodollars(duplicate.extra_picodollars)
    return Flag("duplicate", duplicate.tasks,
                f"{duplicate.requests:,} requests were paid {duplicate.answers:,} times, by "
                f"{who}: the extra answers cost {usd_text(extra)} in the window "
                f"({usd_text(per_month(duplicate.extra_picodollars, days))}/month)",
                extra, "extra answers paid in the window")


def ordered(flags: list[Flag]) -> list[Flag]:
    """Flags by kind (as `KINDS` lists them), then task."""
    return sorted(flags, key=lambda f: (KINDS.index(f.kind), f.tasks))
