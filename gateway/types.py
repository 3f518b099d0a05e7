"""The typed internal representation (IR) every part of the proxy speaks.

Client surfaces parse their wire format into a `ChatRequest`; upstream adapters build their own
wire format from it; upstream replies come back as a `ChatResponse` or a sequence of
`StreamEvent`s, which the surface turns into its own wire format again. Adding a surface or an
upstream dialect is therefore one codec module, never one per pair.

Conventions the codecs rely on:
- Every value is a frozen dataclass with slots; sequences are tuples; JSON payloads that we do
  not interpret (JSON schemas, `extra`, `cache_control`) are plain mappings, never mutated.
- Tool-call arguments stay a JSON *string* end to end, so a call streamed in fragments is
  reassembled byte for byte; only the Anthropic codec parses it, where its wire needs an object.
- `Usage.input_tokens` is the TOTAL prompt size: uncached + cache reads + cache writes (OpenAI's
  `prompt_tokens`). Anthropic reports the three separately; its codec adds and subtracts them.
- Stop reasons use one neutral vocabulary (`StopReason`); each codec maps its own names at the
  edge.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

StopReason: TypeAlias = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause",
                                "refusal"]
Role: TypeAlias = Literal["user", "assistant", "system"]
Surface: TypeAlias = Literal["openai_chat", "openai_responses", "anthropic_messages"]


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str
    cache_control: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image, either inline (`data` is base64, `media_type` e.g. "image/png") or by `url`."""
    data: str | None = None
    media_type: str | None = None
    url: str | None = None
    detail: str | None = None  # OpenAI's "low" | "high" | "auto"; other dialects ignore it
    cache_control: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.url is None):
            raise ValueError("ImagePart needs exactly one of data or url")
        if self.data is not None and not self.media_type:
            raise ValueError("an inline ImagePart needs a media_type")


@dataclass(frozen=True, slots=True)
class DocumentPart:
    """A file such as a PDF: inline base64 `data` with `media_type`, plain `text`, or a `url`."""
    media_type: str | None = None
    data: str | None = None
    text: str | None = None
    url: str | None = None
    title: str | None = None
    cache_control: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.data, self.text, self.url)) != 1:
            raise ValueError("DocumentPart needs exactly one of data, text or url")


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """A call the assistant made: `arguments` is the JSON text exactly as the model produced it."""
    id: str
    name: str
    arguments: str = "{}"
    cache_control: Mapping[str, Any] | None = None
    # Gemini's `thoughtSignature` on the call (also carried in `id`, gateway.codecs.gemini, so
    # clients of any surface hand it back on the next turn).
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class ToolResultPart:
    """The result of the call `tool_call_id`, carried in a user turn (as Anthropic does)."""
    tool_call_id: str
    content: tuple[TextPart | ImagePart, ...] = ()
    is_error: bool = False
    cache_control: Mapping[str, Any] | None = None

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class ThinkingPart:
    """Model reasoning. `signature` is Anthropic's opaque proof; None when the model gave none."""
    text: str
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class RedactedThinkingPart:
    data: str


ContentPart: TypeAlias = (TextPart | ImagePart | DocumentPart | ToolCallPart | ToolResultPart
                          | ThinkingPart | RedactedThinkingPart)


@dataclass(frozen=True, slots=True)
class Message:
    """One turn. Tool results are `ToolResultPart`s in a user turn. A "system" turn is an
    instruction that appeared mid-conversation (leading ones live in `ChatRequest.system`)."""
    role: Role
    content: tuple[ContentPart, ...]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object",
                                                                    "properties": {}})
    strict: bool | None = None
    cache_control: Mapping[str, Any] | None = None
    # A Responses client's tool that upstreams see as this plain function: one of a
    # `namespace` group (`name` is then the flattened, unique name; `original` the client's),
    # or a `custom` (free-form) tool taking its text as the one string argument "input".
    namespace: str | None = None
    original: str | None = None
    custom: bool = False


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """auto: model decides; any: must call some tool (OpenAI "required"); none: must not;
    tool: must call `name`."""
    mode: Literal["auto", "any", "none", "tool"]
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.mode == "tool") != (self.name is not None):
            raise ValueError("ToolChoice needs a name exactly when mode is 'tool'")


@dataclass(frozen=True, slots=True)
class Reasoning:
    """How hard the model should think. `effort` is OpenAI's vocabulary ("minimal", "low",
    "medium", "high", ...; "none" turns reasoning off), `budget_tokens` Anthropic's; a request
    carries whichever the client gave and `CodecOptions` converts. `adaptive` is Anthropic's
    "let the model decide"."""
    effort: str | None = None
    budget_tokens: int | None = None
    adaptive: bool = False


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """Structured output: "text", "json_object", or "json_schema" with `schema`."""
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: Mapping[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat request, independent of the dialect it arrived in.

    `surface` names the dialect it was parsed from; `extra` holds that dialect's fields the IR
    does not model, which an upstream of the same dialect receives unchanged and any other
    upstream never sees. `system` is the leading instructions; `max_tokens` is whichever of
    max_tokens / max_completion_tokens / max_output_tokens the client set; `stop` its stop
    sequences.
    """
    model: str
    messages: tuple[Message, ...]
    surface: Surface
    system: tuple[TextPart, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # OpenAI stream_options.include_usage (others always report)
    reasoning: Reasoning | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    # What the client sent that an upstream of another dialect cannot take (hosted tools, API
    # options): left out of translated requests and named in the `x-gateway-dropped` header.
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts. `input_tokens` includes `cached_tokens` (cache reads),
    `cache_creation_tokens` (cache writes, of which `cache_creation_1h_tokens` are written for
    one hour and the rest for five minutes) and the audio and image input tokens;
    `output_tokens` includes `reasoning_tokens` and the audio and image output tokens."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A complete, non-streamed assistant turn as the upstream returned it."""
    id: str
    content: tuple[ContentPart, ...]
    stop_reason: StopReason | None
    usage: Usage
    model: str | None = None
    stop_sequence: str | None = None


# Stream events. Content arrives in blocks addressed by `index` (unique within one response and
# increasing in start order). A text or thinking block starts implicitly with its first delta
# (which may be empty, just to open it); a tool block starts with `ToolCallStart`. Decoders emit
# blocks one after another and end each with `BlockStop`; a delta arriving for a stopped block
# (an upstream interleaving tool-call fragments) is still addressed by its index. The stream
# carries `Stop` once and `UsageUpdate` any number of times (each one the cumulative totals so
# far, replacing the previous); a `StreamError` ends it.

@dataclass(frozen=True, slots=True)
class MessageStart:
    id: str | None = None
    model: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class SignatureDelta:
    index: int
    signature: str


@dataclass(frozen=True, slots=True)
class RedactedThinking:
    """A whole redacted-thinking block; it still ends with `BlockStop`."""
    index: int
    data: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolArgsDelta:
    index: int
    partial_json: str


@dataclass(frozen=True, slots=True)
class BlockStop:
    index: int


@dataclass(frozen=True, slots=True)
class Stop:
    reason: StopReason
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    usage: Usage


@dataclass(frozen=True, slots=True)
class StreamError:
    """The upstream failed mid-stream; `type` uses the upstream's error vocabulary."""
    message: str
    type: str = "api_error"


StreamEvent: TypeAlias = (MessageStart | TextDelta | ThinkingDelta | SignatureDelta
                          | RedactedThinking | ToolCallStart | ToolArgsDelta | BlockStop | Stop
                          | UsageUpdate | StreamError)

SSEEvent: TypeAlias = tuple[str | None, dict[str, Any] | str]
"""(SSE `event:` name or None, JSON payload or a literal such as "[DONE]")."""


def _default_budget_to_effort() -> Mapping[int, str]:
    return MappingProxyType({1024: "low", 4000: "medium", 8000: "high"})


def _default_effort_to_budget() -> Mapping[str, int]:
    return MappingProxyType({"minimal": 1024, "low": 1024, "medium": 4000, "high": 8000,
                             "xhigh": 16000, "max": 32000})


@dataclass(frozen=True, slots=True)
class CodecOptions:
    """Per-deployment knobs for building upstream requests.

    - allow_images / allow_documents: otherwise such parts raise InvalidRequest.
    - budget_to_effort: a thinking budget maps to the effort of the largest threshold <= budget
      (the smallest threshold's effort below all of them). Empty: never send an effort the
      client did not name itself (for upstream models that reject `reasoning_effort`).
    - effort_to_budget: an effort maps to a thinking budget; unknown efforts use "medium".
      Empty: never turn thinking on for an effort.
    - anthropic_default_max_tokens: Anthropic requires max_tokens; used when the client gave none.
    - openai_max_tokens_field: "max_tokens" (widest support among OpenAI-compatible servers) or
      "max_completion_tokens" (required by OpenAI's reasoning models).
    - replay_reasoning_content: send earlier assistant reasoning back to OpenAI-compatible
      upstreams as `reasoning_content` (Kimi/DeepSeek thinking-with-tools want it; others reject).
    - reasoning: whether the route's model can reason. True: a thinking budget, adaptive
      thinking or an effort is sent in the upstream's form. False: none is sent (dropped and
      named). None (unknown): only an effort the client named in OpenAI's own vocabulary is
      sent; Anthropic thinking and `output_config.effort` are dropped.
    - max_output_tokens: the route's output limit; a larger `max_tokens` is sent clamped.
      Both `reasoning` and `max_output_tokens` are the route's, resolved once per snapshot
      (providers.capabilities: the route, its provider, the catalog, the default).
    - anthropic_beta_add / anthropic_beta_remove: betas added to, or taken out of, the
      client's `anthropic-beta` header forwarded to an Anthropic upstream.
    - region / project / aws_profile: not codec knobs but the deployment's place in its
      cloud (bedrock, vertex), read by their transports and URL templates.
    """
    allow_images: bool = True
    allow_documents: bool = False
    budget_to_effort: Mapping[int, str] = field(default_factory=_default_budget_to_effort)
    effort_to_budget: Mapping[str, int] = field(default_factory=_default_effort_to_budget)
    anthropic_default_max_tokens: int = 4096
    openai_max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    replay_reasoning_content: bool = False
    reasoning: bool | None = None
    max_output_tokens: int | None = None
    anthropic_beta_add: tuple[str, ...] = ()
    anthropic_beta_remove: tuple[str, ...] = ()
    # Azure OpenAI (providers.translation): the data-plane `api-version` ("v1": the v1 GA
    # API), and Microsoft Entra ID client credentials {tenant_id, client_id, token_url,
    # scope} (the secret is the provider's API key), read by gateway.adapters.entra.
    api_version: str | None = None
    entra: Mapping[str, str] | None = None
    # Where a cloud kind's endpoint lives (providers.translation): the AWS or Google Cloud
    # region, the Google Cloud project, the AWS profile of botocore's credential chain.
    region: str | None = None
    project: str | None = None
    aws_profile: str | None = None
    # Not a codec knob either: whether a stream whose client left is read to its end for the
    # upstream's own usage (gateway.relay), instead of closed at once and billed as streamed.
    drain_on_disconnect: bool = False
    # Anthropic Messages (providers.translation `auto_cache`): a request translated from
    # another dialect that carries no `cache_control` of its own gets ephemeral breakpoints
    # (last tool, last system block, last two user turns), so an agent loop's growing prefix
    # is read from Anthropic's cache instead of billed again on every turn.
    auto_cache: bool = True

    def clamp_max_tokens(self, max_tokens: int | None) -> int | None:
        """`max_tokens` within the route's output limit (None stays None)."""
        if max_tokens is None or self.max_output_tokens is None:
            return max_tokens
        return min(max_tokens, self.max_output_tokens)

    def effort_for_budget(self, budget: int) -> str | None:
        """The reasoning effort for a thinking budget, or None when efforts are off."""
        thresholds = sorted(self.budget_to_effort)
        if not thresholds:
            return None
        chosen = thresholds[0]
        for threshold in thresholds:
            if threshold <= budget:
                chosen = threshold
        return self.budget_to_effort[chosen]

    def budget_for_effort(self, effort: str) -> int | None:
        """The thinking budget for a reasoning effort, or None when budgets are off."""
        return self.effort_to_budget.get(effort, self.effort_to_budget.get("medium"))
