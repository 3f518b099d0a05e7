"""POST /v1/responses, GET and DELETE /v1/responses/{id} — the OpenAI Responses API, JSON or
SSE, served by any upstream, with stored responses.

Upstreams that speak Responses (gateway.dialects `openai_responses`) get the client's body with
only `model` swapped, hosted tools and encrypted reasoning included, and their answer is passed
through. Others are reached through the IR: Chat Completions for OpenAI-compatible (and mock)
upstreams, Messages for Anthropic ones; the answer comes back as a `response` object, or as
`response.created` … `response.completed` events whose final response carries the usage; what
the upstream cannot take is named in `x-gateway-dropped`. Errors use OpenAI's shape; a failure
mid-stream is an `error` event followed by `response.failed`.

Stored responses (response_store): unless the request says `store: false`, its conversation
(input and output items) is kept per API key for GATEWAY_RESPONSES_TTL_S. The write is
scheduled when the answer is complete and runs beside the ledger row; a lookup in this process
waits for a write still running. `previous_response_id` continues a chain: the stored items
come before the new input, for any upstream. A Responses upstream that answered the previous
turn itself receives `previous_response_id` (its own id) and only the new input; the chain
stays on that provider while it is healthy (its deployments are tried first). An unknown id,
an expired one or another key's is a 404.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from gateway.call import Call
from gateway.codecs import openai_responses as codec
from gateway.database import db
from gateway.dialects import Dialect
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.intake import authenticate, same_wire_body
from gateway.pipeline import Job, Surface, serve, translated_bodies
from gateway.relay import StreamRelay
from gateway.responses import json_response, openai_error
from gateway.tokens import request_input_tokens
from gateway.types import ChatResponse
from providers.cache import snapshot_cache
from providers.selectors import Deployment, KeyInfo, RoutingSnapshot
from response_store.models import StoredResponse
from response_store.selectors import stored_response_get
from response_store.services import stored_response_delete, stored_response_save

WIRE = "openai_responses"
logger = logging.getLogger(__name__)
# Store writes still running in this process (response id -> task): a lookup waits for its
# id's write; done tasks remove themselves, so this holds only writes in flight.
_pending: dict[str, asyncio.Task] = {}


@dataclass(frozen=True, slots=True)
class ResponsesJob(Job):
    """A Job with what the response store needs: the conversation before this response's
    output (Responses items), whether to store it, the id it continues."""
    conversation: tuple[dict[str, Any], ...] = ()
    input_count: int = 0
    store: bool = True
    previous_response_id: str | None = None


def _response_not_found(response_id: str, *, param: str | None = None) -> NotFound:
    return NotFound(f"Response with id '{response_id[:200]}' not found.", param=param,
                    code="response_not_found")


def input_items(value: Any) -> list[dict[str, Any]]:
    """The client's `input` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise InvalidRequest("'input' must be a string or an array", param="input")
    return list(value)


async def stored_lookup(*, key_id: int, response_id: str) -> StoredResponse | None:
    if (task := _pending.get(response_id)) is not None:
        await asyncio.shield(task)
    return await db.run(stored_response_get, key_id=key_id, response_id=response_id)


def _chain_first(deployments: tuple[Deployment, ...],
                 provider_id: int | None) -> tuple[Deployment, ...]:
    """The chain's provider's deployments moved before the others (ahead of every priority)."""
    if provider_id is None or not any(d.provider_id == provider_id for d in deployments):
        return deployments
    top = min(d.priority for d in deployments) - 1
    return tuple(replace(d, priority=top, candidate=replace(d.candidate, priority=top))
                 if d.provider_id == provider_id else d for d in deployments)


def _without_foreign_reasoning(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reasoning items another upstream encrypted cannot be read by this one."""
    return [i for i in items if not (isinstance(i, dict) and i.get("type") == "reasoning")]


async def prepare(body: dict[str, Any], key: KeyInfo, snapshot: RoutingSnapshot,
                  deployments: tuple[Deployment, ...]) -> ResponsesJob:
    if body.get("input") is None:
        raise InvalidRequest("'input' is required", param="input")
    new_items = input_items(body["input"])
    previous_id = body.get("previous_response_id")
    stored: StoredResponse | None = None
    if previous_id is not None:
        if not isinstance(previous_id, str):
            raise InvalidRequest("'previous_response_id' must be a string",
                                 param="previous_response_id")
        stored = await stored_lookup(key_id=key.id, response_id=previous_id)
        if stored is None:
            raise _response_not_found(previous_id, param="previous_response_id")
    history = list(stored.items) if stored is not None else []
    conversation = history + new_items
    expanded = {k: v for k, v in body.items() if k != "previous_response_id"}
    expanded["input"] = conversation
    req = codec.parse_request(expanded)
    if req.max_tokens is None and key.max_tokens_default:
        req = replace(req, max_tokens=key.max_tokens_default)
        expanded["max_output_tokens"] = body["max_output_tokens"] = key.max_tokens_default

    def native_body(d: Deployment) -> dict[str, Any]:
        if stored is not None and stored.upstream_id and stored.provider_id == d.provider_id:
            return same_wire_body(body, d, previous_response_id=stored.upstream_id)
        if stored is not None and stored.provider_id != d.provider_id:
            return same_wire_body(expanded, d,
                               input=_without_foreign_reasoning(history) + new_items)
        return same_wire_body(expanded, d)

    if stored is not None:
        deployments = _chain_first(deployments, stored.provider_id)
    bodies, dropped = translated_bodies(req, deployments, stream=req.stream, native_wire=WIRE,
                                        native_body=native_body)
    return ResponsesJob(snapshot=snapshot, deployments=deployments, operation="chat",
                        bodies=bodies, prompt_tokens=request_input_tokens(req),
                        max_tokens=req.max_tokens, stream=req.stream, req=req, dropped=dropped,
                        conversation=tuple(conversation), input_count=len(new_items),
                        store=body.get("store") is not False, previous_response_id=previous_id)


def _echo(job: ResponsesJob) -> dict[str, Any]:
    return {"store": job.store, "previous_response_id": job.previous_response_id}


def store_later(call: Call, job: Job, response: dict[str, Any], *, passed_through: bool) -> None:
    """Schedule the store write of a finished response (nothing when `store: false`)."""
    if not isinstance(job, ResponsesJob) or not job.store or call.key is None:
        return
    response_id = response.get("id")
    if not isinstance(response_id, str) or not response_id:
        return
    output = [i for i in response.get("output") or [] if isinstance(i, dict)]
    task = asyncio.ensure_future(_save(
        response_id=response_id, key_id=call.key.id,
        provider_id=call.deployment.provider_id if call.deployment else None,
        upstream_id=response_id if passed_through else "", model=call.public_model,
        items=[*job.conversation, *output], input_count=job.input_count,
        response={**response, **_echo(job)}))
    _pending[response_id] = task
    task.add_done_callback(lambda _: _pending.pop(response_id, None))


async def _save(**fields: Any) -> None:
    try:
        await db.run(stored_response_save, **fields, ttl_s=settings.GATEWAY_RESPONSES_TTL_S)
    except Exception:  # the answer is already the client's; a lost store is logged, not raised
        logger.exception("could not store response %s", fields.get("response_id"))


class ResponsesOutput:
    """The pipeline Output of /v1/responses: passthrough for Responses upstreams, the IR's
    `response` object or events for the others; every finished answer goes to the store."""
    wire = WIRE

    def error(self, exc: GatewayError) -> HttpResponse:
        return openai_error(exc)

    def opening(self, call: Call) -> tuple[bytes, ...]:
        return ()

    def relay(self, call: Call, job: Job, dialect: Dialect) -> StreamRelay:
        if dialect.wire == WIRE:
            return StreamRelay(call, codec=dialect.codec, passthrough=codec.Passthrough(
                model=call.public_model,
                echo=_echo(job) if isinstance(job, ResponsesJob) else None,
                on_final=lambda r: store_later(call, job, r, passed_through=True)))
        return StreamRelay(call, codec=dialect.codec, encoder=codec.StreamEncoder(
            model=call.public_model, request_id=call.request_id, request=job.req,
            echo=_echo(job) if isinstance(job, ResponsesJob) else None,
            on_final=lambda r: store_later(call, job, r, passed_through=False)))

    def body(self, call: Call, job: Job, dialect: Dialect, data: dict[str, Any],
             resp: ChatResponse | None) -> tuple[int, dict[str, Any]]:
        echo = _echo(job) if isinstance(job, ResponsesJob) else {}
        if dialect.wire == WIRE:
            data.update(model=call.public_model, **echo)
            store_later(call, job, data, passed_through=True)
            return 200, data
        body = codec.format_response(resp, model=call.public_model, request_id=call.request_id,
                                     request=job.req, echo=echo)
        store_later(call, job, body, passed_through=False)
        return 200, body


OUTPUT = ResponsesOutput()
SURFACE = Surface(name="openai.responses", operation="chat", prepare=prepare, output=OUTPUT)


@csrf_exempt
@require_POST
async def responses(request: HttpRequest) -> HttpResponse:
    return await serve(request, SURFACE)


@csrf_exempt
@require_http_methods(["GET", "DELETE"])
async def response_detail(request: HttpRequest, response_id: str) -> HttpResponse:
    """GET: the key's stored response object; DELETE: `{"id", "object": "response",
    "deleted": true}`. Another key's id is as unknown as a made-up one (404)."""
    try:
        key = await authenticate(request, await snapshot_cache.get())
        if request.method == "DELETE":
            if (task := _pending.get(response_id)) is not None:
                await asyncio.shield(task)
            if not await db.run(stored_response_delete, key_id=key.id, response_id=response_id):
                raise _response_not_found(response_id)
            return json_response({"id": response_id, "object": "response", "deleted": True})
        stored = await stored_lookup(key_id=key.id, response_id=response_id)
        if stored is None:
            raise _response_not_found(response_id)
    except GatewayError as exc:
        return openai_error(exc)
    return json_response(stored.response)


@csrf_exempt
@require_http_methods(["GET"])
async def response_input_items(request: HttpRequest, response_id: str) -> HttpResponse:
    """GET /v1/responses/{id}/input_items: the items that were the response's input (the whole
    chain before its output), newest first as OpenAI lists them by default (`order=asc` for
    oldest first)."""
    try:
        key = await authenticate(request, await snapshot_cache.get())
        stored = await stored_lookup(key_id=key.id, response_id=response_id)
        if stored is None:
            raise _response_not_found(response_id)
    except GatewayError as exc:
        return openai_error(exc)
    output_count = len(stored.response.get("output") or [])
    items = list(stored.items[:len(stored.items) - output_count])
    if request.GET.get("order") != "asc":
        items.reverse()
    data = [{"id": i.get("id") or f"item_{n}", **i} for n, i in enumerate(items)
            if isinstance(i, dict)]
    return json_response({"object": "list", "data": data, "has_more": False,
                          "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None})
