"""Celery tasks (beat schedule in settings.CELERY_BEAT_SCHEDULE). Each is idempotent and safe
to run twice; without Redis they run eagerly, and `manage.py usage_rollup` serves cron."""
from __future__ import annotations

from datetime import date

from celery import shared_task
from django.utils import timezone

from usage.alerts import budget_alerts_send
from usage.budgets import reservations_expire
from usage.idempotency import idempotency_purge
from usage.intents import intents_reap_late
from usage.partitions import ledger_claims_purge, ledger_partitions_ensure
from usage.rollups import budget_counters_reconcile, rollup_days_due, usage_rollup
from usage.spool import ledger_spool_flush


@shared_task(name="usage.rollup")
def usage_rollup_task(day: str | None = None) -> int:
    """Roll up `day` (ISO date), or today, yesterday (late rows land in both) and every older
    day a late row landed in since its last rollup (usage.models.LedgerDay)."""
    if day:
        return usage_rollup(day=date.fromisoformat(day))
    return sum(usage_rollup(day=d) for d in rollup_days_due(today=timezone.now().date()))


@shared_task(name="usage.reconcile_budgets")
def budget_reconcile_task() -> int:
    return budget_counters_reconcile()


@shared_task(name="usage.expire_reservations")
def reservations_expire_task() -> int:
    return reservations_expire()


@shared_task(name="usage.purge_idempotency")
def idempotency_purge_task() -> int:
    return idempotency_purge()


@shared_task(name="usage.budget_alerts")
def budget_alerts_task() -> int:
    return budget_alerts_send()


@shared_task(name="usage.flush_spool")
def ledger_spool_flush_task() -> int:
    return ledger_spool_flush()


@shared_task(name="usage.reap_intents")
def intents_reap_task() -> int:
    """`lost` rows for the requests of dead processes that no serving process reaped (they
    all died, say): a backstop for the serving processes' own reapers (usage.intents)."""
    return intents_reap_late()


@shared_task(name="usage.ledger_partitions")
def ledger_partitions_task() -> int:
    """The ledger's monthly partitions for the next months, ahead of time (MySQL, MariaDB,
    TiDB; a no-op elsewhere): rows never wait in the pmax catch-all. And the request-id
    claims older than their window go."""
    ledger_claims_purge()
    return len(ledger_partitions_ensure())
