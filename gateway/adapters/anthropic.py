"""Anthropic upstreams (api.anthropic.com and servers speaking its Messages API).

`send` POSTs an Anthropic Messages body to `{base_url}{path}` (`/messages`, or
`/messages/count_tokens`) with the provider's key in `x-api-key` and `anthropic-version`;
the provider's extra headers are added last, so they may set `anthropic-beta` or override the
version. Transport and status handling are the OpenAI adapter's (`gateway.adapters.openai.post`):
connect errors, timeouts before the first byte, 408, 429 and 5xx (Anthropic's 529 "overloaded"
included) are retryable; Anthropic's error body (`{"type": "error", "error": {"message"}}`) is
read by the same classifier.
"""
from __future__ import annotations

from gateway.adapters.openai import HttpUpstreamResponse, post
from providers.selectors import Deployment

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicAdapter:
    dialect = "anthropic_messages"

    async def send(self, *, deployment: Deployment, path: str, body: dict, stream: bool,
                   request_id: str) -> HttpUpstreamResponse:
        headers = {"content-type": "application/json", "x-request-id": request_id,
                   "accept": "text/event-stream" if stream else "application/json",
                   "anthropic-version": ANTHROPIC_VERSION}
        headers.update(deployment.extra_headers)
        if deployment.api_key:
            headers["x-api-key"] = deployment.api_key
        return await post(deployment=deployment, url=deployment.base_url + path, headers=headers,
                          body=body, dialect=self.dialect)
