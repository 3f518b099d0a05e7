"""OpenTelemetry traces: a gateway process (settings are read at its start) exports one span
per request to a fake collector — a real OTLP server on loopback, over HTTP/protobuf or gRPC,
or at Langfuse's path with its Basic auth — and a dead or hanging collector never slows or
fails a request."""
from __future__ import annotations

import asyncio
import base64
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import anthropic
import grpc
import httpx
import openai
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

REPLY = "Hello from the fake upstream, here is your answer."
UPSTREAM_SECRET = "sk-fake-upstream-secret-a"
# Short batching delay so spans arrive within a moment (the SDK reads OTEL_BSP_*).
FAST = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


@dataclass
class Export:
    path: str
    headers: dict[str, str]
    body: bytes


def _attributes(pairs) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in pairs}


class Collector:
    """Keeps every OTLP export it receives; `spans(n)` waits for n spans, decoded."""

    def __init__(self) -> None:
        self.exports: list[Export] = []
        self._lock = threading.Lock()

    def keep(self, path: str, headers: dict[str, str], body: bytes) -> None:
        with self._lock:
            self.exports.append(Export(path, headers, body))

    def export_tried(self, timeout: float) -> bool:
        return bool(self.spans(1, timeout=timeout))

    def spans(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                exports = list(self.exports)
            spans = []
            for export in exports:
                request = ExportTraceServiceRequest.FromString(export.body)
                for resource_spans in request.resource_spans:
                    resource = _attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        spans.extend({"name": s.name, "attributes": _attributes(s.attributes),
                                      "resource": resource, "trace_id": s.trace_id.hex(),
                                      "parent_span_id": s.parent_span_id.hex(),
                                      "status": s.status.code, "start": s.start_time_unix_nano,
                                      "end": s.end_time_unix_nano}
                                     for s in scope_spans.spans)
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)


class HttpCollector(Collector):
    """OTLP/HTTP on loopback (aiohttp, own thread): POST <any path>/v1/traces. With `hang`,
    it reads each export and answers only once `release()` is called."""

    def __init__(self, *, hang: bool = False) -> None:
        super().__init__()
        self.hang = hang
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def export(request: web.Request) -> web.Response:
            self.keep(request.path, dict(request.headers), await request.read())
            if self.hang:
                await self._released.wait()
            return web.Response(body=trace_service_pb2.ExportTraceServiceResponse()
                                .SerializeToString(), content_type="application/x-protobuf")

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._released = asyncio.Event()
            app = web.Application()
            app.router.add_post("/{prefix:.*}v1/traces", export)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, name="fake-otlp-http", daemon=True).start()
        ready.wait(10)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._released.set)

    def stop(self) -> None:
        self.release()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


class GrpcCollector(Collector, trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP/gRPC on loopback (grpc's own server threads)."""

    def __init__(self) -> None:
        super().__init__()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.url = f"http://127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        self.keep("grpc", dict(context.invocation_metadata()), request.SerializeToString())
        return trace_service_pb2.ExportTraceServiceResponse()

    def stop(self) -> None:
        self._server.stop(0)


class DeadCollector:
    """A collector's port that takes the first connection (so the test knows an export was
    tried), resets it and closes: every later attempt is refused, as at a closed port."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._tried = threading.Event()
        threading.Thread(target=self._refuse, name="dead-otlp", daemon=True).start()

    def export_tried(self, timeout: float) -> bool:
        return self._tried.wait(timeout)

    def _refuse(self) -> None:
        connection, _ = self._sock.accept()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
        self._sock.close()
        self._tried.set()

    def stop(self) -> None:
        self._sock.close()


@pytest.fixture
def http_collector():
    collector = HttpCollector()
    yield collector
    collector.stop()


def _openai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def _no_secrets(collector: Collector, *secrets: str) -> None:
    for export in collector.exports:
        for secret in secrets:
            assert secret.encode() not in export.body
            assert all(secret not in value for value in export.headers.values())


def test_http_export_carries_model_usage_cost_request_id_and_cut_bodies(
        spawn_gateway, fake_provider, api_key, ledger_rows, http_collector):
    url = spawn_gateway(GATEWAY_OTEL_ENDPOINT=http_collector.url,
                        GATEWAY_OTEL_MAX_BODY_BYTES="512", **FAST)
    client = _openai(url, api_key)
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    prompt = "a long prompt, " * 400
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": prompt}],
        extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert raw.parse().choices[0].message.content == REPLY
    fake_provider.behave("fake-a", status=500, error_message=f"boom {UPSTREAM_SECRET}")
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])

    spans = http_collector.spans(2)
    assert len(spans) == 2
    ok, failed = sorted(spans, key=lambda s: s["start"])
    rows = ledger_rows(2)
    a = ok["attributes"]
    assert ok["name"] == "chat gpt-test"
    assert ok["resource"]["service.name"] == "llm-gateway"
    assert (ok["trace_id"], ok["parent_span_id"]) == (trace_id, parent_id)
    assert a["gateway.request_id"] == raw.headers["x-request-id"] == rows[0].request_id
    assert (a["gen_ai.request.model"], a["gen_ai.response.model"]) == ("gpt-test", "up-gpt")
    assert (a["gen_ai.provider.name"], a["gateway.provider"]) == ("openai", "fake-a")
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (11, 7)
    assert a["gateway.cost_usd"] == str(rows[0].cost_usd)
    assert a["gen_ai.usage.cost"] == pytest.approx(float(rows[0].cost_usd))
    assert (a["gateway.status"], a["gateway.http_status"], a["gateway.stream"]) == ("ok", 200, False)
    assert a["gateway.key_prefix"] == api_key[:10] and a["gateway.surface"] == "openai.chat"
    assert a["input.value"].startswith('{"') and len(a["input.value"].encode()) <= 512
    assert REPLY in a["output.value"]
    assert ok["status"] == Status.STATUS_CODE_UNSET
    assert (ok["end"] - ok["start"]) // 1_000_000 == rows[0].latency_ms
    f = failed["attributes"]
    assert failed["status"] == Status.STATUS_CODE_ERROR
    assert (f["gateway.status"], f["gateway.http_status"]) == ("upstream_error", 502)
    assert f["gateway.request_id"] == rows[1].request_id and "output.value" not in f
    assert failed["parent_span_id"] == ""
    _no_secrets(http_collector, api_key, UPSTREAM_SECRET)


def test_grpc_export_receives_an_anthropic_request_span(spawn_gateway, fake_anthropic_provider,
                                                        api_key, ledger_rows):
    collector = GrpcCollector()
    try:
        url = spawn_gateway(GATEWAY_OTEL_ENDPOINT=collector.url, GATEWAY_OTEL_PROTOCOL="grpc",
                            GATEWAY_OTEL_SERVICE_NAME="edge-gateway", **FAST)
        client = anthropic.Anthropic(base_url=url, api_key=api_key, max_retries=0, timeout=30)
        message = client.messages.create(model="claude-test", max_tokens=100,
                                         messages=[{"role": "user", "content": "hello"}])
        assert message.content[0].text == REPLY
        with client.messages.stream(model="claude-test", max_tokens=100,
                                    messages=[{"role": "user", "content": "again"}]) as stream:
            assert stream.get_final_text() == REPLY
        spans = sorted(collector.spans(2), key=lambda s: s["start"])
    finally:
        collector.stop()
    assert len(spans) == 2
    a = spans[0]["attributes"]
    assert spans[0]["name"] == "chat claude-test"
    assert spans[1]["attributes"]["output.value"] == REPLY
    assert spans[1]["attributes"]["gateway.stream"] is True
    assert spans[0]["resource"]["service.name"] == "edge-gateway"
    assert (a["gen_ai.provider.name"], a["gateway.surface"]) == ("anthropic", "anthropic.messages")
    assert a["gateway.request_id"] == ledger_rows(2)[0].request_id
    assert '"hello"' in a["input.value"] and REPLY in a["output.value"]
    _no_secrets(collector, api_key, "sk-ant-fake-upstream-secret")


def test_langfuse_export_uses_its_otel_path_and_basic_auth(spawn_gateway, fake_provider, api_key,
                                                          http_collector):
    url = spawn_gateway(GATEWAY_OTEL_LANGFUSE_HOST=http_collector.url,
                        GATEWAY_OTEL_LANGFUSE_PUBLIC_KEY="pk-lf-test",
                        GATEWAY_OTEL_LANGFUSE_SECRET_KEY="sk-lf-test",
                        GATEWAY_OTEL_MAX_BODY_BYTES="0", **FAST)
    _openai(url, api_key).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": "not-a-trace-context"})
    spans = http_collector.spans(1)
    assert len(spans) == 1 and spans[0]["parent_span_id"] == ""
    export = http_collector.exports[0]
    assert export.path == "/api/public/otel/v1/traces"
    assert export.headers["Authorization"] == "Basic " + base64.b64encode(b"pk-lf-test:sk-lf-test").decode()
    assert export.headers["Content-Type"] == "application/x-protobuf"
    attributes = spans[0]["attributes"]
    assert attributes["gen_ai.usage.output_tokens"] == 7
    assert "input.value" not in attributes and "output.value" not in attributes


@pytest.mark.parametrize("collector_state", ["closed_port", "hanging"])
def test_a_dead_or_hanging_collector_never_slows_or_fails_requests(
        spawn_gateway, fake_provider, api_key, ledger_rows, collector_state):
    collector = DeadCollector() if collector_state == "closed_port" else HttpCollector(hang=True)
    try:
        # An export may wait 20 s for the collector; requests must not wait with it.
        url = spawn_gateway(GATEWAY_OTEL_ENDPOINT=collector.url, GATEWAY_OTEL_TIMEOUT_S="20",
                            **FAST)
        client = _openai(url, api_key)
        serving = 0.0
        for i in range(5):
            started = time.monotonic()
            reply = client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": f"hi {i}"}])
            assert reply.choices[0].message.content == REPLY
            serving += time.monotonic() - started
            if i == 0:
                # The first batch went out: every later request meets an exporter busy with it
                # (held by the hanging collector, or retrying the refused one).
                assert collector.export_tried(timeout=10)
        started = time.monotonic()
        stream = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY
        assert serving + time.monotonic() - started < 10
        rows = ledger_rows(6)
        assert len(rows) == 6 and {r.status for r in rows} == {"ok"}
        if collector_state == "hanging":
            assert collector.spans(1)  # the collector did get (and hold) an export
            _no_secrets(collector, api_key, UPSTREAM_SECRET)
    finally:
        collector.stop()


def test_a_streamed_request_records_the_streamed_text(spawn_gateway, fake_provider, api_key,
                                                      ledger_rows, http_collector):
    url = spawn_gateway(GATEWAY_OTEL_ENDPOINT=http_collector.url, **FAST)
    stream = _openai(url, api_key).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "stream it"}], stream=True,
        extra_headers={"x-request-id": "client-trace-7"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY
    spans = http_collector.spans(1)
    assert len(spans) == 1
    a = spans[0]["attributes"]
    row = ledger_rows(1)[0]
    assert a["output.value"] == REPLY and a["output.mime_type"] == "text/plain"
    assert (a["gateway.stream"], a["gateway.request_id"]) == (True, row.request_id)
    assert a["gateway.client_request_id"] == "client-trace-7"
    assert a["gateway.ttft_ms"] == row.ttft_ms
    assert '"stream it"' in a["input.value"]


def test_tracing_is_off_without_an_endpoint(gateway_url, fake_provider, api_key):
    from gateway.tracing import request_tracer

    assert request_tracer.enabled is False
    reply = httpx.post(f"{gateway_url}/v1/chat/completions",
                       headers={"authorization": f"Bearer {api_key}"},
                       json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200
    assert not [t for t in threading.enumerate() if t.name.startswith("OtelBatch")]
