"""A what-if on screen (rich tables) and as JSON (money as numbers of USD rounded to the
micro-dollar and waits in seconds to the millisecond, as the audit's JSON carries them).
Both show the same figures; user text is printed as plain Text, never read as rich
markup."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lanewise.audit import units
from lanewise.audit.waits import percentile
from lanewise.pricing import from_picodollars
from lanewise.reporting import money
from lanewise.whatif.estimate import Estimate, Wait
from lanewise.whatif.proposal import Proposal
from lanewise.whatif.sample import SampleReport

#: Problems and differences shown on screen (all of them are in the JSON).
SHOWN = 15


def _usd(picodollars: int) -> float | None:
    return units.usd_number(from_picodollars(picodollars))


def sample_wait(values: list[float]) -> Wait:
    """The p50 and p95 of an arm's waits, interpolated between ranks as the audit's."""
    if not values:
        return Wait(0, None, None, "the sample", "nothing answered")
    ordered = sorted(values)
    return Wait(len(ordered), round(percentile(ordered, 0.5), 3),
                round(percentile(ordered, 0.95), 3), "the sample")


def _arm_json(arm: Any) -> dict[str, Any]:
    return {"route": arm.route.as_dict(), "requests": len(arm.answers),
            "billed_requests": arm.billed, "outcomes": arm.statuses(),
            "answered_by": arm.answered_by, "cost_usd": _usd(arm.cost_picodollars),
            "wait": sample_wait(arm.waits()).as_dict(), "wall_seconds": arm.wall_seconds,
            "batch_ids": arm.batch_ids}


def as_json(proposal: Proposal, estimate: Estimate, sample: SampleReport | None
            ) -> dict[str, Any]:
    """The what-if as one JSON document."""
    task = proposal.task
    current, proposed = estimate.current_picodollars, estimate.proposed_picodollars
    month_now, month_then = estimate.per_month(current), estimate.per_month(proposed)
    window = estimate.window
    doc: dict[str, Any] = {
        "task": task.name, "description": task.description, "person_waits": task.person_waits,
        "max_delay_hours": task.max_delay_hours, "current": proposal.current.as_dict(),
        "proposed": proposal.proposed.as_dict(), "conflicts": proposal.conflicts,
        "notes": proposal.notes,
        "estimate": {
            "window": {"first": window.first.isoformat(), "last": window.last.isoformat(),
                       "days": window.days, "today": estimate.today.isoformat()},
            "per_day_over_days": estimate.days, "requests": estimate.requests,
            "billed_requests": estimate.billed_requests,
            "requests_per_day": round(estimate.requests_per_day(), 2),
            "by_route": [{"lane": line.lane, "provider": line.provider, "model": line.model,
                          "requests": line.requests,
                          "current_usd": _usd(line.current_picodollars),
                          "proposed_usd": _usd(line.proposed_picodollars)}
                         for line in estimate.lines],
            "current_usd": _usd(current), "proposed_usd": _usd(proposed),
            "per_month": {"current_usd": units.usd_number(month_now),
                          "proposed_usd": units.usd_number(month_then),
                          "difference_usd": units.usd_number(month_then - month_now)},
            "wait_now": {lane: wait.as_dict() for lane, wait in estimate.waits_now.items()},
            "wait_proposed": estimate.wait_proposed.as_dict(),
            "requests_priced_with_cache_as_input": estimate.cache_as_input,
            "notes": estimate.notes},
        "sample": None}
    if sample is not None:
        selection = sample.selection
        doc["sample"] = {
            "requested": sample.requested, "requests": len(selection.rows),
            "from": dict(selection.sources), "input_gone": selection.gone,
            "input_gone_files": selection.gone_inputs, "repeated": selection.repeated,
            "without_key": selection.without_key, "sent_to": sample.sent_to,
            "arms": {arm.name: _arm_json(arm) for arm in (sample.current, sample.proposed)
                     if arm is not None},
            "total_cost_usd": _usd(sample.total_picodollars),
            "agreement": sample.agreement.as_dict() if sample.agreement else None,
            "notes": sample.notes}
    return doc


def duration(seconds: float | None) -> str:
    """Seconds as people read a wait (the audit's units: ms, s, min or h), "-" for none."""
    return "-" if seconds is None else units.duration(seconds)


def _wait_cell(wait: Wait, which: str) -> str:
    if wait.count == 0:
        return wait.note or "-"
    return duration(wait.p50 if which == "p50" else wait.p95)


def _signed(amount: Decimal) -> str:
    return ("+" if amount > 0 else "") + money(amount)


def title(proposal: Proposal, estimate: Estimate) -> str:
    """The what-if's title line, stating the window as the audit's title does."""
    return (f"What-if: {proposal.task.name}, {proposal.current.label()} -> "
            f"{proposal.proposed.label()}, {estimate.window.describe(estimate.today)}: "
            "estimate from the recorded traffic, no calls made")


def estimate_table(proposal: Proposal, estimate: Estimate) -> Table:
    """Now against proposed: the window's requests and cost, per month, and the waits."""
    table = Table(title=Text(title(proposal, estimate)), title_justify="left")
    for column in ("", "now", "proposed", "difference"):
        table.add_column(column, justify="left" if not column else "right")
    now, then = estimate.current_picodollars, estimate.proposed_picodollars
    month_now, month_then = estimate.per_month(now), estimate.per_month(then)
    table.add_row("requests", f"{estimate.requests:,}", f"{estimate.requests:,}", "")
    table.add_row("billed (priced)", f"{estimate.billed_requests:,}",
                  f"{estimate.billed_requests:,}", "")
    table.add_row("requests per day", units.count(estimate.requests_per_day()), "", "")
    table.add_row("cost in the window", money(from_picodollars(now)),
                  money(from_picodollars(then)), _signed(from_picodollars(then - now)))
    table.add_row(Text("per month (per day x 30)", style="bold"), money(month_now),
                  money(month_then), _signed(month_then - month_now), style="bold")
    for which in ("p50", "p95"):
        cells = [f"{lane} {_wait_cell(wait, which)}"
                 for lane, wait in estimate.waits_now.items()]
        table.add_row(f"wait {which}", Text("; ".join(cells)),
                      Text(_wait_cell(estimate.wait_proposed, which)), "")
    return table


def traffic_table(estimate: Estimate) -> Table:
    """The recorded traffic by lane, provider and model, priced both ways."""
    table = Table(title="Recorded billed traffic, priced as it ran and as proposed",
                  title_justify="left")
    for column in ("lane", "provider", "model", "requests", "as it ran", "as proposed"):
        table.add_column(column, justify="right" if column in (
            "requests", "as it ran", "as proposed") else "left")
    for line in estimate.lines:
        table.add_row(line.lane, line.provider, Text(line.model), f"{line.requests:,}",
                      money(from_picodollars(line.current_picodollars)),
                      money(from_picodollars(line.proposed_picodollars)))
    return table


def sample_tables(sample: SampleReport) -> list[Table]:
    """The arms side by side, the agreement, and the requests not answered validly."""
    arms = [arm for arm in (sample.current, sample.proposed) if arm is not None]
    if not arms:
        return []
    selection = sample.selection
    origin = ", ".join(f"{n} {lane}" for lane, n in sorted(selection.sources.items()))
    side = Table(title=Text(f"Sample: {len(selection.rows)} recent requests ({origin}) "
                            f"sent to {sample.sent_to}"), title_justify="left")
    side.add_column("")
    for arm in arms:
        side.add_column(Text(f"{arm.name}\n{arm.route.label()}"), justify="right")
    side.add_row("requests", *[f"{len(arm.answers):,}" for arm in arms])
    side.add_row("outcomes", *[Text(", ".join(f"{s} {n}" for s, n in sorted(
        arm.statuses().items()))) for arm in arms])
    if any(arm.answered_by for arm in arms):
        side.add_row("answered by", *[Text(", ".join(f"{k} {n}" for k, n in sorted(
            arm.answered_by.items())) or "-") for arm in arms])
    side.add_row("billed requests", *[f"{arm.billed:,}" for arm in arms])
    side.add_row(Text("cost", style="bold"),
                 *[money(from_picodollars(arm.cost_picodollars)) for arm in arms],
                 style="bold")
    for which in ("p50", "p95"):
        side.add_row(f"wait {which}", *[_wait_cell(sample_wait(arm.waits()), which)
                                        for arm in arms])
    tables = [side]
    agreement = sample.agreement
    if agreement is not None:
        agree = Table(title=f"Agreement ({agreement.requests} requests)",
                      title_justify="left")
        agree.add_column("")
        agree.add_column("agree", justify="right")
        if agreement.kind == "json":
            for name, share in agreement.field_shares.items():
                agree.add_row(Text(f"field {name}"), f"{share:.0%}")
            if agreement.all_fields is not None:
                agree.add_row(Text("all fields", style="bold"), f"{agreement.all_fields:.0%}")
        elif agreement.similarity_mean is not None:
            agree.add_row("text similarity, mean", f"{agreement.similarity_mean:.3f}")
            agree.add_row("text similarity, min", f"{agreement.similarity_min:.3f}")
        tables.append(agree)
        if agreement.problems:
            problems = Table(title="Requests not answered validly (count as disagreement)",
                             title_justify="left")
            for column in ("key", "arm", "status", "why"):
                problems.add_column(column, overflow="fold")
            for problem in agreement.problems[:SHOWN]:
                problems.add_row(*(Text(str(problem.get(c) or "")) for c in
                                   ("key", "arm", "status", "error")))
            if len(agreement.problems) > SHOWN:
                problems.add_row("...", f"{len(agreement.problems) - SHOWN} more", "", "")
            tables.append(problems)
        if agreement.differences:
            differ = Table(title="Requests answered differently", title_justify="left")
            differ.add_column("key", overflow="fold")
            differ.add_column("current -> proposed", overflow="fold")
            for difference in agreement.differences[:SHOWN]:
                how = (f"similarity {difference['similarity']:.3f}"
                       if "similarity" in difference else "; ".join(
                           f"{name}: {json.dumps(pair['current'])} -> "
                           f"{json.dumps(pair['proposed'])}"
                           for name, pair in difference["fields"].items()) or "the answers")
                differ.add_row(Text(difference["key"]), Text(how))
            if len(agreement.differences) > SHOWN:
                differ.add_row("...", f"{len(agreement.differences) - SHOWN} more")
            tables.append(differ)
    return tables


def render(console: Console, proposal: Proposal, estimate: Estimate,
           sample: SampleReport | None) -> None:
    """Print the what-if: the estimate, the traffic, the sample, and every note."""
    console.print(estimate_table(proposal, estimate))
    if estimate.lines:
        console.print(traffic_table(estimate))
    else:
        console.print(Text(f"No billed request of {proposal.task.name} in "
                           f"{estimate.window.describe(estimate.today)}: nothing to price."))
    for conflict in proposal.conflicts:
        console.print(Text(f"conflict with the catalog: {conflict}", style="bold red"))
    for note in [*proposal.notes, *estimate.notes]:
        console.print(Text(f"note: {note}", style="dim"))
    if sample is None:
        return
    for table in sample_tables(sample):
        console.print(table)
    if sample.current is not None and sample.proposed is not None:
        console.print(Text(f"the sample cost {money(from_picodollars(sample.total_picodollars))}"
                           f" in all ({sample.current.name} "
                           f"{money(from_picodollars(sample.current.cost_picodollars))}, "
                           f"{sample.proposed.name} "
                           f"{money(from_picodollars(sample.proposed.cost_picodollars))})"))
    for note in sample.notes:
        console.print(Text(f"note: {note}", style="dim"))

