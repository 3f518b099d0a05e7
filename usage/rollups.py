"""Daily aggregates of the ledger (what reports read) and counter reconciliation."""
from __future__ import annotations

import logging
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from usage.budgets import period_bounds, usd_to_units
from usage.budgets_redis import shared_spend_forget
from usage.models import BudgetCounter, BudgetScope, DailyUsage, UsageRecord, UsageStatus

logger = logging.getLogger(__name__)

# What a rollup row groups by, then what it sums.
GROUP_FIELDS = ("api_key_id", "key_prefix", "key_name", "team_id", "team_name", "provider_name",
                "public_model")
TOKEN_SUMS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_5m_tokens",
              "cache_write_1h_tokens", "reasoning_tokens", "audio_input_tokens",
              "audio_output_tokens", "image_input_tokens", "image_output_tokens")


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=timezone.get_fixed_timezone(0))
    return start, start + timedelta(days=1)


@transaction.atomic
def usage_rollup(*, day: date) -> int:
    """Recompute the aggregates of one UTC day from the ledger. Idempotent: running it twice,
    or again after late rows arrived, leaves exactly the ledger's totals. Costs are summed as
    Decimal in Python (SQLite would sum them as floats). Returns the number of groups."""
    start, end = day_bounds(day)
    width = len(GROUP_FIELDS)
    totals: dict[tuple, list] = defaultdict(lambda: [0, 0, *[0] * len(TOKEN_SUMS), Decimal(0)])
    rows = (UsageRecord.objects.between(start, end)
            .values_list(*GROUP_FIELDS, "status", *TOKEN_SUMS, "cost_usd").order_by())
    for row in rows.iterator(chunk_size=5000):
        t = totals[row[:width]]
        t[0] += 1
        t[1] += row[width] != UsageStatus.OK
        for i, value in enumerate(row[width + 1:], start=2):
            t[i] += value
    DailyUsage.objects.filter(day=day).delete()
    DailyUsage.objects.bulk_create([
        DailyUsage(day=day, **dict(zip(GROUP_FIELDS, k)), requests=t[0], errors=t[1],
                   **dict(zip(TOKEN_SUMS, t[2:-1])), cost_usd=t[-1])
        for k, t in totals.items()])
    return len(totals)


def budget_counters_reconcile() -> int:
    """Set each counter's `spent` to the ledger's sum for its scope and period, fixing drift
    (e.g. rows that landed from the spool after a crash). Each counter is locked while it is
    compared, so a concurrent settlement is counted exactly once. Safe to run twice. Returns the
    number of counters corrected."""
    corrected = 0
    for counter_id in list(BudgetCounter.objects.values_list("pk", flat=True)):
        with transaction.atomic():
            counter = BudgetCounter.objects.select_for_update().get(pk=counter_id)
            start, end = period_bounds(counter.period, counter.period_start)
            rows = UsageRecord.objects.filter(created_at__gte=start)
            if end is not None:
                rows = rows.filter(created_at__lt=end)
            scope = ({"api_key_id": counter.scope_id} if counter.scope == BudgetScope.KEY
                     else {"team_id": counter.scope_id})
            actual = sum((usd_to_units(c) for c in rows.filter(**scope).values_list("cost_usd", flat=True)), 0)
            if actual != counter.spent_units:
                delta = actual - counter.spent_units
                logger.warning("budget counter %s drifted by %s units; corrected", counter.pk, delta)
                counter.spent_units = actual
                counter.save(update_fields=["spent_units", "updated_at"])
                shared_spend_forget(scope=counter.scope, scope_id=counter.scope_id,
                                    period=counter.period, period_start=counter.period_start)
                corrected += 1
    return corrected
