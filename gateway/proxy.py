"""The proxy pipeline every surface shares: body, key, model, deployment order, upstream call
with failover, and the one ledger row per proxied request.

Surfaces (gateway/surfaces/*) own their wire format; this module owns the policy.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpRequest
from django.utils import timezone

from gateway.adapters.base import UpstreamError, UpstreamResponse
from gateway.clients import client_pool
from gateway.database import db
from gateway.metrics import ACTIVE, PROVIDER_LATENCY, request_observe
from gateway.errors import (AuthenticationFailed, GatewayError, InvalidRequest, NotFound,
                            PayloadTooLarge,
                            PermissionDenied, RateLimited, ServiceUnavailable, UpstreamFailed,
                            UpstreamTimeout)
from gateway.routing import backoff_delay
from gateway.routing_state import Lease
from gateway.streaming import DRAIN_SECONDS
from gateway.tracing import TraceCapture, request_tracer
from providers.keys import api_key_hash
from providers.selectors import Deployment, KeyInfo, RoutingSnapshot
from usage.budgets import BudgetLimit, budget_counted_units, budget_reserve, usd_to_units
from usage.idempotency import Replay, idempotency_claim, idempotency_release
from usage.models import BudgetScope, UsageSource, UsageStatus
from usage.pricing import cost_usd
from usage.ratelimits import Limit
from usage.services import LedgerEntry, LedgerWrite, StoredResponse, usage_records_write
from usage.spool import ledger_spool_flush, spool_encode, spool_push, spool_size

logger = logging.getLogger(__name__)
request_log = logging.getLogger("gateway.requests")

MAX_ATTEMPTS = 3
# Output tokens assumed for a budget reservation when neither the request nor the key caps them.
DEFAULT_MAX_TOKENS = 4096
_rng = random.Random()


@dataclass(slots=True)
class ProxyCall:
    """Mutable state of one request, filled in as it progresses; becomes its ledger row."""

    surface: str
    client_request_id: str
    request_id: str = field(default_factory=lambda: f"req_{uuid.uuid4().hex}")
    started: float = field(default_factory=time.monotonic)
    created_at: object = field(default_factory=timezone.now)
    key: KeyInfo | None = None
    public_model: str = ""
    stream: bool = False
    deployment: Deployment | None = None
    first_token_at: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    usage_source: str = UsageSource.ESTIMATED
    status: str = UsageStatus.OK
    http_status: int = 200
    error_type: str = ""
    idempotency_key: str = ""
    lease: Lease | None = None
    budget_reserved: bool = False
    # The budgets reserved in Redis (settled in Redis, spend added to the database counters).
    budget_shared: tuple[BudgetLimit, ...] = ()
    tpm_charged: int = 0
    idempotency_claim: int | None = None
    # Bytes sent to the client, kept only while an Idempotency-Key claim needs them.
    captured: list[bytes] | None = None
    # Kept for the request's span only while tracing is on (gateway.tracing).
    trace: TraceCapture | None = None
    active: bool = False
    finished: bool = False

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def take_openai_usage(self, usage: object) -> None:
        """Record usage as an OpenAI-compatible upstream reported it."""
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if not isinstance(prompt, int) and not isinstance(completion, int):
            return
        self.input_tokens = prompt if isinstance(prompt, int) else self.input_tokens
        self.output_tokens = completion if isinstance(completion, int) else self.output_tokens
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
        self.cached_tokens = cached if isinstance(cached, int) else 0
        self.reasoning_tokens = reasoning if isinstance(reasoning, int) else 0
        self.usage_source = UsageSource.REPORTED

    def fail(self, *, status: str, http_status: int, error_type: str) -> None:
        self.status, self.http_status, self.error_type = status, http_status, error_type


def call_begin(request: HttpRequest, *, surface: str) -> ProxyCall:
    sent = request.headers.get("x-request-id", "")
    # The ledger's id is always ours (clients reuse theirs); the response echoes the client's
    # id when it sent a valid one (RequestIdMiddleware), else carries the ledger's.
    call = ProxyCall(surface=surface,
                     client_request_id=sent if sent and request.request_id == sent else "")
    if not call.client_request_id:
        request.request_id = call.request_id
    call.idempotency_key = request.headers.get("idempotency-key", "")[:255]
    if request_tracer.enabled:
        call.trace = request_tracer.capture(request)
    return call


def read_json(request: HttpRequest) -> dict:
    """The request body as a JSON object. Raises PayloadTooLarge or InvalidRequest."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.GATEWAY_MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body exceeds {settings.GATEWAY_MAX_BODY_BYTES} bytes")
    try:
        raw = request.body
    except RequestDataTooBig:
        raise PayloadTooLarge(f"request body exceeds {settings.GATEWAY_MAX_BODY_BYTES} bytes") from None
    if len(raw) > settings.GATEWAY_MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body exceeds {settings.GATEWAY_MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("could not parse the request body as JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def authenticate(request: HttpRequest, snapshot: RoutingSnapshot) -> KeyInfo:
    """The key from `Authorization: Bearer` or `x-api-key`. Raises AuthenticationFailed."""
    raw = ""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        raw = auth[7:].strip()
    if not raw:
        raw = request.headers.get("x-api-key", "").strip()
    if not raw:
        raise AuthenticationFailed("missing API key: send `Authorization: Bearer <key>` or `x-api-key`")
    key = snapshot.keys.get(api_key_hash(raw))
    if key is None:
        raise AuthenticationFailed("invalid API key")
    return key


def resolve(snapshot: RoutingSnapshot, key: KeyInfo, model: object) -> tuple[Deployment, ...]:
    """The deployments serving `model` for this key. Raises InvalidRequest, NotFound,
    PermissionDenied."""
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a string", param="model")
    deployments = snapshot.deployments.get(model)
    if not deployments:
        raise NotFound(f"the model `{model[:200]}` does not exist or has no enabled deployment",
                       param="model")
    if not key.may_use(model):
        raise PermissionDenied(f"this API key may not use the model `{model}`", param="model")
    return deployments


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


async def call_admit(call: ProxyCall, snapshot: RoutingSnapshot, deployments: tuple[Deployment, ...],
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
        call.idempotency_claim = claim
        call.captured = []
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
        call.fail(status=UsageStatus.REJECTED, http_status=exc.status,
                  error_type=exc.code or exc.type)
        if call.idempotency_claim is not None:
            await db.run(idempotency_release, claim_id=call.idempotency_claim)
            call.idempotency_claim = call.captured = None
        raise
    return None


async def _rates_acquire(call: ProxyCall, rates: list[Limit]) -> None:
    """Charge the key's RPM and TPM (the prompt estimate) together. Raises RateLimited."""
    key = call.key
    refusal = await client_pool.ratelimiter().acquire_all(rates)
    if refusal is not None:
        rpm = refusal.name.startswith("rpm:")
        raise RateLimited(f"this key's {'RPM' if rpm else 'TPM'} limit of "
                          f"{key.rpm_limit if rpm else key.tpm_limit} is reached",
                          headers={"retry-after": str(max(1, math.ceil(refusal.wait_s)))})
    if key.tpm_limit:
        call.tpm_charged = rates[-1].cost


async def _db_counted_units(limit: BudgetLimit, now) -> int:
    return await db.run(budget_counted_units, limit=limit, now=now)


async def _budget_reserve(call: ProxyCall, limits: list[BudgetLimit], amount_units: int) -> None:
    """Reserve in Redis when configured and reachable, else in the database. Raises
    BudgetExceeded, or ServiceUnavailable when the budget cannot be checked (fail closed unless
    GATEWAY_BUDGETS_FAIL_OPEN)."""
    try:
        budgets = client_pool.budgets()
        if budgets is not None and await budgets.reserve(
                request_id=call.request_id, limits=limits, amount_units=amount_units,
                now=call.created_at, spent_units=_db_counted_units):
            call.budget_shared = tuple(limits)
            return
        await db.run(budget_reserve, request_id=call.request_id, limits=limits,
                     amount_units=amount_units)
        call.budget_reserved = True
    except DatabaseError:
        if not settings.GATEWAY_BUDGETS_FAIL_OPEN:
            raise ServiceUnavailable("the budget cannot be checked: the database is "
                                     "unreachable", code="budget_unavailable",
                                     headers={"retry-after": "5"}) from None
        logger.warning("budget check skipped for key %s: database unreachable", call.key.prefix)


async def open_upstream(call: ProxyCall, deployments: tuple[Deployment, ...],
                        send: Callable[[Deployment], Awaitable[UpstreamResponse]]) -> UpstreamResponse:
    """Plan the deployment order (smooth WRR within a priority, circuit breakers, shared via
    Redis when configured) and try deployments until one answers. Retryable failures move on
    after a short jittered backoff; a non-retryable one is the client's answer. On success the
    call holds an in-flight lease that `call_finish` releases. Raises a GatewayError."""
    routing = client_pool.routing()
    by_route = {d.route_id: d for d in deployments}
    if not call.active:
        call.active = True
        ACTIVE.inc()
    plan = await routing.plan(call.public_model, [d.candidate for d in deployments], now=time.time())
    if not plan.routes:
        retry_after = str(max(1, math.ceil(plan.retry_after_s or 1)))
        call.fail(status=UsageStatus.UPSTREAM_ERROR, http_status=503, error_type=plan.reason or "")
        raise ServiceUnavailable(
            f"no healthy deployment of `{call.public_model}`: every circuit is open"
            if plan.reason == "circuit_open" else f"`{call.public_model}` has no active deployment",
            headers={"retry-after": retry_after})
    last: UpstreamError | None = None
    tried = 0
    for candidate in plan.routes:
        if tried >= MAX_ATTEMPTS:
            break
        lease = await routing.acquire(candidate)
        if lease is None:
            continue
        if last is not None:
            await asyncio.sleep(backoff_delay(tried, last.retry_after, _rng, base_s=0.05, cap_s=1.0))
        tried += 1
        call.deployment = by_route[candidate.route_id]
        sent_at = time.monotonic()
        try:
            upstream = await send(call.deployment)
        except asyncio.CancelledError:
            await asyncio.shield(routing.release(lease))
            raise
        except UpstreamError as exc:
            await routing.release(lease)
            last = exc
            logger.warning("request %s: provider %s failed: %s", call.request_id,
                           call.deployment.provider_name, exc.error_class)
            if exc.retryable or exc.status in (401, 403):
                await routing.record_failure(candidate, exc.error_class, now=time.time())
            if not exc.retryable:
                break
            continue
        PROVIDER_LATENCY.labels(call.deployment.provider_name).observe(time.monotonic() - sent_at)
        await routing.record_success(candidate)
        call.lease = lease
        return upstream
    if last is None:
        call.fail(status=UsageStatus.REJECTED, http_status=429, error_type="at_capacity")
        raise RateLimited(f"every deployment of `{call.public_model}` is at its concurrency limit",
                          code="deployments_at_capacity", headers={"retry-after": "1"})
    raise upstream_failure(call, last)


def upstream_failure(call: ProxyCall, exc: UpstreamError) -> Exception:
    """The GatewayError a client sees for an upstream failure; records it on the call."""
    if exc.timeout:
        call.fail(status=UsageStatus.TIMEOUT, http_status=504, error_type=exc.error_class)
        return UpstreamTimeout("the upstream did not respond in time")
    if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 403, 408, 429):
        call.fail(status=UsageStatus.UPSTREAM_ERROR, http_status=400, error_type=exc.error_class)
        return InvalidRequest(exc.message)
    call.fail(status=UsageStatus.UPSTREAM_ERROR, http_status=502, error_type=exc.error_class)
    return UpstreamFailed(f"every deployment failed; last error: {exc.message}")


class _LoopBatch:
    """The writes waiting in one event loop, and the task committing them."""

    __slots__ = ("queue", "worker")

    def __init__(self) -> None:
        self.queue: list[tuple[LedgerWrite, asyncio.Future]] = []
        self.worker: asyncio.Task | None = None


class LedgerWriter:
    """Writes ledger rows off the event loop, with group commit.

    `write` returns once the row is committed (or spooled): durability is per request. Writes
    arriving while a commit is running queue up and go together in the next transaction, one
    thread hop per batch instead of one per request. A write started during a client disconnect
    (task cancellation) still completes. A batch the database refuses is spooled (usage.spool)
    and a flusher in this process retries every few seconds until the database takes it; the
    Celery `usage.flush_spool` task does the same across processes."""

    FLUSH_INTERVAL_S = 2.0
    MAX_BATCH = 256

    def __init__(self) -> None:
        self._batches: dict[asyncio.AbstractEventLoop, _LoopBatch] = {}
        self._flusher: asyncio.Task | None = None

    async def write(self, entry: LedgerEntry, *, settle_budget: bool = False,
                    charge_limits: tuple[BudgetLimit, ...] = (),
                    response: StoredResponse | None = None, release_claim: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is None:
            self._batches = {lp: b for lp, b in self._batches.items() if not lp.is_closed()}
            batch = self._batches[loop] = _LoopBatch()
        done = loop.create_future()
        batch.queue.append((LedgerWrite(entry=entry, settle_budget=settle_budget,
                                        charge_limits=charge_limits, response=response,
                                        release_claim=release_claim), done))
        if batch.worker is None or batch.worker.done():
            batch.worker = loop.create_task(self._commit_queued(batch))
        await asyncio.shield(done)

    async def _commit_queued(self, batch: _LoopBatch) -> None:
        while batch.queue:
            taken, batch.queue = batch.queue[:self.MAX_BATCH], batch.queue[self.MAX_BATCH:]
            writes = [w for w, _ in taken]
            try:
                await self._commit(writes)
            except Exception as exc:  # never strand a waiting request
                logger.error("ledger write failed: %s", type(exc).__name__)
            for _, done in taken:
                if not done.done():
                    done.set_result(None)

    async def _commit(self, writes: list[LedgerWrite]) -> None:
        try:
            await db.run(usage_records_write, writes=writes)
            return
        except DatabaseError as exc:
            if self._flusher is None or self._flusher.done():
                logger.error("ledger writes failing (%s); spooling rows until the database "
                             "recovers", type(exc).__name__)
        lines = [spool_encode(entry=w.entry, settle_budget=w.settle_budget, response=w.response,
                              release_claim=w.release_claim, charge_limits=w.charge_limits)
                 for w in writes]
        loop = asyncio.get_running_loop()
        for line, w in zip(lines, writes):
            try:
                await loop.run_in_executor(None, spool_push, line)
            except OSError as exc:
                logger.critical("ledger row %s could not be spooled (%s)", w.entry.request_id,
                                type(exc).__name__)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_until_empty())

    async def _flush_until_empty(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_INTERVAL_S)
            try:
                await db.run(ledger_spool_flush)
                if await asyncio.get_running_loop().run_in_executor(None, spool_size) == 0:
                    return
            except Exception as exc:  # keep retrying whatever failed; rows wait in the spool
                logger.warning("ledger spool flush failed (%s); retrying", type(exc).__name__)

    async def drain(self) -> None:
        """Wait for this loop's queued writes to be committed (graceful shutdown)."""
        batch = self._batches.get(asyncio.get_running_loop())
        while batch is not None and batch.worker is not None and not batch.worker.done():
            await asyncio.shield(batch.worker)


ledger_writer = LedgerWriter()


async def call_finish(call: ProxyCall, snapshot: RoutingSnapshot, *, upstream_broke: bool = False,
                      response_body: bytes | None = None,
                      response_headers: dict[str, str] | None = None) -> None:
    """End the call: release its in-flight slot, count a mid-response upstream failure against
    the route's circuit (`upstream_broke`), correct its TPM charge, and write its one ledger row
    (priced at the price in force when it started) together with its budget settlement and, for
    an Idempotency-Key, the response to replay (`response_body`, successful calls only)."""
    if call.finished:
        return
    call.finished = True
    # Shielded: a client disconnect arriving meanwhile must not cut the finish short (the
    # ledger row, the lease release and the budget settlement all have to happen).
    await asyncio.shield(asyncio.ensure_future(_finish(
        call, snapshot, upstream_broke=upstream_broke, response_body=response_body,
        response_headers=response_headers)))


async def _release_shared(call: ProxyCall, *, upstream_broke: bool, cost_units: int) -> None:
    """Give back what the call holds in the shared state: its in-flight slot (counting a
    mid-response failure against the route's circuit), its TPM estimate (corrected to the real
    tokens) and its Redis budget reservation (turned into spend)."""
    if call.lease is not None:
        lease, call.lease = call.lease, None
        routing = client_pool.routing()
        await routing.release(lease)
        if upstream_broke and call.deployment is not None:
            await routing.record_failure(call.deployment.candidate, call.error_type or "stream_error",
                                         now=time.time())
    key = call.key
    if key is not None and key.tpm_limit and call.tpm_charged:
        delta = call.input_tokens + call.output_tokens - call.tpm_charged
        if delta:
            await client_pool.ratelimiter().adjust(f"tpm:{key.id}", per_minute=key.tpm_limit, delta=delta)
    if call.budget_shared:
        budgets = client_pool.budgets()
        if budgets is not None:
            await budgets.settle(request_id=call.request_id, limits=list(call.budget_shared),
                                 at=call.created_at, cost_units=cost_units)


async def _finish(call: ProxyCall, snapshot: RoutingSnapshot, *, upstream_broke: bool,
                  response_body: bytes | None, response_headers: dict[str, str] | None) -> None:
    stored = release_claim = None
    if call.idempotency_claim is not None:
        if call.status == UsageStatus.OK and response_body is not None:
            stored = StoredResponse(claim_id=call.idempotency_claim, status=call.http_status,
                                    headers=response_headers or {}, body=response_body)
        else:
            release_claim = call.idempotency_claim
        call.idempotency_claim = call.captured = None
    d = call.deployment
    price = (snapshot.price_for(provider_id=d.provider_id, upstream_model=d.upstream_model,
                                at=call.created_at) if d else None)
    now = time.monotonic()
    key = call.key
    entry = LedgerEntry(
        request_id=call.request_id,
        client_request_id=call.client_request_id,
        created_at=call.created_at,
        api_key_id=key.id if key else None,
        key_prefix=key.prefix if key else "",
        team_id=key.team_id if key else None,
        surface=call.surface,
        public_model=call.public_model[:200],
        upstream_model=d.upstream_model if d else "",
        provider_name=d.provider_name if d else "",
        route_id=d.route_id if d else None,
        stream=call.stream,
        status=call.status,
        http_status=call.http_status,
        error_type=call.error_type[:64],
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        cached_tokens=call.cached_tokens,
        reasoning_tokens=call.reasoning_tokens,
        usage_source=call.usage_source,
        cost_usd=cost_usd(price=price, input_tokens=call.input_tokens,
                          output_tokens=call.output_tokens, cached_tokens=call.cached_tokens),
        price_id=price.id if price else None,
        latency_ms=int((now - call.started) * 1000),
        ttft_ms=int((call.first_token_at - call.started) * 1000) if call.first_token_at else None,
        idempotency_key=call.idempotency_key,
    )
    # Independent of each other: the shared-state round trips overlap the ledger commit.
    await asyncio.gather(
        _release_shared(call, upstream_broke=upstream_broke, cost_units=usd_to_units(entry.cost_usd)),
        ledger_writer.write(entry, settle_budget=call.budget_reserved,
                            charge_limits=call.budget_shared, response=stored,
                            release_claim=release_claim))
    if call.active:
        call.active = False
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


class call_guard:
    """`async with call_guard(call, snapshot):` around a view's upstream phase. When the client
    disconnects while the view still waits (for upstream headers, or a non-streamed body), the
    task is cancelled: the call is then finished as `client_disconnected` — its lease released
    and its one ledger row written, shielded — before the cancellation goes on."""

    def __init__(self, call: ProxyCall, snapshot: RoutingSnapshot) -> None:
        self.call = call
        self.snapshot = snapshot

    async def __aenter__(self) -> ProxyCall:
        return self.call

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if exc_type is asyncio.CancelledError and not self.call.finished:
            self.call.fail(status=UsageStatus.CLIENT_DISCONNECTED, http_status=499,
                           error_type="client_disconnected")
            self.call.captured = None
            await asyncio.shield(asyncio.ensure_future(call_finish(self.call, self.snapshot)))
        return False


async def stream_abandoned(call: ProxyCall, stream) -> None:
    """Run a relay generator whose client left before its first byte: drive it to its end
    (bounded by DRAIN_SECONDS) with the output discarded, so the upstream's usage is billed and
    the call finished as `client_disconnected` by the relay's own code path."""
    call.fail(status=UsageStatus.CLIENT_DISCONNECTED, http_status=call.http_status,
              error_type="client_disconnected")
    call.captured = None
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in stream:
                pass
    except TimeoutError:
        await stream.aclose()
