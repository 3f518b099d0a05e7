"""POST /v1/embeddings to a kind that embeds in its own wire format (its record's
`embeddings` codec, gateway.codecs.embeddings_native): the client's OpenAI body is built into
the upstream's request bodies, each sent by the kind's transport (signed, with its token …) to
the record's `embeddings` URL, and the answers are read into OpenAI's embeddings body, which is
what the pipeline then reads (as the `openai` kind's answer: passed through to the client, its
`usage` billed as reported; without one the gateway's estimate is billed, marked estimated).

Titan embeds one text per request: its requests go out concurrently, at most FANOUT at once,
and the first failure fails the whole call (the others are closed)."""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.adapters.base import Adapter, UpstreamError
from gateway.codecs.embeddings_native import embeddings_request, openai_body
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.dialects import Dialect
    from providers.selectors import Deployment

OPERATION = "embeddings"
FANOUT = 8


class EmbeddingsResponse:
    """An answer already read and translated: OpenAI's embeddings body, whose `usage` is
    there only when the upstream counted the tokens."""

    def __init__(self, dialect: Dialect, data: dict[str, Any]) -> None:
        self.dialect = dialect
        self._data = data

    async def json(self) -> dict:
        return self._data

    async def events(self):
        raise UpstreamError("embeddings are not streamed", error_class="bad_response")
        yield  # pragma: no cover

    async def close(self) -> None:
        return None


async def embeddings_send(adapter: Adapter, *, dialect: Dialect, answer_dialect: Dialect,
                          deployment: Deployment, body: dict, request_id: str,
                          forwarded: Mapping[str, str] | None) -> EmbeddingsResponse:
    """Embed with `dialect`'s codec through `adapter`; the answer is in `answer_dialect`'s
    (OpenAI's) wire format. Raises UpstreamError (an unreadable answer is `bad_response`,
    not retried)."""
    codec = dialect.embeddings
    try:
        req = embeddings_request(body, deployment.upstream_model)
        bodies = codec.build(req)
    except GatewayError as exc:  # the surface checked these already; kept for other callers
        raise UpstreamError(exc.message, status=400, error_class="bad_request") from None
    gate = asyncio.Semaphore(FANOUT)

    async def one(upstream_body: dict) -> dict:
        async with gate:
            upstream = await adapter.send(dialect=dialect, deployment=deployment,
                                          operation=OPERATION, body=upstream_body, stream=False,
                                          request_id=request_id, forwarded=forwarded)
            try:
                return await upstream.json()
            finally:
                await upstream.close()

    tasks = [asyncio.ensure_future(one(b)) for b in bodies]
    try:
        answers = tuple(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    try:
        parsed = codec.parse(answers, req)
    except GatewayError as exc:
        raise UpstreamError(exc.message, error_class="bad_response") from None
    data = openai_body(parsed, req, model=deployment.upstream_model,
                       prompt_tokens=parsed.input_tokens or 0)
    if parsed.input_tokens is None:
        del data["usage"]  # counted by the gateway instead (the surface writes its estimate)
    return EmbeddingsResponse(answer_dialect, data)
