"""Fake cloud upstreams on loopback, speaking the real wire: Amazon Bedrock and Google Vertex AI
(with Google's OAuth 2.0 token endpoint). Real aiohttp servers, each in its own thread.

Bedrock (`FakeBedrock`): Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream under `/model/{modelId}/…`. Every request's SigV4 signature is
checked with botocore's signer against the credentials the fake knows (a request signed with
other credentials, or altered after signing, is refused with 403 `InvalidSignatureException`,
as AWS does). Streams are AWS event-stream messages, framed by `event_message` from the
format's spec (prelude, headers, payload, CRC32s); the tests check that botocore's
`EventStreamBuffer` and boto3's own client read them.

Vertex (`FakeVertex`): `/token` is the token endpoint of the service-account key the tests
make (it checks the JWT assertion's RS256 signature with the key's public half and issues
tokens that last `token_lifetime_s`); `…/publishers/anthropic/models/{model}:rawPredict` and
`:streamRawPredict` answer in Anthropic's Messages format, `…/publishers/google/models/
{model}:generateContent` and `:streamGenerateContent?alt=sse` in Gemini's; each refuses a
request without a live token it issued.

Embeddings: Bedrock's InvokeModel for `amazon.titan-embed-text-*` (one `inputText` per request,
`dimensions`, `normalize`; `embedding` and `inputTextTokenCount` back) and `cohere.embed-*`
(`texts` and the required `input_type`; `embeddings` back, no count); Vertex's
`…/publishers/google/models/{model}:predict` (`instances[].content`,
`parameters.outputDimensionality`; `predictions[].embeddings.values` and
`.statistics.token_count`). A body with another field, or without a required one, is a 400
`ValidationException` / `INVALID_ARGUMENT`, as the clouds answer. Vectors are `fake_vector`
(multiples of 1/8: exact in float32); a text's token count is `fake_token_count`.

Token counting: Bedrock's `/model/{modelId}/count-tokens` takes `{"input": {"converse":
{"messages", "system"}}}` or `{"input": {"invokeModel": {"body": <base64 InvokeModel body>}}}`
(a Claude body: `anthropic_version` bedrock-2023-05-31, `max_tokens`, no `model`) and
answers `{"inputTokens"}`: COUNT_CONVERSE or COUNT_INVOKE; a model in `no_count` answers
Bedrock's 400 ValidationException. Vertex's `…/google/models/{model}:countTokens`
(`contents`, `systemInstruction`, `tools`) answers `{"totalTokens": COUNT_GEMINI}`, and
`…/anthropic/models/count-tokens:rawPredict` (the Messages body with `model`) answers
`{"input_tokens": COUNT_CLAUDE}`.

Both answer one scenario: text (or a tool call when the request offers tools and carries no
tool result yet), with usage of 6 uncached input tokens, 3 cache reads, 2 cache writes (11 in
all) and 7 output tokens.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
import time
import uuid
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from gateway.tests.loopback import serve_in_thread

REPLY = "Hello from the fake cloud."
TOOL_INPUT = {"city": "Zürich"}
UNCACHED, CACHE_READ, CACHE_WRITE, OUTPUT = 6, 3, 2, 7
EMBED_DIMENSIONS = 8
COUNT_CONVERSE, COUNT_INVOKE, COUNT_GEMINI, COUNT_CLAUDE = 21, 23, 17, 19


def fake_vector(text: str, dimensions: int | None = None) -> list[float]:
    """The fakes' embedding of `text`: `dimensions` (default EMBED_DIMENSIONS) multiples of
    1/8, exact in float32 (so base64 vectors compare equal)."""
    return [((len(text) + i) % 8) / 8 for i in range(dimensions or EMBED_DIMENSIONS)]


def fake_token_count(text: str) -> int:
    return len(text.split()) + 1


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (struct.pack("!B", len(raw_name)) + raw_name + b"\x07"
            + struct.pack("!H", len(raw_value)) + raw_value)


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: total length and headers length (big-endian uint32),
    the prelude's CRC32, string headers (type 7), the payload, the message's CRC32."""
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack("!II", total, len(raw_headers))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    body = prelude + raw_headers + payload
    return body + struct.pack("!I", binascii.crc32(body))


def aws_event(event_type: str, payload: dict) -> bytes:
    return event_message({":event-type": event_type, ":content-type": "application/json",
                          ":message-type": "event"}, orjson.dumps(payload))


def aws_exception(exception_type: str, message: str) -> bytes:
    return event_message({":exception-type": exception_type,
                          ":content-type": "application/json",
                          ":message-type": "exception"}, orjson.dumps({"message": message}))


def _has_tool_result(messages: list) -> bool:
    for message in messages or []:
        for block in (message.get("content") or []) if isinstance(message, dict) else []:
            if isinstance(block, dict) and ("toolResult" in block
                                            or block.get("type") == "tool_result"):
                return True
    return False


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class _Server:
    received: list[Seen] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    def _start(self, app: web.Application, name: str) -> None:
        self.port, self._loop = serve_in_thread(app, name=name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def anthropic_message(model: str, body: dict) -> dict:
    tools = bool(body.get("tools")) and not _has_tool_result(body.get("messages"))
    content = [{"type": "tool_use", "id": "toolu_fake1", "name": body["tools"][0]["name"],
                "input": TOOL_INPUT}] if tools else [{"type": "text", "text": REPLY}]
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": "tool_use" if tools else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": UNCACHED, "cache_read_input_tokens": CACHE_READ,
                      "cache_creation_input_tokens": CACHE_WRITE, "output_tokens": OUTPUT}}


def anthropic_events(model: str, body: dict) -> list[dict]:
    """Anthropic's stream grammar for the scenario: message_start … message_stop."""
    message = anthropic_message(model, body)
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    events = [{"type": "message_start", "message": start}]
    block = message["content"][0]
    if block["type"] == "text":
        events.append({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}})
        for piece in ("Hello from ", "the fake cloud."):
            events.append({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": piece}})
    else:
        events.append({"type": "content_block_start", "index": 0,
                       "content_block": {**block, "input": {}}})
        text = json.dumps(TOOL_INPUT, ensure_ascii=False)
        for piece in (text[:5], text[5:]):
            events.append({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "input_json_delta", "partial_json": piece}})
    events += [{"type": "content_block_stop", "index": 0},
               {"type": "message_delta", "delta": {"stop_reason": message["stop_reason"],
                                                   "stop_sequence": None},
                "usage": {"output_tokens": OUTPUT}},
               {"type": "message_stop"}]
    return events


class FakeBedrock(_Server):
    """Bedrock Runtime, SigV4-checked against (`access_key`, `secret_key`) in `region`.
    `exception`: the next stream ends with that event-stream exception after its first
    events. `rejected` counts the requests refused for their signature."""

    def __init__(self, *, access_key: str, secret_key: str, region: str) -> None:
        super().__init__()
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.exception: str | None = None
        self.rejected = 0
        self.no_count: set[str] = set()
        app = web.Application()
        app.router.add_post("/model/{model}/{operation}", self._handle)
        self._start(app, "fake-bedrock")

    def signature_problem(self, request: web.Request, body: bytes) -> str | None:
        """None when the request carries a valid SigV4 signature by our credentials: the
        canonical request is rebuilt from what arrived (path as sent, the signed headers, the
        body) and signed again with botocore."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        auth = request.headers.get("authorization", "")
        try:
            scheme, rest = auth.split(" ", 1)
            fields = dict(part.strip().split("=", 1) for part in rest.split(","))
            access_key, _, region, service, _ = fields["Credential"].split("/")
            signed = fields["SignedHeaders"].split(";")
        except (ValueError, KeyError):
            return "no SigV4 Authorization header"
        if scheme != "AWS4-HMAC-SHA256" or access_key != self.access_key:
            return "unknown access key"
        if (region, service) != (self.region, "bedrock"):
            return f"signed for {region}/{service}"
        headers = {name: request.headers.get(name, "") for name in signed}
        replay = AWSRequest(method=request.method, url=f"http://{request.host}{request.raw_path}",
                            data=body, headers=headers)
        replay.context["timestamp"] = request.headers.get("x-amz-date", "")
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key), service, region)
        canonical = signer.canonical_request(replay)
        expected = signer.signature(signer.string_to_sign(replay, canonical), replay)
        return None if expected == fields.get("Signature") else "signature mismatch"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if problem := self.signature_problem(request, raw):
            self.rejected += 1
            return web.json_response(
                {"message": f"The request signature we calculated does not match the signature "
                            f"you provided ({problem})."},
                status=403, headers={"x-amzn-ErrorType": "InvalidSignatureException"})
        body = orjson.loads(raw)
        model = request.match_info["model"]
        self.received.append(Seen(path=request.raw_path, headers=dict(request.headers),
                                  body=body))
        operation = request.match_info["operation"]
        if operation == "converse":
            return web.json_response(self.converse(body))
        if operation == "count-tokens":
            return self.count_tokens(model, body)
        if operation == "invoke" and "embed" in model:
            return self.embed(model, body)
        if operation == "invoke":
            return web.json_response(anthropic_message(model, body))
        response = web.StreamResponse(headers={
            "content-type": "application/vnd.amazon.eventstream"})
        await response.prepare(request)
        if operation == "converse-stream":
            frames = self.converse_events(body)
        else:
            events = anthropic_events(model, body)
            events[-1]["amazon-bedrock-invocationMetrics"] = {
                "inputTokenCount": UNCACHED, "outputTokenCount": OUTPUT,
                "invocationLatency": 12, "firstByteLatency": 5}
            frames = [aws_event("chunk", {"bytes": base64.b64encode(orjson.dumps(e)).decode()})
                      for e in events]
        if self.exception:
            frames = frames[:3] + [aws_exception(self.exception, "Too many requests, please "
                                                                 "wait before trying again.")]
            self.exception = None
        for frame in frames:
            # Each frame in two writes: the reader must reassemble messages.
            await response.write(frame[:7])
            await response.write(frame[7:])
        await response.write_eof()
        return response

    def count_tokens(self, model: str, body: dict) -> web.Response:
        def invalid(message: str) -> web.Response:
            return web.json_response({"message": message}, status=400,
                                     headers={"x-amzn-ErrorType": "ValidationException"})

        if model in self.no_count:
            return invalid("The provided model doesn't support counting tokens.")
        given = body.get("input") if set(body) == {"input"} else None
        if not isinstance(given, dict) or len(given) != 1:
            return invalid("input must hold exactly one of converse, invokeModel")
        if "converse" in given:
            converse = given["converse"]
            if set(converse) - {"messages", "system"} or not converse.get("messages"):
                return invalid("Malformed converse input")
            return web.json_response({"inputTokens": COUNT_CONVERSE})
        try:
            invoke = orjson.loads(base64.b64decode(given["invokeModel"]["body"]))
        except (KeyError, TypeError, ValueError, binascii.Error):
            return invalid("invokeModel.body must be a base64 request body")
        if invoke.get("anthropic_version") != "bedrock-2023-05-31" or "model" in invoke \
                or not isinstance(invoke.get("max_tokens"), int) or not invoke.get("messages"):
            return invalid("Malformed InvokeModel body for an Anthropic model")
        return web.json_response({"inputTokens": COUNT_INVOKE})

    @staticmethod
    def embed(model: str, body: dict) -> web.Response:
        def invalid(message: str) -> web.Response:
            return web.json_response({"message": message}, status=400,
                                     headers={"x-amzn-ErrorType": "ValidationException"})

        if "amazon.titan-embed" in model:
            if set(body) - {"inputText", "dimensions", "normalize"} or \
                    not isinstance(body.get("inputText"), str):
                return invalid("Malformed input request: extraneous key or inputText missing")
            text = body["inputText"]
            return web.json_response({"embedding": fake_vector(text, body.get("dimensions")),
                                      "inputTextTokenCount": fake_token_count(text)})
        # Only Embed v4 has sizes to choose from (`output_dimension`).
        known = {"texts", "input_type", "truncate", "embedding_types"} | (
            {"output_dimension"} if "embed-v4" in model else set())
        if set(body) - known or not isinstance(body.get("texts"), list) \
                or body.get("input_type") not in ("search_document", "search_query",
                                                  "classification", "clustering"):
            return invalid("Malformed input request: texts and input_type are required")
        return web.json_response({
            "id": "fake-embed-1", "response_type": "embeddings_floats", "texts": body["texts"],
            "embeddings": [fake_vector(t, body.get("output_dimension")) for t in body["texts"]]})

    @staticmethod
    def usage() -> dict:
        return {"inputTokens": UNCACHED, "outputTokens": OUTPUT,
                "totalTokens": UNCACHED + CACHE_READ + CACHE_WRITE + OUTPUT,
                "cacheReadInputTokens": CACHE_READ, "cacheWriteInputTokens": CACHE_WRITE}

    def converse(self, body: dict) -> dict:
        tools = (body.get("toolConfig") or {}).get("tools")
        if tools and not _has_tool_result(body.get("messages")):
            name = next(t["toolSpec"]["name"] for t in tools if "toolSpec" in t)
            content = [{"toolUse": {"toolUseId": "tooluse_fake1", "name": name,
                                    "input": TOOL_INPUT}}]
            stop = "tool_use"
        else:
            content, stop = [{"text": REPLY}], "end_turn"
        return {"output": {"message": {"role": "assistant", "content": content}},
                "stopReason": stop, "usage": self.usage(), "metrics": {"latencyMs": 12}}

    def converse_events(self, body: dict) -> list[bytes]:
        answer = self.converse(body)
        block = answer["output"]["message"]["content"][0]
        frames = [aws_event("messageStart", {"role": "assistant", "p": "abcd"})]
        if "text" in block:
            for piece in ("Hello from ", "the fake cloud."):
                frames.append(aws_event("contentBlockDelta", {
                    "contentBlockIndex": 0, "delta": {"text": piece}, "p": "ab"}))
        else:
            use = block["toolUse"]
            frames.append(aws_event("contentBlockStart", {"contentBlockIndex": 0, "start": {
                "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
            text = json.dumps(TOOL_INPUT, ensure_ascii=False)
            for piece in (text[:5], text[5:]):
                frames.append(aws_event("contentBlockDelta", {
                    "contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}}))
        frames += [aws_event("contentBlockStop", {"contentBlockIndex": 0}),
                   aws_event("messageStop", {"stopReason": answer["stopReason"]}),
                   aws_event("metadata", {"usage": self.usage(),
                                          "metrics": {"latencyMs": 12}})]
        return frames


def service_account_key(token_uri: str) -> tuple[dict, object]:
    """(a service-account key's JSON, its RSA private key) whose token endpoint is
    `token_uri`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return ({"type": "service_account", "project_id": "fake-project",
             "private_key_id": "fake-key-1", "private_key": pem,
             "client_email": "gateway@fake-project.iam.gserviceaccount.com",
             "client_id": "1234567890", "token_uri": token_uri}, key)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeVertex(_Server):
    """Vertex AI and its token endpoint. `public_key` checks the JWT assertions; tokens last
    `token_lifetime_s`; `token_requests` counts the grants."""

    def __init__(self) -> None:
        super().__init__()
        self.public_key = None
        self.token_lifetime_s = 3600
        self.token_requests = 0
        self._tokens: dict[str, float] = {}
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/{tail:.*}", self._predict)
        self._start(app, "fake-vertex")

    async def _token(self, request: web.Request) -> web.Response:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            head, claims, signature = str(form["assertion"]).split(".")
            self.public_key.verify(_b64url(signature), f"{head}.{claims}".encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
            payload = json.loads(_b64url(claims))
        except (KeyError, ValueError, InvalidSignature):
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "Invalid JWT Signature."}, status=400)
        if "cloud-platform" not in payload.get("scope", "") or payload["exp"] < time.time():
            return web.json_response({"error": "invalid_scope"}, status=400)
        self.token_requests += 1
        token = f"ya29.fake-{uuid.uuid4().hex}"
        self._tokens[token] = time.time() + self.token_lifetime_s
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": self.token_lifetime_s})

    async def _predict(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self._tokens.get(token, 0) < time.time():
            return web.json_response({"error": {"code": 401, "status": "UNAUTHENTICATED",
                                                "message": "Request had invalid authentication "
                                                           "credentials."}}, status=401)
        body = await request.json()
        path = request.path
        self.received.append(Seen(path=request.raw_path, headers=dict(request.headers),
                                  body=body))
        model = path.rsplit("/", 1)[1].split(":")[0]
        if path.endswith(":streamRawPredict"):
            return await self._sse(request, [(e["type"], e)
                                             for e in anthropic_events(model, body)])
        if path.endswith("/anthropic/models/count-tokens:rawPredict"):
            if not body.get("model") or not body.get("messages") or "anthropic_version" in body:
                return web.json_response({"error": {"code": 400, "message": "bad request"}},
                                         status=400)
            return web.json_response({"input_tokens": COUNT_CLAUDE})
        if path.endswith(":rawPredict"):
            return web.json_response(anthropic_message(model, body))
        if path.endswith(":countTokens"):
            if set(body) - {"contents", "systemInstruction", "tools", "generationConfig"} \
                    or not body.get("contents"):
                return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                    "message": "Invalid JSON payload."}},
                                         status=400)
            return web.json_response({"totalTokens": COUNT_GEMINI,
                                      "totalBillableCharacters": 40})
        if path.endswith(":predict"):
            return self.predict(body)
        if path.endswith(":generateContent"):
            return web.json_response(self.gemini(model))
        if path.endswith(":streamGenerateContent") and request.query.get("alt") == "sse":
            whole = self.gemini(model)
            first = {"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Hello from "}]}, "index": 0}], "modelVersion": model,
                "responseId": "fake-response"}
            last = {**whole, "candidates": [{"content": {"role": "model", "parts": [
                {"text": "the fake cloud."}]}, "finishReason": "STOP", "index": 0}]}
            return await self._sse(request, [(None, first), (None, last)])
        return web.json_response({"error": {"code": 404, "message": "not found"}}, status=404)

    @staticmethod
    def predict(body: dict) -> web.Response:
        instances = body.get("instances")
        parameters = body.get("parameters") or {}
        if set(body) - {"instances", "parameters"} or not isinstance(instances, list) or \
                not all(isinstance(i, dict) and isinstance(i.get("content"), str)
                        and not set(i) - {"content", "task_type", "title"} for i in instances) \
                or set(parameters) - {"outputDimensionality", "autoTruncate"}:
            return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                "message": "Invalid JSON payload received."}},
                                     status=400)
        size = parameters.get("outputDimensionality")
        return web.json_response({
            "predictions": [{"embeddings": {
                "values": fake_vector(i["content"], size),
                "statistics": {"token_count": fake_token_count(i["content"]),
                               "truncated": False}}} for i in instances],
            "metadata": {"billableCharacterCount": sum(len(i["content"]) for i in instances)}})

    @staticmethod
    def gemini(model: str) -> dict:
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": REPLY}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": UNCACHED + CACHE_READ + CACHE_WRITE,
                                  "candidatesTokenCount": OUTPUT,
                                  "cachedContentTokenCount": CACHE_READ,
                                  "totalTokenCount": UNCACHED + CACHE_READ + CACHE_WRITE
                                  + OUTPUT},
                "modelVersion": model, "responseId": "fake-response"}

    @staticmethod
    async def _sse(request: web.Request, events: list[tuple[str | None, dict]]
                   ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for name, data in events:
            frame = (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
            await response.write(frame.encode())
        await response.write_eof()
        return response
