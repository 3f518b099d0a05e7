"""The end of every call: its one ledger row and the shared state it gives back.

`call_finish` runs once per call (`Call.finish_begin`), shielded from the client's
cancellation: the in-flight slot, the TPM correction and the Redis budget settlement go back in
one pipelined Redis round trip, overlapping the ledger commit (gateway.ledger), which also
settles a database budget reservation, stores an Idempotency-Key's response and deletes a
database intent (usage.intents). A Redis intent is removed once the row is written, in the
background: never before, so a crash in between leaves an intent whose reaping writes nothing.

With GATEWAY_LEDGER_JOURNAL, a call whose intent is in Redis and which settles nothing in the
database (no database budget reservation, no Idempotency-Key) journals its row beside that
intent in the same round trip instead (usage.intents `final_queued`), and ends once Redis has
it: the commit follows off the response path, and a crash before it leaves the journaled row
for the reaper to write. Should the round trip fail, the call waits for the commit as usual.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from django.conf import settings

from gateway.call import Call
from gateway.clients import client_pool
from gateway.ledger import ledger_writer
from gateway.metrics import ACTIVE, request_observe
from gateway.shared_state import REDIS_UNREACHABLE, pipeline_execute
from gateway.tracing import request_tracer
from providers.selectors import PriceInfo, RoutingSnapshot
from usage.budgets import usd_to_units
from usage.intents import intent_keeper
from usage.models import UsageStatus
from usage.pricing import cost_usd
from usage.services import LedgerEntry, StoredResponse
from usage.spool import spool_encode

logger = logging.getLogger(__name__)
request_log = logging.getLogger("gateway.requests")


def call_price(call: Call, snapshot: RoutingSnapshot):
    """The price in force when the call started, for its deployment (None: unpriced)."""
    d = call.deployment
    return (snapshot.price_for(provider_id=d.provider_id, upstream_model=d.upstream_model,
                               at=call.created_at) if d else None)


def call_cost(call: Call, snapshot: RoutingSnapshot, *, price=None) -> Decimal:
    """What the ledger bills this call: its tokens at the price in force when it started."""
    price = price if price is not None else call_price(call, snapshot)
    return cost_usd(price=price, **call.tokens())


def call_entry(call: Call, price: PriceInfo | None, *, now: float) -> LedgerEntry:
    """The call's ledger row: its tokens per class billed at `price` (the version in force when
    it started), its key's and team's names as they are now, its tags and end user. `now`:
    `time.monotonic()` at its end."""
    d = call.deployment
    key = call.key
    tokens = call.tokens()
    return LedgerEntry(
        request_id=call.request_id,
        client_request_id=call.client_request_id,
        created_at=call.created_at,
        api_key_id=key.id if key else None,
        key_prefix=key.prefix if key else "",
        key_name=key.name[:100] if key else "",
        team_id=key.team_id if key else None,
        team_name=(key.team_name or "")[:64] if key else "",
        surface=call.surface,
        public_model=call.public_model[:200],
        upstream_model=d.upstream_model if d else "",
        provider_name=d.provider_name if d else "",
        route_id=d.route_id if d else None,
        stream=call.stream,
        status=call.status,
        http_status=call.http_status,
        error_type=call.error_type[:64],
        **tokens,
        usage_source=call.usage_source,
        cost_usd=cost_usd(price=price, **tokens),
        price_id=price.id if price else None,
        latency_ms=int((now - call.started) * 1000),
        ttft_ms=int((call.first_token_at - call.started) * 1000) if call.first_token_at else None,
        idempotency_key=call.idempotency_key,
        tags=call.tags,
        end_user=call.end_user,
    )


async def call_finish(call: Call, snapshot: RoutingSnapshot, *, upstream_broke: bool = False,
                      response_body: bytes | None = None,
                      response_headers: dict[str, str] | None = None) -> None:
    """End the call: release its in-flight slot, count a mid-response upstream failure against
    the route's circuit (`upstream_broke`), correct its TPM charge, and write its one ledger row
    (priced at the price in force when it started) together with its budget settlement and, for
    an Idempotency-Key, the response to replay (`response_body`, successful calls only)."""
    if not call.finish_begin():
        return
    # Shielded: a client disconnect arriving meanwhile must not cut the finish short (the
    # ledger row, the lease release and the budget settlement all have to happen).
    await asyncio.shield(asyncio.ensure_future(_finish(
        call, snapshot, upstream_broke=upstream_broke, response_body=response_body,
        response_headers=response_headers)))


async def _release_shared(call: Call, *, upstream_broke: bool, cost_units: int,
                          journal: str | None = None) -> bool:
    """Give back what the call holds in the shared state: its in-flight slot (counting a
    mid-response failure against the route's circuit), its TPM estimate (corrected to the real
    tokens) and its Redis budget reservation (turned into spend). With Redis, the three go in
    one pipelined round trip, with the journaling of the call's row (`journal`, a usage.spool
    line) when given. Returns whether Redis took the journaled row."""
    redis = client_pool.redis()
    pipe = redis.pipeline(transaction=False) if redis is not None else None
    # What to do instead for each command queued on `pipe`, should Redis not know its script.
    fallbacks: list[Callable[[], Awaitable[None]] | None] = []
    journaled_at = None
    if journal is not None and pipe is not None and intent_keeper.final_queued(
            pipe, request_id=call.request_id, line=journal, shared_limits=call.budget_shared):
        journaled_at = len(fallbacks)
        fallbacks.append(None)
    lease = call.lease_taken()
    if lease is not None:
        routing = client_pool.routing()
        if pipe is not None and routing.release_queued(pipe, lease):
            fallbacks.append(functools.partial(routing.release, lease))
        else:
            await routing.release(lease)
        if upstream_broke and call.deployment is not None:
            await routing.record_failure(call.deployment.candidate, call.error_type or "stream_error",
                                         now=time.time())
    key = call.key
    if key is not None and key.tpm_limit and call.tpm_charged:
        delta = call.input_tokens + call.output_tokens - call.tpm_charged
        if delta:
            limiter = client_pool.ratelimiter()
            args = {"name": f"tpm:{key.id}", "per_minute": key.tpm_limit, "delta": delta}
            if pipe is not None and limiter.adjust_queued(pipe, **args):
                fallbacks.append(functools.partial(limiter.adjust, **args))
            else:
                await limiter.adjust(**args)
    budgets = client_pool.budgets() if call.budget_shared else None
    settle_queued = None
    if budgets is not None:
        args = {"request_id": call.request_id, "limits": list(call.budget_shared),
                "at": call.created_at, "cost_units": cost_units}
        if pipe is not None and budgets.settle_queued(pipe, **args):
            fallbacks.append(functools.partial(budgets.settle, **args))
            settle_queued = args
        else:
            await budgets.settle(**args)
    if not fallbacks:
        return False
    try:
        results = await pipeline_execute(pipe, fallbacks, raise_on_error=False)
    except REDIS_UNREACHABLE as exc:
        # The slot expires with its TTL and the TPM correction only affects the next
        # minute; the budget settlement is made when Redis answers again.
        logger.warning("releasing shared state failed (%s)", type(exc).__name__)
        if settle_queued is not None:
            budgets.settle_missed(**settle_queued, error=exc)
        return False
    return journaled_at is not None and not isinstance(results[journaled_at], Exception)


async def _finish(call: Call, snapshot: RoutingSnapshot, *, upstream_broke: bool,
                  response_body: bytes | None, response_headers: dict[str, str] | None) -> None:
    stored = release_claim = None
    claim = call.claim_dropped()
    if claim is not None:
        if call.status == UsageStatus.OK and response_body is not None:
            stored = StoredResponse(claim_id=claim, status=call.http_status,
                                    headers=response_headers or {}, body=response_body)
        else:
            release_claim = claim
    price = call_price(call, snapshot)
    now = time.monotonic()
    entry = call_entry(call, price, now=now)
    cost_units = usd_to_units(entry.cost_usd)
    row = {"settle_budget": call.budget_reserved, "charge_limits": call.budget_shared,
           "response": stored, "release_claim": release_claim}
    journal = (spool_encode(entry=entry, **row)
               if settings.GATEWAY_LEDGER_JOURNAL and call.intent_kept and stored is None
               and release_claim is None and not call.budget_reserved else None)
    if journal is not None and await _release_shared(
            call, upstream_broke=upstream_broke, cost_units=cost_units, journal=journal):
        committed = ledger_writer.enqueue(entry, **row)
        request_id = call.request_id
        committed.add_done_callback(lambda _: intent_keeper.drop(request_id))
    elif journal is not None:  # Redis did not take it: the commit comes first, as without
        await ledger_writer.write(entry, **row)
        intent_keeper.drop(call.request_id)
    else:
        # Independent of each other: the shared-state round trips overlap the ledger commit.
        await asyncio.gather(
            _release_shared(call, upstream_broke=upstream_broke, cost_units=cost_units),
            ledger_writer.write(entry, **row))
        if call.intent_kept:
            intent_keeper.drop(call.request_id)
    if call.deactivated():
        ACTIVE.dec()
    request_observe(surface=call.surface, model=entry.public_model, provider=entry.provider_name,
                    status=call.status, duration_s=now - call.started,
                    ttft_s=call.first_token_at - call.started if call.first_token_at else None,
                    input_tokens=call.input_tokens, output_tokens=call.output_tokens,
                    cached_tokens=call.cached_tokens, reasoning_tokens=call.reasoning_tokens,
                    cost_usd=float(entry.cost_usd))
    request_log.info(
        "%s %s %s %s %s in=%d out=%d cost=%s %dms", entry.request_id, entry.key_prefix,
        entry.public_model, entry.provider_name or "-", entry.status, entry.input_tokens,
        entry.output_tokens, entry.cost_usd, entry.latency_ms,
        extra={"request_id": entry.request_id, "client_request_id": entry.client_request_id,
               "key_prefix": entry.key_prefix, "surface": entry.surface, "model": entry.public_model,
               "provider": entry.provider_name, "status": entry.status, "http_status": entry.http_status,
               "input_tokens": entry.input_tokens, "output_tokens": entry.output_tokens,
               "cached_tokens": entry.cached_tokens, "reasoning_tokens": entry.reasoning_tokens,
               "cost_usd": str(entry.cost_usd), "latency_ms": entry.latency_ms, "ttft_ms": entry.ttft_ms})
    if call.trace is not None:
        request_tracer.record(call=call, entry=entry, response_body=response_body)
