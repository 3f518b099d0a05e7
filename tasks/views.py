"""POST /api/tasks/<slug> (alias /api/chat/<slug>) — admin-defined prompt endpoints.

In: an API key (`Authorization: Bearer` or `x-api-key`) and `{"input": …, "variables": {…}}`.
`input` (a string, or any JSON value, sent as JSON text) is the user message; `variables` fill
the task's system prompt template (tasks.prompts). The task fixes the model, max_tokens,
temperature and, optionally, a JSON schema for the output (also sent upstream as a
`json_schema` response format).

Out: 200 `{"output", "usage": {"input_tokens", "output_tokens", "total_tokens", "estimated"},
"cost_usd", "request_id"}` — `output` is the answer's text, or, for a task with a schema, the
parsed JSON value. `?stream=1`: the JSON-event SSE stream of gateway.surfaces.events.

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
from dataclasses import dataclass, replace
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.call import Call, call_begin
from gateway.dialects import Dialect
from gateway.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied, UpstreamFailed
from gateway.finish import call_cost
from gateway.intake import authenticate, read_json, resolve
from gateway.pipeline import Job, run, upstream_bodies
from gateway.relay import StreamRelay
from gateway.responses import openai_error, openai_error_body
from gateway.surfaces.events import event_relay, provider_event, response_text
from gateway.tokens import request_input_tokens
from gateway.types import ChatRequest, ChatResponse, Message, ResponseFormat, TextPart
from providers.cache import snapshot_cache
from tasks.cache import task_cache
from tasks.prompts import PromptError, prompt_render
from tasks.schema import output_validate
from tasks.selectors import TaskInfo
from usage.idempotency import body_hash
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
    req = ChatRequest(model=task.model,
                      messages=(Message(role="user", content=(TextPart(text),)),),
                      surface="openai_chat", system=(TextPart(system),) if system else (),
                      max_tokens=task.max_tokens, temperature=task.temperature, stream=stream,
                      include_usage=True)
    if isinstance(task.output_schema, Mapping):
        req = replace(req, response_format=ResponseFormat(
            type="json_schema", name=task.slug.replace("-", "_"), schema=task.output_schema))
    return req


def usage_json(call: Call) -> dict[str, Any]:
    return {"input_tokens": call.input_tokens, "output_tokens": call.output_tokens,
            "total_tokens": call.input_tokens + call.output_tokens,
            "estimated": call.usage_source == UsageSource.ESTIMATED}


@dataclass(frozen=True, slots=True)
class TaskOutput:
    """A task's answers: `{"output", "usage", "cost_usd", "request_id"}` (the output parsed
    when the task has a schema; a 502 `schema_violation` when it breaks it), or the JSON-event
    stream (gateway.surfaces.events) with the schema judged at its end."""
    schema: object

    def error(self, exc: GatewayError) -> HttpResponse:
        return openai_error(exc)

    def opening(self, call: Call) -> tuple[bytes, ...]:
        return (provider_event(call),)

    def relay(self, call: Call, job: Job, dialect: Dialect) -> StreamRelay:
        check = None
        if self.schema is not None:
            def check(text: str) -> list[str]:
                return output_validate(text, self.schema)[1]
        return event_relay(call, job.snapshot, dialect.codec, closing=True, check=check)[0]

    def body(self, call: Call, job: Job, dialect: Dialect, data: dict[str, Any],
             resp: ChatResponse | None) -> tuple[int, dict[str, Any]]:
        text = response_text(resp)
        result: dict[str, Any] = {"output": text, "usage": usage_json(call),
                                  "cost_usd": str(call_cost(call, job.snapshot)),
                                  "request_id": call.request_id}
        if self.schema is None:
            return 200, result
        value, problems = output_validate(text, self.schema)
        if problems:
            call.failed(status=UsageStatus.UPSTREAM_ERROR, http_status=502,
                        error_type="schema_violation")
            error = UpstreamFailed("the output does not match the task's JSON schema: "
                                   + "; ".join(problems[:3]), code="schema_violation")
            return 502, {**openai_error_body(error), **result, "schema_errors": problems}
        return 200, {**result, "output": value}


@csrf_exempt
@require_POST
async def task_call(request: HttpRequest, slug: str) -> HttpResponse:
    call = call_begin(request, surface=SURFACE)
    stream = request.GET.get("stream", "").lower() in ("1", "true", "yes")
    try:
        body = read_json(request)
        snapshot = await snapshot_cache.get()
        call.authenticated(await authenticate(request, snapshot))
        task = (await task_cache.get(snapshot)).get(slug)
        if task is None:
            raise NotFound(f"there is no task `{slug[:100]}`", code="task_not_found")
        if not task.allows(call.key):
            raise PermissionDenied(f"this API key may not call the task `{slug}`",
                                   code="task_not_allowed")
        deployments = resolve(snapshot, call.key, task.model)
        req = task_request(task, body, stream=stream)
        job = Job(snapshot=snapshot, deployments=deployments, operation="chat",
                  bodies=upstream_bodies(req, deployments, stream=stream),
                  prompt_tokens=request_input_tokens(req), max_tokens=req.max_tokens,
                  stream=stream, req=req,
                  digest=body_hash(request.get_full_path(), request.body)
                  if call.idempotency_key else None)
    except GatewayError as exc:
        return openai_error(exc)
    call.described(model=task.model, stream=stream)
    return await run(call, job, TaskOutput(schema=task.output_schema))
