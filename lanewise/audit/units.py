"""How the audit rounds and words its figures, shared by every rendering so the table,
CSV, JSON and markdown carry the same numbers."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

#: Money in CSV and JSON: USD to the micro-dollar (sub-cent batch costs stay visible).
USD_PLACES = Decimal("0.000001")


def usd_round(amount: Decimal | None) -> Decimal | None:
    """USD rounded as the audit reports it (to the micro-dollar)."""
    return None if amount is None else amount.quantize(USD_PLACES, rounding=ROUND_HALF_UP)


def usd_number(amount: Decimal | None) -> float | None:
    """Rounded USD as a JSON number."""
    rounded = usd_round(amount)
    return None if rounded is None else float(rounded)


def usd_text(amount: Decimal) -> str:
    """USD at a glance, one rule for the table and markdown: whole dollars from $1,000
    ("$1,234"), cents from $1 ("$41.20"), four decimals below ("$0.0874", "$0.0007":
    sub-cent batch costs stay visible), "$0" for nothing and "<$0.0001" for less."""
    sign, size = ("-" if amount < 0 else ""), abs(amount)
    if size == 0:
        return "$0"
    # Each tier is chosen by the rounded figure, so $0.99996 shows as $1.00, not $1.0000.
    small = size.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    if small == 0:
        return f"{sign}<$0.0001"
    if small < 1:
        return f"{sign}${small:f}"
    cents = size.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    if cents < 1000:
        return f"{sign}${cents:f}"
    return f"{sign}${size.quantize(Decimal(1), rounding=ROUND_HALF_UP):,f}"


def count(value: float) -> str:
    """A request count for reading: whole from 10 up, else up to one decimal."""
    if value >= 10:
        return f"{value:,.0f}"
    return f"{value:.1f}".removesuffix(".0")


def volume_words(per_day: float) -> str:
    """A daily volume in words: "2,000 a day", "3.5 a day", "2 a week"."""
    if per_day >= 1:
        return f"{count(per_day)} a day"
    return f"{count(per_day * 7)} a week"


def duration(seconds: float) -> str:
    """A wait for reading: ms below a second, s below two minutes (one decimal below
    10 s: "2.5 s", "85 s"), min below two hours, else hours ("4.0 h"). Each unit is
    chosen by the rounded figure, so 0.9996 s reads "1.0 s", not "1000 ms"."""
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f} ms"
    if round(seconds, 1) < 10:
        return f"{seconds:.1f} s"
    if round(seconds) < 120:
        return f"{seconds:.0f} s"
    if round(seconds / 60) < 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
