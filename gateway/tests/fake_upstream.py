"""A fake upstream speaking both OpenAI Chat Completions and Anthropic Messages: a real aiohttp
server on loopback, in its own thread.

Each fake provider lives under `/p/<name>/v1` (`/chat/completions`, `/messages`,
`/messages/count_tokens`), with knobs set per provider by the test (`behave(name,
status=500)`), and every request it receives is kept for assertions; a test can wait for
requests to arrive (`wait_for_calls`) or hold them there (`behave(name, hold=fake.gate())`)
until it lets them go. A stream can be cut after N chunks (closed, ended without its end
marker, or reset) at a moment the test chooses (`cut_gate`). Both dialects answer the same
scenario: optional thinking, then text or tool calls, usage of 11 input tokens (cached ones
included; OpenAI's or DeepSeek's fields) and 7 output tokens. Anthropic streams follow its
event grammar (message_start, content blocks with their deltas, ping, message_delta with
usage, message_stop), with tool input JSON split across `input_json_delta` events. An agent
loop is scripted with `until_tool_result` (tool calls until a tool result comes back, then the
reply); `stream_as_json` answers a streamed request with one JSON body, as some servers do.
`prefix_cache` makes `/messages` account for Anthropic's prompt cache (`_PrefixCache`) instead
of reporting the fixed 11 input tokens.
"""
from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from gateway.tests.loopback import serve_in_thread
from gateway.tokens import text_tokens


class Gate:
    """Holds requests at the fake upstream (each already recorded, so `wait_for_calls` sees it)
    until the test calls `open()`; then and from then on, they go on with their behaviour."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop  # the fake's own; the event is set there, from any thread
        self._event = asyncio.Event()

    def open(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()


_HUNG_UP = web.RequestKey("hung_up", bool)


@dataclass
class Behaviour:
    status: int = 200
    error_message: str = "fake upstream failure"
    retry_after: str | None = None
    latency_s: float = 0.0              # before the response headers
    reply: str = "Hello from the fake upstream, here is your answer."
    chunk_delay_s: float = 0.0
    cut_after: int | None = None        # end the stream after N content chunks, as cut_mode says
    # "close": close the connection mid-body (the chunked body is never terminated);
    # "eof": end the HTTP response cleanly, without the end marker or stop reason;
    # "reset": TCP RST (SO_LINGER 0, then abort), the unsent bytes thrown away.
    cut_mode: str = "close"
    cut_gate: Gate | None = None        # before cutting, wait for the test to open this gate
    # After N content chunks, keep the stream open with SSE comments only (every 50 ms, 30 s at
    # most) until the gateway closes it: what the gateway streamed is then exactly N chunks.
    hang_after: int | None = None
    usage_shape: str = "openai"         # "deepseek": prompt_cache_hit/miss_tokens, no details
    send_usage: bool = True
    usage_in_finish_chunk: bool = False
    tool_call: dict | None = None       # {"name": ..., "arguments": "<json text>"}
    error_in_200: bool = False          # 200 with an error body (some upstreams do this)
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    tool_calls: list[dict] | None = None  # parallel calls; overrides tool_call
    preamble: str | None = None         # text sent before the tool calls
    thinking: str | None = None         # reasoning (Anthropic thinking block / reasoning_content)
    signature: str = "sig-fake-EqQBCgIYAhIM"
    finish: str | None = None           # the dialect's own finish/stop reason, sent verbatim
    error_event_after: int | None = None  # an in-band error event after N content events
    count_tokens: int = 23              # /messages/count_tokens answer
    location: str | None = None         # with a 3xx status: where the redirect points
    garbage_after: int | None = None    # send a non-JSON SSE event after N content chunks
    hold: Gate | None = None            # once recorded, wait until the test opens this gate
    stream_as_json: bool = False        # answer `stream: true` with the whole JSON body
    # Messages: accept system-role turns (Claude Code's mid-conversation-system), or refuse
    # them as Anthropic does where that is off, unless the request names the beta.
    system_turns: bool = True
    # An agent loop: call the tools only until a tool result comes back, then answer `reply`.
    until_tool_result: bool = False
    # Messages: usage from Anthropic's prefix-cache accounting over the requests this provider
    # received since the last reset (`_PrefixCache`), instead of the fixed 11 input tokens.
    prefix_cache: bool = False

    def calls(self) -> list[dict]:
        return self.tool_calls if self.tool_calls is not None else \
            [self.tool_call] if self.tool_call is not None else []

    def calls_for(self, body: dict) -> list[dict]:
        """The tool calls to answer `body` with: none without tools, or (`until_tool_result`)
        once the last turn carries a tool result."""
        if not body.get("tools"):
            return []
        if self.until_tool_result and _has_tool_result(body.get("messages") or []):
            return []
        return self.calls()


def _has_tool_result(messages: list) -> bool:
    """Whether the last turn (ignoring system ones) is a tool result, in either dialect."""
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") != "system"]
    if not turns:
        return False
    last = turns[-1]
    content = last.get("content")
    return last.get("role") == "tool" or (isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content))


@dataclass
class Received:
    provider: str
    path: str
    headers: dict[str, str]
    body: dict


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _split(text: str, parts: int) -> list[str]:
    size = max(1, len(text) // parts)
    return [text[i:i + size] for i in range(0, len(text), size)]


class _PrefixCache:
    """Anthropic's prompt-cache accounting, as its docs describe it, for one provider. A
    request is a sequence of blocks: tools, system blocks, then each message's content blocks
    (a string content is one block). A block marked `cache_control` is a breakpoint: the prefix
    up to it is written to the cache. A later request reads the longest prefix written before,
    found at a breakpoint or up to 20 blocks before one. Usage: `cache_read_input_tokens` is
    that prefix, `cache_creation_input_tokens` what follows it up to the last breakpoint,
    `input_tokens` the rest. Tokens are gateway.tokens.text_tokens of each block's canonical
    JSON (without its cache_control); prefixes are keyed by the model and those JSONs."""

    LOOKBACK = 20

    def __init__(self) -> None:
        self._written: set[bytes] = set()

    def usage(self, body: dict) -> dict[str, int]:
        blocks = _prefix_blocks(body)
        tokens = [text_tokens(json.decode()) for _, json, _ in blocks]
        prefixes, running = [], hashlib.sha256(orjson.dumps(body.get("model")))
        for where, json, _ in blocks:
            running.update(orjson.dumps(where) + json)
            prefixes.append(running.digest())
        breakpoints = [i for i, (_, _, marked) in enumerate(blocks) if marked]
        read_to = max((j for bp in breakpoints for j in range(bp, max(bp - self.LOOKBACK, -1), -1)
                       if prefixes[j] in self._written), default=-1)
        write_to = max(breakpoints, default=-1)
        self._written.update(prefixes[i] for i in breakpoints)
        read = sum(tokens[:read_to + 1])
        written = sum(tokens[read_to + 1:write_to + 1])
        return {"input_tokens": sum(tokens) - read - written,
                "cache_creation_input_tokens": written, "cache_read_input_tokens": read}


def _prefix_blocks(body: dict) -> list[tuple[str, bytes, bool]]:
    """A Messages body's blocks in cache order: where each is (tool, system or the message's
    role), its canonical JSON without `cache_control`, and whether it is marked."""
    system = body.get("system") or []
    items: list[tuple[str, dict]] = [("tool", t) for t in body.get("tools") or []]
    items += [("system", b) for b in ([{"type": "text", "text": system}]
                                      if isinstance(system, str) else system)]
    for message in body.get("messages") or []:
        content = message.get("content")
        items += [(message.get("role"), b) for b in ([{"type": "text", "text": content}]
                                                     if isinstance(content, str) else content)]
    return [(where, orjson.dumps({k: v for k, v in b.items() if k != "cache_control"},
                                 option=orjson.OPT_SORT_KEYS), "cache_control" in b)
            for where, b in items]


def _anthropic_usage(b: Behaviour, cache: dict[str, int] | None = None) -> dict:
    usage = {"input_tokens": 11 - b.cached_tokens, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": b.cached_tokens, "output_tokens": 7}
    if cache is not None:
        usage.update(cache)
    if b.reasoning_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": b.reasoning_tokens}
    return usage


def _openai_usage(b: Behaviour, *, prompt: int, completion: int) -> dict:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion}
    if b.usage_shape == "deepseek":
        # DeepSeek's own fields (api-docs.deepseek.com, "context caching"): no details object.
        return {**usage, "prompt_cache_hit_tokens": b.cached_tokens,
                "prompt_cache_miss_tokens": prompt - b.cached_tokens}
    return {**usage, "prompt_tokens_details": {"cached_tokens": b.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": b.reasoning_tokens}}


async def _cut(b: Behaviour, request: web.Request, response: web.StreamResponse
               ) -> web.StreamResponse:
    """End a stream early, as `b.cut_mode` says, once the test opens `b.cut_gate` (without
    one, after a moment that lets the sent chunks reach the gateway first)."""
    if b.cut_gate is not None:
        await b.cut_gate.wait()
    else:
        await asyncio.sleep(0.1)
    if b.cut_mode == "eof":
        await response.write_eof()
    elif b.cut_mode == "reset":
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()
    else:
        request.transport.close()
    return response


MID_CONVERSATION_SYSTEM_BETA = "mid-conversation-system-2026-04-07"


def _anthropic_invalid(body: object, headers: dict[str, str] | None = None, *,
                       system_turns: bool = True) -> str | None:
    """What Anthropic's validation would refuse in a Messages body (the parts we rely on).
    System-role turns only with `system_turns` or the mid-conversation-system beta."""
    if not isinstance(body, dict):
        return "body: must be an object"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    betas = {b.strip() for b in (headers or {}).get("anthropic-beta", "").split(",")}
    roles = ("user", "assistant", "system") \
        if system_turns or MID_CONVERSATION_SYSTEM_BETA in betas else ("user", "assistant")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in roles:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    if "tool_choice" in body and not isinstance(body["tool_choice"], dict):
        return "tool_choice: Input should be a valid dictionary"
    for i, tool in enumerate(body.get("tools") or []):
        if tool.get("type", "custom") == "custom" and "input_schema" not in tool:
            return f"tools.{i}.input_schema: Field required"
    if not 0 <= body.get("temperature", 0) <= 1:
        return "temperature: Input should be less than or equal to 1"
    if "stream_options" in body:
        return "stream_options: Extra inputs are not permitted"
    return None


@dataclass
class FakeUpstream:
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    answered: int = 0                   # requests whose handler has finished, however it ended
    hangups: int = 0                    # streams the gateway closed while this fake was sending
    port: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _prefix_caches: dict[str, _PrefixCache] = field(default_factory=dict, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    def behave(self, provider: str, **knobs) -> Behaviour:
        self.behaviours[provider] = Behaviour(**knobs)
        return self.behaviours[provider]

    def gate(self) -> Gate:
        """A closed gate for `behave(..., hold=gate)` or `cut_gate=gate`; `reset()` opens any
        left closed."""
        return Gate(self._loop)

    def reset(self) -> None:
        for b in self.behaviours.values():
            for gate in (b.hold, b.cut_gate):
                if gate is not None:
                    gate.open()
        with self._changed:
            self.behaviours.clear()
            self.received.clear()
            self.hangups = 0
            self._prefix_caches.clear()
            self.answered = 0

    def wait_for_calls(self, count: int, provider: str | None = None,
                       timeout: float = 10.0) -> list[Received]:
        """The calls received (of `provider`) once there are at least `count`, or whatever
        there are after `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.calls(provider)) >= count, timeout)
            return self.calls(provider)

    def wait_for_answers(self, count: int, timeout: float = 10.0) -> int:
        """How many requests the fake has finished handling, once at least `count`, or after
        `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self.answered >= count, timeout)
            return self.answered

    def wait_for_hangups(self, count: int, timeout: float = 10.0) -> int:
        """How many streams the gateway closed before this fake had sent all of them (seen at
        the next write after the close), once at least `count`, or after `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self.hangups >= count, timeout)
            return self.hangups

    def _hung_up(self, request: web.Request) -> None:
        if request.get(_HUNG_UP):
            return
        request[_HUNG_UP] = True
        with self._changed:
            self.hangups += 1
            self._changed.notify_all()

    async def _hang(self, request: web.Request, response: web.StreamResponse
                    ) -> web.StreamResponse:
        for _ in range(600):
            try:
                await response.write(b": keep-alive\n\n")
            except ConnectionError:
                self._hung_up(request)
                break
            await asyncio.sleep(0.05)
        return response

    def _record(self, received: Received) -> Behaviour:
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()
        return self.behaviours.get(received.provider, Behaviour())

    @web.middleware
    async def _count_answers(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            with self._changed:
                self.answered += 1
                self._changed.notify_all()

    def base_url(self, provider: str) -> str:
        return f"http://127.0.0.1:{self.port}/p/{provider}/v1"

    def calls(self, provider: str | None = None) -> list[Received]:
        return [r for r in self.received if provider is None or r.provider == provider]

    # -- server ---------------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        provider = request.match_info["provider"]
        body = orjson.loads(await request.read())
        b = self._record(Received(provider, request.path, dict(request.headers), body))
        if b.hold is not None:
            await b.hold.wait()
        if b.latency_s:
            await asyncio.sleep(b.latency_s)
        if b.status != 200:
            headers = {"retry-after": b.retry_after} if b.retry_after else {}
            if b.location:
                headers["location"] = b.location
            return web.json_response({"error": {"message": b.error_message, "type": "server_error",
                                                "code": None, "param": None}},
                                     status=b.status, headers=headers)
        if b.error_in_200:
            return web.json_response({"error": {"message": b.error_message, "type": "server_error"}})
        usage = _openai_usage(b, prompt=11, completion=7)
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model")}
        calls = b.calls_for(body)
        wants_tool = bool(calls)
        finish_reason = b.finish or ("tool_calls" if wants_tool else "stop")
        if not body.get("stream") or b.stream_as_json:
            message: dict = {"role": "assistant",
                             "content": (b.preamble if wants_tool else b.reply)}
            if b.thinking:
                message["reasoning_content"] = b.thinking
            if wants_tool:
                message["tool_calls"] = [{"id": f"call_fake{n + 1}", "type": "function",
                                          "function": dict(call)} for n, call in enumerate(calls)]
            data = {**base, "object": "chat.completion", "choices": [{
                "index": 0, "message": message, "logprobs": None,
                "finish_reason": finish_reason}]}
            if b.send_usage:
                data["usage"] = usage
            return web.json_response(data)

        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(obj) -> None:
            payload = obj if isinstance(obj, str) else orjson.dumps(obj).decode()
            try:
                await response.write(f"data: {payload}\n\n".encode())
            except ConnectionError:
                self._hung_up(request)  # the gateway hung up (client disconnect tests)

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**base, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        await send(chunk({"role": "assistant", "content": ""}))
        pieces = [{"reasoning_content": word} for word in _words(b.thinking)] \
            if b.thinking else []
        if wants_tool:
            if b.preamble:
                pieces += [{"content": word} for word in _words(b.preamble)]
            for n, call in enumerate(calls):
                pieces.append({"tool_calls": [{"index": n, "id": f"call_fake{n + 1}",
                                               "type": "function",
                                               "function": {"name": call["name"],
                                                            "arguments": ""}}]})
                pieces += [{"tool_calls": [{"index": n, "function": {"arguments": part}}]}
                           for part in _split(call["arguments"], 4)]
        else:
            pieces += [{"content": word} for word in _words(b.reply)]
        for n, delta in enumerate(pieces):
            if b.garbage_after is not None and n == b.garbage_after:
                await send("{this is not json")
            if b.cut_after is not None and n >= b.cut_after:
                return await _cut(b, request, response)
            if b.hang_after is not None and n >= b.hang_after:
                return await self._hang(request, response)
            if b.error_event_after is not None and n >= b.error_event_after:
                await send({"error": {"message": b.error_message, "type": "server_error"}})
                await response.write_eof()
                return response
            await send(chunk(delta))
            if b.chunk_delay_s:
                await asyncio.sleep(b.chunk_delay_s)
        finish = chunk({}, finish_reason)
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if b.send_usage and include_usage and b.usage_in_finish_chunk:
            finish["usage"] = usage
        await send(finish)
        if b.send_usage and include_usage and not b.usage_in_finish_chunk:
            await send({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        await send("[DONE]")
        await response.write_eof()
        return response

    async def _received(self, request: web.Request) -> tuple[Behaviour, object]:
        provider = request.match_info["provider"]
        body = orjson.loads(await request.read())
        b = self._record(Received(provider, request.path, dict(request.headers), body))
        if b.hold is not None:
            await b.hold.wait()
        if b.latency_s:
            await asyncio.sleep(b.latency_s)
        return b, body

    async def _embeddings(self, request: web.Request) -> web.Response:
        b, body = await self._received(request)
        if b.status != 200:
            return web.json_response({"error": {"message": b.error_message, "type": "server_error"}},
                                     status=b.status)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({
            "object": "list", "model": body.get("model"),
            "data": [{"object": "embedding", "index": i, "embedding": [0.5, -0.25, float(i)]}
                     for i, _ in enumerate(inputs)],
            "usage": {"prompt_tokens": 5 * len(inputs), "total_tokens": 5 * len(inputs)}})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        b, body = await self._received(request)
        if b.status != 200:
            return web.json_response({"error": {"message": b.error_message, "type": "server_error"}},
                                     status=b.status)
        base = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": body.get("model")}
        usage = _openai_usage(b, prompt=9, completion=4)
        if not body.get("stream"):
            return web.json_response({**base, "usage": usage, "choices": [
                {"index": 0, "text": b.reply, "finish_reason": "stop", "logprobs": None}]})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for n, word in enumerate(_words(b.reply)):
            if b.cut_after is not None and n >= b.cut_after:
                return await _cut(b, request, response)
            await response.write(b"data: " + orjson.dumps({**base, "choices": [
                {"index": 0, "text": word, "finish_reason": None, "logprobs": None}]}) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    def _anthropic_error(status: int, kind: str, message: str,
                         headers: dict | None = None) -> web.Response:
        return web.json_response({"type": "error", "error": {"type": kind, "message": message}},
                                 status=status, headers=headers or {})

    async def _count_tokens(self, request: web.Request) -> web.Response:
        b, body = await self._received(request)
        if b.status != 200:
            return self._anthropic_error(b.status, "api_error", b.error_message)
        return web.json_response({"input_tokens": b.count_tokens})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        b, body = await self._received(request)
        headers = {k.lower(): v for k, v in request.headers.items()}
        if b.status != 200:
            headers = {"retry-after": b.retry_after} if b.retry_after else {}
            kind = "overloaded_error" if b.status == 529 else "api_error"
            return self._anthropic_error(b.status, kind, b.error_message, headers)
        if invalid := _anthropic_invalid(body, headers, system_turns=b.system_turns):
            return self._anthropic_error(400, "invalid_request_error", invalid)
        if b.error_in_200:
            return self._anthropic_error(200, "api_error", b.error_message)
        calls = b.calls_for(body)
        stop = b.finish or ("tool_use" if calls else "end_turn")
        blocks: list[dict] = []
        if b.thinking:
            blocks.append({"type": "thinking", "thinking": b.thinking, "signature": b.signature})
        text = b.preamble if calls else b.reply
        if text:
            blocks.append({"type": "text", "text": text})
        for n, call in enumerate(calls):
            blocks.append({"type": "tool_use", "id": f"toolu_fake{n + 1}", "name": call["name"],
                           "input": orjson.loads(call["arguments"])})
        message = {"id": "msg_fake", "type": "message", "role": "assistant",
                   "model": body.get("model"), "content": blocks, "stop_reason": stop,
                   "stop_sequence": None}
        cache = self._prefix_caches.setdefault(request.match_info["provider"], _PrefixCache()
                                               ).usage(body) if b.prefix_cache else None
        if b.send_usage:
            message["usage"] = _anthropic_usage(b, cache)
        if not body.get("stream") or b.stream_as_json:
            return web.json_response(message)

        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(event: str, data: dict) -> None:
            try:
                await response.write(f"event: {event}\ndata: {orjson.dumps(data).decode()}\n\n"
                                     .encode())
            except ConnectionError:
                self._hung_up(request)  # the gateway hung up (client disconnect tests)

        start = {**message, "content": [], "stop_reason": None}
        if b.send_usage:
            start["usage"] = {**_anthropic_usage(b, cache), "output_tokens": 1}
        await send("message_start", {"type": "message_start", "message": start})
        # (event, data, counts as content) in order; content events are what cut_after counts.
        events: list[tuple[str, dict, bool]] = []

        def block(index: int, opening: dict, deltas: list[dict]) -> None:
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": opening}, False))
            if index == 0:
                events.append(("ping", {"type": "ping"}, False))
            events.extend(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": d}, True) for d in deltas)
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index},
                           False))

        for index, full in enumerate(blocks):
            if full["type"] == "thinking":
                block(index, {"type": "thinking", "thinking": "", "signature": ""},
                      [{"type": "thinking_delta", "thinking": w} for w in _words(full["thinking"])]
                      + [{"type": "signature_delta", "signature": full["signature"]}])
            elif full["type"] == "text":
                block(index, {"type": "text", "text": ""},
                      [{"type": "text_delta", "text": w} for w in _words(full["text"])])
            else:
                arguments = calls[index - len(blocks) + len(calls)]["arguments"]
                block(index, {**full, "input": {}},
                      [{"type": "input_json_delta", "partial_json": part}
                       for part in ["", *_split(arguments, 4)]])
        sent = 0
        for event, data, content in events:
            if content and b.cut_after is not None and sent >= b.cut_after:
                return await _cut(b, request, response)
            if content and b.hang_after is not None and sent >= b.hang_after:
                return await self._hang(request, response)
            if content and b.error_event_after is not None and sent >= b.error_event_after:
                await send("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                "message": b.error_message}})
                await response.write_eof()
                return response
            await send(event, data)
            if content:
                sent += 1
                if b.chunk_delay_s:
                    await asyncio.sleep(b.chunk_delay_s)
        delta: dict = {"type": "message_delta",
                       "delta": {"stop_reason": stop, "stop_sequence": None}}
        if b.send_usage:
            delta["usage"] = {"output_tokens": 7}
        await send("message_delta", delta)
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response

    def start(self) -> None:
        app = web.Application(middlewares=[self._count_answers])
        app.router.add_post("/p/{provider}/v1/chat/completions", self._chat)
        app.router.add_post("/p/{provider}/v1/completions", self._completions)
        app.router.add_post("/p/{provider}/v1/embeddings", self._embeddings)
        app.router.add_post("/p/{provider}/v1/messages", self._messages)
        app.router.add_post("/p/{provider}/v1/messages/count_tokens", self._count_tokens)
        self.port, self._loop = serve_in_thread(app, name="fake-upstream")
