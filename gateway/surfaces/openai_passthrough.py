"""The OpenAI endpoints only OpenAI-compatible upstreams serve (legacy completions,
embeddings): validated, then passed through (gateway.pipeline does the rest). Deployments of
kinds without the operation are skipped; a model served only by them is a 400."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.codecs import openai_chat as codec
from gateway.errors import InvalidRequest
from gateway.pipeline import Job, Surface
from gateway.responses import openai_error
from gateway.surfaces.openai_chat import (include_usage, passthrough_body, requested_max_tokens,
                                          validate_stream_fields)
from gateway.surfaces.output import ApiOutput
from providers.selectors import Deployment, KeyInfo, RoutingSnapshot

OUTPUT = ApiOutput(error=openai_error, wire="openai_chat",
                   passthrough=lambda job, model: codec.Passthrough(
                       model=model, include_usage=job.include_usage))


def passthrough_surface(*, name: str, operation: str, validate: Callable[[dict], None],
                        prompt_tokens: Callable[[dict], int], streamable: bool) -> Surface:
    def prepare(body: dict[str, Any], key: KeyInfo, snapshot: RoutingSnapshot,
                deployments: tuple[Deployment, ...]) -> Job:
        validate(body)
        validate_stream_fields(body)
        stream = bool(body.get("stream"))
        if stream and not streamable:
            raise InvalidRequest(f"/{operation} does not stream", param="stream")
        max_tokens = requested_max_tokens(body) if streamable else 0
        if streamable and max_tokens is None and key.max_tokens_default:
            max_tokens = body["max_tokens"] = key.max_tokens_default
        return Job(snapshot=snapshot, deployments=deployments, operation=operation,
                   bodies={d.route_id: passthrough_body(body, d, stream=stream)
                           for d in deployments},
                   prompt_tokens=prompt_tokens(body), max_tokens=max_tokens, stream=stream,
                   include_usage=include_usage(body))

    return Surface(name=name, operation=operation, prepare=prepare, output=OUTPUT)
