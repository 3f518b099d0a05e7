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
Responses), `responses` (the Responses endpoint, for kinds that speak it), `completions`
(OpenAI only), `embeddings` (OpenAI's body passed through; Gemini, Vertex and Bedrock through
their record's `embeddings` codec, gateway.codecs.embeddings_native), `count_tokens`
(Anthropic's own; the Gemini API's and Vertex's countTokens, Vertex's Claude count-tokens and
Bedrock's CountTokens through the record's `count_body`), `realtime` (the Realtime API's
WebSocket, OpenAI-compatible and Azure OpenAI: its ws(s) URL is the operation's URL, query
included, with the scheme swapped, gateway.realtime.upstream).
"""
from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any
from urllib.parse import quote

from gateway.codecs import (anthropic_messages, bedrock_converse, embeddings_native, gemini,
                            openai_chat, openai_responses)
from gateway.codecs.embeddings_native import EmbeddingsCodec
from gateway.types import ChatRequest, CodecOptions

ANTHROPIC_VERSION = "2023-06-01"
# The in-process kind the demo config uses (`make run`).
MOCK_KIND = "mock"
RESPONSES_KIND = "openai_responses"
# The kind whose wire format a translated embeddings answer is in (OpenAI's).
EMBEDDINGS_ANSWER_KIND = "openai"


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
    # A kind whose URLs depend on the provider's settings (Azure's api-version) builds them
    # with `url_for(dialect, base_url, operation, upstream_model=, stream=, options=)`;
    # `paths` still names the operations it serves.
    url_for: Callable[..., str] | None = None
    # Where a whole answer keeps its usage (Gemini: `usageMetadata`).
    usage_field: str = "usage"
    # The `translation` settings only this kind takes (providers.translation checks them),
    # whether a provider of this kind needs its API key (or secret), and the kind a provider
    # marked `responses_api: true` speaks instead.
    settings: tuple[str, ...] = ()
    api_key_required: bool = False
    responses_kind: str | None = None
    # Cloud kinds (Bedrock, Vertex). `required_settings`: those of `settings` a provider must
    # give. `default_base_url`: the endpoint when the provider gives no base URL (from its
    # region); the paths may hold `{region}` and `{project}`. `credentials`: what is wrong with
    # the provider's `api_key` for this kind, None when it is usable. `envelope`: the body as
    # this kind's endpoint takes it, given the body in its wire format and the streaming mode.
    # `route_kind`: the kind one route of such a provider speaks, from its upstream model and
    # the provider's `translation`. A kind that is not `selectable` is only ever a route kind.
    required_settings: tuple[str, ...] = ()
    default_base_url: Callable[[CodecOptions], str] | None = None
    credentials: Callable[[str], str | None] | None = None
    envelope: Callable[[dict[str, Any], bool], dict[str, Any]] | None = None
    route_kind: Callable[[str, Mapping[str, Any]], str] | None = None
    selectable: bool = True
    # A kind that embeds in its own wire format: the codec pair its `embeddings` path takes
    # (gateway.adapters.embeddings sends it); None: OpenAI's body is passed through.
    embeddings: EmbeddingsCodec | None = None
    # POST /v1/messages/count_tokens: the body this kind's `count_tokens` URL takes, from the
    # client's Messages body, its IR, the upstream model and the codec options (None: the
    # Messages body with the model swapped, as Anthropic counts it), and the answer's field
    # holding the count.
    count_body: Callable[[dict[str, Any], ChatRequest, str, CodecOptions],
                         dict[str, Any]] | None = None
    count_field: str = "input_tokens"

    def serves(self, operation: str) -> bool:
        return operation in self.paths

    def url(self, base_url: str, operation: str, *, upstream_model: str, stream: bool,
            options: CodecOptions | None = None) -> str:
        if self.url_for is not None:
            return self.url_for(self, base_url, operation, upstream_model=upstream_model,
                                stream=stream, options=options or CodecOptions())
        path = self.paths[operation]
        if isinstance(path, tuple):
            path = path[1] if stream else path[0]
        if self.default_base_url is None:
            return base_url + path.replace("{model}", upstream_model)
        options = options or CodecOptions()
        return (base_url or self.default_base_url(options)) + (
            path.replace("{model}", upstream_model).replace("{region}", options.region or "")
            .replace("{project}", options.project or ""))

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

# Azure OpenAI: the latest GA data-plane version for the deployment URLs, used when a provider
# names none; `api_version: v1` selects the v1 GA API (/openai/v1/...), which takes none.
AZURE_API_VERSION = "2024-10-21"
# The dated version the realtime URL takes when a provider names none (the dated GA versions
# do not serve /openai/realtime; Azure's realtime reference names this preview).
AZURE_REALTIME_API_VERSION = "2025-04-01-preview"
AZURE_V1 = "v1"
AZURE_KIND = "azure_openai"
AZURE_RESPONSES_KIND = "azure_openai_responses"
AZURE_SETTINGS = ("api_version", "entra")
AZURE_PATHS = MappingProxyType({"chat": "/chat/completions", "completions": "/completions",
                                "embeddings": "/embeddings", "realtime": "/realtime"})
AZURE_RESPONSES_PATHS = MappingProxyType({"chat": "/responses", "responses": "/responses",
                                          "realtime": "/realtime"})


def _api_key_header(api_key: str) -> dict[str, str]:
    return {"api-key": api_key}


def _azure_url(dialect: Dialect, base_url: str, operation: str, *, upstream_model: str,
               stream: bool, options: CodecOptions) -> str:
    """Azure OpenAI's URL for `operation`. With `api_version: v1` (the default for the
    Responses kind): `{base_url}/openai/v1/<path>`, the deployment named by the body's
    `model`. Otherwise the dated API: `{base_url}/openai/deployments/{deployment}/<path>
    ?api-version=…` (the deployment is the route's upstream model), and for Responses
    `{base_url}/openai/responses?api-version=…` (a preview version).

    Realtime (a WebSocket, gateway.realtime.upstream): `{base_url}/openai/realtime
    ?api-version=…&deployment={deployment}` (AZURE_REALTIME_API_VERSION when the provider
    names no version), or with `api_version: v1` `{base_url}/openai/v1/realtime
    ?model={deployment}`."""
    path = dialect.paths[operation]
    default = AZURE_V1 if dialect.wire == "openai_responses" else AZURE_API_VERSION
    if operation == "realtime":
        default = AZURE_V1 if default == AZURE_V1 else AZURE_REALTIME_API_VERSION
    version = options.api_version or default
    deployment = quote(upstream_model, safe="")
    if operation == "realtime":
        if version == AZURE_V1:
            return f"{base_url}/openai/v1{path}?model={deployment}"
        return f"{base_url}/openai{path}?api-version={quote(version)}&deployment={deployment}"
    if version == AZURE_V1:
        return f"{base_url}/openai/v1{path}"
    if dialect.wire == "openai_responses":
        return f"{base_url}/openai{path}?api-version={quote(version)}"
    return f"{base_url}/openai/deployments/{deployment}{path}?api-version={quote(version)}"


def _x_goog_api_key(api_key: str) -> dict[str, str]:
    return {"x-goog-api-key": api_key}


def _gemini_count(body: dict[str, Any], req: ChatRequest, upstream_model: str,
                  options: CodecOptions) -> dict[str, Any]:
    """The Gemini API's `models/{model}:countTokens`: the whole request as
    `generateContentRequest` (so the system instruction and tools are counted too)."""
    generate = gemini.build_request(req, upstream_model=upstream_model, stream=False,
                                    options=options)
    return {"generateContentRequest": {
        "model": f"models/{upstream_model}",
        **{k: v for k, v in generate.items() if k in ("contents", "systemInstruction", "tools")}}}


def _gemini_probe(upstream_model: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "ping"}]}],
            "generationConfig": {"maxOutputTokens": 1}}


DIALECTS: Mapping[str, Dialect] = MappingProxyType({d.kind: d for d in (
    Dialect(kind="openai", label="OpenAI-compatible", wire="openai_chat", codec=openai_chat,
            responses_kind=RESPONSES_KIND,
            paths=MappingProxyType({**OPENAI_PATHS,
                                    "realtime": "/realtime?model={model}"})),
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
    # Azure OpenAI: the OpenAI wire formats at Azure's URLs, authenticated by `api-key` or by
    # Microsoft Entra ID tokens (translation `entra`, the transport in gateway.adapters.entra).
    Dialect(kind=AZURE_KIND, label="Azure OpenAI", wire="openai_chat", codec=openai_chat,
            paths=AZURE_PATHS, url_for=_azure_url, auth=_api_key_header, transport="entra",
            settings=AZURE_SETTINGS, api_key_required=True,
            responses_kind=AZURE_RESPONSES_KIND),
    Dialect(kind=AZURE_RESPONSES_KIND, label="Azure OpenAI (Responses API)",
            wire="openai_responses", codec=openai_responses, paths=AZURE_RESPONSES_PATHS,
            url_for=_azure_url, auth=_api_key_header, transport="entra",
            probe=_responses_probe, settings=AZURE_SETTINGS, api_key_required=True),
    # Google's Gemini API (generativelanguage.googleapis.com/v1beta), natively.
    Dialect(kind="gemini", label="Google Gemini API", wire="gemini", codec=gemini,
            paths=MappingProxyType({"chat": ("/models/{model}:generateContent",
                                             "/models/{model}:streamGenerateContent?alt=sse"),
                                    "embeddings": "/models/{model}:batchEmbedContents",
                                    "count_tokens": "/models/{model}:countTokens"}),
            count_body=_gemini_count, count_field="totalTokens",
            auth=_x_goog_api_key, probe=_gemini_probe, allow_documents=True, reasoning=True,
            usage_field="usageMetadata", api_key_required=True,
            embeddings=embeddings_native.GEMINI),
)})


# Amazon Bedrock (gateway.adapters.bedrock: SigV4-signed requests, AWS event streams). A
# route whose model is Anthropic's is reached through InvokeModel with the Messages body (so a
# Messages client is passed through), unless the provider says `messages_api: false`; every
# other model through Converse. Vertex AI (gateway.adapters.vertex: service-account tokens
# through google-auth): Gemini models with the Gemini codec, Anthropic's (`claude-…`) through
# rawPredict with the Messages body.
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
BEDROCK_SETTINGS = ("region", "aws_profile", "messages_api")
VERTEX_SETTINGS = ("region", "project")
_VERTEX_MODELS = "/v1/projects/{project}/locations/{region}/publishers"


def _bedrock_endpoint(options: CodecOptions) -> str:
    return f"https://bedrock-runtime.{options.region}.amazonaws.com"


def _bedrock_credentials(api_key: str) -> str | None:
    if not api_key:
        return None  # botocore's credential chain: environment, profile, instance or IRSA role
    parts = api_key.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        return ("must be empty (botocore's credential chain) or "
                "ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]")
    return None


def _bedrock_route(upstream_model: str, translation: Mapping[str, Any]) -> str:
    if "anthropic." in upstream_model and translation.get("messages_api", True):
        return "bedrock_messages"
    return "bedrock"


def _bedrock_messages_envelope(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in ("model", "stream")}
    out["anthropic_version"] = BEDROCK_ANTHROPIC_VERSION
    return out


def _bedrock_converse_count(body: dict[str, Any], req: ChatRequest, upstream_model: str,
                            options: CodecOptions) -> dict[str, Any]:
    """CountTokens for a Converse route: `{"input": {"converse": {"messages", "system"}}}`
    (the ConverseTokensRequest takes no tools: they are not counted)."""
    converse = bedrock_converse.build_request(req, upstream_model=upstream_model, stream=False,
                                              options=options)
    return {"input": {"converse": {k: v for k, v in converse.items()
                                   if k in ("messages", "system")}}}


def _bedrock_messages_count(body: dict[str, Any], req: ChatRequest, upstream_model: str,
                            options: CodecOptions) -> dict[str, Any]:
    """CountTokens for a Claude route: the InvokeModel body (the Messages body in Bedrock's
    envelope; `max_tokens`, which InvokeModel requires and a count request lacks, set to 1:
    it does not change the input count), base64-encoded, as `{"input": {"invokeModel":
    {"body"}}}`."""
    invoke = _bedrock_messages_envelope({"max_tokens": 1, **body}, False)
    invoke.pop("metadata", None)
    return {"input": {"invokeModel": {"body": base64.b64encode(
        json.dumps(invoke, ensure_ascii=False).encode()).decode()}}}


def _converse_probe(upstream_model: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"text": "ping"}]}],
            "inferenceConfig": {"maxTokens": 1}}


def _vertex_endpoint(options: CodecOptions) -> str:
    region = options.region or "global"
    return "https://aiplatform.googleapis.com" if region == "global" \
        else f"https://{region}-aiplatform.googleapis.com"


def _vertex_credentials(api_key: str) -> str | None:
    if not api_key:
        return None  # Application Default Credentials (google.auth.default)
    try:
        info = json.loads(api_key)
    except ValueError:
        return ("must be a service-account key (its JSON), or empty for Application Default "
                "Credentials")
    if not isinstance(info, dict) or info.get("type") != "service_account":
        return 'must be a service-account key: JSON with "type": "service_account"'
    for name in ("client_email", "private_key", "token_uri"):
        if not info.get(name):
            return f"the service-account key has no {name}"
    return None


def _vertex_route(upstream_model: str, translation: Mapping[str, Any]) -> str:
    return "vertex_messages" if upstream_model.startswith("claude") else "vertex"


def _vertex_messages_envelope(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k != "model"}
    out["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
    return out


def _vertex_gemini_count(body: dict[str, Any], req: ChatRequest, upstream_model: str,
                         options: CodecOptions) -> dict[str, Any]:
    """`:countTokens` (Vertex's CountTokensRequest): the request's contents, system
    instruction and tools, as generateContent would send them."""
    generate = gemini.build_request(req, upstream_model=upstream_model, stream=False,
                                    options=options)
    return {k: v for k, v in generate.items()
            if k in ("contents", "systemInstruction", "tools")}


def _vertex_messages_count(body: dict[str, Any], req: ChatRequest, upstream_model: str,
                           options: CodecOptions) -> dict[str, Any]:
    """`publishers/anthropic/models/count-tokens:rawPredict`: the Messages body naming the
    model, as Vertex's documented count-tokens request does."""
    return {**body, "model": upstream_model}


_CLOUD_DIALECTS = (
    Dialect(kind="bedrock", label="Amazon Bedrock", wire="bedrock_converse",
            codec=bedrock_converse,
            paths=MappingProxyType({"chat": ("/model/{model}/converse",
                                             "/model/{model}/converse-stream"),
                                    "embeddings": "/model/{model}/invoke",
                                    "count_tokens": "/model/{model}/count-tokens"}),
            count_body=_bedrock_converse_count, count_field="inputTokens",
            probe=_converse_probe, transport="bedrock", base_url_required=False,
            allow_documents=True, settings=BEDROCK_SETTINGS, required_settings=("region",),
            default_base_url=_bedrock_endpoint, credentials=_bedrock_credentials,
            route_kind=_bedrock_route, embeddings=embeddings_native.BEDROCK),
    Dialect(kind="bedrock_messages", label="Amazon Bedrock (Anthropic Messages)",
            wire="anthropic_messages", codec=anthropic_messages,
            paths=MappingProxyType({"chat": ("/model/{model}/invoke",
                                             "/model/{model}/invoke-with-response-stream"),
                                    "count_tokens": "/model/{model}/count-tokens"}),
            count_body=_bedrock_messages_count, count_field="inputTokens",
            probe=_messages_probe, transport="bedrock", base_url_required=False,
            allow_documents=True, reasoning=True, forward_headers=("anthropic-beta",),
            beta_header="anthropic-beta", settings=BEDROCK_SETTINGS,
            required_settings=("region",), default_base_url=_bedrock_endpoint,
            credentials=_bedrock_credentials, envelope=_bedrock_messages_envelope,
            selectable=False),
    Dialect(kind="vertex", label="Google Vertex AI", wire="gemini", codec=gemini,
            paths=MappingProxyType({"chat": (
                _VERTEX_MODELS + "/google/models/{model}:generateContent",
                _VERTEX_MODELS + "/google/models/{model}:streamGenerateContent?alt=sse"),
                "embeddings": _VERTEX_MODELS + "/google/models/{model}:predict",
                "count_tokens": _VERTEX_MODELS + "/google/models/{model}:countTokens"}),
            count_body=_vertex_gemini_count, count_field="totalTokens",
            probe=_gemini_probe, transport="vertex", base_url_required=False,
            allow_documents=True, reasoning=True, usage_field="usageMetadata",
            settings=VERTEX_SETTINGS, required_settings=VERTEX_SETTINGS,
            default_base_url=_vertex_endpoint, credentials=_vertex_credentials,
            route_kind=_vertex_route, embeddings=embeddings_native.VERTEX),
    Dialect(kind="vertex_messages", label="Google Vertex AI (Anthropic Messages)",
            wire="anthropic_messages", codec=anthropic_messages,
            paths=MappingProxyType({"chat": (
                _VERTEX_MODELS + "/anthropic/models/{model}:rawPredict",
                _VERTEX_MODELS + "/anthropic/models/{model}:streamRawPredict"),
                "count_tokens": _VERTEX_MODELS + "/anthropic/models/count-tokens:rawPredict"}),
            count_body=_vertex_messages_count,
            probe=_messages_probe, transport="vertex", base_url_required=False,
            allow_documents=True, reasoning=True, forward_headers=("anthropic-beta",),
            beta_header="anthropic-beta", settings=VERTEX_SETTINGS,
            required_settings=VERTEX_SETTINGS, default_base_url=_vertex_endpoint,
            credentials=_vertex_credentials, envelope=_vertex_messages_envelope,
            selectable=False),
)
DIALECTS = MappingProxyType({**DIALECTS, **{d.kind: d for d in _CLOUD_DIALECTS}})


def dialect_for(kind: str) -> Dialect:
    return DIALECTS[kind]


def kind_choices() -> list[tuple[str, str]]:
    """The provider-kind choices (providers.models.Provider.kind): the selectable kinds (a
    route of a cloud kind may speak another, its `route_kind`)."""
    return [(d.kind, d.label) for d in DIALECTS.values() if d.selectable]
