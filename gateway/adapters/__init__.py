"""One module per upstream transport, behind `gateway.adapters.base.Adapter`: `http` (every
kind reached over HTTP: the URL and headers come from its gateway.dialects record), `entra`
(the same, with Microsoft Entra ID bearer tokens where configured: Azure OpenAI), `bedrock`
(SigV4-signed, AWS event streams), `vertex` (Google access tokens) and `mock` (answers
in-process)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.adapters.base import Adapter, UpstreamResponse
from gateway.adapters.bedrock import BedrockAdapter
from gateway.adapters.embeddings import embeddings_send
from gateway.adapters.entra import EntraAdapter
from gateway.adapters.http import HttpAdapter
from gateway.adapters.mock import MockAdapter
from gateway.adapters.vertex import VertexAdapter
from gateway.dialects import EMBEDDINGS_ANSWER_KIND, dialect_for

if TYPE_CHECKING:
    from providers.selectors import Deployment

ADAPTERS: dict[str, Adapter] = {"http": HttpAdapter(), "entra": EntraAdapter(),
                               "mock": MockAdapter(), "bedrock": BedrockAdapter(),
                               "vertex": VertexAdapter()}


async def upstream_send(deployment: Deployment, *, operation: str, body: dict, stream: bool,
                        request_id: str, forwarded: Mapping[str, str] | None = None,
                        ) -> UpstreamResponse:
    """Send `body` (in the deployment's wire format) for `operation`, with the client's
    `forwarded` headers that its kind takes (gateway.dialects); a kind that embeds in its own
    wire format gets the OpenAI embeddings body translated (gateway.adapters.embeddings).
    Raises UpstreamError."""
    dialect = dialect_for(deployment.kind)
    if operation == "embeddings" and dialect.embeddings is not None:
        return await embeddings_send(ADAPTERS[dialect.transport], dialect=dialect,
                                     answer_dialect=dialect_for(EMBEDDINGS_ANSWER_KIND),
                                     deployment=deployment, body=body, request_id=request_id,
                                     forwarded=forwarded)
    return await ADAPTERS[dialect.transport].send(
        dialect=dialect, deployment=deployment, operation=operation, body=body, stream=stream,
        request_id=request_id, forwarded=forwarded)
