"""The proxy pipeline every surface shares: body, key, model, deployment order, upstream call
with failover, and the one ledger row per proxied request.

Surfaces (gateway/surfaces/*) own their wire format; this module owns the policy.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from redis.exceptions import NoScriptError, RedisError

from gateway.adapters.base import UpstreamError, UpstreamResponse
from gateway.admission import call_admit
from gateway.clients import client_pool
from gateway.errors import (AuthenticationFailed, GatewayError, InvalidRequest, NotFound,
                            PayloadTooLarge,
                            PermissionDenied, RateLimited, ServiceUnavailable, UpstreamFailed,
                            UpstreamTimeout)
from gateway.ledger import ledger_writer
from gateway.metrics import ACTIVE, PROVIDER_LATENCY, request_observe
from gateway.responses import replayed
from gateway.routing import backoff_delay
from gateway.routing_state import Lease, reraise_swallowed_cancel
from gateway.streaming import DRAIN_SECONDS
from gateway.tracing import TraceCapture, request_tracer
from providers.keys import api_key_hash
from providers.selectors import Deployment, KeyInfo, RoutingSnapshot
from usage.budgets import BudgetLimit, usd_to_units
from usage.idempotency import body_hash
from usage.models import UsageSource, UsageStatus
from usage.pricing import cost_usd
from usage.services import LedgerEntry, StoredResponse

logger = logging.getLogger(__name__)
request_log = logging.getLogger("gateway.requests")

MAX_ATTEMPTS = 3
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


async def call_serve(call: ProxyCall, snapshot: RoutingSnapshot, deployments: tuple[Deployment, ...],
                     *, request: HttpRequest, prompt_tokens: int, max_tokens: int | None,
                     send: Callable[[Deployment], Awaitable[UpstreamResponse]],
                     respond: Callable[[UpstreamResponse], Awaitable[HttpResponse]],
                     error: Callable[[GatewayError], HttpResponse]) -> HttpResponse:
    """What every surface does once it has parsed its request: admission (an answered
    Idempotency-Key is replayed), the deployment order with failover through `send`, then
    `respond` with the upstream's answer. Failures become `error(exc)`, the surface's own error
    shape; the call's ledger row is written on every path (a client leaving included)."""
    try:
        replay = await call_admit(call, snapshot, deployments, prompt_tokens=prompt_tokens,
                                  max_tokens=max_tokens,
                                  digest=body_hash(request.path, request.body)
                                  if call.idempotency_key else None)
    except GatewayError as exc:
        if call.status == UsageStatus.REJECTED:
            await call_finish(call, snapshot)
        return error(exc)
    if replay is not None:
        return replayed(replay)
    async with call_guard(call, snapshot):
        try:
            upstream = await open_upstream(call, deployments, send)
        except GatewayError as exc:
            await call_finish(call, snapshot)
            return error(exc)
        # Until the upstream reports usage, bill the estimate: it has the prompt now.
        call.input_tokens = prompt_tokens
        return await respond(upstream)


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
    tokens) and its Redis budget reservation (turned into spend). With Redis, the three go in
    one pipelined round trip."""
    redis = client_pool.redis()
    pipe = redis.pipeline(transaction=False) if redis is not None else None
    # What to do instead for each command queued on `pipe`, should Redis not know its script.
    fallbacks: list[Callable[[], Awaitable[None]]] = []
    if call.lease is not None:
        lease, call.lease = call.lease, None
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
    if budgets is not None:
        args = {"request_id": call.request_id, "limits": list(call.budget_shared),
                "at": call.created_at, "cost_units": cost_units}
        if pipe is not None and budgets.settle_queued(pipe, **args):
            fallbacks.append(functools.partial(budgets.settle, **args))
        else:
            await budgets.settle(**args)
    if fallbacks:
        try:
            results = await pipe.execute(raise_on_error=False)
            reraise_swallowed_cancel()
        except (RedisError, OSError) as exc:
            # Nothing is lost for good: the slot and the reservation expire with their TTLs,
            # and the TPM correction only affects the next minute.
            reraise_swallowed_cancel()
            logger.warning("releasing shared state failed (%s)", type(exc).__name__)
            return
        for result, fallback in zip(results, fallbacks):
            if isinstance(result, NoScriptError):
                await fallback()


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
