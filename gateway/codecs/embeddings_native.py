"""OpenAI's embeddings request and answer, to and from the clouds' own embedding endpoints.

A kind whose record (gateway.dialects) has an `embeddings` codec serves POST /v1/embeddings
through it: `build` turns the client's request (`EmbeddingsRequest`, from the OpenAI body by
`embeddings_request`) into the upstream's request bodies, one or more (Titan embeds one text
per request), and `parse` reads the upstream's answers, in the same order, into the vectors
and the input tokens the upstream counted (None when it counts none: the gateway's estimate is
billed then, marked estimated). `openai_body` writes the client's answer. No I/O.

- Gemini API (`models/{model}:batchEmbedContents`): `{"requests": [{"model": "models/…",
  "content": {"parts": [{"text"}]}, "outputDimensionality"}]}` -> `{"embeddings": [{"values"}]}`;
  the documented answer carries no token count (a `usageMetadata.promptTokenCount`, should one
  come, is read).
- Vertex AI (`…/publishers/google/models/{model}:predict`): `{"instances": [{"content"}],
  "parameters": {"outputDimensionality"}}` -> `predictions[].embeddings.values` and
  `.statistics.token_count`.
- Bedrock InvokeModel: Amazon Titan Text Embeddings (`amazon.titan-embed-text-*`): one request
  per input, `{"inputText", "dimensions", "normalize": true}` (v2; v1 takes `inputText` only)
  -> `embedding`, `inputTextTokenCount`; Cohere Embed (`cohere.embed-*`): one request,
  `{"texts", "input_type": "search_document"}` (`output_dimension` when dimensions are asked,
  which only Embed v4 takes) -> `embeddings` (a list, or `{"float": [...]}`), no token count.
"""
from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest, UpstreamFailed

COHERE_INPUT_TYPE = "search_document"


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    upstream_model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None
    encoding_format: str = "float"


@dataclass(frozen=True, slots=True)
class EmbeddingsAnswer:
    vectors: tuple[tuple[float, ...], ...]
    input_tokens: int | None


@dataclass(frozen=True, slots=True)
class EmbeddingsCodec:
    """`build(request) -> bodies`, raising InvalidRequest for what the upstream cannot take;
    `parse(answers, request) -> EmbeddingsAnswer`, raising UpstreamFailed for an answer
    without the vectors asked for."""
    build: Callable[[EmbeddingsRequest], tuple[dict[str, Any], ...]]
    parse: Callable[[tuple[dict[str, Any], ...], EmbeddingsRequest], EmbeddingsAnswer]


def embeddings_request(body: dict[str, Any], upstream_model: str) -> EmbeddingsRequest:
    """The client's OpenAI embeddings body (already validated by the surface) as a request.
    Raises InvalidRequest for token arrays, which only OpenAI-compatible upstreams read."""
    value = body.get("input")
    inputs = (value,) if isinstance(value, str) else tuple(value or ())
    if not inputs or not all(isinstance(v, str) for v in inputs):
        raise InvalidRequest("`input` must be a string or an array of strings for this "
                             "model's provider (token arrays need an OpenAI-compatible one)",
                             param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise InvalidRequest("`encoding_format` must be float or base64",
                             param="encoding_format")
    return EmbeddingsRequest(upstream_model=upstream_model, inputs=inputs,
                             dimensions=body.get("dimensions"), encoding_format=fmt)


def openai_body(answer: EmbeddingsAnswer, req: EmbeddingsRequest, *, model: str,
                prompt_tokens: int) -> dict[str, Any]:
    """OpenAI's `{"object": "list", "data": [...], "model", "usage"}`; base64 vectors are
    little-endian float32, as OpenAI sends them."""
    data = []
    for index, vector in enumerate(answer.vectors):
        embedding: Any = list(vector)
        if req.encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def _vector(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(x, (int, float))
                                              and not isinstance(x, bool) for x in value):
        raise UpstreamFailed("the upstream's embeddings answer has no vector where one belongs")
    return tuple(float(x) for x in value)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _checked(vectors: list[tuple[float, ...]], req: EmbeddingsRequest
             ) -> tuple[tuple[float, ...], ...]:
    if len(vectors) != len(req.inputs):
        raise UpstreamFailed(f"the upstream returned {len(vectors)} embeddings for "
                             f"{len(req.inputs)} inputs")
    return tuple(vectors)


# -- Gemini API ------------------------------------------------------------------------------

def _gemini_build(req: EmbeddingsRequest) -> tuple[dict[str, Any], ...]:
    requests = []
    for text in req.inputs:
        one: dict[str, Any] = {"model": f"models/{req.upstream_model}",
                               "content": {"parts": [{"text": text}]}}
        if req.dimensions is not None:
            one["outputDimensionality"] = req.dimensions
        requests.append(one)
    return ({"requests": requests},)


def _gemini_parse(answers: tuple[dict[str, Any], ...],
                  req: EmbeddingsRequest) -> EmbeddingsAnswer:
    [answer] = answers
    items = answer.get("embeddings")
    vectors = [_vector(e.get("values") if isinstance(e, dict) else None)
               for e in (items if isinstance(items, list) else [None])]
    usage = answer.get("usageMetadata")
    tokens = _count(usage.get("promptTokenCount")) if isinstance(usage, dict) else None
    return EmbeddingsAnswer(_checked(vectors, req), tokens)


GEMINI = EmbeddingsCodec(build=_gemini_build, parse=_gemini_parse)


# -- Vertex AI -------------------------------------------------------------------------------

def _vertex_build(req: EmbeddingsRequest) -> tuple[dict[str, Any], ...]:
    body: dict[str, Any] = {"instances": [{"content": text} for text in req.inputs]}
    if req.dimensions is not None:
        body["parameters"] = {"outputDimensionality": req.dimensions}
    return (body,)


def _vertex_parse(answers: tuple[dict[str, Any], ...],
                  req: EmbeddingsRequest) -> EmbeddingsAnswer:
    [answer] = answers
    predictions = answer.get("predictions")
    vectors, tokens = [], 0
    counted = True
    for p in predictions if isinstance(predictions, list) else [None]:
        embeddings = p.get("embeddings") if isinstance(p, dict) else None
        embeddings = embeddings if isinstance(embeddings, dict) else {}
        vectors.append(_vector(embeddings.get("values")))
        stats = embeddings.get("statistics")
        count = _count(stats.get("token_count")) if isinstance(stats, dict) else None
        if count is None:
            # A float count (`"token_count": 4.0`, as some versions send) is still a count.
            raw = stats.get("token_count") if isinstance(stats, dict) else None
            count = int(raw) if isinstance(raw, float) and raw.is_integer() else None
        counted = counted and count is not None
        tokens += count or 0
    return EmbeddingsAnswer(_checked(vectors, req), tokens if counted else None)


VERTEX = EmbeddingsCodec(build=_vertex_build, parse=_vertex_parse)


# -- Amazon Bedrock (InvokeModel) ------------------------------------------------------------

def _titan(model: str) -> bool:
    return "amazon.titan-embed" in model


def _cohere(model: str) -> bool:
    return "cohere.embed" in model


def _bedrock_build(req: EmbeddingsRequest) -> tuple[dict[str, Any], ...]:
    model = req.upstream_model
    if _titan(model):
        v1 = "titan-embed-text-v1" in model
        if v1 and req.dimensions is not None:
            raise InvalidRequest("Titan Text Embeddings v1 has one size: `dimensions` is not "
                                 "taken", param="dimensions")
        bodies = []
        for text in req.inputs:
            body: dict[str, Any] = {"inputText": text}
            if not v1:
                body["normalize"] = True
                if req.dimensions is not None:
                    body["dimensions"] = req.dimensions
            bodies.append(body)
        return tuple(bodies)
    if _cohere(model):
        body = {"texts": list(req.inputs), "input_type": COHERE_INPUT_TYPE}
        if req.dimensions is not None:
            body["output_dimension"] = req.dimensions
        return (body,)
    raise InvalidRequest(f"`{model[:200]}` is not an embeddings model this gateway reaches on "
                         "Bedrock (Amazon Titan Text Embeddings or Cohere Embed)", param="model")


def _bedrock_parse(answers: tuple[dict[str, Any], ...],
                   req: EmbeddingsRequest) -> EmbeddingsAnswer:
    if _titan(req.upstream_model):
        vectors = [_vector(a.get("embedding")) for a in answers]
        counts = [_count(a.get("inputTextTokenCount")) for a in answers]
        tokens = sum(c for c in counts if c is not None) \
            if all(c is not None for c in counts) else None
        return EmbeddingsAnswer(_checked(vectors, req), tokens)
    [answer] = answers
    items = answer.get("embeddings")
    if isinstance(items, dict):  # `embedding_types` asked: {"float": [[...]], ...}
        items = items.get("float")
    vectors = [_vector(v) for v in (items if isinstance(items, list) else [None])]
    return EmbeddingsAnswer(_checked(vectors, req), None)


BEDROCK = EmbeddingsCodec(build=_bedrock_build, parse=_bedrock_parse)
