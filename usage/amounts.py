"""How the reports show an amount of USD: one rule for the tables, the cards, the charts and
their tooltips (usage/static/usage/reports.js `money` is the same rule for the chart axes, and
a browser test holds the two to the same output).

An amount of a cent or more is shown to the cent (`$1,234.57`, rounded half up); a non-zero
amount under a cent with two significant digits (`$0.0042`, `$0.000012`), so a low-volume day
never reads `$0.00`; zero is `$0.00`. Negative amounts (refunds, corrections) get a leading `-`.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
# The ledger's quantum (cost_usd has 10 decimal places): nothing smaller is shown.
QUANTUM = Decimal("1e-10")


def usd_display(amount: Decimal | int | str) -> str:
    """`amount` as the reports show it (the module docstring's rule)."""
    value = Decimal(amount)
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value >= CENT or value == 0:
        return f"{sign}${value.quantize(CENT, rounding=ROUND_HALF_UP):,}"
    step = max(Decimal(1).scaleb(value.adjusted() - 1), QUANTUM)
    shown = value.quantize(step, rounding=ROUND_HALF_UP)
    if shown >= CENT:
        return f"{sign}$0.01"
    return f"{sign}${shown:f}"


def usd_shown(exact: Decimal, apportioned: Decimal) -> str:
    """A table cell: the cents apportioned to it (usage.selectors.cents_apportioned, so a
    column adds up to its total) when the amount is a cent or more, else the exact amount with
    sub-cent precision."""
    if exact and abs(exact) < CENT:
        return usd_display(exact)
    return usd_display(apportioned)
