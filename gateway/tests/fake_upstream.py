"""A fake OpenAI-compatible upstream: a real aiohttp server on loopback, in its own thread.

Each fake provider lives under `/p/<name>/v1`, with knobs set per provider by the test
(`behave(name, status=500)`), and every request it receives is kept for assertions.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class Behaviour:
    status: int = 200
    error_message: str = "fake upstream failure"
    retry_after: str | None = None
    latency_s: float = 0.0              # before the response headers
    reply: str = "Hello from the fake upstream, here is your answer."
    chunk_delay_s: float = 0.0
    cut_after: int | None = None        # drop the connection after N content chunks
    send_usage: bool = True
    usage_in_finish_chunk: bool = False
    tool_call: dict | None = None       # {"name": ..., "arguments": "<json text>"}
    error_in_200: bool = False          # 200 with an error body (some upstreams do this)
    cached_tokens: int = 0
    reasoning_tokens: int = 0


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


@dataclass
class FakeUpstream:
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def behave(self, provider: str, **knobs) -> Behaviour:
        self.behaviours[provider] = Behaviour(**knobs)
        return self.behaviours[provider]

    def reset(self) -> None:
        self.behaviours.clear()
        self.received.clear()

    def base_url(self, provider: str) -> str:
        return f"http://127.0.0.1:{self.port}/p/{provider}/v1"

    def calls(self, provider: str | None = None) -> list[Received]:
        return [r for r in self.received if provider is None or r.provider == provider]

    # -- server ---------------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        provider = request.match_info["provider"]
        body = orjson.loads(await request.read())
        self.received.append(Received(provider, request.path, dict(request.headers), body))
        b = self.behaviours.get(provider, Behaviour())
        if b.latency_s:
            await asyncio.sleep(b.latency_s)
        if b.status != 200:
            headers = {"retry-after": b.retry_after} if b.retry_after else {}
            return web.json_response({"error": {"message": b.error_message, "type": "server_error",
                                                "code": None, "param": None}},
                                     status=b.status, headers=headers)
        if b.error_in_200:
            return web.json_response({"error": {"message": b.error_message, "type": "server_error"}})
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                 "prompt_tokens_details": {"cached_tokens": b.cached_tokens},
                 "completion_tokens_details": {"reasoning_tokens": b.reasoning_tokens}}
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model")}
        wants_tool = b.tool_call is not None and body.get("tools")
        if not body.get("stream"):
            message: dict = {"role": "assistant", "content": None if wants_tool else b.reply}
            if wants_tool:
                message["tool_calls"] = [{"id": "call_fake1", "type": "function",
                                          "function": dict(b.tool_call)}]
            data = {**base, "object": "chat.completion", "choices": [{
                "index": 0, "message": message, "logprobs": None,
                "finish_reason": "tool_calls" if wants_tool else "stop"}]}
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
                pass  # the gateway hung up (client disconnect tests); nothing to do

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**base, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        await send(chunk({"role": "assistant", "content": ""}))
        if wants_tool:
            pieces = [{"tool_calls": [{"index": 0, "id": "call_fake1", "type": "function",
                                       "function": {"name": b.tool_call["name"], "arguments": ""}}]}]
            pieces += [{"tool_calls": [{"index": 0, "function": {"arguments": part}}]}
                       for part in _split(b.tool_call["arguments"], 4)]
        else:
            pieces = [{"content": word} for word in _words(b.reply)]
        for n, delta in enumerate(pieces):
            if b.cut_after is not None and n >= b.cut_after:
                await asyncio.sleep(0.1)  # let the sent chunks reach the gateway first
                request.transport.close()
                return response
            await send(chunk(delta))
            if b.chunk_delay_s:
                await asyncio.sleep(b.chunk_delay_s)
        finish = chunk({}, "tool_calls" if wants_tool else "stop")
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if b.send_usage and include_usage and b.usage_in_finish_chunk:
            finish["usage"] = usage
        await send(finish)
        if b.send_usage and include_usage and not b.usage_in_finish_chunk:
            await send({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        await send("[DONE]")
        await response.write_eof()
        return response

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/p/{provider}/v1/chat/completions", self._chat)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
            ready.set()
            loop.run_forever()

        threading.Thread(target=serve, name="fake-upstream", daemon=True).start()
        ready.wait(10)
