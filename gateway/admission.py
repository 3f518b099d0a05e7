"""Admission: what a request must pass before any upstream call — its Idempotency-Key, its
key's RPM/TPM limits and its budget reservation (in Redis when configured, else the database)."""
from __future__ import annotations

import asyncio
import logging
import math
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError

from gateway.clients import client_pool
from gateway.database import db
from gateway.errors import GatewayError, PermissionDenied, RateLimited, ServiceUnavailable
from providers.selectors import Deployment, KeyInfo, RoutingSnapshot
from usage.budgets import BudgetLimit, budget_counter_units, budget_reserve, usd_to_units
from usage.idempotency import Replay, idempotency_claim, idempotency_release
from usage.models import BudgetScope, UsageStatus
from usage.pricing import cost_usd
from usage.ratelimits import Limit

if TYPE_CHECKING:
    from gateway.call import Call

logger = logging.getLogger(__name__)

# Output tokens assumed for a budget reservation when neither the request nor the key caps them.
DEFAULT_MAX_TOKENS = 4096


def budget_limits(key: KeyInfo) -> list[BudgetLimit]:
    limits = []
    if key.budget_usd is not None:
        limits.append(BudgetLimit(scope=BudgetScope.KEY, scope_id=key.id, limit_usd=key.budget_usd,
                                  period=key.budget_period))
    if key.team_id is not None and key.team_budget_usd is not None:
        limits.append(BudgetLimit(scope=BudgetScope.TEAM, scope_id=key.team_id,
                                  limit_usd=key.team_budget_usd, period=key.team_budget_period))
    return limits


def worst_case_cost(snapshot: RoutingSnapshot, deployments: tuple[Deployment, ...], *,
                    prompt_tokens: int, max_tokens: int, at) -> Decimal:
    """The most this request can cost on any of its deployments. Raises PermissionDenied when
    one has no price: a budgeted key is never served for free by accident."""
    worst = Decimal(0)
    for d in deployments:
        price = snapshot.price_for(provider_id=d.provider_id, upstream_model=d.upstream_model, at=at)
        if price is None:
            raise PermissionDenied(f"`{d.upstream_model}` has no price, so budgeted keys may not use "
                                   "it until an admin sets one", param="model", code="model_not_priced")
        worst = max(worst, cost_usd(price=price, input_tokens=prompt_tokens, output_tokens=max_tokens))
    return worst


async def call_admit(call: Call, snapshot: RoutingSnapshot, deployments: tuple[Deployment, ...],
                     *, digest: str | None, prompt_tokens: int, max_tokens: int | None) -> Replay | None:
    """Idempotency, rate limits and the budget reservation, before any upstream call.

    Returns the stored response when the Idempotency-Key was already answered. Raises Conflict
    / Unprocessable (idempotency, no ledger row), RateLimited, BudgetExceeded or
    PermissionDenied (these mark the call `rejected`: the caller records it)."""
    key = call.key
    if call.idempotency_key and digest:
        try:
            claim = await db.run(idempotency_claim, api_key_id=key.id, key=call.idempotency_key,
                                 digest=digest)
        except DatabaseError:
            raise ServiceUnavailable("Idempotency-Key cannot be honoured: the database is "
                                     "unreachable", code="idempotency_unavailable",
                                     headers={"retry-after": "5"}) from None
        if isinstance(claim, Replay):
            return claim
        call.claim_held(claim)
    try:
        rates = [Limit(f"{name}:{key.id}", per_minute, cost) for name, per_minute, cost in
                 (("rpm", key.rpm_limit, 1), ("tpm", key.tpm_limit, prompt_tokens)) if per_minute]
        limits = budget_limits(key)
        worst = (worst_case_cost(snapshot, deployments, prompt_tokens=prompt_tokens,
                                 max_tokens=max_tokens or DEFAULT_MAX_TOKENS, at=call.created_at)
                 if limits else None)
        checks = []
        if rates:
            checks.append(_rates_acquire(call, rates))
        if limits:
            checks.append(_budget_reserve(call, limits, usd_to_units(worst)))
        # Both at once (one round trip of waiting, not two). Whatever one took while the other
        # refused is given back by call_finish, which every rejected call goes through.
        for outcome in await asyncio.gather(*checks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
    except GatewayError as exc:
        call.failed(status=UsageStatus.REJECTED, http_status=exc.status,
                    error_type=exc.code or exc.type)
        claim = call.claim_dropped()
        if claim is not None:
            await db.run(idempotency_release, claim_id=claim)
        raise
    return None


async def _rates_acquire(call: Call, rates: list[Limit]) -> None:
    """Charge the key's RPM and TPM (the prompt estimate) together. Raises RateLimited."""
    key = call.key
    refusal = await client_pool.ratelimiter().acquire_all(rates)
    if refusal is not None:
        rpm = refusal.name.startswith("rpm:")
        raise RateLimited(f"this key's {'RPM' if rpm else 'TPM'} limit of "
                          f"{key.rpm_limit if rpm else key.tpm_limit} is reached",
                          headers={"retry-after": str(max(1, math.ceil(refusal.wait_s)))})
    if key.tpm_limit:
        call.tpm_taken(rates[-1].cost)


async def _db_counter_units(limit: BudgetLimit, now) -> tuple[int, int]:
    return await db.run(budget_counter_units, limit=limit, now=now)


async def _budget_reserve(call: Call, limits: list[BudgetLimit], amount_units: int) -> None:
    """Reserve in Redis when configured and reachable, else in the database. Raises
    BudgetExceeded, or ServiceUnavailable when the budget cannot be checked (fail closed unless
    GATEWAY_BUDGETS_FAIL_OPEN)."""
    try:
        budgets = client_pool.budgets()
        if budgets is not None and await budgets.reserve(
                request_id=call.request_id, limits=limits, amount_units=amount_units,
                now=call.created_at, spent_units=_db_counter_units):
            call.budget_held(shared=tuple(limits))
            return
        await db.run(budget_reserve, request_id=call.request_id, limits=limits,
                     amount_units=amount_units,
                     held_elsewhere=(budgets.held_units(limits=limits, now=call.created_at)
                                     if budgets is not None else None))
        call.budget_held()
    except DatabaseError:
        if not settings.GATEWAY_BUDGETS_FAIL_OPEN:
            raise ServiceUnavailable("the budget cannot be checked: the database is "
                                     "unreachable", code="budget_unavailable",
                                     headers={"retry-after": "5"}) from None
        logger.warning("budget check skipped for key %s: database unreachable", call.key.prefix)
