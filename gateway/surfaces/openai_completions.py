"""POST /v1/completions — OpenAI legacy completions, JSON or SSE, OpenAI-dialect upstreams."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.errors import InvalidRequest
from gateway.pipeline import serve
from gateway.surfaces.openai_passthrough import passthrough_surface
from gateway.tokens import text_tokens


def _prompts(body: dict) -> list[str]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [" " * (4 * len(prompt))]  # token ids: one token each
    raise InvalidRequest("`prompt` must be a string, an array of strings or of token ids",
                         param="prompt")


def _validate(body: dict) -> None:
    _prompts(body)
    value = body.get("max_tokens")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidRequest("`max_tokens` must be a positive integer", param="max_tokens")


SURFACE = passthrough_surface(
    name="openai.completions", operation="completions", validate=_validate,
    prompt_tokens=lambda body: sum(text_tokens(p) for p in _prompts(body)), streamable=True)


@csrf_exempt
@require_POST
async def completions(request: HttpRequest) -> HttpResponse:
    return await serve(request, SURFACE)
