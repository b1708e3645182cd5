"""The estimate: what a task's recorded traffic cost, what it would cost on the proposed
lane and model, and how long its answers take now and would take. No call is made.

* The window is the audit's (`lanewise.audit.window_for`): the `days` complete UTC days
  ending yesterday, so `whatif --days D` and `audit --days D` read the same requests.
* Requests are counted as the audit counts them (`lanewise.audit.measure.task_traffic`:
  accepted batch items of every outcome, live calls not deferred); the billed ones are
  priced.
* Cost: every billed request of the task in the window (batch items and live calls,
  both lanes), priced as it ran (its recorded cost) and as it would run
  (`PriceTable.cost_usd(model, usage, lane)` on its recorded usage). Per month is per
  day x 30, rounded to the micro-dollar, as the audit makes it; per day over the
  window's days, or over fewer when the ledger's history starts after the window's
  first day (its UTC days from its first run or live call; at least one).
* Wait: the audit's (`lanewise.audit.waits`), p50 and p95 interpolated between ranks.
  Live: the latency of the task's live calls; batch: from enqueue (a deferred request)
  or the run's planning to its batch's end. The proposed wait is measured on the
  ledger's traffic of that lane and model (any task); when there is none it is said
  plainly.
* Another provider's model prices the recorded token counts (its tokenizer would count
  differently), with cache reads and writes as plain input; a usage the proposed
  model's table entry cannot price with its cache split (no cache-write rate) is also
  priced with its cache tokens as input, and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from lanewise.audit import rows
from lanewise.audit.flags import per_month
from lanewise.audit.measure import Traffic, Window, task_traffic, window_for
from lanewise.audit.units import usd_round
from lanewise.audit.waits import Percentiles
from lanewise.ledger import Ledger
from lanewise.pricing import Lane, PriceTable, to_picodollars
from lanewise.usage import UnpricedUsageError, Usage
from lanewise.whatif.proposal import BATCH_WINDOW_HOURS, Proposal
from lanewise.whatif.traffic import billed_usage, first_record, measured_wait


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


def measured(found: Percentiles | None, source: str, unmeasured: str) -> Wait:
    """A Wait of `found` (to the millisecond, as the audit rounds waits), or one that
    says `unmeasured` when nothing was measured."""
    if found is None or not found.count:
        return Wait(0, None, None, source, unmeasured)
    return Wait(found.count, round(found.p50, 3), round(found.p95, 3), source)


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
    window: Window
    today: date
    days: int  # the days the figures are per day over
    #: The task's requests and cost in the window, as the audit measures them.
    traffic: Traffic
    lines: list[CostLine]
    waits_now: dict[str, Wait]
    wait_proposed: Wait
    cache_as_input: int = 0  # requests priced with their cache tokens as plain input
    notes: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Requests in the window, as the audit counts them (every outcome)."""
        return self.traffic.requests

    @property
    def billed_requests(self) -> int:
        """Billed requests in the window: the ones priced."""
        return sum(line.requests for line in self.lines)

    @property
    def current_picodollars(self) -> int:
        """What the window's requests cost, as they ran."""
        return sum(line.current_picodollars for line in self.lines)

    @property
    def proposed_picodollars(self) -> int:
        """What they would cost on the proposed route."""
        return sum(line.proposed_picodollars for line in self.lines)

    def per_month(self, picodollars: int) -> Decimal:
        """An amount of the window as USD per month (per day x 30), rounded as the
        audit rounds its monthly figures."""
        return usd_round(per_month(picodollars, self.days))

    def requests_per_day(self) -> float:
        """Requests per day over the window (the audit's "per day")."""
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


def window_days(ledger: Ledger, window: Window) -> tuple[int, str | None]:
    """The days the window's figures are per day over, and a note when the ledger's
    history starts after the window's first day (then over its UTC days since)."""
    first = first_record(ledger)
    if first is None:
        return window.days, None
    day = datetime.fromtimestamp(first, UTC).date()
    if day <= window.first:
        return window.days, None
    days = max((window.last - day).days + 1, 1)
    return days, (f"the ledger's history starts {day} (UTC): per-day figures are over "
                  f"its {days} UTC day(s) in the window, not the {window.days} asked "
                  f"(the audit's are over all {window.days})")


def estimate(ledger: Ledger, proposal: Proposal, prices: PriceTable, *, days: int = 30,
             today: date | None = None) -> Estimate:
    """The estimate of `proposal` over the task's traffic of the `days` complete UTC
    days ending yesterday (`today`: default the UTC day now), the audit's window."""
    today = today or rows.today_utc()  # looked up here: tests pin both commands' day
    window = window_for(today, days=days)
    since, until = window.start, window.end
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
    span, note = window_days(ledger, window)
    lanes = sorted({proposal.current.lane, *(key[0] for key in lines)})
    waits_now = {
        lane: measured(measured_wait(ledger, lane, since, until, task=task),
                       f"the task's {'live calls' if lane == 'live' else 'batch requests'}",
                       unmeasured_text(lane))
        for lane in lanes}
    route = proposal.proposed
    wait_proposed = measured(
        measured_wait(ledger, route.lane, since, until, model=route.model),
        f"{'live calls answered by' if route.lane == 'live' else 'batch requests of'} "
        f"{route.model}, every task", unmeasured_text(route.lane))
    notes = [note] if note else []
    if as_input and not proposal.other_provider:
        notes.append(f"{as_input:,} request(s) wrote to the prompt cache in a way "
                     f"{route.model}'s price entry cannot price on the {route.lane} lane: "
                     "their cache tokens are priced as plain input")
    if route.lane == "batch" and wait_proposed.count:
        notes.append("the batch wait is measured from planning (or enqueue) to the batch's "
                     "end; a request also waits for its run's schedule (a nightly run "
                     "answers a morning request the next night)")
    return Estimate(proposal=proposal, window=window, today=today, days=span,
                    traffic=task_traffic(ledger, window, task),
                    lines=sorted(lines.values(), key=lambda c: (c.lane, c.provider, c.model)),
                    waits_now=waits_now, wait_proposed=wait_proposed,
                    cache_as_input=as_input, notes=notes)
