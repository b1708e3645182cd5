"""Comparing the ledger with the provider's cost report, per UTC day, model and lane."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from rich.table import Table

from lanewise.errors import ConfigurationError
from lanewise.ledger import Ledger
from lanewise.pricing import from_picodollars, load_price_table
from lanewise.reconcile.ledger_costs import LedgerKey, ledger_costs
from lanewise.reconcile.reports import (
    LIVE,
    ProviderCost,
    admin_credentials,
    base_model,
    fetch_costs,
)
from lanewise.settings import Settings, get_settings

PROVIDERS = ("openai", "anthropic")
BOTH_LANES = "all"  # the report does not tell batch from live for this day and model


@dataclass(frozen=True)
class ReconcileRow:
    """One day, model and lane: what the ledger recorded and what the provider billed."""

    provider: str
    day: date
    model: str
    lane: str  # batch | live | all (both lanes: the report does not tell them apart)
    ledger_usd: Decimal
    provider_usd: Decimal

    @property
    def difference_usd(self) -> Decimal:
        """Provider minus ledger: positive when the provider billed more."""
        return self.provider_usd - self.ledger_usd


@dataclass
class Reconciliation:
    """The comparison of one period, and whether it stays within the tolerance."""

    start: date
    end: date
    tolerance_usd: Decimal
    rows: list[ReconcileRow] = field(default_factory=list)
    #: Provider costs that are not tokens of a model lanewise prices (tools, other
    #: products): shown, not compared.
    untracked: list[ProviderCost] = field(default_factory=list)
    #: provider -> where its report came from (block, environment, emulator)
    sources: dict[str, str] = field(default_factory=dict)
    #: provider -> why it was not reconciled
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def mismatches(self) -> list[ReconcileRow]:
        """Rows whose difference exceeds the tolerance."""
        return [r for r in self.rows if abs(r.difference_usd) > self.tolerance_usd]

    @property
    def period(self) -> str:
        """The period in words."""
        return (self.start.isoformat() if self.start == self.end
                else f"{self.start.isoformat()}..{self.end.isoformat()}")

    def message(self) -> str:
        """One line: agreement, or the mismatches."""
        if not self.mismatches:
            return (f"the ledger agrees with the providers' cost reports for {self.period} "
                    f"({len(self.rows)} day/model/lane rows, tolerance "
                    f"${plain(self.tolerance_usd)})")
        worst = max(self.mismatches, key=lambda r: abs(r.difference_usd))
        return (f"{len(self.mismatches)} of {len(self.rows)} day/model/lane rows differ by "
                f"more than ${plain(self.tolerance_usd)} for {self.period}; largest: "
                f"{worst.provider} {worst.model} {worst.lane} on {worst.day.isoformat()}: "
                f"provider ${plain(worst.provider_usd)} vs ledger ${plain(worst.ledger_usd)} "
                f"(difference ${plain(worst.difference_usd)})")

    def table_rows(self) -> list[dict[str, Any]]:
        """The rows as plain dicts (a Prefect table artifact)."""
        return [{"day": r.day.isoformat(), "provider": r.provider, "model": r.model,
                 "lane": r.lane, "ledger_usd": plain(r.ledger_usd),
                 "provider_usd": plain(r.provider_usd),
                 "difference_usd": plain(r.difference_usd),
                 "status": "MISMATCH" if abs(r.difference_usd) > self.tolerance_usd
                 else "ok"} for r in self.rows]

    def table(self) -> Table:
        """A rich table of every row, mismatches marked."""
        table = Table(title=f"Ledger vs the providers' cost reports, {self.period} (UTC); "
                      f"tolerance ${plain(self.tolerance_usd)}", title_justify="left")
        for column in ("day", "provider", "model", "lane", "ledger", "provider bill",
                       "difference", ""):
            right = column in ("ledger", "provider bill", "difference")
            table.add_column(column, justify="right" if right else "left")
        for row in self.rows:
            bad = abs(row.difference_usd) > self.tolerance_usd
            table.add_row(row.day.isoformat(), row.provider, row.model, row.lane,
                          _usd(row.ledger_usd), _usd(row.provider_usd),
                          ("+" if row.difference_usd > 0 else "")
                          + plain(row.difference_usd),
                          "[bold red]MISMATCH[/]" if bad else "[green]ok[/]")
        return table

    def notes(self) -> list[str]:
        """What was not compared, and where the reports came from."""
        lines = [f"{p}: cost report from the {s}" for p, s in sorted(self.sources.items())]
        lines += [f"{p}: not reconciled ({why})" for p, why in sorted(self.skipped.items())]
        untracked: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for cost in self.untracked:
            untracked[(cost.provider, cost.label)] += cost.amount_usd
        lines += [f"{p}: {label}: ${plain(amount)} billed, not lanewise's (not compared)"
                  for (p, label), amount in sorted(untracked.items()) if amount]
        return lines

    def markdown(self) -> str:
        """The comparison as markdown (a Prefect markdown artifact)."""
        verdict = "**MISMATCH**" if self.mismatches else "agrees"
        lines = [f"# Cost reconciliation {self.period} (UTC): {verdict}", "",
                 self.message(), "",
                 "| day | provider | model | lane | ledger USD | provider USD | difference |"
                 " status |", "|---|---|---|---|---:|---:|---:|---|"]
        lines += [f"| {r['day']} | {r['provider']} | {r['model']} | {r['lane']} | "
                  f"{r['ledger_usd']} | {r['provider_usd']} | {r['difference_usd']} | "
                  f"{r['status']} |" for r in self.table_rows()]
        notes = self.notes()
        if notes:
            lines += ["", *(f"- {n}" for n in notes)]
        return "\n".join(lines) + "\n"

    def brief(self) -> dict[str, Any]:
        """A small summary (a flow's return value)."""
        return {"period": self.period, "rows": len(self.rows),
                "mismatches": len(self.mismatches), "tolerance_usd": str(self.tolerance_usd),
                "ledger_usd": plain(sum((r.ledger_usd for r in self.rows), Decimal(0))),
                "provider_usd": plain(sum((r.provider_usd for r in self.rows), Decimal(0)))}


def plain(amount: Decimal) -> str:
    """An exact amount as a plain decimal (never in exponent notation)."""
    return format(amount, "f")


def _usd(amount: Decimal) -> str:
    return f"${amount:,.6f}"


def compare(provider: str, costs: list[ProviderCost], ledger: dict[LedgerKey, int],
            tracked: set[str]) -> tuple[list[ReconcileRow], list[ProviderCost]]:
    """Rows for one provider, and the report's lines that are no model lanewise prices.

    Per day and model: where the report labels lanes, each lane is compared on its own
    (unlabelled lines beside labelled batch lines are the live lane's); where it labels
    none, both lanes are compared together (lane `all`).
    """
    reported: dict[tuple[date, str], list[ProviderCost]] = defaultdict(list)
    untracked = []
    for cost in costs:
        if cost.model is None or cost.model not in tracked:
            untracked.append(cost)
        else:
            reported[(cost.day, cost.model)].append(cost)
    recorded: dict[tuple[date, str], dict[str, Decimal]] = defaultdict(
        lambda: defaultdict(Decimal))
    for (p, day, model, lane), picodollars in ledger.items():
        if p == provider:
            recorded[(day, model)][lane] += from_picodollars(picodollars)
    rows = []
    for day, model in sorted(set(reported) | set(recorded)):
        lines = reported.get((day, model), [])
        by_lane: dict[str, Decimal] = defaultdict(Decimal)
        if lines and all(c.lane is None for c in lines):
            by_lane[BOTH_LANES] = sum((c.amount_usd for c in lines), Decimal(0))
            ours = {BOTH_LANES: sum(recorded[(day, model)].values(), Decimal(0))}
        else:
            for cost in lines:
                by_lane[cost.lane or LIVE] += cost.amount_usd
            ours = dict(recorded[(day, model)])
        for lane in sorted(set(by_lane) | set(ours)):
            rows.append(ReconcileRow(provider, day, model, lane, ours.get(lane, Decimal(0)),
                                     by_lane.get(lane, Decimal(0))))
    return rows, untracked


def period(day: date | None = None, since: date | None = None,
           today: date | None = None) -> tuple[date, date]:
    """The UTC days to reconcile: `day` alone, `since`..today, or yesterday."""
    today = today or datetime.now(UTC).date()
    if day is not None and since is not None:
        raise ConfigurationError("give a day or a start day (--date or --since), not both")
    if day is not None:
        return day, day
    if since is not None:
        if since > today:
            raise ConfigurationError(f"--since {since.isoformat()} is in the future")
        return since, today
    yesterday = today - timedelta(days=1)
    return yesterday, yesterday


def reconcile(start: date, end: date, *, provider: str | None = None,
              tolerance_usd: Decimal | None = None, settings: Settings | None = None,
              ledger: Ledger | None = None) -> Reconciliation:
    """Compare the ledger with the providers' cost reports for the UTC days
    `start`..`end` (inclusive).

    With `provider` only that provider, which must have an admin key (or run on the
    emulator). Without it, both: a provider whose report cannot be read is skipped when
    the ledger holds no cost of it in the period, and is an error otherwise.
    """
    settings = settings or get_settings()
    if provider is not None and provider not in PROVIDERS:
        raise ConfigurationError(f"unknown provider {provider!r} (known: openai, anthropic)")
    ledger = ledger or Ledger(settings.resolved_database_url)
    tolerance = settings.reconcile_tolerance_usd if tolerance_usd is None else tolerance_usd
    report = Reconciliation(start, end, Decimal(tolerance))
    providers = [provider] if provider else list(PROVIDERS)
    recorded = ledger_costs(ledger, start, end, providers)
    prices = load_price_table(settings.prices_path)
    tracked = {base_model(m) for m in _model_names(prices)} | {k[2] for k in recorded}
    for name in providers:
        try:
            credentials = admin_credentials(name, settings)
        except ConfigurationError as exc:
            if provider is not None or any(k[0] == name for k in recorded):
                raise
            report.skipped[name] = str(exc).split(":", 1)[0]
            continue
        report.sources[name] = credentials.source
        costs = fetch_costs(credentials, start, end, settings)
        rows, untracked = compare(name, costs, recorded, tracked)
        report.rows += rows
        report.untracked += untracked
    report.rows.sort(key=lambda r: (r.day, r.provider, r.model, r.lane))
    return report


def _model_names(prices: Any) -> list[str]:
    """The models a price table prices."""
    names = getattr(prices, "model_names", None)
    return list(names()) if callable(names) else list(getattr(prices, "models", {}))
