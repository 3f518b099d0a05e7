"""The upstream kinds, one record each: the only place a kind is named.

A `Dialect` says everything the gateway knows about one kind of upstream: the wire format it
speaks and the codec that reads and writes it (gateway/codecs), the transport that carries it
(gateway/adapters: `http`, or the in-process `mock`), the URL of each operation it serves, how
it authenticates, the fixed headers it needs, the request the admin's connection test sends,
the client headers it takes on passthrough (Anthropic's `anthropic-beta`), and the defaults
of its codec options. The provider-kind choices (providers.models), the
admin form, the routing file's validation and the proxy all read this registry, so a new
kind is a record here plus its adapter and codec (docs/architecture.md).

Operations: `chat` (the wire format's own chat endpoint: Chat Completions, Messages or
Responses), `responses` (the Responses endpoint, for kinds that speak it), `completions` and
`embeddings` (OpenAI only), `count_tokens` (Anthropic only), `realtime` (the Realtime API's
WebSocket, OpenAI-compatible only: its ws(s) URL is this path under the base URL with the
scheme swapped, gateway.realtime.upstream).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

from gateway.codecs import anthropic_messages, openai_chat, openai_responses

ANTHROPIC_VERSION = "2023-06-01"
# The in-process kind the demo config uses (`make run`).
MOCK_KIND = "mock"
RESPONSES_KIND = "openai_responses"


def _bearer(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"}


def _x_api_key(api_key: str) -> dict[str, str]:
    return {"x-api-key": api_key}


def _chat_probe(upstream_model: str) -> dict[str, Any]:
    return {"model": upstream_model, "max_tokens": 1, "stream": False,
            "messages": [{"role": "user", "content": "ping"}]}


def _responses_probe(upstream_model: str) -> dict[str, Any]:
    return {"model": upstream_model, "max_output_tokens": 16, "store": False, "input": "ping"}


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
    reasoning: bool | None = None
    # Client headers sent on to this kind when the client speaks its wire format (passthrough):
    # lower-case names. `beta_header` is the one a provider's `anthropic_beta` add/remove edits.
    forward_headers: tuple[str, ...] = ()
    beta_header: str | None = None

    def serves(self, operation: str) -> bool:
        return operation in self.paths

    def url(self, base_url: str, operation: str, *, upstream_model: str, stream: bool) -> str:
        path = self.paths[operation]
        if isinstance(path, tuple):
            path = path[1] if stream else path[0]
        return base_url + path.replace("{model}", upstream_model)

    def request_headers(self, *, api_key: str, stream: bool, request_id: str,
                        extra: tuple[tuple[str, str], ...],
                        forwarded: Mapping[str, str] | None = None,
                        beta_add: tuple[str, ...] = (),
                        beta_remove: tuple[str, ...] = ()) -> dict[str, str]:
        """The headers of one upstream request, later ones winning: the fixed ones, the
        client's `forwarded` headers this kind takes (`forward_headers`), the beta header with
        the provider's `beta_add` joined and `beta_remove` taken out, the provider's extra
        headers (so they may pin a version or a whole beta list), the credentials."""
        headers = {"content-type": "application/json", "x-request-id": request_id,
                   "accept": "text/event-stream" if stream else "application/json",
                   **self.headers}
        for name in self.forward_headers:
            if forwarded and (value := forwarded.get(name)):
                headers[name] = value
        if self.beta_header is not None and (beta_add or beta_remove):
            betas = [b.strip() for b in headers.get(self.beta_header, "").split(",")]
            kept = [b for b in dict.fromkeys([*betas, *beta_add]) if b and b not in beta_remove]
            if kept:
                headers[self.beta_header] = ",".join(kept)
            else:
                headers.pop(self.beta_header, None)
        headers.update(extra)
        if api_key:
            headers.update(self.auth(api_key))
        return headers

    def forwardable(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The client headers (a case-insensitive mapping, e.g. Django's) this kind takes."""
        return {name: headers[name] for name in self.forward_headers if headers.get(name)}


OPENAI_PATHS = MappingProxyType({"chat": "/chat/completions", "completions": "/completions",
                                 "embeddings": "/embeddings"})

DIALECTS: Mapping[str, Dialect] = MappingProxyType({d.kind: d for d in (
    Dialect(kind="openai", label="OpenAI-compatible", wire="openai_chat", codec=openai_chat,
            paths=MappingProxyType({**OPENAI_PATHS, "realtime": "/realtime"})),
    Dialect(kind="anthropic", label="Anthropic", wire="anthropic_messages",
            codec=anthropic_messages,
            paths=MappingProxyType({"chat": "/messages", "count_tokens": "/messages/count_tokens"}),
            auth=_x_api_key, headers=MappingProxyType({"anthropic-version": ANTHROPIC_VERSION}),
            probe=_messages_probe, allow_documents=True, reasoning=True,
            forward_headers=("anthropic-beta", "anthropic-version"), beta_header="anthropic-beta"),
    # An OpenAI-compatible server that speaks the Responses API: a provider of kind `openai`
    # with `translation: {responses_api: true}` is this kind (providers.translation).
    Dialect(kind=RESPONSES_KIND, label="OpenAI Responses API", wire="openai_responses",
            codec=openai_responses,
            paths=MappingProxyType({"chat": "/responses", "responses": "/responses"}),
            probe=_responses_probe),
    Dialect(kind=MOCK_KIND, label="Mock (offline, deterministic)", wire="openai_chat",
            codec=openai_chat, paths=OPENAI_PATHS, transport="mock", base_url_required=False),
)})


def dialect_for(kind: str) -> Dialect:
    return DIALECTS[kind]


def kind_choices() -> list[tuple[str, str]]:
    """The provider-kind choices (providers.models.Provider.kind)."""
    return [(d.kind, d.label) for d in DIALECTS.values()]
