"""Optional OpenTelemetry traces: one span per proxied request, exported in the background.

Off unless GATEWAY_OTEL_ENDPOINT (an OTLP collector, HTTP/protobuf or gRPC) or the Langfuse keys
(Langfuse's OTLP endpoint, `<host>/api/public/otel`, with Basic auth) are set; both may be. On
first use each process builds one TracerProvider with a BatchSpanProcessor per destination: a
finished request's span goes into a bounded in-memory queue (OTEL_BSP_MAX_QUEUE_SIZE, 2048) and
the processor's thread exports it. A dead or slow collector costs dropped spans, never a blocked
or failed request; a tracer that cannot be built leaves tracing off for the process.

The span, `<operation> <public model>` (`chat gpt-4o-mini`), starts when the request did and
ends when its ledger row is written. It carries the GenAI semantic conventions (gen_ai.*: the
operation, the provider kind, the requested and upstream models, token usage, and the cost as
Langfuse reads it), the gateway's own view (gateway.*: request id, surface, provider, status,
HTTP status, exact cost, key prefix, time to first token, stream) and, unless
GATEWAY_OTEL_MAX_BODY_BYTES is 0, the client's body and the answer (the JSON body, or a
stream's text) as `input.value` / `output.value`, each cut to that many bytes and with
key-shaped strings masked. Headers are never recorded, so neither the client's key nor the
provider's is. A client's W3C `traceparent` makes the span a child of the client's span.
"""
from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from django.conf import settings

from gateway.logs import mask_secrets

logger = logging.getLogger(__name__)

# gen_ai.operation.name per surface; every other surface is a chat.
OPERATIONS = {"openai.completions": "text_completion", "openai.embeddings": "embeddings"}
LANGFUSE_PATH = "/api/public/otel"


@dataclass(slots=True)
class TraceCapture:
    """What a traced request keeps for its span: the client's trace context (from its W3C
    `traceparent`, else None), the start of its body, and, for a stream, the answer's text
    (None: the answer is the response body given at the end). `limit` is the body cap."""

    parent: Any
    request_body: bytes
    limit: int
    output: str | None = None

    def take_text(self, parts: list[str]) -> None:
        """A stream's answer from its pieces, joined only up to about `limit` characters."""
        kept, size = [], 0
        for part in parts:
            if size >= self.limit:
                break
            kept.append(part)
            size += len(part)
        self.output = "".join(kept)


def otlp_exporter(*, protocol: str, endpoint: str, headers: dict[str, str], timeout_s: float):
    """An OTLP span exporter. `http/protobuf`: `endpoint` is the collector's base URL and
    /v1/traces is appended (unless already there). `grpc`: `endpoint` is `http://host:port`
    (plaintext) or `https://host:port` (TLS)."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # gRPC metadata keys must be lower case.
        return OTLPSpanExporter(endpoint=endpoint, timeout=timeout_s,
                                headers={k.lower(): v for k, v in headers.items()} or None)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    return OTLPSpanExporter(endpoint=url, headers=headers, timeout=timeout_s)


def langfuse_headers(*, public_key: str, secret_key: str) -> dict[str, str]:
    token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
    # The version header asks Langfuse for its real-time OTLP ingestion path.
    return {"Authorization": f"Basic {token}", "x-langfuse-ingestion-version": "4"}


def _cut(data: bytes | str, limit: int) -> str:
    """At most `limit` bytes of UTF-8 as text (a character split by the cut is dropped)."""
    raw = data.encode() if isinstance(data, str) else data
    return mask_secrets(raw[:limit].decode("utf-8", errors="ignore"))


class RequestTracer:
    """The process's tracer, built on first use. `enabled` is the hot path's only check."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tracer = None
        self._broken = False
        self._warned = False

    @cached_property
    def enabled(self) -> bool:
        return bool(settings.GATEWAY_OTEL_ENDPOINT or settings.GATEWAY_OTEL_LANGFUSE_PUBLIC_KEY)

    @cached_property
    def _propagator(self):
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        return TraceContextTextMapPropagator()

    def capture(self, request) -> TraceCapture:
        """The trace state of a request that is starting (call only when `enabled`). Never
        raises: what cannot be read is left out of the span."""
        limit = settings.GATEWAY_OTEL_MAX_BODY_BYTES
        parent, body = None, b""
        try:
            if "traceparent" in request.headers:
                parent = self._propagator.extract({
                    "traceparent": request.headers["traceparent"],
                    "tracestate": request.headers.get("tracestate", "")})
            if limit > 0:
                body = request.body[:limit]
        except Exception:  # e.g. a body Django refuses to read: read_json answers that
            pass
        return TraceCapture(parent=parent, request_body=body, limit=limit)

    def _build(self):
        """The tracer, or None when it could not be built (logged once; tracing stays off)."""
        with self._lock:
            if self._tracer is not None or self._broken:
                return self._tracer
            try:
                from opentelemetry.sdk.resources import Resource
                from opentelemetry.sdk.trace import TracerProvider
                from opentelemetry.sdk.trace.export import BatchSpanProcessor

                s = settings
                exporters = []
                if s.GATEWAY_OTEL_ENDPOINT:
                    exporters.append(otlp_exporter(
                        protocol=s.GATEWAY_OTEL_PROTOCOL, endpoint=s.GATEWAY_OTEL_ENDPOINT,
                        headers=s.GATEWAY_OTEL_HEADERS, timeout_s=s.GATEWAY_OTEL_TIMEOUT_S))
                if s.GATEWAY_OTEL_LANGFUSE_PUBLIC_KEY:
                    exporters.append(otlp_exporter(
                        protocol="http/protobuf",
                        endpoint=s.GATEWAY_OTEL_LANGFUSE_HOST.rstrip("/") + LANGFUSE_PATH,
                        headers=langfuse_headers(public_key=s.GATEWAY_OTEL_LANGFUSE_PUBLIC_KEY,
                                                 secret_key=s.GATEWAY_OTEL_LANGFUSE_SECRET_KEY),
                        timeout_s=s.GATEWAY_OTEL_TIMEOUT_S))
                # A private provider, not the global one: other instrumentation in the process
                # keeps its own. Its exit hook flushes what is queued (bounded by the timeout).
                provider = TracerProvider(resource=Resource.create(
                    {"service.name": s.GATEWAY_OTEL_SERVICE_NAME}))
                for exporter in exporters:
                    provider.add_span_processor(BatchSpanProcessor(exporter))
                self._tracer = provider.get_tracer("llm-gateway")
            except Exception:
                self._broken = True
                logger.exception("tracing could not start; requests are served without spans")
            return self._tracer

    def record(self, *, call, entry, response_body: bytes | None) -> None:
        """Queue the span of a finished call (`entry`: its ledger row; `response_body`: the
        JSON body it answered, if any). Never raises; a failure is logged once."""
        try:
            tracer = self._tracer or self._build()
            if tracer is not None:
                self._span(tracer, call, entry, response_body)
        except Exception:
            if not self._warned:
                self._warned = True
                logger.exception("a request's span could not be recorded")

    def _span(self, tracer, call, entry, response_body: bytes | None) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        trace = call.trace
        operation = OPERATIONS.get(entry.surface, "chat")
        attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": entry.public_model,
            "gen_ai.usage.input_tokens": entry.input_tokens,
            "gen_ai.usage.output_tokens": entry.output_tokens,
            "gen_ai.usage.cost": float(entry.cost_usd),
            "gateway.request_id": entry.request_id,
            "gateway.surface": entry.surface,
            "gateway.status": str(entry.status),
            "gateway.http_status": entry.http_status,
            "gateway.cost_usd": str(entry.cost_usd),
            "gateway.key_prefix": entry.key_prefix,
            "gateway.stream": entry.stream,
            "gateway.usage_source": str(entry.usage_source),
            "gateway.cached_tokens": entry.cached_tokens,
            "gateway.reasoning_tokens": entry.reasoning_tokens,
        }
        if call.deployment is not None:
            attributes["gen_ai.system"] = attributes["gen_ai.provider.name"] = call.deployment.kind
            attributes["gen_ai.response.model"] = entry.upstream_model
            attributes["gateway.provider"] = entry.provider_name
        if entry.client_request_id:
            attributes["gateway.client_request_id"] = entry.client_request_id
        if entry.ttft_ms is not None:
            attributes["gateway.ttft_ms"] = entry.ttft_ms
        if entry.error_type:
            attributes["error.type"] = entry.error_type
        if trace.limit > 0:
            if trace.request_body:
                attributes["input.value"] = _cut(trace.request_body, trace.limit)
                attributes["input.mime_type"] = "application/json"
            output = trace.output if trace.output is not None else response_body
            if output:
                attributes["output.value"] = _cut(output, trace.limit)
                attributes["output.mime_type"] = ("text/plain" if isinstance(output, str)
                                                  else "application/json")
        start_ns = int(call.created_at.timestamp() * 1e9)
        span = tracer.start_span(f"{operation} {entry.public_model}", context=trace.parent,
                                 kind=SpanKind.SERVER, attributes=attributes,
                                 start_time=start_ns)
        if entry.status != "ok":
            span.set_status(Status(StatusCode.ERROR, entry.error_type or entry.status))
        span.end(end_time=start_ns + entry.latency_ms * 1_000_000)


request_tracer = RequestTracer()
