"""The upstream kinds, one record each: the only place a kind is named.

A `Dialect` says everything the gateway knows about one kind of upstream: the wire format it
speaks and the codec that reads and writes it (gateway/codecs), the transport that carries it
(gateway/adapters: `http`, or the in-process `mock`), the URL of each operation it serves, how
it authenticates, the fixed headers it needs, the request the admin's connection test sends,
and the defaults of its codec options. The provider-kind choices (providers.models), the
admin form, the routing file's validation and the proxy all read this registry, so a new
kind is a record here plus its adapter and codec (docs/architecture.md).

Operations: `chat` (the wire format's own chat endpoint: Chat Completions or Messages),
`completions` and `embeddings` (OpenAI only), `count_tokens` (Anthropic only).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

from gateway.codecs import anthropic_messages, openai_chat

ANTHROPIC_VERSION = "2023-06-01"
# The in-process kind the demo config uses (`make run`).
MOCK_KIND = "mock"


def _bearer(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"}


def _x_api_key(api_key: str) -> dict[str, str]:
    return {"x-api-key": api_key}


def _chat_probe(upstream_model: str) -> dict[str, Any]:
    return {"model": upstream_model, "max_tokens": 1, "stream": False,
            "messages": [{"role": "user", "content": "ping"}]}


def _messages_probe(upstream_model: str) -> dict[str, Any]:
    return {"model": upstream_model, "max_tokens": 1,
            "messages": [{"role": "user", "content": "ping"}]}


@dataclass(frozen=True, slots=True)
class Dialect:
    """One upstream kind. `paths` maps each operation it serves to the path under the
    provider's base URL (`{model}` is replaced by the upstream model, for kinds that put it in
    the URL); a `(plain, streamed)` pair gives different paths for the two."""

    kind: str
    label: str
    wire: str
    codec: ModuleType
    paths: Mapping[str, str | tuple[str, str]]
    auth: Callable[[str], dict[str, str]] = _bearer
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    probe: Callable[[str], dict[str, Any]] = _chat_probe
    transport: str = "http"
    base_url_required: bool = True
    # Codec option defaults a provider's `translation` settings may override.
    allow_documents: bool = False

    def serves(self, operation: str) -> bool:
        return operation in self.paths

    def url(self, base_url: str, operation: str, *, upstream_model: str, stream: bool) -> str:
        path = self.paths[operation]
        if isinstance(path, tuple):
            path = path[1] if stream else path[0]
        return base_url + path.replace("{model}", upstream_model)

    def request_headers(self, *, api_key: str, stream: bool, request_id: str,
                        extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
        """The headers of one upstream request; the provider's extra headers come after the
        fixed ones (so they may override a version) and before the credentials."""
        headers = {"content-type": "application/json", "x-request-id": request_id,
                   "accept": "text/event-stream" if stream else "application/json",
                   **self.headers}
        headers.update(extra)
        if api_key:
            headers.update(self.auth(api_key))
        return headers


OPENAI_PATHS = MappingProxyType({"chat": "/chat/completions", "completions": "/completions",
                                 "embeddings": "/embeddings"})

DIALECTS: Mapping[str, Dialect] = MappingProxyType({d.kind: d for d in (
    Dialect(kind="openai", label="OpenAI-compatible", wire="openai_chat", codec=openai_chat,
            paths=OPENAI_PATHS),
    Dialect(kind="anthropic", label="Anthropic", wire="anthropic_messages",
            codec=anthropic_messages,
            paths=MappingProxyType({"chat": "/messages", "count_tokens": "/messages/count_tokens"}),
            auth=_x_api_key, headers=MappingProxyType({"anthropic-version": ANTHROPIC_VERSION}),
            probe=_messages_probe, allow_documents=True),
    Dialect(kind=MOCK_KIND, label="Mock (offline, deterministic)", wire="openai_chat",
            codec=openai_chat, paths=OPENAI_PATHS, transport="mock", base_url_required=False),
)})


def dialect_for(kind: str) -> Dialect:
    return DIALECTS[kind]


def kind_choices() -> list[tuple[str, str]]:
    """The provider-kind choices (providers.models.Provider.kind)."""
    return [(d.kind, d.label) for d in DIALECTS.values()]
