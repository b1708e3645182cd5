"""The estimate: what a task's recorded traffic cost, what it would cost on the proposed
lane and model, and how long its answers take now and would take. No call is made.

* Cost: every billed request of the task in the window (batch items and live calls,
  both lanes), priced as it ran (its recorded cost) and as it would run
  (`PriceTable.cost_usd(model, usage, lane)` on its recorded usage). Per month is per
  day x 30, per day over the window: the last `days` days, or fewer when the ledger's
  history is shorter (its first run or live call; at least one day).
* Wait: nearest-rank p50 and p95. Live: the latency of the task's live calls; batch:
  from enqueue (a deferred request) or the run's planning to the result. The proposed
  wait is measured on the ledger's traffic of that lane and model (any task); when
  there is none it is said plainly.
* Another provider's model prices the recorded token counts (its tokenizer would count
  differently), with cache reads and writes as plain input; a usage the proposed
  model's table entry cannot price with its cache split (no cache-write rate) is also
  priced with its cache tokens as input, and counted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

from lanewise.ledger import Ledger
from lanewise.pricing import Lane, PriceTable, to_picodollars
from lanewise.usage import UnpricedUsageError, Usage
from lanewise.whatif.proposal import BATCH_WINDOW_HOURS, Proposal
from lanewise.whatif.traffic import batch_waits, billed_usage, first_record, live_latencies

DAY_SECONDS = 86_400
MONTH_DAYS = 30


@dataclass(frozen=True)
class Wait:
    """A measured wait in seconds (p50, p95 over `count` requests), or why none was."""

    count: int
    p50: float | None
    p95: float | None
    source: str
    note: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The wait as JSON."""
        return {"requests": self.count, "p50_seconds": self.p50, "p95_seconds": self.p95,
                "source": self.source, "note": self.note}


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (`share` in (0, 1]) of non-empty `values`."""
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)), 1) - 1]


def measured(values: list[float], source: str, unmeasured: str) -> Wait:
    """A Wait over `values`, or one that says `unmeasured` when there are none."""
    if not values:
        return Wait(0, None, None, source, unmeasured)
    return Wait(len(values), percentile(values, 0.5), percentile(values, 0.95), source)


def unmeasured_text(lane: str) -> str:
    """What is said of a lane's wait with nothing measured."""
    return (f"within the {BATCH_WINDOW_HOURS} h batch window" if lane == "batch"
            else "not measured")


@dataclass(frozen=True)
class CostLine:
    """The task's billed requests on one lane, provider and model: what they cost and
    what they would cost on the proposed route (picodollars)."""

    lane: str
    provider: str
    model: str
    requests: int
    current_picodollars: int
    proposed_picodollars: int


@dataclass
class Estimate:
    """The estimate of a proposal over the task's recorded traffic."""

    proposal: Proposal
    since: float
    until: float
    days: float  # the days the figures are per day over
    lines: list[CostLine]
    waits_now: dict[str, Wait]
    wait_proposed: Wait
    cache_as_input: int = 0  # requests priced with their cache tokens as plain input
    notes: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Billed requests in the window."""
        return sum(line.requests for line in self.lines)

    @property
    def current_picodollars(self) -> int:
        """What the window's requests cost, as they ran."""
        return sum(line.current_picodollars for line in self.lines)

    @property
    def proposed_picodollars(self) -> int:
        """What they would cost on the proposed route."""
        return sum(line.proposed_picodollars for line in self.lines)

    def per_month(self, picodollars: int) -> int:
        """An amount of the window as picodollars per month (per day x 30)."""
        exact = Decimal(picodollars) * MONTH_DAYS / Decimal(repr(self.days))
        return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))

    def requests_per_day(self) -> float:
        """Billed requests per day over the window."""
        return self.requests / self.days


def folded(usage: Usage) -> Usage:
    """The usage with its cache reads and writes counted as plain input."""
    return Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.output_tokens,
                 reasoning_tokens=usage.reasoning_tokens)


def proposed_cost(prices: PriceTable, proposal: Proposal, usage: Usage) -> tuple[int, bool]:
    """Picodollars of one request's usage on the proposed route, and whether its cache
    tokens were priced as plain input."""
    route = proposal.proposed
    lane = Lane(route.lane)
    has_cache = usage.prompt_tokens != usage.input_tokens
    if proposal.other_provider and has_cache:
        return to_picodollars(prices.cost_usd(route.model, folded(usage), lane)), True
    try:
        return to_picodollars(prices.cost_usd(route.model, usage, lane)), False
    except UnpricedUsageError:
        if not has_cache:
            raise
        return to_picodollars(prices.cost_usd(route.model, folded(usage), lane)), True


def window_days(ledger: Ledger, since: float, until: float) -> tuple[float, str | None]:
    """The days the window's figures are per day over, and a note when the ledger's
    history is shorter than the window."""
    first = first_record(ledger)
    if first is None or first <= since:
        return (until - since) / DAY_SECONDS, None
    days = max((until - first) / DAY_SECONDS, 1.0)
    day = datetime.fromtimestamp(first, UTC).strftime("%Y-%m-%d %H:%M")
    return days, (f"the ledger's history starts {day} UTC: per-day figures are over "
                  f"{days:.1f} days, not the {(until - since) / DAY_SECONDS:g} asked")


def estimate(ledger: Ledger, proposal: Proposal, prices: PriceTable, *, days: int = 30,
             now: float | None = None) -> Estimate:
    """The estimate of `proposal` over the last `days` days of the task's traffic."""
    until = time.time() if now is None else now
    since = until - days * DAY_SECONDS
    task = proposal.task.name
    lines: dict[tuple[str, str, str], CostLine] = {}
    as_input = 0
    for group in billed_usage(ledger, task, since, until):
        each, was_folded = proposed_cost(prices, proposal, group.usage)
        as_input += group.requests if was_folded else 0
        key = (group.lane, group.provider, group.model)
        line = lines.get(key) or CostLine(*key, 0, 0, 0)
        lines[key] = CostLine(*key, line.requests + group.requests,
                              line.current_picodollars + group.cost_picodollars,
                              line.proposed_picodollars + each * group.requests)
    span, note = window_days(ledger, since, until)
    lanes = sorted({proposal.current.lane, *(key[0] for key in lines)})
    waits_now = {
        lane: measured(
            live_latencies(ledger, since, until, task=task) if lane == "live"
            else batch_waits(ledger, since, until, task=task),
            f"the task's {'live calls' if lane == 'live' else 'batch requests'}",
            unmeasured_text(lane))
        for lane in lanes}
    route = proposal.proposed
    wait_proposed = measured(
        live_latencies(ledger, since, until, model=route.model) if route.lane == "live"
        else batch_waits(ledger, since, until, model=route.model),
        f"{'live calls answered by' if route.lane == 'live' else 'batch requests of'} "
        f"{route.model}, every task", unmeasured_text(route.lane))
    notes = [note] if note else []
    if as_input and not proposal.other_provider:
        notes.append(f"{as_input:,} request(s) wrote to the prompt cache in a way "
                     f"{route.model}'s price entry cannot price on the {route.lane} lane: "
                     "their cache tokens are priced as plain input")
    if route.lane == "batch" and wait_proposed.count:
        notes.append("the batch wait is measured from planning (or enqueue) to result; a "
                     "request also waits for its run's schedule (e.g. the nightly run)")
    return Estimate(proposal=proposal, since=since, until=until, days=span,
                    lines=sorted(lines.values(), key=lambda c: (c.lane, c.provider, c.model)),
                    waits_now=waits_now, wait_proposed=wait_proposed,
                    cache_as_input=as_input, notes=notes)
