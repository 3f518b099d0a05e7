"""Budget alerts: a webhook POST (and optional email) when spend crosses a scope's threshold.

Each counter remembers the threshold it last alerted at, so an alert is sent once per period
however often the task runs.
"""
from __future__ import annotations

import logging
from decimal import Decimal

import httpx
from django.core.mail import send_mail
from django.db import transaction

from providers.models import ApiKey, Team
from providers.validation import webhook_url_problem
from usage.budgets import units_to_usd, usd_to_units
from usage.models import BudgetCounter, BudgetScope

logger = logging.getLogger(__name__)


def _scope_settings(counter: BudgetCounter) -> tuple[Decimal | None, int | None, Team | None, str]:
    if counter.scope == BudgetScope.KEY:
        key = ApiKey.objects.select_related("team").filter(pk=counter.scope_id).first()
        if key is None:
            return None, None, None, ""
        return key.budget_usd, key.budget_alert_pct, key.team, f"key {key.name} ({key.prefix}…)"
    team = Team.objects.filter(pk=counter.scope_id).first()
    if team is None:
        return None, None, None, ""
    return team.budget_usd, team.budget_alert_pct, team, f"team {team.name}"


def budget_alerts_send() -> int:
    """Alert every counter past its threshold that has not alerted yet. Returns alerts sent."""
    sent = 0
    for counter_id in list(BudgetCounter.objects.values_list("pk", flat=True)):
        with transaction.atomic():
            counter = BudgetCounter.objects.select_for_update().get(pk=counter_id)
            limit, pct, team, label = _scope_settings(counter)
            if limit is None or not pct or (counter.alerted_pct or 0) >= pct:
                continue
            if counter.spent_units * 100 < usd_to_units(limit) * pct:
                continue
            payload = {"type": "budget_threshold", "scope": counter.scope, "name": label,
                       "period": counter.period, "period_start": counter.period_start.isoformat(),
                       "threshold_pct": pct, "budget_usd": str(limit),
                       "spent_usd": str(units_to_usd(counter.spent_units))}
            delivered = False
            problem = webhook_url_problem(team.alert_webhook_url) if team is not None \
                and team.alert_webhook_url else None
            if problem:
                # Stored before webhook URLs were checked on save: never POSTed.
                logger.error("budget alert webhook for %s not sent: the URL %s", label, problem)
            elif team is not None and team.alert_webhook_url:
                try:
                    httpx.post(team.alert_webhook_url, json=payload, timeout=10,
                               follow_redirects=False).raise_for_status()
                    delivered = True
                except httpx.HTTPError as exc:
                    logger.warning("budget alert webhook for %s failed: %s", label, type(exc).__name__)
            if team is not None and team.alert_email:
                send_mail(f"Budget alert: {label} at {pct}%",
                          f"{label} has spent ${payload['spent_usd']} of ${limit} this {counter.period}.",
                          None, [team.alert_email], fail_silently=True)
                delivered = True
            if delivered:
                counter.alerted_pct = pct
                counter.save(update_fields=["alerted_pct"])
                sent += 1
    return sent
