"""Admission: what a request must pass before any upstream call — its Idempotency-Key, its
key's RPM/TPM limits and its budget reservation (in Redis when configured, else the database)
— and the durable intent an admitted request leaves before it (usage.intents), written with
the budget reservation when there is one."""
from __future__ import annotations

import asyncio
import logging
import math
from contextlib import nullcontext
from dataclasses import replace
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
from usage.intents import DATABASE, REDIS, Intent, intent_keeper, intent_row, lease_expiry
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
                    prompt_tokens: int, max_tokens: int, at, audio_input_tokens: int = 0,
                    audio_output: bool = False) -> Decimal:
    """The most this request can cost on any of its deployments. `audio_input_tokens` of the
    prompt are priced at the audio input rate; `audio_output` (a realtime response whose
    modalities include audio) prices the whole output at the audio output rate, unless the
    text rates cost more (each falling back as usage.pricing does: an empty audio rate is the
    text one). Raises PermissionDenied when one has no price: a budgeted key is never served
    for free by accident."""
    worst = Decimal(0)
    for d in deployments:
        price = snapshot.price_for(provider_id=d.provider_id, upstream_model=d.upstream_model, at=at)
        if price is None:
            raise PermissionDenied(f"`{d.upstream_model}` has no price, so budgeted keys may not use "
                                   "it until an admin sets one", param="model", code="model_not_priced")
        text = cost_usd(price=price, input_tokens=prompt_tokens, output_tokens=max_tokens,
                        audio_input_tokens=audio_input_tokens)
        audio = cost_usd(price=price, input_tokens=prompt_tokens, output_tokens=max_tokens,
                         audio_input_tokens=audio_input_tokens,
                         audio_output_tokens=max_tokens) if audio_output else text
        worst = max(worst, text, audio)
    return worst


async def call_admit(call: Call, snapshot: RoutingSnapshot, deployments: tuple[Deployment, ...],
                     *, digest: str | None, prompt_tokens: int, max_tokens: int | None,
                     audio_input_tokens: int = 0, audio_output: bool = False) -> Replay | None:
    """Idempotency, rate limits and the budget reservation, before any upstream call (the
    audio arguments: `worst_case_cost`'s, for realtime responses).

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
                                 max_tokens=max_tokens or DEFAULT_MAX_TOKENS, at=call.created_at,
                                 audio_input_tokens=audio_input_tokens,
                                 audio_output=audio_output)
                 if limits else None)
        checks = []
        if rates:
            checks.append(_rates_acquire(call, rates))
        if limits:
            intent = call_intent(call, snapshot, deployments, prompt_tokens=prompt_tokens)
            checks.append(_budget_reserve(call, limits, usd_to_units(worst), intent))
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


def call_intent(call: Call, snapshot: RoutingSnapshot, deployments: tuple[Deployment, ...], *,
                prompt_tokens: int) -> Intent:
    """What the call's `lost` row would say, should its process die: the first candidate
    deployment, the prompt estimate at the price in force when the call started."""
    key, first = call.key, deployments[0]
    price = snapshot.price_for(provider_id=first.provider_id, upstream_model=first.upstream_model,
                               at=call.created_at)
    return Intent(
        request_id=call.request_id, client_request_id=call.client_request_id,
        created_at=call.created_at, api_key_id=key.id, key_prefix=key.prefix,
        team_id=key.team_id, surface=call.surface, public_model=call.public_model[:200],
        upstream_model=first.upstream_model, provider_name=first.provider_name,
        route_id=first.route_id, stream=call.stream, prompt_tokens=prompt_tokens,
        cost_usd=cost_usd(price=price, input_tokens=prompt_tokens, output_tokens=0),
        price_id=price.id if price else None, idempotency_key=call.idempotency_key,
        key_name=key.name[:100], team_name=(key.team_name or "")[:64], tags=call.tags,
        end_user=call.end_user)


async def intent_keep(call: Call, snapshot: RoutingSnapshot,
                      deployments: tuple[Deployment, ...], *, prompt_tokens: int) -> None:
    """Write the admitted call's intent, unless its budget reservation already did: in Redis
    (one pipelined round trip), else in the database. Never raises: a call whose intent
    could not be written is served anyway (logged)."""
    if call.intent_kept:
        return
    intent = call_intent(call, snapshot, deployments, prompt_tokens=prompt_tokens)
    if await intent_keeper.record(request_id=call.request_id, payload=intent.encode(),
                                  redis_client=client_pool.redis()):
        call.intent_written()


async def _budget_reserve(call: Call, limits: list[BudgetLimit], amount_units: int,
                          intent: Intent) -> None:
    """Reserve in Redis when configured and reachable, else in the database, writing the
    call's intent with the reservation. Raises BudgetExceeded, or ServiceUnavailable when the
    budget cannot be checked (fail closed unless GATEWAY_BUDGETS_FAIL_OPEN)."""
    try:
        budgets = client_pool.budgets()
        if budgets is not None:
            payload = replace(intent, shared_limits=tuple(limits)).encode()
            if await budgets.reserve(
                    request_id=call.request_id, limits=limits, amount_units=amount_units,
                    now=call.created_at, spent_units=_db_counter_units,
                    intent=(payload, int(lease_expiry().timestamp() * 1000))):
                call.budget_held(shared=tuple(limits))
                intent_keeper.held(request_id=call.request_id, payload=payload, store=REDIS,
                                   redis_client=client_pool.redis())
                call.intent_written()
                return
        payload = intent.encode()
        # Alongside this process's Redis reservations, when Redis is configured: each side
        # counts the other's (usage.budgets_redis).
        beside_redis = (budgets.database_reservation(
            request_id=call.request_id, limits=limits, now=call.created_at,
            amount_units=amount_units) if budgets is not None else nullcontext())
        async with beside_redis as held_elsewhere:
            await db.run(budget_reserve, request_id=call.request_id, limits=limits,
                         amount_units=amount_units, held_elsewhere=held_elsewhere,
                         intent=intent_row(request_id=call.request_id, payload=payload,
                                           expires_at=lease_expiry()))
        call.budget_held()
        intent_keeper.held(request_id=call.request_id, payload=payload, store=DATABASE)
        call.intent_written()
    except DatabaseError:
        if not settings.GATEWAY_BUDGETS_FAIL_OPEN:
            raise ServiceUnavailable("the budget cannot be checked: the database is "
                                     "unreachable", code="budget_unavailable",
                                     headers={"retry-after": "5"}) from None
        logger.warning("budget check skipped for key %s: database unreachable", call.key.prefix)
