"""Fake Azure OpenAI, Microsoft Entra ID and Google Gemini API upstreams: one real aiohttp
server on loopback, in its own thread, speaking each service's own wire format (checked
against the official SDKs: `openai.AzureOpenAI` and `google-genai`, gateway/tests).

- Azure OpenAI under `/azure`: `/openai/deployments/{deployment}/chat/completions` and
  `/embeddings` (an `api-version` from AZURE_VERSIONS required, else 404 as Azure answers),
  `/openai/v1/chat/completions` and `/openai/v1/responses` (no api-version, or "preview"),
  `/openai/responses?api-version=…`. Auth: the `api-key` header (AZURE_KEY) or a bearer token
  the fake Entra issued and that has not expired. Streams open with Azure's anonymous
  `prompt_filter_results` chunk and carry `content_filter_results`; `filter="completion"`
  ends the answer with finish_reason content_filter, `filter="prompt"` answers Azure's 400
  prompt-filter error.
- Entra under `/entra/{tenant}/oauth2/v2.0/token`: the client-credentials grant for
  ENTRA_CLIENT / ENTRA_SECRET; `token_requests` counts them, `token_lifetime_s` sets
  `expires_in`.
- Gemini under `/gemini/v1beta/models/{model}:generateContent` and
  `:streamGenerateContent?alt=sse`, with `x-goog-api-key` GEMINI_KEY; `:batchEmbedContents`
  answers `{"embeddings": [{"values"}]}` (fake_clouds.fake_vector, `outputDimensionality`
  long), without a token count, as the Gemini API documents it; each request must name the
  URL's model (`models/{model}`) and carry one text part, else 400 INVALID_ARGUMENT;
  `:countTokens` takes `contents` or `generateContentRequest` (naming the URL's model) and
  answers `{"totalTokens": GEMINI_COUNT}`. The answer: thought summaries when `thinkingConfig.includeThoughts`, then a function call (with a
  thoughtSignature) when tools are declared and no functionResponse came back yet, else
  text; `block="safety"` ends with finishReason SAFETY, `block="prompt"` answers
  promptFeedback.blockReason. Usage: 11 prompt tokens (4 cached), 5 candidates, 2 thoughts.
Every request is kept (`requests`) with its path, query, headers and JSON body.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from gateway.tests.loopback import serve_in_thread

AZURE_KEY = "azure-fake-api-key"
AZURE_VERSIONS = {"2024-10-21", "2025-04-01-preview", "2024-12-01-preview"}
ENTRA_CLIENT = "11111111-2222-3333-4444-555555555555"
ENTRA_SECRET = "entra-fake-client-secret"
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
GEMINI_KEY = "gemini-fake-api-key"
GEMINI_COUNT = 13
REPLY = "Hello from the fake cloud."
SIGNATURE = "CiQBZmFrZS10aG91Z2h0LXNpZ25hdHVyZfv/"
FILTERS_OK = {name: {"filtered": False, "severity": "safe"}
              for name in ("hate", "self_harm", "sexual", "violence")}


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict


@dataclass
class CloudBehaviour:
    filter: str | None = None          # azure: "completion" | "prompt"
    block: str | None = None           # gemini: "safety" | "prompt"
    token_lifetime_s: float = 3600.0
    tool: bool = True                  # gemini/azure: call the first declared tool


@dataclass
class FakeAzureGemini:
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    token_requests: int = 0
    behaviour: CloudBehaviour = field(default_factory=CloudBehaviour)
    _tokens: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.requests.clear()
        self.token_requests = 0
        self._tokens.clear()
        self.behaviour = CloudBehaviour()

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port}/{service}"

    def seen(self, prefix: str) -> list[Seen]:
        return [r for r in self.requests if r.path.startswith(prefix)]

    async def _record(self, request: web.Request) -> Seen:
        raw = await request.read()
        body = orjson.loads(raw) if raw and request.content_type == "application/json" else {}
        seen = Seen(request.path, dict(request.query), {k.lower(): v for k, v in
                                                        request.headers.items()}, body)
        self.requests.append(seen)
        return seen

    # Entra ID

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.token_requests += 1
        if (form.get("grant_type"), form.get("client_id"), form.get("client_secret"),
                form.get("scope")) != ("client_credentials", ENTRA_CLIENT, ENTRA_SECRET,
                                       ENTRA_SCOPE):
            return web.json_response({"error": "invalid_client", "error_description":
                                      "AADSTS7000215: Invalid client secret provided."},
                                     status=401)
        token = "eyJ0eXAiOiJKV1Qi.fake." + uuid.uuid4().hex
        lifetime = self.behaviour.token_lifetime_s
        self._tokens[token] = time.monotonic() + lifetime
        return web.json_response({"token_type": "Bearer", "expires_in": int(lifetime),
                                  "ext_expires_in": int(lifetime), "access_token": token})

    # Azure OpenAI

    def _azure_denied(self, seen: Seen) -> web.Response | None:
        if seen.headers.get("api-key") == AZURE_KEY:
            return None
        auth = seen.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        if auth.startswith("Bearer ") and self._tokens.get(token, 0) > time.monotonic():
            return None
        return web.json_response({"error": {"code": "401", "message": "Access denied due to "
                                 "invalid subscription key or wrong API endpoint."}}, status=401)

    async def _azure(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        if denied := self._azure_denied(seen):
            return denied
        path = request.match_info["tail"]
        version = seen.query.get("api-version")
        if path.startswith("v1/"):
            if version not in (None, "preview"):
                return _not_found()
            operation = path[3:]
        elif path.startswith("deployments/"):
            _, deployment, operation = path.split("/", 2)
            if version not in AZURE_VERSIONS:
                return _not_found()
            seen.body.setdefault("model", deployment)
        elif path == "responses" and version in AZURE_VERSIONS:
            operation = "responses"
        else:
            return _not_found()
        if self.behaviour.filter == "prompt":
            return web.json_response({"error": {
                "message": "The response was filtered due to the prompt triggering Azure "
                           "OpenAI's content management policy. Please modify your prompt and "
                           "retry.", "type": None, "param": "prompt", "code": "content_filter",
                "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation",
                                              "content_filter_result": {
                                                  **FILTERS_OK,
                                                  "hate": {"filtered": True,
                                                           "severity": "high"}}}}}, status=400)
        if operation == "chat/completions":
            return await self._azure_chat(request, seen.body)
        if operation == "responses":
            return await self._azure_responses(request, seen.body)
        if operation == "embeddings":
            return web.json_response({"object": "list", "model": "text-embedding-3-small",
                                      "data": [{"object": "embedding", "index": 0,
                                                "embedding": [0.1, 0.2]}],
                                      "usage": {"prompt_tokens": 3, "total_tokens": 3}})
        return _not_found()

    def _azure_usage(self) -> dict:
        return {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}

    async def _azure_chat(self, request: web.Request, body: dict) -> web.StreamResponse:
        filtered = self.behaviour.filter == "completion"
        finish = "content_filter" if filtered else "stop"
        text = "Hello from" if filtered else REPLY
        base = {"id": "chatcmpl-AzFake123", "created": 1730000000, "model": "gpt-4o-2024-11-20",
                "system_fingerprint": "fp_azure"}
        prompt_filters = [{"prompt_index": 0, "content_filter_results": FILTERS_OK}]
        choice_filters = {**FILTERS_OK, "violence": {"filtered": True, "severity": "medium"}} \
            if filtered else FILTERS_OK
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion",
                                      "prompt_filter_results": prompt_filters,
                                      "choices": [{"index": 0, "finish_reason": finish,
                                                   "logprobs": None,
                                                   "content_filter_results": choice_filters,
                                                   "message": {"role": "assistant",
                                                               "content": text,
                                                               "refusal": None}}],
                                      "usage": self._azure_usage()})
        response = await _sse(request)

        async def chunk(choices: list, **extra) -> None:
            await _send(response, {**base, "object": "chat.completion.chunk",
                                   "choices": choices, **extra})

        await _send(response, {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                               "prompt_filter_results": prompt_filters})
        await chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None, "logprobs": None, "content_filter_results": {}}])
        for word in text.split(" "):
            await chunk([{"index": 0, "delta": {"content": word + " "}, "finish_reason": None,
                          "logprobs": None, "content_filter_results": FILTERS_OK}])
        await chunk([{"index": 0, "delta": {}, "finish_reason": finish, "logprobs": None,
                      "content_filter_results": choice_filters}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await chunk([], usage=self._azure_usage())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _azure_responses(self, request: web.Request, body: dict) -> web.StreamResponse:
        usage = {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4},
                 "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 18}
        message = {"id": "msg_az1", "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": REPLY, "annotations": []}]}
        resp = {"id": "resp_az1", "object": "response", "created_at": 1730000000,
                "status": "completed", "model": body.get("model"), "output": [message],
                "usage": usage, "error": None, "incomplete_details": None,
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
        if not body.get("stream"):
            return web.json_response(resp)
        response = await _sse(request)
        seq = iter(range(100))
        start = {**resp, "status": "in_progress", "output": [], "usage": None}
        events = [
            ("response.created", {"response": start}),
            ("response.in_progress", {"response": start}),
            ("response.output_item.added", {"output_index": 0, "item": {
                **message, "status": "in_progress", "content": []}}),
            ("response.content_part.added", {"output_index": 0, "item_id": "msg_az1",
                                             "content_index": 0, "part": {
                                                 "type": "output_text", "text": "",
                                                 "annotations": []}}),
            *(("response.output_text.delta", {"output_index": 0, "item_id": "msg_az1",
                                              "content_index": 0, "delta": w})
              for w in ("Hello from ", "the fake cloud.")),
            ("response.output_text.done", {"output_index": 0, "item_id": "msg_az1",
                                           "content_index": 0, "text": REPLY}),
            ("response.output_item.done", {"output_index": 0, "item": message}),
            ("response.completed", {"response": resp}),
        ]
        for name, data in events:
            await _send(response, {"type": name, "sequence_number": next(seq), **data},
                        event=name)
        await response.write_eof()
        return response

    # Gemini

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        if seen.headers.get("x-goog-api-key") != GEMINI_KEY:
            return web.json_response({"error": {"code": 400, "message": "API key not valid. "
                                                "Please pass a valid API key.",
                                                "status": "INVALID_ARGUMENT"}}, status=400)
        model, _, action = request.match_info["tail"].partition(":")
        if action == "batchEmbedContents":
            return _gemini_embed(model, seen.body)
        if action == "countTokens":
            whole = seen.body.get("generateContentRequest")
            if set(seen.body) - {"contents", "generateContentRequest"} or not (
                    seen.body.get("contents") or (isinstance(whole, dict)
                                                  and whole.get("model") == f"models/{model}"
                                                  and whole.get("contents"))):
                return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                    "message": "Invalid JSON payload."}},
                                         status=400)
            return web.json_response({"totalTokens": GEMINI_COUNT,
                                      "promptTokensDetails": [{"modality": "TEXT",
                                                               "tokenCount": GEMINI_COUNT}]})
        if action not in ("generateContent", "streamGenerateContent"):
            return web.json_response({"error": {"code": 404, "message": "not found",
                                                "status": "NOT_FOUND"}}, status=404)
        chunks = self._gemini_chunks(seen.body, model)
        if action == "generateContent":
            merged = dict(chunks[-1])
            if "candidates" in merged:
                parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
                merged["candidates"] = [{**merged["candidates"][0],
                                         "content": {"role": "model", "parts": parts}}]
            return web.json_response(merged)
        if seen.query.get("alt") != "sse":
            return web.json_response(chunks)  # without alt=sse Gemini streams a JSON array
        response = await _sse(request)
        for chunk in chunks:
            await _send(response, chunk, crlf=True)
        await response.write_eof()
        return response

    def _gemini_chunks(self, body: dict, model: str) -> list[dict]:
        usage = {"promptTokenCount": 11, "cachedContentTokenCount": 4, "candidatesTokenCount": 5,
                 "thoughtsTokenCount": 2, "totalTokenCount": 18,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 11}]}
        meta = {"modelVersion": f"{model}-001", "responseId": "gemFakeResp01"}
        if self.behaviour.block == "prompt":
            return [{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                     "usageMetadata": {"promptTokenCount": 11, "totalTokenCount": 11}, **meta}]
        # The API reads proto JSON: lowerCamelCase, and the snake_case google-genai sends.
        config = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
        thinking = config.get("includeThoughts") or config.get("include_thoughts")
        answered = any("functionResponse" in p for c in body.get("contents") or []
                       for p in c.get("parts") or [])
        tools = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
        parts: list[list[dict]] = []
        if thinking:
            parts.append([{"text": "**Thinking it over**\n\nA short plan.", "thought": True}])
        if tools and not answered and self.behaviour.tool:
            parts.append([{"functionCall": {"name": tools[0]["name"],
                                            "args": {"city": "Zürich"}},
                           "thoughtSignature": SIGNATURE}])
        else:
            parts += [[{"text": "Hello from "}], [{"text": "the fake cloud."}]]
        chunks = [{"candidates": [{"content": {"role": "model", "parts": p}, "index": 0}],
                   "usageMetadata": {"promptTokenCount": 11, "totalTokenCount": 11}, **meta}
                  for p in parts]
        finish = "SAFETY" if self.behaviour.block == "safety" else "STOP"
        last = chunks[-1]["candidates"][0]
        last["finishReason"] = finish
        if finish == "SAFETY":
            last["safetyRatings"] = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                                      "probability": "HIGH", "blocked": True}]
        chunks[-1]["usageMetadata"] = usage
        return chunks

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/entra/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_post("/azure/openai/{tail:.+}", self._azure)
        app.router.add_post("/gemini/v1beta/models/{tail:.+}", self._gemini)
        self.port, _ = serve_in_thread(app, name="fake-azure-gemini")


def _gemini_embed(model: str, body: dict) -> web.Response:
    from gateway.tests.fake_clouds import fake_vector

    requests = body.get("requests")
    vectors = []
    for one in requests if isinstance(requests, list) and not set(body) - {"requests"} else [{}]:
        parts = (one.get("content") or {}).get("parts") or []
        if one.get("model") != f"models/{model}" or len(parts) != 1 or \
                not isinstance(parts[0].get("text"), str) or \
                set(one) - {"model", "content", "taskType", "title", "outputDimensionality"}:
            return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                "message": "Invalid JSON payload received."}},
                                     status=400)
        vectors.append({"values": fake_vector(parts[0]["text"],
                                              one.get("outputDimensionality"))})
    return web.json_response({"embeddings": vectors})


def _not_found() -> web.Response:
    return web.json_response({"error": {"code": "404", "message": "Resource not found"}},
                             status=404)


async def _sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, data: dict, *, event: str | None = None,
                crlf: bool = False) -> None:
    # Gemini's SSE frames end with CRLF pairs; OpenAI's with LF.
    end = b"\r\n\r\n" if crlf else b"\n\n"
    head = f"event: {event}\n".encode() if event else b""
    await response.write(head + b"data: " + orjson.dumps(data) + end)


_server: FakeAzureGemini | None = None


def fake_azure_gemini() -> FakeAzureGemini:
    """The one server of the test session (started on first use), reset."""
    global _server
    if _server is None:
        _server = FakeAzureGemini()
        _server.start()
    _server.reset()
    return _server
