"""POST /api/tasks/<slug> (alias /api/chat/<slug>) — admin-defined prompt endpoints.

In: an API key (`Authorization: Bearer` or `x-api-key`) and `{"input": …, "variables": {…}}`.
`input` (a string, or any JSON value, sent as JSON text) is the user message; `variables` fill
the task's system prompt template (chat.prompts). The task fixes the model, max_tokens,
temperature and, optionally, a JSON schema for the output (also sent upstream as a
`json_schema` response format).

Out: 200 `{"output", "usage": {"input_tokens", "output_tokens", "total_tokens", "estimated"},
"cost_usd", "request_id"}` — `output` is the answer's text, or, for a task with a schema, the
parsed JSON value. `?stream=1`: the JSON-event SSE stream of chat.pipeline.

Errors in OpenAI's shape: 400 bad body or a missing template variable, 401, 403
`task_not_allowed` (the task lists keys/teams and this key is not among them) or
`model_not_allowed` (the key may not use the task's model), 404 `task_not_found`, 429, 502,
503, 504. Output that breaks the schema is 502 `schema_violation`, with `output` (the raw
text), `schema_errors`, `usage`, `cost_usd` and `request_id` beside `error`; when streamed,
an `error` event with `schema_errors` before `usage` and `done`. Either way the ledger row is
`upstream_error` / `schema_violation` (the tokens are still billed).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from chat.context import Turn, chat_request
from chat.pipeline import (EventRelay, call_complete, call_cost, call_open, event_stream,
                           response_text)
from gateway.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied, UpstreamFailed
from gateway.proxy import (ProxyCall, authenticate, call_begin, call_finish, read_json, resolve,
                           stream_abandoned)
from gateway.responses import json_response, openai_error, openai_error_body, replayed, sse_response
from gateway.types import ChatRequest, ResponseFormat
from providers.cache import snapshot_cache
from tasks.cache import task_cache
from tasks.prompts import PromptError, prompt_render
from tasks.schema import output_validate
from tasks.selectors import TaskInfo
from usage.idempotency import Replay, body_hash
from usage.models import UsageSource, UsageStatus

SURFACE = "task"


def task_request(task: TaskInfo, body: dict[str, Any], *, stream: bool) -> ChatRequest:
    """The IR request for one call of `task`. Raises InvalidRequest naming the bad field."""
    value = body.get("input")
    if value is None:
        raise InvalidRequest("`input` is required", param="input")
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not text.strip():
        raise InvalidRequest("`input` must not be empty", param="input")
    variables = body.get("variables")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        raise InvalidRequest("`variables` must be an object", param="variables")
    try:
        system = prompt_render(task.system_prompt, variables)
    except PromptError as exc:
        raise InvalidRequest(f"the task's prompt needs the variable(s) {', '.join(exc.missing)}",
                             param="variables") from None
    req = chat_request(model=task.model, turns=[Turn(role="user", content=text)],
                       max_tokens=task.max_tokens, stream=stream, system=system,
                       temperature=task.temperature)
    if isinstance(task.output_schema, Mapping):
        req = replace(req, response_format=ResponseFormat(
            type="json_schema", name=task.slug.replace("-", "_"), schema=task.output_schema))
    return req


def usage_json(call: ProxyCall) -> dict[str, Any]:
    return {"input_tokens": call.input_tokens, "output_tokens": call.output_tokens,
            "total_tokens": call.input_tokens + call.output_tokens,
            "estimated": call.usage_source == UsageSource.ESTIMATED}


def _schema_check(schema: object):
    def check(text: str) -> list[str]:
        return output_validate(text, schema)[1]
    return check


@csrf_exempt
@require_POST
async def task_call(request: HttpRequest, slug: str) -> HttpResponse:
    call = call_begin(request, surface=SURFACE)
    stream = request.GET.get("stream", "").lower() in ("1", "true", "yes")
    try:
        body = read_json(request)
        snapshot = await snapshot_cache.get()
        call.key = authenticate(request, snapshot)
        task = (await task_cache.get(snapshot)).get(slug)
        if task is None:
            raise NotFound(f"there is no task `{slug[:100]}`", code="task_not_found")
        if not task.allows(call.key):
            raise PermissionDenied(f"this API key may not call the task `{slug}`",
                                   code="task_not_allowed")
        deployments = resolve(snapshot, call.key, task.model)
        req = task_request(task, body, stream=stream)
    except GatewayError as exc:
        return openai_error(exc)
    call.public_model = task.model
    call.stream = stream
    digest = body_hash(request.get_full_path(), request.body) if call.idempotency_key else None
    try:
        opened = await call_open(call, snapshot, deployments, req, digest=digest)
    except GatewayError as exc:
        return openai_error(exc)
    if isinstance(opened, Replay):
        return replayed(opened)
    headers = {"x-gateway-provider": call.deployment.provider_name}
    schema = task.output_schema
    if stream:
        relay = EventRelay(call, snapshot, dialect=opened.dialect, closing=True,
                           check=_schema_check(schema) if schema is not None else None)
        return sse_response(event_stream(call, snapshot, opened, relay, headers=headers),
                            headers=headers,
                            on_abandoned=lambda stream: stream_abandoned(call, stream))
    try:
        resp = await call_complete(call, snapshot, opened)
    except GatewayError as exc:
        return openai_error(exc)
    text = response_text(resp)
    result: dict[str, Any] = {"output": text, "usage": usage_json(call),
                              "cost_usd": str(call_cost(call, snapshot)),
                              "request_id": call.request_id}
    if schema is not None:
        value, problems = output_validate(text, schema)
        if problems:
            call.fail(status=UsageStatus.UPSTREAM_ERROR, http_status=502,
                      error_type="schema_violation")
            await call_finish(call, snapshot)
            error = UpstreamFailed("the output does not match the task's JSON schema: "
                                   + "; ".join(problems[:3]), code="schema_violation")
            return json_response({**openai_error_body(error), **result, "schema_errors": problems},
                                 status=502, headers=headers)
        result["output"] = value
    payload = orjson.dumps(result)
    await call_finish(call, snapshot, response_body=payload,
                      response_headers={**headers, "content-type": "application/json"})
    response = HttpResponse(payload, content_type="application/json")
    for name, value in headers.items():
        response[name] = value
    return response
