"""The request path of every surface, top to bottom: intake -> admit -> plan and send (with
failover) -> respond (JSON or stream) -> finish.

    serve(request, surface)
      intake        body, key, model (gateway.intake); the surface's `prepare` parses and
                    builds each deployment's body in its wire format (a `Job`)
      call_open     admission (gateway.admission: Idempotency-Key, RPM/TPM, budget), then
                    open_upstream: the deployment order (gateway.routing via the routing
                    state) tried until one answers
      respond_json  the whole answer: usage from the upstream's codec, the client's body from
                    the surface (passed through, or translated from the IR)
      relay_stream  (gateway.relay) the stream, passed through or translated
      call_finish   (gateway.finish) the one ledger row, the shared state given back

A surface (gateway/surfaces/*) is a declaration: what it parses, how it writes an answer and
an error. Chat and tasks use the same phases (`call_open`, `respond_json`, `relay_stream`)
with their own outputs. Every path through here writes exactly one ledger row for an admitted
request: rejections and routing failures in `call_open`, answers in `respond_json` or the
relay, a client leaving in `disconnect_guard` or the relay.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

import orjson
from django.http import HttpRequest, HttpResponse

from gateway.adapters import upstream_send
from gateway.adapters.base import UpstreamError, UpstreamResponse
from gateway.admission import call_admit, intent_keep
from gateway.call import Call, call_begin
from gateway.clients import client_pool
from gateway.dialects import DIALECTS, Dialect, dialect_for
from gateway.errors import (GatewayError, InvalidRequest, RateLimited, ServiceUnavailable,
                            UpstreamFailed, UpstreamTimeout)
from gateway.finish import call_finish
from gateway.intake import attribution, authenticate, read_json, resolve, same_wire_body
from gateway.metrics import ACTIVE, PROVIDER_LATENCY
from gateway.relay import StreamRelay, relay_stream
from gateway.responses import replayed, sse_response
from gateway.routing import MAX_ATTEMPTS, backoff_delay
from gateway.streaming import DRAIN_SECONDS
from gateway.tokens import request_input_tokens, text_tokens
from gateway.types import (ChatRequest, ChatResponse, TextPart, ThinkingPart, ToolCallPart,
                           Usage)
from providers.cache import snapshot_cache
from providers.selectors import Deployment, KeyInfo, RoutingSnapshot
from usage.idempotency import Replay, body_hash
from usage.models import UsageStatus

_rng = random.Random()
logger = logging.getLogger(__name__)
# Header values much longer than this are cut by some proxies; the log line has them all.
DROPPED_HEADER_MAX = 1024


@dataclass(frozen=True, slots=True)
class Job:
    """Everything decided before admission. `bodies`: route id -> the body for that
    deployment, in its wire format; `req`: the request in the IR (None when every deployment
    is served by passthrough and nothing needed it)."""
    snapshot: RoutingSnapshot
    deployments: tuple[Deployment, ...]
    operation: str
    bodies: dict[int, dict[str, Any]]
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    req: ChatRequest | None = None
    # The client asked for the usage chunk of a passed-through OpenAI stream.
    include_usage: bool = False
    digest: str | None = None
    # route id -> what its body left out of the client's request (x-gateway-dropped).
    dropped: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    # The client's headers that an upstream of its own wire format takes (gateway.dialects).
    forwarded: Mapping[str, str] = field(default_factory=dict)


class Output(Protocol):
    """How a caller of the pipeline answers: its error shape, the relay of a stream (after its
    `opening` bytes), and the
    client's body for a whole answer (`data`: the upstream's JSON, `resp`: its IR, or None
    when passed through). `body` may mark the call failed (e.g. a task's schema)."""

    def error(self, exc: GatewayError) -> HttpResponse: ...

    def relay(self, call: Call, job: Job, dialect: Dialect) -> StreamRelay: ...

    def opening(self, call: Call) -> tuple[bytes, ...]: ...

    def body(self, call: Call, job: Job, dialect: Dialect, data: dict[str, Any],
             resp: ChatResponse | None) -> tuple[int, dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Surface:
    """A public API: its ledger name, the upstream operation it needs, `prepare` (client body,
    key, deployments able to serve it -> Job, or an awaitable of it; raises InvalidRequest),
    and the `output` that writes its answers and errors."""
    name: str
    operation: str
    prepare: Callable[[dict[str, Any], KeyInfo, RoutingSnapshot, tuple[Deployment, ...]], Job]
    output: Output


class Bodies(NamedTuple):
    """route id -> the body for that deployment, and what it left out of the request."""
    bodies: dict[int, dict[str, Any]]
    dropped: dict[int, tuple[str, ...]]


def translated_bodies(req: ChatRequest, deployments: tuple[Deployment, ...], *, stream: bool,
                      native_wire: str | None = None,
                      native_body: Callable[[Deployment], dict[str, Any]] | None = None,
                      ) -> Bodies:
    """The body for each deployment in its wire format: `native_body` for the client's own
    wire format (nothing dropped), the IR built by the upstream codec for the others (dropped:
    what the client codec could not carry in the IR, `req.dropped`, and what the upstream
    codec left out for this deployment). Raises InvalidRequest when the request carries
    content a deployment does not accept."""
    bodies: dict[int, dict[str, Any]] = {}
    dropped: dict[int, tuple[str, ...]] = {}
    for d in deployments:
        dialect = dialect_for(d.kind)
        if native_body is not None and dialect.wire == native_wire:
            bodies[d.route_id] = native_body(d)
            continue
        left_out = list(req.dropped)
        bodies[d.route_id] = dialect.codec.build_request(
            req, upstream_model=d.upstream_model, stream=stream, options=d.codec_options,
            dropped=left_out)
        if left_out:
            dropped[d.route_id] = tuple(dict.fromkeys(left_out))
    return Bodies(bodies, dropped)


def upstream_bodies(req: ChatRequest, deployments: tuple[Deployment, ...], *, stream: bool,
                    native_wire: str | None = None,
                    native_body: Callable[[Deployment], dict[str, Any]] | None = None,
                    ) -> dict[int, dict[str, Any]]:
    """route id -> the body for each deployment (`translated_bodies` without what was
    dropped, for callers that show no headers: chat, tasks)."""
    return translated_bodies(req, deployments, stream=stream, native_wire=native_wire,
                             native_body=native_body).bodies


def ir_prepare(parse: Callable[[dict[str, Any]], ChatRequest], *, operation: str = "chat",
               native_wire: str | None = None) -> Callable[..., Job]:
    """A surface's `prepare` that parses the body into the IR (so an invalid body is a 400
    naming its field, whatever the upstream) and builds each deployment's body from it; an
    upstream of `native_wire` gets the client's body with only `model` swapped."""
    def prepare(body: dict[str, Any], key: KeyInfo, snapshot: RoutingSnapshot,
                deployments: tuple[Deployment, ...]) -> Job:
        req = parse(body)
        if req.max_tokens is None and key.max_tokens_default:
            req = replace(req, max_tokens=key.max_tokens_default)
        bodies, dropped = translated_bodies(
            req, deployments, stream=req.stream, native_wire=native_wire,
            native_body=lambda d: same_wire_body(body, d))
        return Job(snapshot=snapshot, deployments=deployments, operation=operation,
                   bodies=bodies, prompt_tokens=request_input_tokens(req),
                   max_tokens=req.max_tokens, stream=req.stream, req=req, dropped=dropped)
    return prepare


async def serve(request: HttpRequest, surface: Surface) -> HttpResponse:
    """One request of an API surface, start to end. Errors are in the surface's shape;
    exactly one ledger row for every request that got past authentication and validation."""
    call = call_begin(request, surface=surface.name)
    try:
        body = read_json(request)
        snapshot = await snapshot_cache.get()
        call.authenticated(await authenticate(request, snapshot))
        deployments = serving(resolve(snapshot, call.key, body.get("model")), surface.operation,
                              model=body["model"])
        job = surface.prepare(body, call.key, snapshot, deployments)
        if inspect.isawaitable(job):  # a surface that reads stored state (Responses)
            job = await job
    except GatewayError as exc:
        return surface.output.error(exc)
    if forwarded := forwarded_headers(request, getattr(surface.output, "wire", None)):
        job = replace(job, forwarded=forwarded)
    call.described(model=body["model"], stream=job.stream)
    call.attributed(**attribution(request, body))
    if call.idempotency_key:
        job = replace(job, digest=body_hash(request.path, request.body))
    return await run(call, job, surface.output)


def forwarded_headers(request: HttpRequest, wire: str | None) -> dict[str, str]:
    """The client's headers that upstream kinds of its own wire format take (Anthropic's
    `anthropic-beta`); each deployment of that format gets them with its body, passed
    through."""
    out: dict[str, str] = {}
    for dialect in DIALECTS.values():
        if wire is not None and dialect.wire == wire:
            out.update(dialect.forwardable(request.headers))
    return out


def dropped_header(names: tuple[str, ...]) -> str:
    """`x-gateway-dropped`: the names, comma-separated, cut at a name boundary to stay under
    DROPPED_HEADER_MAX characters (ending with ", ..." when cut). Names come from the
    client's JSON (field names, tool types): anything but printable ASCII becomes "?"."""
    value = ""
    for name in names:
        name = "".join(c if " " <= c <= "~" else "?" for c in name[:200])
        candidate = f"{value}, {name}" if value else name
        if len(candidate) > DROPPED_HEADER_MAX - 5:
            return f"{value}, ..." if value else "..."
        value = candidate
    return value


def serving(deployments: tuple[Deployment, ...], operation: str, *,
            model: str) -> tuple[Deployment, ...]:
    """The deployments whose kind serves `operation`. Raises InvalidRequest if none does."""
    able = tuple(d for d in deployments if dialect_for(d.kind).serves(operation))
    if not able:
        raise InvalidRequest(f"`{model[:200]}` is not served by a provider that offers "
                             f"{operation.replace('_', ' ')}", param="model")
    return able


async def run(call: Call, job: Job, output: Output) -> HttpResponse:
    """Admit, open and answer a call whose Job is ready."""
    async with disconnect_guard(call, job.snapshot):
        try:
            opened = await call_open(call, job)
        except GatewayError as exc:
            return output.error(exc)
        if isinstance(opened, Replay):
            return replayed(opened)
        headers = {"x-gateway-provider": call.deployment.provider_name}
        if dropped := job.dropped.get(call.deployment.route_id):
            headers["x-gateway-dropped"] = dropped_header(dropped)
            logger.info("request %s to %s: dropped %s", call.request_id,
                        call.deployment.provider_name, ", ".join(dropped))
        if not call.stream:
            return await respond_json(call, job, opened, output, headers=headers)
    relay = output.relay(call, job, opened.dialect)
    return sse_response(relay_stream(call, job.snapshot, opened, relay, headers=headers,
                                     opening=output.opening(call)),
                        headers=headers,
                        on_abandoned=lambda stream: stream_abandoned(call, stream))


async def call_open(call: Call, job: Job) -> UpstreamResponse | Replay:
    """Admit the call (idempotency when the job has a digest, rate limits, budget) and open
    the upstream (routing, failover). Returns the upstream response, or the stored answer of a
    repeated Idempotency-Key. Raises GatewayError: idempotency conflicts (no row), rejections
    and routing failures (their ledger row written). An admitted call's intent is written
    before the upstream is called (written with the budget reservation when there is one),
    so a crash of this process from then on still leaves its row (usage.intents)."""
    try:
        replay = await call_admit(call, job.snapshot, job.deployments, digest=job.digest,
                                  prompt_tokens=job.prompt_tokens, max_tokens=job.max_tokens)
        if replay is not None:
            return replay
        await intent_keep(call, job.snapshot, job.deployments, prompt_tokens=job.prompt_tokens)
        upstream = await open_upstream(call, job)
    except GatewayError:
        if call.status != UsageStatus.OK:
            await call_finish(call, job.snapshot)
        raise
    call.prompt_estimated(job.prompt_tokens)
    return upstream


async def open_upstream(call: Call, job: Job, *,
                        send: Callable[[Deployment], Awaitable[Any]] | None = None,
                        ) -> UpstreamResponse:
    """Plan the deployment order (smooth WRR within a priority, circuit breakers, shared via
    Redis when configured) and try deployments until one answers. Retryable failures move on
    after a short jittered backoff; a non-retryable one is the client's answer. On success the
    call holds an in-flight lease that `call_finish` releases. `send` opens one deployment in
    place of posting the job's body (the realtime surface's WebSocket, gateway.realtime); it
    raises UpstreamError as an adapter does, and what it returns is returned. Raises a
    GatewayError."""
    routing = client_pool.routing()
    by_route = {d.route_id: d for d in job.deployments}
    if call.activated():
        ACTIVE.inc()
    plan = await routing.plan(call.public_model, [d.candidate for d in job.deployments],
                              now=time.time())
    if not plan.routes:
        call.failed(status=UsageStatus.UPSTREAM_ERROR, http_status=503,
                    error_type=plan.reason or "")
        raise ServiceUnavailable(
            f"no healthy deployment of `{call.public_model}`: every circuit is open"
            if plan.reason == "circuit_open" else f"`{call.public_model}` has no active deployment",
            headers={"retry-after": str(max(1, math.ceil(plan.retry_after_s or 1)))})
    last: UpstreamError | None = None
    tried = 0
    for candidate in plan.routes:
        if tried >= MAX_ATTEMPTS:
            break
        # The first route's slot may have come with the plan (one round trip for both).
        lease = (plan.lease if plan.lease is not None and candidate is plan.routes[0]
                 else await routing.acquire(candidate))
        if lease is None:
            continue
        if last is not None:
            await asyncio.sleep(backoff_delay(tried, last.retry_after, _rng, base_s=0.05, cap_s=1.0))
        tried += 1
        deployment = by_route[candidate.route_id]
        call.routed(deployment)
        sent_at = time.monotonic()
        try:
            upstream = await (send(deployment) if send is not None else upstream_send(
                deployment, operation=job.operation, body=job.bodies[deployment.route_id],
                stream=job.stream, request_id=call.request_id, forwarded=job.forwarded))
        except asyncio.CancelledError:
            await asyncio.shield(routing.release(lease))
            raise
        except UpstreamError as exc:
            await routing.release(lease)
            last = exc
            if exc.retryable or exc.status in (401, 403):
                await routing.record_failure(candidate, exc.error_class, now=time.time())
            if not exc.retryable:
                break
            continue
        PROVIDER_LATENCY.labels(deployment.provider_name).observe(time.monotonic() - sent_at)
        await routing.record_success(candidate)
        call.leased(lease)
        return upstream
    if last is None:
        call.failed(status=UsageStatus.REJECTED, http_status=429, error_type="at_capacity")
        raise RateLimited(f"every deployment of `{call.public_model}` is at its concurrency limit",
                          code="deployments_at_capacity", headers={"retry-after": "1"})
    raise upstream_failure(call, last)


def upstream_failure(call: Call, exc: UpstreamError) -> GatewayError:
    """The GatewayError a client sees for an upstream failure; records it on the call."""
    if exc.timeout:
        call.failed(status=UsageStatus.TIMEOUT, http_status=504, error_type=exc.error_class)
        return UpstreamTimeout("the upstream did not respond in time")
    if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 403, 408, 429):
        call.failed(status=UsageStatus.UPSTREAM_ERROR, http_status=400, error_type=exc.error_class)
        return InvalidRequest(exc.message)
    call.failed(status=UsageStatus.UPSTREAM_ERROR, http_status=502, error_type=exc.error_class)
    return UpstreamFailed(f"every deployment failed; last error: {exc.message}")


async def read_answer(call: Call, upstream: UpstreamResponse, *,
                      parse: bool) -> tuple[dict[str, Any], ChatResponse | None]:
    """The upstream's whole body (the upstream released) and, when `parse` (or to estimate
    missing usage), its IR; the call's usage as reported, else estimated. Raises the
    GatewayError the client sees, with the failure recorded on the call (billed at nothing:
    no answer was produced)."""
    codec = upstream.dialect.codec
    try:
        data = await upstream.json()
        if codec.error_in_body(data):
            call.failed(status=UsageStatus.UPSTREAM_ERROR, http_status=502, error_type="error_body")
            raise UpstreamFailed("the upstream returned an error instead of a completion")
        usage = data.get(upstream.dialect.usage_field)
        resp = codec.parse_response(data) if parse else None
    except UpstreamError as exc:
        call.nothing_billed()
        raise upstream_failure(call, exc) from None
    except GatewayError as exc:
        if call.status == UsageStatus.OK:
            call.failed(status=UsageStatus.UPSTREAM_ERROR, http_status=exc.status,
                        error_type="bad_response")
        call.nothing_billed()
        raise
    finally:
        await upstream.close()
    if isinstance(usage, dict):
        call.usage_reported(codec.usage_from(usage))
    else:
        call.output_estimated(output_tokens_estimate(resp or _parsed_or_empty(codec, data)))
    call.first_token()
    return data, resp


def _parsed_or_empty(codec, data: dict[str, Any]) -> ChatResponse:
    """A passed-through body's IR, for an estimate only (an embedding has no content)."""
    try:
        return codec.parse_response(data)
    except GatewayError:
        return ChatResponse(id="", content=(), stop_reason=None, usage=Usage())


def output_tokens_estimate(resp: ChatResponse) -> int:
    """What a response's content is likely to have cost, for upstreams that report no usage."""
    parts = []
    for part in resp.content:
        if isinstance(part, (TextPart, ThinkingPart)):
            parts.append(part.text)
        elif isinstance(part, ToolCallPart):
            parts.append(part.name + part.arguments)
    return text_tokens("".join(parts))


async def respond_json(call: Call, job: Job, upstream: UpstreamResponse, output: Output, *,
                       headers: dict[str, str]) -> HttpResponse:
    """A non-streamed answer: read, accounted, written by `output`, and the call finished."""
    dialect = upstream.dialect
    try:
        data, resp = await read_answer(call, upstream, parse=not output_passes(output, dialect))
        status, body = output.body(call, job, dialect, data, resp)
    except GatewayError as exc:
        await call_finish(call, job.snapshot, upstream_broke=True)
        return output.error(exc)
    payload = orjson.dumps(body)
    await call_finish(call, job.snapshot,
                      response_body=payload if status == 200 else None,
                      response_headers={**headers, "content-type": "application/json"})
    response = HttpResponse(payload, status=status, content_type="application/json")
    for name, value in headers.items():
        response[name] = value
    return response


def output_passes(output: Output, dialect: Dialect) -> bool:
    """Whether `output` passes this wire format's answers through (no IR needed)."""
    return getattr(output, "wire", None) == dialect.wire


class disconnect_guard:
    """`async with disconnect_guard(call, snapshot):` around the phases before a response
    exists. When the client disconnects meanwhile (waiting for upstream headers, or a
    non-streamed body), the task is cancelled: the call is finished as `client_disconnected`
    (499) — its lease released and its one ledger row written, shielded — and the cancellation
    goes on."""

    def __init__(self, call: Call, snapshot: RoutingSnapshot) -> None:
        self.call = call
        self.snapshot = snapshot

    async def __aenter__(self) -> Call:
        return self.call

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if exc_type is asyncio.CancelledError and not self.call.finished:
            self.call.disconnected(before_response=True)
            await asyncio.shield(asyncio.ensure_future(call_finish(self.call, self.snapshot)))
        return False


async def stream_abandoned(call: Call, stream) -> None:
    """Close a relay generator whose client left before its first byte, so that the relay's
    own disconnect branch decides what happens (gateway.relay: the upstream closed at once and
    what was streamed billed, or, with `drain_on_disconnect`, drained for its usage) and
    finishes the call as `client_disconnected`. It is started first, since an unstarted
    generator closes without running: that may read the upstream's first event (bounded by
    DRAIN_SECONDS)."""
    call.disconnected()
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            await anext(stream)
    except (StopAsyncIteration, TimeoutError):
        pass
    await stream.aclose()
