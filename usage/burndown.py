"""Budget burn-down: each budget's spend so far in its period, a linear forecast to the end
of the period from the period's run rate, and when the limit will be reached.

The forecast is linear on purpose: spent so far / time elapsed is the run rate, and the
forecast at the end is spent x (period length / elapsed). It is exact (Decimal) so a finance
reader can recompute it from the page's own numbers. A `total` budget has no end, so no
forecast; before the first second of a period there is no rate.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import BigIntegerField, F, Sum, Value
from django.db.models.functions import Cast, Round, TruncHour
from django.utils import timezone

from usage.amounts import usd_display
from usage.budgets import UNITS_PER_USD, units_to_usd
from usage.charts import Series, lines, nice_ceiling
from usage.models import BudgetScope, UsageRecord
from usage.selectors import BudgetStatus, UsageFilter, usage_report

QUANTUM = Decimal("1e-10")


@dataclass(frozen=True, slots=True)
class Forecast:
    """`forecast_usd`: spend at the period's end at the period's run rate so far (None: no
    end or no time elapsed); `exhausted_at`: when spend reaches the limit at that rate (None:
    not within the period); `exhausted` says the limit is already reached."""

    spent_usd: Decimal
    limit_usd: Decimal
    rate_usd_per_day: Decimal | None
    forecast_usd: Decimal | None
    exhausted_at: datetime | None
    exhausted: bool

    @property
    def summary(self) -> str:
        if self.exhausted:
            return "Exhausted: the limit is reached."
        if self.forecast_usd is None:
            return "No forecast (the period has no end)." if self.rate_usd_per_day is None \
                else "No forecast yet."
        if self.exhausted_at is not None:
            return f"At this rate the limit is reached on {self.exhausted_at:%Y-%m-%d %H:%M} UTC."
        return (f"At this rate the period ends at {usd_display(self.forecast_usd)}, "
                f"within the limit.")


def budget_forecast(*, spent_usd: Decimal, limit_usd: Decimal, start: datetime,
                    end: datetime | None, now: datetime) -> Forecast:
    """The linear forecast of one budget period [start, end) at `now` (module docstring)."""
    exhausted = spent_usd >= limit_usd
    elapsed = Decimal((now - start) // timedelta(microseconds=1)) / Decimal(1_000_000)
    if end is None or elapsed <= 0:
        rate = None if end is None or elapsed <= 0 else spent_usd / elapsed
        return Forecast(spent_usd, limit_usd, None if rate is None else
                        (rate * 86400).quantize(QUANTUM, ROUND_HALF_UP), None, None, exhausted)
    length = Decimal((end - start) // timedelta(microseconds=1)) / Decimal(1_000_000)
    forecast = (spent_usd * length / elapsed).quantize(QUANTUM, ROUND_HALF_UP)
    rate_day = (spent_usd * 86400 / elapsed).quantize(QUANTUM, ROUND_HALF_UP)
    exhausted_at = None
    if not exhausted and spent_usd > 0:
        seconds = elapsed * limit_usd / spent_usd
        if seconds < length:
            exhausted_at = start + timedelta(seconds=int(seconds.to_integral_value(ROUND_HALF_UP)))
    return Forecast(spent_usd, limit_usd, rate_day, forecast, exhausted_at, exhausted)


def _steps(status: BudgetStatus) -> tuple[timedelta, str]:
    return (timedelta(hours=1), "%H:%M") if status.period == "day" else (timedelta(days=1), "%m-%d")


def _spent_by_step(status: BudgetStatus, now: datetime) -> dict[datetime, Decimal]:
    """Spend of the scope per step (hour for a daily budget, else day) from the period start
    to now: the day grouping of usage_report (rollups for past days), or the ledger by hour."""
    scope = ({"key_ids": (status.scope_id,)} if status.scope == BudgetScope.KEY
             else {"team_ids": (status.scope_id,)})
    if status.period == "day":
        field = "api_key_id" if status.scope == BudgetScope.KEY else "team_id"
        rows = (UsageRecord.objects.between(status.period_start, now)
                .filter(**{field: status.scope_id})
                .annotate(step=TruncHour("created_at", tzinfo=dt_timezone.utc)).values("step")
                .annotate(units=Sum(Cast(Round(F("cost_usd") * Value(int(UNITS_PER_USD))),
                                         BigIntegerField()))).order_by())
        return {r["step"]: units_to_usd(int(r["units"] or 0)) for r in rows}
    today = timezone.localtime(now, dt_timezone.utc).date()
    flt = UsageFilter(start=status.period_start.date(), end=today, **scope)
    report = usage_report(flt=flt, groupings=[("day",)], now=now)
    return {datetime.combine(r.values["day"], datetime.min.time(), tzinfo=dt_timezone.utc):
            r.totals.cost_usd for r in report.group(["day"])}


def budget_burndown(*, status: BudgetStatus, now: datetime | None = None) -> dict:
    """One budget's forecast and its chart: cumulative spend per step up to now (the ledger),
    the forecast line from now to the period's end, and the limit."""
    now = now or timezone.now()
    forecast = budget_forecast(spent_usd=status.spent_usd, limit_usd=status.limit_usd,
                               start=status.period_start, end=status.period_end, now=now)
    chart = None
    if status.period_end is not None:
        step, label_fmt = _steps(status)
        by_step = _spent_by_step(status, now)
        labels, actual, projected = [], [], []
        cumulative = Decimal(0)
        at = status.period_start
        while at <= status.period_end:
            labels.append(at.strftime(label_fmt))
            if at <= now:
                # Spend before this boundary; the forecast line starts from the last one.
                actual.append(cumulative)
                projected.append(None)
                cumulative += sum((v for k, v in by_step.items() if at <= k < at + step),
                                  Decimal(0))
            else:
                actual.append(None)
                projected.append(None if forecast.rate_usd_per_day is None else
                                 status.spent_usd + forecast.rate_usd_per_day
                                 * Decimal((at - now) // timedelta(seconds=1)) / 86400)
            at += step
        last = sum(v is not None for v in actual) - 1
        if forecast.rate_usd_per_day is not None and last + 1 < len(labels):
            projected[last] = actual[last]
        top = max([float(status.limit_usd), *(float(v) for v in actual if v is not None),
                   *(float(v) for v in projected if v is not None)])
        chart = lines(labels=labels, series=[
            Series("Spent", actual, colour="#0072B2"),
            Series("Forecast", projected, colour="#E69F00", dashed=True, markers="last"),
            Series("Limit", [status.limit_usd] * len(labels), colour="#D55E00", markers="last")],
            fmt=lambda v: usd_display(Decimal(repr(v))), top=nice_ceiling(top * 1.05))
    return {"status": status, "forecast": forecast, "chart": chart,
            "spent": usd_display(status.spent_usd), "limit": usd_display(status.limit_usd),
            "reserved": usd_display(status.reserved_usd),
            "remaining": usd_display(status.remaining_usd),
            "forecast_text": (None if forecast.forecast_usd is None
                              else usd_display(forecast.forecast_usd)),
            "rate_text": (None if forecast.rate_usd_per_day is None
                          else usd_display(forecast.rate_usd_per_day))}
